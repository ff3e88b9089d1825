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

/// The header build.rs generated for this build (it never writes into the source tree).
const GENERATED_HEADER: &str = include_str!(concat!(env!("OUT_DIR"), "/grass.h"));

/// The committed include/grass.h is exactly what cbindgen generates from src/ffi, so a stale
/// header fails here, on every machine. `GRASS_WRITE_HEADER=1` (scripts/regen_header.sh)
/// writes the generated header over the committed one instead of failing.
#[test]
fn committed_header_matches_cbindgen() {
    let path = root().join("include/grass.h");
    assert!(
        GENERATED_HEADER.contains("#define GRASS_ABI_VERSION"),
        "build.rs did not generate a header: {}",
        GENERATED_HEADER.lines().next().unwrap_or("")
    );
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed == GENERATED_HEADER {
        return;
    }
    if std::env::var("GRASS_WRITE_HEADER").as_deref() == Ok("1") {
        std::fs::write(&path, GENERATED_HEADER).unwrap();
        println!("wrote {}", path.display());
        return;
    }
    let first = committed
        .lines()
        .zip(GENERATED_HEADER.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| {
            committed
                .lines()
                .count()
                .min(GENERATED_HEADER.lines().count())
        });
    panic!(
        "include/grass.h differs from the header cbindgen generates from src/ffi (first at line {}:\n  committed: {:?}\n  generated: {:?}); run scripts/regen_header.sh and commit it",
        first + 1,
        committed.lines().nth(first).unwrap_or("<end>"),
        GENERATED_HEADER.lines().nth(first).unwrap_or("<end>")
    );
}

fn header() -> String {
    std::fs::read_to_string(root().join("include/grass.h")).unwrap()
}

/// The cdylib built with this test binary: `cargo test` writes it next to the binary
/// (target/<profile>/deps) and copies it to target/<profile> only on `cargo build`, so the copy
/// there can be stale.
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let fresh = deps.join("libgrass.so");
    if fresh.exists() {
        fresh
    } else {
        deps.parent().unwrap().join("libgrass.so")
    }
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

/// `(name, value)` of every enumerator of `enum grass_status` in the header, which cbindgen
/// generates from the Rust enum: the list of statuses is the enum itself.
fn header_statuses() -> Vec<(String, i32)> {
    let h = header();
    let start = h
        .find("enum grass_status")
        .expect("enum grass_status in grass.h");
    let body = &h[start..];
    let body = &body[body.find('{').unwrap() + 1..body.find('}').unwrap()];
    body.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GRASS_"))
        .map(|l| {
            let (name, value) = l.trim_end_matches(',').split_once(" = ").unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn every_status_has_a_string() {
    let statuses = header_statuses();
    assert!(statuses.len() >= 17, "parsed only {statuses:?}");
    let text = |code: i32| {
        unsafe { CStr::from_ptr(grass_status_string(code)) }
            .to_str()
            .unwrap()
            .to_string()
    };
    let mut seen = std::collections::HashSet::new();
    for (name, code) in &statuses {
        let s = text(*code);
        assert!(
            !s.is_empty() && s != "unknown status code",
            "{name} = {code} has no string"
        );
        assert!(
            seen.insert(s.clone()),
            "{name} shares its string {s:?} with another status"
        );
    }
    // and no code outside the enum has one
    for code in -300..=300 {
        if !statuses.iter().any(|(_, c)| *c == code) {
            assert_eq!(
                text(code),
                "unknown status code",
                "status {code} is not in the enum"
            );
        }
    }
    assert_eq!(text(i32::MIN), "unknown status code");
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
    assert_eq!((cfg.rank, cfg.refresh_every, cfg.power), (0, 50, 2));
    assert_eq!(
        (cfg.method, cfg.scaling, cfg.side),
        (GRASS_METHOD_UNIFORM_NR, GRASS_SCALING_NONE, GRASS_SIDE_COLS)
    );
    let mut a: grass_adamw_config = unsafe { std::mem::zeroed() };
    check(unsafe {
        grass_adamw_config_init_sized(&mut a, std::mem::size_of::<grass_adamw_config>())
    })
    .unwrap();
    assert_eq!(
        (a.beta1, a.beta2, a.eps, a.weight_decay, a.alpha),
        (0.9, 0.999, 1e-8, 0.0, 0.177)
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

/// Fewest tokens a CPU op's chunk holds: all `b` when `b` tokens of at most `per_token` bytes
/// fit its 48 MiB of token scratch, else as many as do (at least one).
fn chunk_floor(b: i64, per_token: u128) -> u128 {
    (b as u128).min((48u128 << 20) / per_token.max(1)).max(1)
}

/// Every workspace query over extreme sizes (each dimension 1, 2^16 or 2^31 - 1) either
/// answers at least the bytes its largest buffer needs, or fails with INVALID_VALUE naming the
/// 2^63 - 1 limit and writes nothing: never a wrapped, too small answer.
#[test]
fn workspace_queries_never_wrap() {
    let ctx = Ctx::cpu();
    const BIG: i64 = i32::MAX as i64;
    let dims = [1i64, 1 << 16, BIG];
    let mut answered = 0;
    let mut refused = 0;
    let mut judge = |what: String, st: grass_status, bytes: usize, floor: u128| {
        const UNTOUCHED: usize = 0xdead_beef;
        if st == grass_status::GRASS_OK {
            assert!(
                bytes as u128 >= floor,
                "{what}: answered {bytes} bytes, below the {floor} its buffers need"
            );
            answered += 1;
        } else {
            assert_eq!(
                st,
                grass_status::GRASS_ERROR_INVALID_VALUE,
                "{what}: {}",
                last_error()
            );
            assert!(
                last_error().contains("2^63 - 1"),
                "{what}: {}",
                last_error()
            );
            assert_eq!(bytes, UNTOUCHED, "{what}: written on failure");
            refused += 1;
        }
    };
    for &m in &dims {
        for &n in &dims {
            for &b in &dims {
                for side in [GRASS_SIDE_ROWS, GRASS_SIDE_COLS] {
                    let (d, k) = if side == GRASS_SIDE_ROWS {
                        (m, n)
                    } else {
                        (n, m)
                    };
                    for dtype in [GRASS_DTYPE_F32, GRASS_DTYPE_BF16] {
                        let mut bytes = 0xdead_beefusize;
                        let st = unsafe {
                            grass_scores_workspace_size(ctx.0, m, n, b, side, dtype, &mut bytes)
                        };
                        // bf16 converts the kept operand to f32, a chunk of tokens at a time:
                        // tc tokens of k, with tc·(k·4 + c·4) ≤ 48 MiB (or tc = 1) and c·4 ≤ d
                        let floor = if dtype == GRASS_DTYPE_BF16 {
                            chunk_floor(b, k as u128 * 4 + d as u128) * k as u128 * 4
                        } else {
                            0
                        };
                        judge(
                            format!("scores({m}, {n}, {b}, {side}, {dtype})"),
                            st,
                            bytes,
                            floor,
                        );
                        for &r in &dims {
                            if r > d {
                                continue;
                            }
                            let mut bytes = 0xdead_beefusize;
                            let st = unsafe {
                                grass_sparse_grad_workspace_size(
                                    ctx.0, m, n, b, side, r, dtype, &mut bytes,
                                )
                            };
                            // the gathered tc x r block of A as f32, tc tokens per chunk with
                            // tc·(r·4 + k·4 when converted) ≤ 48 MiB (or tc = 1)
                            let conv = if dtype == GRASS_DTYPE_BF16 {
                                k as u128 * 4
                            } else {
                                0
                            };
                            let floor = chunk_floor(b, conv + r as u128 * 4) * r as u128 * 4;
                            judge(
                                format!("sparse_grad({m}, {n}, {b}, {side}, {r}, {dtype})"),
                                st,
                                bytes,
                                floor,
                            );
                            let mut bytes = 0xdead_beefusize;
                            let st = unsafe {
                                grass_sparse_adamw_workspace_size(ctx.0, m, n, side, r, &mut bytes)
                            };
                            judge(format!("sparse_adamw({m}, {n}, {side}, {r})"), st, bytes, 0);
                        }
                    }
                }
            }
            // select: d scores, rank r <= d
            let (d, r) = (m, n);
            if r <= d {
                let mut bytes = 0xdead_beefusize;
                let st = unsafe { grass_select_workspace_size(ctx.0, d, r, &mut bytes) };
                judge(format!("select({d}, {r})"), st, bytes, d as u128 * 8);
            }
            let mut bytes = 0xdead_beefusize;
            let st = unsafe { grass_adamw_workspace_size(ctx.0, m, &mut bytes) };
            judge(format!("adamw({m})"), st, bytes, 0);
        }
    }
    // the case that used to wrap to 192 bytes
    let mut bytes = 0xdead_beefusize;
    let st = unsafe {
        grass_scores_workspace_size(
            ctx.0,
            BIG,
            BIG,
            BIG,
            GRASS_SIDE_COLS,
            GRASS_DTYPE_BF16,
            &mut bytes,
        )
    };
    assert_eq!(
        st,
        grass_status::GRASS_ERROR_INVALID_VALUE,
        "{}",
        last_error()
    );
    assert_eq!(bytes, 0xdead_beef);
    // one past the cap on a single dimension
    let st = unsafe {
        grass_scores_workspace_size(
            ctx.0,
            BIG + 1,
            4,
            4,
            GRASS_SIDE_ROWS,
            GRASS_DTYPE_F32,
            &mut bytes,
        )
    };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(
        last_error().contains("m = 2147483648 exceeds 2^31 - 1"),
        "{}",
        last_error()
    );
    assert!(
        answered > 0 && refused > 0,
        "answered {answered}, refused {refused}"
    );
}

/// The host `lr` is the caller's argument: NaN, infinite or negative is rejected with
/// INVALID_VALUE naming `lr` and nothing is written. `*lr_scale` lives in context memory and
/// is read where the step runs: a bad product skips the step with SKIPPED_NONFINITE.
#[test]
fn host_lr_is_rejected_and_lr_scale_skips() {
    let ctx = Ctx::cpu();
    let mut cfg: grass_adamw_config = unsafe { std::mem::zeroed() };
    check(unsafe {
        grass_adamw_config_init_sized(&mut cfg, std::mem::size_of::<grass_adamw_config>())
    })
    .unwrap();
    let (m, n, r) = (4usize, 3usize, 2usize);
    let mut w = vec![1.0f32; m * n];
    let idx = [0i32, 2];
    let sc = [1.0f32; 2];
    let g = vec![0.5f32; r * n];
    let (mut ms, mut vs) = (vec![0f32; r * n], vec![0f32; r * n]);
    let mut steps = [0i32; 2];
    let call = |lr: f32,
                lr_scale: *const f32,
                w: &mut Vec<f32>,
                ms: &mut Vec<f32>,
                vs: &mut Vec<f32>,
                steps: &mut [i32; 2],
                skipped: &mut i32| unsafe {
        grass_sparse_adamw_step(
            ctx.0,
            &cfg,
            m as i64,
            n as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            w.as_mut_ptr().cast(),
            idx.as_ptr(),
            sc.as_ptr(),
            g.as_ptr(),
            ms.as_mut_ptr().cast(),
            vs.as_mut_ptr().cast(),
            steps.as_mut_ptr(),
            lr,
            lr_scale,
            skipped,
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    };
    for lr in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -1e-3] {
        let mut skipped = -5;
        let st = call(
            lr,
            ptr::null(),
            &mut w,
            &mut ms,
            &mut vs,
            &mut steps,
            &mut skipped,
        );
        assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE, "lr = {lr}");
        assert!(last_error().contains("lr = "), "{}", last_error());
        assert_eq!(skipped, -5, "lr = {lr}: *skipped written on failure");
        assert!(w.iter().all(|&v| v == 1.0) && steps == [0, 0]);
        let mut dw = [1.0f32; 3];
        let (mut dm, mut dv, mut dstep) = ([0f32; 3], [0f32; 3], 0i32);
        let st = unsafe {
            grass_adamw_step(
                ctx.0,
                &cfg,
                3,
                GRASS_DTYPE_F32,
                dw.as_mut_ptr().cast(),
                GRASS_DTYPE_F32,
                g.as_ptr().cast(),
                dm.as_mut_ptr().cast(),
                dv.as_mut_ptr().cast(),
                &mut dstep,
                lr,
                ptr::null(),
                &mut skipped,
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        };
        assert_eq!(
            st,
            grass_status::GRASS_ERROR_INVALID_VALUE,
            "dense, lr = {lr}"
        );
        assert!(last_error().contains("lr = "), "{}", last_error());
        assert!(dw == [1.0; 3] && dstep == 0 && skipped == -5);
    }
    for scale in [f32::NAN, f32::INFINITY, -1.0] {
        let mut skipped = -5;
        let st = call(
            1e-2,
            &scale,
            &mut w,
            &mut ms,
            &mut vs,
            &mut steps,
            &mut skipped,
        );
        assert_eq!(st, grass_status::GRASS_OK, "{}", last_error());
        assert_eq!(skipped, GRASS_STEP_SKIPPED_NONFINITE, "lr_scale = {scale}");
        assert!(w.iter().all(|&v| v == 1.0) && steps == [0, 0]);
    }
    let mut skipped = -5;
    check(call(
        1e-2,
        &0.5f32,
        &mut w,
        &mut ms,
        &mut vs,
        &mut steps,
        &mut skipped,
    ))
    .unwrap();
    assert_eq!((skipped, steps), (GRASS_STEP_APPLIED, [1, 1]));
    assert!(w[0] < 1.0, "the step applied");
}

/// A CPU state refresh rejects negative step counts (the step would reject them next) and
/// unsorted or negative indices, naming the entry with a range a reader can use, and writes
/// nothing.
#[test]
fn state_refresh_rejects_negative_counts_and_bad_indices() {
    let ctx = Ctx::cpu();
    let mut cfg: grass_adamw_config = unsafe { std::mem::zeroed() };
    check(unsafe {
        grass_adamw_config_init_sized(&mut cfg, std::mem::size_of::<grass_adamw_config>())
    })
    .unwrap();
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let (r, k) = (3usize, 2usize);
    let call = |old: &[i32], new: &[i32], steps: &mut [i32], ms: &mut [f32]| unsafe {
        let mut vs = vec![0.25f32; r * k];
        grass_state_refresh(
            ctx.0,
            cfg.refresh_mode,
            cfg.state_dtype,
            r as i64,
            k as i64,
            old.as_ptr(),
            new.as_ptr(),
            ms.as_mut_ptr().cast(),
            vs.as_mut_ptr().cast(),
            steps.as_mut_ptr(),
            ptr::null_mut(),
            0,
            ptr::null_mut(),
        )
    };
    // old indices, new indices, row step counts, the expected message
    type Case<'a> = (&'a [i32], &'a [i32], [i32; 3], &'a str);
    let cases: [Case; 4] = [
        (
            &[1, 2, 5],
            &[2, 5, 7],
            [4, -1, 4],
            "row_steps[1] = -1 is negative",
        ),
        (
            &[1, 2, 5],
            &[2, -5, 7],
            [4, 4, 4],
            "new_indices[1] = -5 is negative",
        ),
        (
            &[1, 5, 2],
            &[2, 5, 7],
            [4, 4, 4],
            "old_indices must be sorted ascending",
        ),
        (
            &[1, 2, 5],
            &[2, 9, 7],
            [4, 4, 4],
            "new_indices must be sorted ascending",
        ),
    ];
    for (old, new, steps, needle) in cases {
        let mut s = steps;
        let mut ms = vec![0.5f32; r * k];
        let st = call(old, new, &mut s, &mut ms);
        assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE, "{needle}");
        let msg = last_error();
        assert!(msg.contains(needle), "{msg:?} should say {needle:?}");
        assert!(!msg.contains("18446744073709551615"), "{msg}");
        assert_eq!(s, steps, "{needle}: counts written");
        assert!(ms.iter().all(|&v| v == 0.5), "{needle}: M written");
    }
    let mut s = [4, 6, 8];
    let mut ms = vec![0.5f32; r * k];
    check(call(&[1, 2, 5], &[2, 5, 7], &mut s, &mut ms)).unwrap();
    assert_eq!(
        s,
        [6, 8, 0],
        "rows 2 and 5 carry their counts, 7 starts at 0"
    );
}

/// A NaN or infinite scale with a finite gradient would write non-finite values into W: a CPU
/// context rejects it, naming the entry, and writes nothing.
#[test]
fn sparse_step_rejects_non_finite_scales() {
    let ctx = Ctx::cpu();
    let mut cfg: grass_adamw_config = unsafe { std::mem::zeroed() };
    check(unsafe {
        grass_adamw_config_init_sized(&mut cfg, std::mem::size_of::<grass_adamw_config>())
    })
    .unwrap();
    let (m, n) = (4usize, 3usize);
    let idx = [0i32, 2];
    let g = [0.5f32; 6];
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w = [1.0f32; 12];
        let (mut ms, mut vs, mut steps, mut skipped) = ([0f32; 6], [0f32; 6], [0i32; 2], -5);
        let sc = [1.0f32, bad];
        let st = unsafe {
            grass_sparse_adamw_step(
                ctx.0,
                &cfg,
                m as i64,
                n as i64,
                GRASS_SIDE_ROWS,
                2,
                GRASS_DTYPE_F32,
                w.as_mut_ptr().cast(),
                idx.as_ptr(),
                sc.as_ptr(),
                g.as_ptr(),
                ms.as_mut_ptr().cast(),
                vs.as_mut_ptr().cast(),
                steps.as_mut_ptr(),
                1e-2,
                ptr::null(),
                &mut skipped,
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE, "scale {bad}");
        assert!(last_error().contains("scales[1] = "), "{}", last_error());
        assert!(w == [1.0; 12] && ms == [0.0; 6] && steps == [0, 0] && skipped == -5);
    }
}
