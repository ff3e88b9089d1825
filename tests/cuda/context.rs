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

/// A selection and a dense optimizer's life on `ctx`, asserting after each call that the
/// thread's current context is still `want`.
fn calls(ctx: usize, scores: usize, idx: usize, sc: usize, ws: usize, wsb: usize, want: usize) {
    let ctx = ctx as *mut grass_context;
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
    let ac = adamw_config(GRASS_DECAY_OFF, grass::core::dtype::Dtype::F32, GRASS_REFRESH_RESET);
    let mut o = std::ptr::null_mut();
    ok(unsafe {
        grass_optimizer_create_dense(ctx, &ac, 10, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &mut o)
    });
    assert_eq!(current(), want, "after grass_optimizer_create_dense");
    unsafe { grass_optimizer_destroy(o) };
    assert_eq!(current(), want, "after grass_optimizer_destroy");
}

#[test]
fn calls_leave_the_threads_current_context_as_they_found_it() {
    let Some(g) = gpu("calls_leave_the_threads_current_context_as_they_found_it") else {
        return;
    };
    let scores = DevBuf::from(&[1f32, 5.0, 2.0, 0.5, 4.0, 3.0, 0.0, 6.0]);
    let (idx, sc) = (DevBuf::poisoned(12), DevBuf::poisoned(12));
    let mut wsb = 0;
    ok(unsafe { grass_select_workspace_size(g.cuda, 8, 3, &mut wsb) });
    let ws = DevBuf::poisoned(wsb);
    let args = (
        g.cuda as usize,
        scores.ptr as usize,
        idx.ptr as usize,
        sc.ptr as usize,
        ws.ptr as usize,
        wsb,
    );
    std::thread::spawn(move || {
        let (ctx, s, i, c, w, n) = args;
        // A fresh thread has no current context, and has none after grass's calls.
        assert_eq!(current(), 0, "a new thread");
        calls(ctx, s, i, c, w, n, 0);
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
        assert_eq!(current(), own as usize, "cuCtxCreate makes the new context current");
        calls(ctx, s, i, c, w, n, own as usize);
        unsafe { sys::cuCtxDestroy_v2(own) }
            .result()
            .expect("cuCtxDestroy");
    })
    .join()
    .unwrap();
    sync();
    let mut got = idx.i32s();
    got.sort_unstable();
    assert_eq!(got, vec![1, 4, 7], "top 3 of the scores");
}
