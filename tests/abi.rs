//! The C ABI as a contract: the committed header, the exported symbols, versions, statuses.

mod common;

use std::ffi::CStr;
use std::path::PathBuf;
use std::process::Command;
use std::ptr;

use common::*;
use grass::ffi::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn committed_header_matches_cbindgen() {
    let cfg = cbindgen::Config::from_file(root().join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::generate_with_config(root(), cfg)
        .unwrap()
        .write(&mut generated);
    let committed = std::fs::read(root().join("include/grass.h")).unwrap();
    assert!(
        generated == committed,
        "include/grass.h differs from what cbindgen generates from src/ffi: run `cargo build` and commit the header"
    );
}

fn header() -> String {
    std::fs::read_to_string(root().join("include/grass.h")).unwrap()
}

/// The cdylib next to the test binary (target/<profile>/libgrass.so).
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("libgrass.so")
}

#[test]
fn exports_exactly_the_header_functions() {
    let lib = cdylib();
    assert!(lib.exists(), "{} not built", lib.display());
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm runs");
    assert!(out.status.success());
    let exported: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let stray: Vec<_> = exported
        .iter()
        .filter(|s| !s.starts_with("grass_"))
        .collect();
    assert!(
        stray.is_empty(),
        "symbols outside the grass_ prefix are exported: {stray:?}"
    );
    let h = header();
    let mut declared: Vec<String> = Vec::new();
    for line in h.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(at) = rest.find("grass_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if tail[end..].starts_with('(') {
                declared.push(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    assert!(
        declared.len() > 30,
        "parsed only {} declarations",
        declared.len()
    );
    for d in &declared {
        assert!(
            exported.contains(d),
            "{d} is declared in grass.h but not exported"
        );
    }
    for e in &exported {
        assert!(
            declared.contains(e),
            "{e} is exported but not declared in grass.h"
        );
    }
}

fn header_define(name: &str) -> u32 {
    let h = header();
    let line = h
        .lines()
        .find(|l| l.starts_with(&format!("#define {name} ")))
        .unwrap_or_else(|| panic!("{name} missing"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[test]
fn versions_agree() {
    let v = format!(
        "{}.{}.{}",
        header_define("GRASS_VERSION_MAJOR"),
        header_define("GRASS_VERSION_MINOR"),
        header_define("GRASS_VERSION_PATCH")
    );
    assert_eq!(v, env!("CARGO_PKG_VERSION"), "header macros vs Cargo.toml");
    let runtime = unsafe { CStr::from_ptr(grass_version()) }.to_str().unwrap();
    assert_eq!(
        runtime,
        env!("CARGO_PKG_VERSION"),
        "grass_version() vs Cargo.toml"
    );
    assert_eq!(grass_abi_version(), header_define("GRASS_ABI_VERSION"));
}

#[test]
fn every_status_has_a_string() {
    for code in [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 101, 102, 103, 200, 201,
    ] {
        let s = unsafe { CStr::from_ptr(grass_status_string(code)) }
            .to_str()
            .unwrap();
        assert!(!s.is_empty() && s != "unknown status code", "status {code}");
    }
    let s = unsafe { CStr::from_ptr(grass_status_string(-7)) }
        .to_str()
        .unwrap();
    assert_eq!(s, "unknown status code");
}

#[test]
fn panics_become_a_status_and_a_message() {
    let st = guard("grass_test_entry", || panic!("boom {}", 42));
    assert_eq!(st, grass_status::GRASS_ERROR_PANIC);
    let msg = last_error();
    assert!(
        msg.contains("grass_test_entry") && msg.contains("boom 42"),
        "{msg}"
    );
}

#[test]
fn cuda_context_without_cuda_is_a_clear_error() {
    let mut avail = -1;
    let mut reason = [0i8; 256];
    check(unsafe { grass_cuda_available(&mut avail, reason.as_mut_ptr().cast(), reason.len()) })
        .unwrap();
    let why = unsafe { CStr::from_ptr(reason.as_ptr().cast()) }
        .to_string_lossy()
        .into_owned();
    assert!(!why.is_empty());
    let mut ctx = ptr::null_mut();
    let st = unsafe { grass_context_create_cuda(0, &mut ctx) };
    if avail == 0 {
        assert_eq!(
            st,
            grass_status::GRASS_ERROR_CUDA_UNAVAILABLE,
            "{}",
            last_error()
        );
        assert!(ctx.is_null(), "nothing written on failure");
        assert!(
            last_error().starts_with("grass_context_create_cuda: "),
            "{}",
            last_error()
        );
        println!("no CUDA here ({why}); checked the unavailable path");
    } else {
        println!("CUDA present ({why}); context status {st:?}");
        unsafe { grass_context_destroy(ctx) };
    }
    let st = unsafe { grass_context_create_cuda(-1, &mut ctx) };
    assert_ne!(st, grass_status::GRASS_OK);
}

#[test]
fn config_init_and_struct_size() {
    let ctx = Ctx::cpu();
    let mut cfg: grass_projection_config = unsafe { std::mem::zeroed() };
    check(unsafe { grass_projection_config_init(&mut cfg) }).unwrap();
    assert_eq!(
        cfg.struct_size,
        std::mem::size_of::<grass_projection_config>()
    );
    assert_eq!((cfg.rank, cfg.refresh_every, cfg.power), (256, 200, 2));
    assert_eq!(
        (cfg.method, cfg.scaling, cfg.side),
        (
            GRASS_METHOD_MULTINOMIAL_NR,
            GRASS_SCALING_UNBIASED,
            GRASS_SIDE_AUTO
        )
    );
    let mut a: grass_adamw_config = unsafe { std::mem::zeroed() };
    check(unsafe { grass_adamw_config_init(&mut a) }).unwrap();
    assert_eq!(
        (a.beta1, a.beta2, a.eps, a.weight_decay, a.alpha),
        (0.9, 0.999, 1e-8, 0.0, 1.0)
    );
    let scores = [1.0f32; 8];
    let (mut idx, mut sc, mut ws) = (vec![-1i32; 4], vec![0f32; 4], vec![0u8; 1 << 16]);
    cfg.rank = 4;
    cfg.struct_size -= 8;
    let st = unsafe {
        grass_select(
            ctx.0,
            &cfg,
            8,
            0,
            ptr::null(),
            scores.as_ptr(),
            idx.as_mut_ptr(),
            sc.as_mut_ptr(),
            ws.as_mut_ptr().cast(),
            ws.len(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, grass_status::GRASS_ERROR_STRUCT_SIZE);
    assert!(last_error().contains("struct_size"), "{}", last_error());
    assert_eq!(idx, vec![-1; 4], "nothing written");
}

#[test]
fn bad_arguments_name_the_argument_and_write_nothing() {
    let ctx = Ctx::cpu();
    let (m, n, b) = (16usize, 8usize, 4usize);
    let mut rng = Rng(1);
    let x = rng.vec(b * n);
    let dy = rng.vec(b * m);
    let mut s = vec![7.0f32; m];
    let mut ws = vec![0u8; 1 << 20];
    let call = |m: i64,
                side: grass_side,
                dtype: grass_dtype,
                xp: *const f32,
                sp: *mut f32,
                wsb: usize,
                ws: &mut Vec<u8>| unsafe {
        grass_row_scores(
            ctx.0,
            m,
            n as i64,
            b as i64,
            side,
            dtype,
            xp.cast(),
            dy.as_ptr().cast(),
            sp,
            ws.as_mut_ptr().cast(),
            wsb,
            ptr::null_mut(),
        )
    };
    let expect = |got: grass_status, needle: &str, want: grass_status, s: &[f32]| {
        assert_eq!(got, want, "{needle}: {}", last_error());
        assert!(
            last_error().contains(needle),
            "message {:?} should mention {needle:?}",
            last_error()
        );
        assert!(s.iter().all(|&v| v == 7.0), "{needle}: scores were written");
    };
    let st = call(
        m as i64,
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        ptr::null(),
        s.as_mut_ptr(),
        1 << 20,
        &mut ws,
    );
    expect(st, "x is NULL", grass_status::GRASS_ERROR_NULL_POINTER, &s);
    let st = call(
        0,
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        x.as_ptr(),
        s.as_mut_ptr(),
        1 << 20,
        &mut ws,
    );
    expect(st, "m = 0", grass_status::GRASS_ERROR_INVALID_VALUE, &s);
    let st = call(
        -3,
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        x.as_ptr(),
        s.as_mut_ptr(),
        1 << 20,
        &mut ws,
    );
    expect(st, "m = -3", grass_status::GRASS_ERROR_INVALID_VALUE, &s);
    let st = call(
        m as i64,
        9,
        GRASS_DTYPE_F32,
        x.as_ptr(),
        s.as_mut_ptr(),
        1 << 20,
        &mut ws,
    );
    expect(st, "side = 9", grass_status::GRASS_ERROR_INVALID_ENUM, &s);
    let st = call(
        m as i64,
        GRASS_SIDE_ROWS,
        5,
        x.as_ptr(),
        s.as_mut_ptr(),
        1 << 20,
        &mut ws,
    );
    expect(st, "dtype = 5", grass_status::GRASS_ERROR_INVALID_ENUM, &s);
    let st = call(
        m as i64,
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        x.as_ptr(),
        s.as_mut_ptr(),
        3,
        &mut ws,
    );
    expect(
        st,
        "workspace_bytes = 3",
        grass_status::GRASS_ERROR_WORKSPACE_TOO_SMALL,
        &s,
    );
    let unaligned = unsafe { (s.as_mut_ptr() as *mut u8).add(1) as *mut f32 };
    let st = call(
        m as i64,
        GRASS_SIDE_ROWS,
        GRASS_DTYPE_F32,
        x.as_ptr(),
        unaligned,
        1 << 20,
        &mut ws,
    );
    expect(st, "scores", grass_status::GRASS_ERROR_MISALIGNED, &s);
    // rank above the projected dimension
    let mut g = vec![7.0f32; 4 * n];
    let idx = [0i32, 1, 2, 3];
    let sc = [1.0f32; 4];
    let st = unsafe {
        grass_sparse_grad(
            ctx.0,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            17,
            GRASS_DTYPE_F32,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            idx.as_ptr(),
            sc.as_ptr(),
            g.as_mut_ptr(),
            0,
            ws.as_mut_ptr().cast(),
            ws.len(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(last_error().contains("r = 17 exceeds"), "{}", last_error());
    // out-of-range and unsorted indices are caught before anything is written
    for (bad, needle) in [
        ([0i32, 1, 2, 16], "indices[3] = 16"),
        ([0i32, 2, 1, 3], "sorted"),
    ] {
        let st = unsafe {
            grass_sparse_grad(
                ctx.0,
                m as i64,
                n as i64,
                b as i64,
                GRASS_SIDE_ROWS,
                4,
                GRASS_DTYPE_F32,
                x.as_ptr().cast(),
                dy.as_ptr().cast(),
                bad.as_ptr(),
                sc.as_ptr(),
                g.as_mut_ptr(),
                0,
                ws.as_mut_ptr().cast(),
                ws.len(),
                ptr::null_mut(),
            )
        };
        assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
        assert!(last_error().contains(needle), "{}", last_error());
        assert!(g.iter().all(|&v| v == 7.0));
    }
}
