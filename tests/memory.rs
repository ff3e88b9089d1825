//! Memory at scale on a CPU context: every op's workspace within 64 MiB at the reference shapes
//! (and the chunked ops still exact), handles that hold their state and nothing more, one
//! shared workspace per context (also across threads), a selection pointer that stays put, and
//! a memory plan that adds up to what the handles really hold.

mod common;

use std::ptr;

use common::*;
use grass::ffi::*;
use half::bf16;

const MIB: usize = 1 << 20;
const SHAPES: [(i64, i64); 5] = [
    (4096, 4096),
    (11008, 4096),
    (4096, 11008),
    (13824, 5120),
    (5120, 13824),
];
const SIDES: [grass_side; 3] = [GRASS_SIDE_ROWS, GRASS_SIDE_COLS, GRASS_SIDE_AUTO];
const DTYPES: [grass_dtype; 3] = [GRASS_DTYPE_F32, GRASS_DTYPE_BF16, GRASS_DTYPE_F16];

fn adamw() -> grass_adamw_config {
    let mut c = grass_adamw_config::defaults();
    c.weight_decay = 0.0;
    c
}

fn resolve(m: i64, n: i64, side: grass_side) -> (usize, usize) {
    let (mut d, mut k) = (0i64, 0i64);
    check(unsafe { grass_resolve_side(m, n, side, ptr::null_mut(), &mut d, &mut k) }).unwrap();
    (d as usize, k as usize)
}

#[test]
fn every_op_workspace_is_at_most_64_mib_at_the_design_shapes() {
    let ctx = Ctx::cpu();
    let b = 8192;
    let mut worst = (0usize, String::new());
    let mut note = |bytes: usize, what: String| {
        assert!(bytes <= 64 * MIB, "{what}: {bytes} bytes");
        if bytes > worst.0 {
            worst = (bytes, what);
        }
    };
    for (m, n) in SHAPES {
        for side in SIDES {
            let (d, k) = resolve(m, n, side);
            for dt in DTYPES {
                let mut ws = 0usize;
                check(unsafe { grass_scores_workspace_size(ctx.0, m, n, b, side, dt, &mut ws) })
                    .unwrap();
                note(ws, format!("row scores {m}x{n} side {side} dtype {dt}"));
                for r in [256i64, 1024] {
                    check(unsafe {
                        grass_sparse_grad_workspace_size(ctx.0, m, n, b, side, r, dt, &mut ws)
                    })
                    .unwrap();
                    note(
                        ws,
                        format!("sparse grad {m}x{n} side {side} r {r} dtype {dt}"),
                    );
                }
            }
            for r in [256i64, 1024] {
                let mut ws = 0usize;
                check(unsafe { grass_select_workspace_size(ctx.0, d as i64, r, &mut ws) }).unwrap();
                note(ws, format!("select d {d} r {r}"));
                check(unsafe { grass_sparse_adamw_workspace_size(ctx.0, m, n, side, r, &mut ws) })
                    .unwrap();
                note(ws, format!("sparse adamw {m}x{n} r {r}"));
                let a = adamw();
                check(unsafe {
                    grass_state_refresh_workspace_size(
                        ctx.0,
                        a.refresh_mode,
                        a.state_dtype,
                        r,
                        k as i64,
                        &mut ws,
                    )
                })
                .unwrap();
                note(ws, format!("state refresh r {r} k {k}"));
            }
        }
        let mut ws = 0usize;
        check(unsafe { grass_adamw_workspace_size(ctx.0, m * n, &mut ws) }).unwrap();
        note(ws, format!("adamw {}", m * n));
    }
    println!(
        "largest workspace: {} ({:.1} MiB)",
        worst.1,
        worst.0 as f64 / MIB as f64
    );
}

fn to_bf16(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}

fn from_bf16(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}

/// A layer whose bf16 activations do not fit one token chunk (8192 tokens x 4096 features
/// converted to f32 is 128 MiB): the token-chunked row scores and sparse gradient must still
/// equal the f64 reference, and the workspace stay within 64 MiB.
#[test]
fn chunked_scores_and_sparse_gradient_match_the_reference() {
    let ctx = Ctx::cpu();
    let (m, n, b, r) = (48usize, 4096usize, 8192usize, 6usize);
    let mut rng = Rng(7);
    let x = to_bf16(&rng.vec(b * n));
    let dy = to_bf16(&rng.vec(b * m));
    let g = full_grad(&from_bf16(&x), &from_bf16(&dy), b, m, n);
    let want: Vec<f64> = (0..m)
        .map(|i| {
            g[i * n..(i + 1) * n]
                .iter()
                .map(|v| v * v)
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    let side = GRASS_SIDE_ROWS;
    let (mi, ni, bi) = (m as i64, n as i64, b as i64);
    let mut ws = 0usize;
    check(unsafe {
        grass_scores_workspace_size(ctx.0, mi, ni, bi, side, GRASS_DTYPE_BF16, &mut ws)
    })
    .unwrap();
    assert!(ws <= 64 * MIB && ws < b * n * 4, "scores workspace {ws}");
    let mut w = vec![0u8; ws];
    let mut s = vec![f32::NAN; m];
    check(unsafe {
        grass_row_scores(
            ctx.0,
            mi,
            ni,
            bi,
            side,
            GRASS_DTYPE_BF16,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            s.as_mut_ptr(),
            w.as_mut_ptr().cast(),
            ws,
            ptr::null_mut(),
        )
    })
    .unwrap();
    compare("chunked row scores", &want, &s, 1e-4).unwrap();

    let idx: Vec<i32> = vec![0, 5, 17, 17, 30, 47];
    let sc: Vec<f32> = vec![1.0, 0.5, 2.0, -1.0, 0.25, 3.0];
    check(unsafe {
        grass_sparse_grad_workspace_size(
            ctx.0,
            mi,
            ni,
            bi,
            side,
            r as i64,
            GRASS_DTYPE_BF16,
            &mut ws,
        )
    })
    .unwrap();
    assert!(
        ws <= 64 * MIB && ws < b * n * 4,
        "sparse grad workspace {ws}"
    );
    let mut w = vec![0u8; ws];
    // accumulate onto a known g: the first chunk must add, not overwrite
    let base: Vec<f32> = rng.vec(r * n);
    let mut out = base.clone();
    check(unsafe {
        grass_sparse_grad(
            ctx.0,
            mi,
            ni,
            bi,
            side,
            r as i64,
            GRASS_DTYPE_BF16,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            idx.as_ptr(),
            sc.as_ptr(),
            out.as_mut_ptr(),
            1,
            w.as_mut_ptr().cast(),
            ws,
            ptr::null_mut(),
        )
    })
    .unwrap();
    let mut want = vec![0.0f64; r * n];
    for j in 0..r {
        for c in 0..n {
            want[j * n + c] = base[j * n + c] as f64 + sc[j] as f64 * g[idx[j] as usize * n + c];
        }
    }
    compare("chunked sparse gradient (accumulate)", &want, &out, 1e-4).unwrap();
}

pub struct Opt(pub *mut grass_optimizer);

impl Drop for Opt {
    fn drop(&mut self) {
        unsafe { grass_optimizer_destroy(self.0) }
    }
}

#[allow(clippy::too_many_arguments)]
fn sparse_opt(
    ctx: *const grass_context,
    m: i64,
    n: i64,
    r: i64,
    side: grass_side,
    b: i64,
    act: grass_dtype,
    state: grass_dtype,
) -> Opt {
    let mut pc = pcfg(r, GRASS_METHOD_MULTINOMIAL_NR, GRASS_SCALING_UNBIASED, side);
    pc.refresh_every = 3;
    let mut ac = adamw();
    ac.state_dtype = state;
    let mut o = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_sparse(ctx, &pc, &ac, m, n, b, act, GRASS_DTYPE_BF16, &mut o)
    })
    .unwrap();
    Opt(o)
}

fn dense_opt(ctx: *const grass_context, numel: i64, state: grass_dtype) -> Opt {
    let mut ac = adamw();
    ac.dense_state_dtype = state;
    let mut o = ptr::null_mut();
    check(unsafe {
        grass_optimizer_create_dense(ctx, &ac, numel, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &mut o)
    })
    .unwrap();
    Opt(o)
}

fn info(o: &Opt) -> grass_optimizer_info {
    let mut i: grass_optimizer_info = unsafe { std::mem::zeroed() };
    i.struct_size = std::mem::size_of::<grass_optimizer_info>();
    check(unsafe { grass_optimizer_get_info(o.0, &mut i) }).unwrap();
    i
}

fn workspace_bytes(ctx: &Ctx) -> usize {
    let mut w = 0usize;
    check(unsafe { grass_context_workspace_bytes(ctx.0, &mut w) }).unwrap();
    w
}

/// The reference shapes and ranks (docs/api.md) at 8192 bf16 tokens: a handle holds M, V, the accumulator and
/// the selection plus at most 1 MiB, and the context's one workspace (at most 64 MiB) serves
/// all of them.
#[test]
fn a_handle_holds_its_state_and_at_most_1_mib_more() {
    let ctx = Ctx::cpu();
    for (m, n) in SHAPES {
        for r in [256i64, 1024] {
            let o = sparse_opt(
                ctx.0,
                m,
                n,
                r,
                GRASS_SIDE_AUTO,
                8192,
                GRASS_DTYPE_BF16,
                GRASS_DTYPE_F32,
            );
            let (_, k) = resolve(m, n, GRASS_SIDE_AUTO);
            let r = r as usize;
            // M, V and the f32 accumulator (r x k each), indices, previous indices, scales
            let essential = 3 * r * k * 4 + 3 * r * 4;
            let held = info(&o).memory_bytes as usize;
            let mut p = ptr::null_mut();
            check(unsafe { grass_optimizer_projection(o.0, &mut p) }).unwrap();
            let mut pi: grass_projection_info = unsafe { std::mem::zeroed() };
            pi.struct_size = std::mem::size_of::<grass_projection_info>();
            check(unsafe { grass_projection_get_info(p, &mut pi) }).unwrap();
            // indices, previous indices and scales (r each) and d scores, in 8-byte words
            let words = |b: usize| b.div_ceil(8) * 8;
            assert_eq!(
                pi.memory_bytes as usize,
                3 * words(r * 4) + words(pi.d as usize * 4)
            );
            assert!(held >= essential, "{m}x{n} r {r}: {held} < {essential}");
            assert!(
                held - essential <= MIB,
                "{m}x{n} r {r}: {} bytes beyond the state",
                held - essential
            );
        }
    }
    let ws = workspace_bytes(&ctx);
    assert!(ws > 0 && ws <= 64 * MIB, "shared workspace {ws}");
}

/// The plan of a scaled-down model equals what its handles hold plus the context's workspace.
#[test]
fn memory_plan_adds_up_to_the_handles_and_the_workspace() {
    // (GRASS layers' state_dtype, dense_state_dtype: dense parameters', AdamW's and GaLore's)
    let dtypes = [
        (GRASS_DTYPE_F32, GRASS_DTYPE_F32),
        (GRASS_DTYPE_BF16, GRASS_DTYPE_BF16),
        (GRASS_DTYPE_BF16, GRASS_DTYPE_F32),
        (GRASS_DTYPE_F32, GRASS_DTYPE_BF16),
    ];
    for (state, dense) in dtypes {
        let ctx = Ctx::cpu();
        let b = 96i64;
        // (m, n, rank, side, count); rank 0 = dense parameter of m x n elements
        let model: [(i64, i64, i64, grass_side, i64); 5] = [
            (64, 64, 8, GRASS_SIDE_AUTO, 4),
            (172, 64, 16, GRASS_SIDE_AUTO, 2),
            (64, 172, 16, GRASS_SIDE_ROWS, 1),
            (1000, 64, 0, GRASS_SIDE_AUTO, 2),
            (64, 1, 0, GRASS_SIDE_AUTO, 9),
        ];
        let layers: Vec<grass_memory_layer> = model
            .iter()
            .map(|&(m, n, rank, side, count)| grass_memory_layer {
                struct_size: std::mem::size_of::<grass_memory_layer>(),
                m,
                n,
                rank,
                side,
                w_dtype: GRASS_DTYPE_BF16,
                act_dtype: GRASS_DTYPE_BF16,
                count,
            })
            .collect();
        let mut ac = adamw();
        ac.state_dtype = state;
        ac.dense_state_dtype = dense;
        let mut rep = grass_memory_report {
            struct_size: std::mem::size_of::<grass_memory_report>(),
            ..Default::default()
        };
        check(unsafe { grass_memory_plan(ctx.0, &ac, layers.as_ptr(), layers.len(), b, &mut rep) })
            .unwrap();
        assert_eq!(workspace_bytes(&ctx), 0, "planning allocates nothing");
        let mut handles = vec![];
        for &(m, n, rank, side, count) in &model {
            for _ in 0..count {
                handles.push(if rank == 0 {
                    dense_opt(ctx.0, m * n, dense)
                } else {
                    sparse_opt(ctx.0, m, n, rank, side, b, GRASS_DTYPE_BF16, state)
                });
            }
        }
        let held: i64 = handles.iter().map(|o| info(o).memory_bytes).sum();
        let ws = workspace_bytes(&ctx) as i64;
        assert_eq!(rep.grass_handle_bytes, held, "state {state}, dense {dense}");
        assert_eq!(
            rep.grass_workspace_bytes, ws,
            "state {state}, dense {dense}"
        );
        assert_eq!(
            rep.grass_state_bytes + rep.grass_selection_bytes + rep.grass_gradient_bytes
                - rep.grass_handle_bytes,
            2 * (2 * 1000 * 64 + 9 * 64),
            "the dense parameters' bf16 gradients are the gradients the handles do not hold"
        );
        let weights: i64 = model.iter().map(|&(m, n, _, _, c)| 2 * m * n * c).sum();
        assert_eq!(rep.weight_bytes, weights);
        let s = if dense == GRASS_DTYPE_F32 { 4 } else { 2 };
        assert_eq!(rep.adamw_state_bytes, weights / 2 * 2 * s);
        assert_eq!(rep.adamw_gradient_bytes, weights);
        assert_eq!(
            rep.grass_total_bytes,
            rep.weight_bytes
                + rep.grass_state_bytes
                + rep.grass_gradient_bytes
                + rep.grass_selection_bytes
                + rep.grass_workspace_bytes
        );
        // GaLore: 2 r k states and a d x r projection (bf16, the weights' dtype) per projected weight
        let galore_proj: i64 = model
            .iter()
            .filter(|l| l.2 > 0)
            .map(|&(m, n, r, side, c)| resolve(m, n, side).0 as i64 * r * 2 * c)
            .sum();
        assert_eq!(rep.galore_projection_bytes, galore_proj);
        // GaLore's moments: 2 r k per projected weight, 2 numel per dense one, at dense's dtype
        let galore_states: i64 = model
            .iter()
            .map(|&(m, n, r, side, c)| {
                2 * c
                    * s
                    * if r > 0 {
                        r * resolve(m, n, side).1 as i64
                    } else {
                        m * n
                    }
            })
            .sum();
        assert_eq!(
            rep.galore_state_bytes, galore_states,
            "state {state}, dense {dense}"
        );
        if !(state == GRASS_DTYPE_F32 && dense == GRASS_DTYPE_BF16) {
            // (f32 GRASS moments against bf16 GaLore ones at the same rank can hold more)
            assert!(rep.grass_total_bytes < rep.galore_total_bytes);
        }
        assert!(rep.galore_total_bytes < rep.adamw_total_bytes);
    }
}

#[test]
fn memory_plan_rejects_bad_descriptions() {
    let ctx = Ctx::cpu();
    let good = grass_memory_layer {
        struct_size: std::mem::size_of::<grass_memory_layer>(),
        m: 64,
        n: 32,
        rank: 8,
        side: GRASS_SIDE_AUTO,
        w_dtype: GRASS_DTYPE_BF16,
        act_dtype: GRASS_DTYPE_BF16,
        count: 1,
    };
    let ac = adamw();
    let plan = |layers: &[grass_memory_layer], n: usize, b: i64, size: usize| {
        let mut rep = grass_memory_report {
            struct_size: size,
            weight_bytes: -7,
            ..Default::default()
        };
        let st = unsafe {
            grass_memory_plan(
                ctx.0,
                &ac,
                if layers.is_empty() {
                    ptr::null()
                } else {
                    layers.as_ptr()
                },
                n,
                b,
                &mut rep,
            )
        };
        (check(st), rep.weight_bytes)
    };
    let size = std::mem::size_of::<grass_memory_report>();
    let cases: Vec<(grass_memory_layer, &str)> = vec![
        (
            grass_memory_layer { rank: 65, ..good },
            "layers[1].rank = 65",
        ),
        (
            grass_memory_layer { rank: -1, ..good },
            "layers[1].rank = -1",
        ),
        (grass_memory_layer { m: 0, ..good }, "layers[1].m = 0"),
        (
            grass_memory_layer { count: -2, ..good },
            "layers[1].count = -2",
        ),
        (
            grass_memory_layer { w_dtype: 9, ..good },
            "layers[1].w_dtype",
        ),
        (grass_memory_layer { side: 7, ..good }, "layers[1].side"),
        (
            grass_memory_layer {
                struct_size: 8,
                ..good
            },
            "layers[1].struct_size = 8",
        ),
    ];
    for (bad, says) in cases {
        let (r, untouched) = plan(&[good, bad], 2, 16, size);
        let (st, msg) = r.unwrap_err();
        assert_ne!(st, grass_status::GRASS_OK);
        assert!(msg.contains(says), "{says}: got {msg}");
        assert_eq!(untouched, -7, "nothing written on failure");
    }
    let (r, _) = plan(&[], 1, 16, size);
    assert!(r.unwrap_err().1.contains("layers is NULL"));
    let (r, _) = plan(&[good], 1, 0, size);
    assert!(r.unwrap_err().1.contains("max_tokens = 0"));
    let (r, _) = plan(&[good], 1, 16, size - 8);
    assert!(r.unwrap_err().1.contains("report->struct_size"));
    // no layers at all is a valid (empty) model
    let (r, w) = plan(&[], 0, 16, size);
    r.unwrap();
    assert_eq!(w, 0);
}

/// grass.h promises the selection pointers stay valid for the handle's life: a pointer taken
/// before a refresh reads the new rows after it.
#[test]
fn selection_pointer_survives_a_refresh() {
    let ctx = Ctx::cpu();
    let (m, n, b, r) = (40i64, 24i64, 16i64, 6i64);
    let pc = {
        let mut c = pcfg(r, GRASS_METHOD_TOP_R, GRASS_SCALING_NONE, GRASS_SIDE_ROWS);
        c.refresh_every = 1;
        c
    };
    let mut p = ptr::null_mut();
    check(unsafe { grass_projection_create(ctx.0, &pc, m, n, b, GRASS_DTYPE_F32, &mut p) })
        .unwrap();
    let first: Vec<f32> = (0..m).map(|i| i as f32).collect(); // top rows 34..39
    let second: Vec<f32> = (0..m).map(|i| (m - i) as f32).collect(); // top rows 0..5
    check(unsafe { grass_projection_refresh_from_scores(p, first.as_ptr(), ptr::null_mut()) })
        .unwrap();
    let (mut idx, mut sc) = (ptr::null(), ptr::null());
    check(unsafe { grass_projection_selection(p, &mut idx, &mut sc) }).unwrap();
    let before = unsafe { std::slice::from_raw_parts(idx, r as usize) }.to_vec();
    assert_eq!(before, vec![34, 35, 36, 37, 38, 39]);
    check(unsafe { grass_projection_refresh_from_scores(p, second.as_ptr(), ptr::null_mut()) })
        .unwrap();
    let (mut idx2, mut sc2) = (ptr::null(), ptr::null());
    check(unsafe { grass_projection_selection(p, &mut idx2, &mut sc2) }).unwrap();
    assert_eq!((idx, sc), (idx2, sc2), "the pointers moved at a refresh");
    let after = unsafe { std::slice::from_raw_parts(idx, r as usize) }.to_vec();
    assert_eq!(
        after,
        vec![0, 1, 2, 3, 4, 5],
        "old pointer reads the new rows"
    );
    unsafe { grass_projection_destroy(p) };
}

/// A short GRASS training run of one layer through an optimizer handle on `ctx`; returns W.
fn train(ctx: *const grass_context, seed: u64) -> Vec<f32> {
    let (m, n, b, r) = (48i64, 32i64, 24usize, 8i64);
    let mut rng = Rng(seed);
    let o = sparse_opt(
        ctx,
        m,
        n,
        r,
        GRASS_SIDE_AUTO,
        b as i64,
        GRASS_DTYPE_F32,
        GRASS_DTYPE_F32,
    );
    let mut w: Vec<bf16> = to_bf16(&rng.vec((m * n) as usize));
    for _ in 0..7 {
        let x = rng.vec(b * n as usize);
        let dy = rng.vec(b * m as usize);
        check(unsafe {
            grass_optimizer_backward(
                o.0,
                b as i64,
                x.as_ptr().cast(),
                dy.as_ptr().cast(),
                ptr::null(),
                ptr::null_mut(),
            )
        })
        .unwrap();
        check(unsafe {
            grass_optimizer_step(
                o.0,
                w.as_mut_ptr().cast(),
                ptr::null(),
                1e-2,
                ptr::null_mut(),
            )
        })
        .unwrap();
    }
    from_bf16(&w)
}

#[derive(Clone, Copy)]
struct SendCtx(*const grass_context);
// SAFETY: contexts may be used from any thread (their handle calls are serialized).
unsafe impl Send for SendCtx {}

impl SendCtx {
    fn ptr(self) -> *const grass_context {
        self.0
    }
}

/// Two threads training on two contexts run in parallel and get what a lone run gets; two
/// threads sharing one context (and so its workspace) are serialized by it and get the same.
#[test]
fn threads_on_separate_or_shared_contexts_train_like_one_thread() {
    let lone = Ctx::cpu();
    let want: Vec<Vec<f32>> = (0..4u64).map(|s| train(lone.0, 100 + s)).collect();
    let (a, b) = (Ctx::cpu(), Ctx::cpu());
    for shared in [false, true] {
        let ctxs = if shared {
            [SendCtx(a.0), SendCtx(a.0), SendCtx(a.0), SendCtx(a.0)]
        } else {
            [SendCtx(a.0), SendCtx(b.0), SendCtx(a.0), SendCtx(b.0)]
        };
        let got: Vec<Vec<f32>> = if shared {
            std::thread::scope(|s| {
                let hs: Vec<_> = ctxs
                    .iter()
                    .enumerate()
                    .map(|(i, &c)| s.spawn(move || train(c.ptr(), 100 + i as u64)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            })
        } else {
            // one thread per context: contexts a and b each get two runs in turn
            std::thread::scope(|s| {
                let ha =
                    s.spawn(move || vec![train(ctxs[0].ptr(), 100), train(ctxs[2].ptr(), 102)]);
                let hb =
                    s.spawn(move || vec![train(ctxs[1].ptr(), 101), train(ctxs[3].ptr(), 103)]);
                let (ra, rb) = (ha.join().unwrap(), hb.join().unwrap());
                vec![ra[0].clone(), rb[0].clone(), ra[1].clone(), rb[1].clone()]
            })
        };
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w,
                "run {i} (shared context: {shared}) differs from the lone run"
            );
        }
    }
}
