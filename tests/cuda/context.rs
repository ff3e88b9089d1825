//! grass binds its context only for the length of a call: a thread's current context (none,
//! or another one, such as another device's that PyTorch made current) is the same after
//! every kind of call (context creation, ops, handle creation and destruction).

use cudarc::driver::sys;
use grass::ffi::*;

use crate::adamw::adamw_config;
use crate::gpu::*;

fn current() -> usize {
    let mut c = std::ptr::null_mut();
    unsafe { sys::cuCtxGetCurrent(&mut c) }
        .result()
        .expect("cuCtxGetCurrent");
    c as usize
}

/// Device addresses of the calls (8 x 4 weight, 2 tokens, rank 3), as plain numbers so that
/// they cross threads.
#[derive(Clone, Copy)]
struct Bufs {
    ctx: usize,
    x: usize,
    dy: usize,
    scores: usize,
    idx: usize,
    sc: usize,
    ws: usize,
    wsb: usize,
}

/// Row scores (a cuBLAS GEMM), a selection and a dense optimizer's life, asserting after each
/// call that the thread's current context is still `want`.
fn calls(b: Bufs, want: usize) {
    let Bufs {
        ctx,
        x,
        dy,
        scores,
        idx,
        sc,
        ws,
        wsb,
    } = b;
    let ctx = ctx as *mut grass_context;
    ok(unsafe {
        grass_row_scores(
            ctx,
            8,
            4,
            2,
            GRASS_SIDE_ROWS,
            GRASS_DTYPE_F32,
            x as *const _,
            dy as *const _,
            scores as *mut f32,
            ws as *mut _,
            wsb,
            std::ptr::null_mut(),
        )
    });
    assert_eq!(current(), want, "after grass_row_scores");
    let mut cfg = std::mem::MaybeUninit::<grass_projection_config>::uninit();
    ok(unsafe { grass_projection_config_init(cfg.as_mut_ptr()) });
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.rank = 3;
    cfg.method = GRASS_METHOD_TOP_R;
    ok(unsafe {
        grass_select(
            ctx,
            &cfg,
            8,
            0,
            std::ptr::null(),
            scores as *const f32,
            idx as *mut i32,
            sc as *mut f32,
            ws as *mut _,
            wsb,
            std::ptr::null_mut(),
        )
    });
    assert_eq!(current(), want, "after grass_select");
    let ac = adamw_config(
        GRASS_DECAY_OFF,
        grass::core::dtype::Dtype::F32,
        GRASS_REFRESH_RESET,
    );
    let mut o = std::ptr::null_mut();
    ok(unsafe {
        grass_optimizer_create_dense(ctx, &ac, 10, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &mut o)
    });
    assert_eq!(current(), want, "after grass_optimizer_create_dense");
    unsafe { grass_optimizer_destroy(o) };
    assert_eq!(current(), want, "after grass_optimizer_destroy");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn calls_leave_the_threads_current_context_as_they_found_it() {
    let g = gpu("calls_leave_the_threads_current_context_as_they_found_it");
    let mut rng = Rng::new(15);
    let (xv, dyv) = (rng.normals(2 * 4), rng.normals(2 * 8));
    let (x, dy) = (DevBuf::from(&xv), DevBuf::from(&dyv));
    let scores = DevBuf::poisoned(8 * 4);
    let (idx, sc) = (DevBuf::poisoned(12), DevBuf::poisoned(12));
    let (mut sel_ws, mut score_ws) = (0, 0);
    ok(unsafe { grass_select_workspace_size(g.cuda, 8, 3, &mut sel_ws) });
    ok(unsafe {
        grass_scores_workspace_size(
            g.cuda,
            8,
            4,
            2,
            GRASS_SIDE_ROWS,
            GRASS_DTYPE_F32,
            &mut score_ws,
        )
    });
    let wsb = sel_ws.max(score_ws);
    let ws = DevBuf::poisoned(wsb);
    let bufs = Bufs {
        ctx: g.cuda as usize,
        x: x.ptr as usize,
        dy: dy.ptr as usize,
        scores: scores.ptr as usize,
        idx: idx.ptr as usize,
        sc: sc.ptr as usize,
        ws: ws.ptr as usize,
        wsb,
    };
    std::thread::spawn(move || {
        // A fresh thread has no current context, and has none after grass's calls.
        assert_eq!(current(), 0, "a new thread");
        calls(bufs, 0);
        let mut other = std::ptr::null_mut();
        ok(unsafe { grass_context_create_cuda(0, &mut other) });
        assert_eq!(current(), 0, "after grass_context_create_cuda");
        unsafe { grass_context_destroy(other) };
        assert_eq!(current(), 0, "after grass_context_destroy");

        // With a context of its own current (not the primary one grass uses), that one stays.
        let mut own = std::ptr::null_mut();
        let rc = unsafe { sys::cuCtxCreate_v4(&mut own, std::ptr::null_mut(), 0, 0) };
        if rc != sys::CUresult::CUDA_SUCCESS {
            println!("cuCtxCreate_v4 failed ({rc:?}): only the thread without a context checked");
            return;
        }
        assert_eq!(
            current(),
            own as usize,
            "cuCtxCreate makes the new context current"
        );
        calls(bufs, own as usize);
        unsafe { sys::cuCtxDestroy_v2(own) }
            .result()
            .expect("cuCtxDestroy");
    })
    .join()
    .unwrap();
    sync();
    // The device's work is right too: the norms of the rows of G = dYᵀX and their top 3.
    let want: Vec<f32> = (0..8)
        .map(|i| {
            (0..4)
                .map(|c| {
                    let gic: f64 = (0..2)
                        .map(|t| dyv[t * 8 + i] as f64 * xv[t * 4 + c] as f64)
                        .sum();
                    gic * gic
                })
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect();
    assert_close("scores", &scores.f32s(), &want, 1e-5);
    let mut top: Vec<i32> = (0..8).collect();
    top.sort_by(|&a, &b| want[b as usize].total_cmp(&want[a as usize]));
    let mut top: Vec<i32> = top[..3].to_vec();
    top.sort_unstable();
    assert_eq!(idx.i32s(), top, "top 3 of the scores");
}
