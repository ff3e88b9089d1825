//! Checkpoints that know whose they are: a blob names its handle's identity and is refused by
//! another handle (naming both), format 2 blobs (before `layer_id` was recorded) still load,
//! and `grass_checkpoint_save` / `grass_checkpoint_load` keep a whole set of handles in one
//! file that is refused whole when damaged, truncated or mismatched.

mod common;

use std::ffi::CString;
use std::ptr;

use common::*;
use grass::ffi::*;

struct Model {
    opts: Vec<*mut grass_optimizer>,
    /// (m, n) of each GRASS layer, then the dense numels
    layers: Vec<(usize, usize)>,
    dense: Vec<usize>,
    w: Vec<Vec<f32>>,
}

impl Drop for Model {
    fn drop(&mut self) {
        for &o in &self.opts {
            unsafe { grass_optimizer_destroy(o) };
        }
    }
}

const B: usize = 5;

/// Two GRASS layers of the same shape (layer ids 0 and 1) and a dense parameter.
fn model(ctx: &Ctx, rank: i64) -> Model {
    let layers = vec![(16usize, 24usize), (16, 24)];
    let dense = vec![10usize];
    let mut opts = Vec::new();
    let mut w = Vec::new();
    for (l, &(m, n)) in layers.iter().enumerate() {
        let mut pc = grass_projection_config::defaults();
        pc.rank = rank;
        pc.layer_id = l as u32;
        pc.refresh_every = 2;
        let o = sparse_optimizer(
            ctx,
            &pc,
            &grass_adamw_config::defaults(),
            m as i64,
            n as i64,
            B as i64,
        )
        .unwrap();
        opts.push(o);
        w.push(Rng(l as u64 + 1).vec(m * n));
    }
    for &numel in &dense {
        let mut o = ptr::null_mut();
        check(unsafe {
            grass_optimizer_create_dense(
                ctx.0,
                &grass_adamw_config::defaults(),
                numel as i64,
                GRASS_DTYPE_F32,
                GRASS_DTYPE_F32,
                &mut o,
            )
        })
        .unwrap();
        opts.push(o);
        w.push(Rng(99).vec(numel));
    }
    Model {
        opts,
        layers,
        dense,
        w,
    }
}

/// `steps` training steps from data seeded by `seed0 + step`.
fn train(md: &mut Model, seed0: u64, steps: u64) {
    for s in 0..steps {
        for (l, &(m, n)) in md.layers.iter().enumerate() {
            let p = problem(m, n, B, seed0 + s * 7 + l as u64);
            check(unsafe {
                grass_optimizer_backward(
                    md.opts[l],
                    B as i64,
                    p.x.as_ptr().cast(),
                    p.dy.as_ptr().cast(),
                    ptr::null(),
                    ptr::null_mut(),
                )
            })
            .unwrap();
            check(unsafe {
                grass_optimizer_step_scaled(
                    md.opts[l],
                    md.w[l].as_mut_ptr().cast(),
                    ptr::null(),
                    1e-2,
                    0.5,
                    ptr::null_mut(),
                )
            })
            .unwrap();
        }
        for (j, &numel) in md.dense.iter().enumerate() {
            let i = md.layers.len() + j;
            let g = Rng(seed0 + s).vec(numel);
            check(unsafe {
                grass_optimizer_step(
                    md.opts[i],
                    md.w[i].as_mut_ptr().cast(),
                    g.as_ptr().cast(),
                    1e-2,
                    ptr::null_mut(),
                )
            })
            .unwrap();
        }
    }
}

fn export(o: *const grass_optimizer) -> Vec<u8> {
    let mut size = 0;
    check(unsafe { grass_optimizer_state_size(o, &mut size) }).unwrap();
    let mut blob = vec![0u8; size];
    check(unsafe {
        grass_optimizer_export_state(o, blob.as_mut_ptr().cast(), size, ptr::null_mut())
    })
    .unwrap();
    blob
}

fn tmp(name: &str) -> (std::path::PathBuf, CString) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("checkpoint_set_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let c = CString::new(p.to_str().unwrap()).unwrap();
    (p, c)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A blob of layer 0 is refused by layer 1 (same shape), naming both identities; it is
/// accepted by a fresh handle of layer 0.
#[test]
fn a_blob_is_refused_by_another_layer_of_the_same_shape() {
    let ctx = Ctx::cpu();
    let mut md = model(&ctx, 8);
    train(&mut md, 1, 3);
    let blob0 = export(md.opts[0]);
    let before = export(md.opts[1]);
    let st = unsafe {
        grass_optimizer_import_state(
            md.opts[1],
            blob0.as_ptr().cast(),
            blob0.len(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    let e = last_error();
    assert!(
        e.contains("layer_id 0")
            && e.contains("layer_id 1")
            && e.contains("16x24")
            && e.contains("rank 8"),
        "{e}"
    );
    assert_eq!(export(md.opts[1]), before, "nothing changed");
    // the dense blob into a GRASS layer: kinds named
    let dense_blob = export(md.opts[2]);
    let st = unsafe {
        grass_optimizer_import_state(
            md.opts[0],
            dense_blob.as_ptr().cast(),
            dense_blob.len(),
            ptr::null_mut(),
        )
    };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    assert!(
        last_error().contains("dense parameter of 10 elements")
            && last_error().contains("GRASS layer 16x24"),
        "{}",
        last_error()
    );
    let fresh = model(&ctx, 8);
    check(unsafe {
        grass_optimizer_import_state(
            fresh.opts[0],
            blob0.as_ptr().cast(),
            blob0.len(),
            ptr::null_mut(),
        )
    })
    .unwrap();
    assert_eq!(export(fresh.opts[0]), blob0);
}

/// A format 2 blob (the ABI 3 layout: 16 header fields, no layer id) still imports.
#[test]
fn a_format_2_blob_still_loads() {
    let ctx = Ctx::cpu();
    let mut md = model(&ctx, 8);
    train(&mut md, 2, 3);
    let v3 = export(md.opts[1]);
    // rebuild it as format 2: drop header field 16 (layer_id), format 2, new checksum
    let mut v2 = Vec::new();
    v2.extend_from_slice(&v3[..8]);
    v2.extend_from_slice(&2u64.to_le_bytes());
    v2.extend_from_slice(&v3[16..16 * 8]);
    v2.extend_from_slice(&v3[17 * 8..v3.len() - 8]);
    let sum = fnv1a(&v2);
    v2.extend_from_slice(&sum.to_le_bytes());
    let fresh = model(&ctx, 8);
    check(unsafe {
        grass_optimizer_import_state(fresh.opts[1], v2.as_ptr().cast(), v2.len(), ptr::null_mut())
    })
    .unwrap();
    assert_eq!(
        export(fresh.opts[1]),
        v3,
        "the same state as the format 3 blob"
    );
    // an unknown format is refused naming the ones read
    let mut v9 = v3.clone();
    v9[8] = 9;
    let st = unsafe {
        grass_optimizer_import_state(fresh.opts[1], v9.as_ptr().cast(), v9.len(), ptr::null_mut())
    };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    assert!(last_error().contains("format = 9"), "{}", last_error());
}

/// Save, keep training, load into fresh handles, train the same steps: bit-identical weights.
/// Damaged, truncated, reordered or miscounted files are refused and change no handle.
#[test]
fn a_set_of_handles_round_trips_through_one_file() {
    let ctx = Ctx::cpu();
    let mut md = model(&ctx, 0);
    train(&mut md, 3, 3);
    let (path, cpath) = tmp("set.grass");
    check(unsafe {
        grass_checkpoint_save(
            cpath.as_ptr(),
            md.opts.as_ptr(),
            md.opts.len(),
            ptr::null_mut(),
        )
    })
    .unwrap();
    let w_mid = md.w.clone();
    train(&mut md, 50, 4);

    let mut resumed = model(&ctx, 0);
    let blank: Vec<Vec<u8>> = resumed.opts.iter().map(|&o| export(o)).collect();
    let file = std::fs::read(&path).unwrap();
    let (bad_path, bad_c) = tmp("bad.grass");
    let refuse =
        |bytes: &[u8], opts: &[*mut grass_optimizer], count: usize, what: &str, needle: &str| {
            std::fs::write(&bad_path, bytes).unwrap();
            let st = unsafe {
                grass_checkpoint_load(bad_c.as_ptr(), opts.as_ptr(), count, ptr::null_mut())
            };
            assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT, "{what}");
            assert!(last_error().contains(needle), "{what}: {}", last_error());
        };
    let n = resumed.opts.len();
    let mut flipped = file.clone();
    let last_state = file.len() - 40; // inside the last handle's state
    flipped[last_state] ^= 0x10;
    refuse(&flipped, &resumed.opts, n, "a flipped bit", "checksum");
    refuse(
        &file[..file.len() - 1],
        &resumed.opts,
        n,
        "truncated by a byte",
        "truncated",
    );
    refuse(
        &file[..30],
        &resumed.opts,
        n,
        "truncated in the header",
        "truncated",
    );
    refuse(
        b"not a checkpoint",
        &resumed.opts,
        n,
        "another file",
        "not a grass checkpoint",
    );
    refuse(
        &file,
        &resumed.opts,
        n - 1,
        "count",
        "holds 3 optimizer states but count = 2",
    );
    let swapped = [resumed.opts[1], resumed.opts[0], resumed.opts[2]];
    refuse(&file, &swapped, n, "two layers swapped", "optimizers[0]");
    assert!(
        last_error().contains("layer_id 1") && last_error().contains("layer_id 0"),
        "{}",
        last_error()
    );
    // a mismatch in the last handle only: nothing of the first two is restored either
    let other_dense = {
        let mut o = ptr::null_mut();
        check(unsafe {
            grass_optimizer_create_dense(
                ctx.0,
                &grass_adamw_config::defaults(),
                11,
                GRASS_DTYPE_F32,
                GRASS_DTYPE_F32,
                &mut o,
            )
        })
        .unwrap();
        o
    };
    let mixed = [resumed.opts[0], resumed.opts[1], other_dense];
    refuse(&file, &mixed, n, "the last handle differs", "optimizers[2]");
    unsafe { grass_optimizer_destroy(other_dense) };
    let missing = CString::new(path.with_file_name("missing.grass").to_str().unwrap()).unwrap();
    let st = unsafe {
        grass_checkpoint_load(missing.as_ptr(), resumed.opts.as_ptr(), n, ptr::null_mut())
    };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    assert!(last_error().contains("missing.grass"), "{}", last_error());
    let now: Vec<Vec<u8>> = resumed.opts.iter().map(|&o| export(o)).collect();
    assert_eq!(now, blank, "refused loads changed no handle");

    check(unsafe {
        grass_checkpoint_load(cpath.as_ptr(), resumed.opts.as_ptr(), n, ptr::null_mut())
    })
    .unwrap();
    resumed.w = w_mid;
    train(&mut resumed, 50, 4);
    for (a, b) in md.w.iter().zip(&resumed.w) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "resumed run differs"
        );
    }
    // no temporary file is left beside the checkpoint
    let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Dense parameters of one size are told apart by the layer id set on them; a GRASS layer's is
/// its config's and cannot be changed.
#[test]
fn dense_parameters_of_one_size_differ_by_layer_id() {
    let ctx = Ctx::cpu();
    let dense = |id: u32| {
        let mut o = ptr::null_mut();
        check(unsafe {
            grass_optimizer_create_dense(
                ctx.0,
                &grass_adamw_config::defaults(),
                12,
                GRASS_DTYPE_F32,
                GRASS_DTYPE_F32,
                &mut o,
            )
        })
        .unwrap();
        check(unsafe { grass_optimizer_set_layer_id(o, id) }).unwrap();
        o
    };
    let (a, b, a2) = (dense(7), dense(8), dense(7));
    let mut w = Rng(1).vec(12);
    let g = Rng(2).vec(12);
    check(unsafe {
        grass_optimizer_step(
            a,
            w.as_mut_ptr().cast(),
            g.as_ptr().cast(),
            1e-3,
            ptr::null_mut(),
        )
    })
    .unwrap();
    let blob = export(a);
    let before = export(b);
    let st = unsafe {
        grass_optimizer_import_state(b, blob.as_ptr().cast(), blob.len(), ptr::null_mut())
    };
    assert_eq!(st, grass_status::GRASS_ERROR_BAD_CHECKPOINT);
    assert!(
        last_error().contains("layer_id 7") && last_error().contains("layer_id 8"),
        "{}",
        last_error()
    );
    assert_eq!(export(b), before);
    check(unsafe {
        grass_optimizer_import_state(a2, blob.as_ptr().cast(), blob.len(), ptr::null_mut())
    })
    .unwrap();
    assert_eq!(export(a2), blob);
    let md = model(&ctx, 8);
    let st = unsafe { grass_optimizer_set_layer_id(md.opts[1], 9) };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_STATE);
    assert!(
        last_error().contains("layer_id = 9 but this GRASS layer's is 1"),
        "{}",
        last_error()
    );
    check(unsafe { grass_optimizer_set_layer_id(md.opts[1], 1) }).unwrap();
    unsafe {
        grass_optimizer_destroy(a);
        grass_optimizer_destroy(b);
        grass_optimizer_destroy(a2);
    }
}

#[test]
fn bad_arguments_are_named() {
    let ctx = Ctx::cpu();
    let md = model(&ctx, 8);
    let (_, cpath) = tmp("args.grass");
    let n = md.opts.len();
    let same = [md.opts[0], md.opts[0]];
    let cases: [(&dyn Fn() -> grass_status, &str, grass_status); 4] = [
        (
            &|| unsafe { grass_checkpoint_save(ptr::null(), md.opts.as_ptr(), n, ptr::null_mut()) },
            "path is NULL",
            grass_status::GRASS_ERROR_NULL_POINTER,
        ),
        (
            &|| unsafe { grass_checkpoint_save(cpath.as_ptr(), ptr::null(), n, ptr::null_mut()) },
            "optimizers is NULL",
            grass_status::GRASS_ERROR_NULL_POINTER,
        ),
        (
            &|| unsafe {
                grass_checkpoint_save(cpath.as_ptr(), md.opts.as_ptr(), 0, ptr::null_mut())
            },
            "count = 0",
            grass_status::GRASS_ERROR_INVALID_VALUE,
        ),
        (
            &|| unsafe { grass_checkpoint_load(cpath.as_ptr(), same.as_ptr(), 2, ptr::null_mut()) },
            "optimizers[0] and optimizers[1] are the same handle",
            grass_status::GRASS_ERROR_INVALID_VALUE,
        ),
    ];
    for (call, needle, want) in cases {
        assert_eq!(call(), want, "{needle}");
        assert!(last_error().contains(needle), "{needle}: {}", last_error());
    }
    let with_null = [md.opts[0], ptr::null_mut()];
    let st =
        unsafe { grass_checkpoint_save(cpath.as_ptr(), with_null.as_ptr(), 2, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_NULL_POINTER);
    assert!(
        last_error().contains("optimizers[1] is NULL"),
        "{}",
        last_error()
    );
    let dir = CString::new("/nonexistent-dir/x.grass").unwrap();
    let st = unsafe { grass_checkpoint_save(dir.as_ptr(), md.opts.as_ptr(), n, ptr::null_mut()) };
    assert_eq!(st, grass_status::GRASS_ERROR_INVALID_VALUE);
    assert!(
        last_error().contains("/nonexistent-dir/x.grass"),
        "{}",
        last_error()
    );
}
