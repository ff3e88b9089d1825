//! The context's shared workspace and the handles' fixed pointers on a CUDA context.

use grass::ffi::*;

use crate::gpu::*;
use crate::handles::{projection_config, sparse_optimizer};

/// A pointer to the selection taken before a refresh reads the new rows after it.
#[test]
#[ignore = "needs a CUDA GPU"]
fn selection_pointer_survives_a_refresh_on_cuda() {
    let g = gpu("selection_pointer_survives_a_refresh_on_cuda");
    let (m, n, b, r) = (40i64, 24i64, 16i64, 6usize);
    let mut pc = projection_config(GRASS_METHOD_TOP_R, r as i64, 1);
    pc.scaling = GRASS_SCALING_NONE;
    pc.side = GRASS_SIDE_ROWS;
    let mut p = std::ptr::null_mut();
    ok(unsafe { grass_projection_create(g.cuda, &pc, m, n, b, GRASS_DTYPE_F32, &mut p) });
    let first = DevBuf::from(&(0..m).map(|i| i as f32).collect::<Vec<_>>());
    let second = DevBuf::from(&(0..m).map(|i| (m - i) as f32).collect::<Vec<_>>());
    ok(unsafe { grass_projection_refresh_from_scores(p, first.ptr(), std::ptr::null_mut()) });
    let (mut idx, mut sc) = (std::ptr::null(), std::ptr::null());
    ok(unsafe { grass_projection_selection(p, &mut idx, &mut sc) });
    sync();
    assert_eq!(read_device(idx, r), vec![34, 35, 36, 37, 38, 39]);
    ok(unsafe { grass_projection_refresh_from_scores(p, second.ptr(), std::ptr::null_mut()) });
    let (mut idx2, mut sc2) = (std::ptr::null(), std::ptr::null());
    ok(unsafe { grass_projection_selection(p, &mut idx2, &mut sc2) });
    assert_eq!(
        (idx, sc),
        (idx2, sc2),
        "the selection pointers moved at a refresh"
    );
    sync();
    assert_eq!(
        read_device(idx, r),
        vec![0, 1, 2, 3, 4, 5],
        "old pointer, new rows"
    );
    unsafe { grass_projection_destroy(p) };
}

/// Two optimizers on one CUDA context, driven on two streams in turn (their calls share the
/// context's workspace, which orders the streams): the same weights as on the host.
#[test]
#[ignore = "needs a CUDA GPU"]
fn handles_on_two_streams_share_the_workspace() {
    let g = gpu("handles_on_two_streams_share_the_workspace");
    let (m, n, b, r) = (96usize, 64usize, 512usize, 16usize);
    // uniform rows: the host and the device select the same ones whatever their scores
    let pc = projection_config(GRASS_METHOD_UNIFORM_NR, r as i64, 2);
    let mut ac = std::mem::MaybeUninit::<grass_adamw_config>::uninit();
    ok(unsafe {
        grass_adamw_config_init_sized(ac.as_mut_ptr(), std::mem::size_of::<grass_adamw_config>())
    });
    let ac = unsafe { ac.assume_init() };
    let streams = [Stream::new(), Stream::new()];
    let mut rng = Rng::new(5);
    let hosts = [
        sparse_optimizer(g.cpu, &pc, &ac, m, n, b),
        sparse_optimizer(g.cpu, &pc, &ac, m, n, b),
    ];
    let devs = [
        sparse_optimizer(g.cuda, &pc, &ac, m, n, b),
        sparse_optimizer(g.cuda, &pc, &ac, m, n, b),
    ];
    let w0 = rng.normals(m * n);
    let mut hw = [w0.clone(), w0.clone()];
    let dw = [DevBuf::from(&w0), DevBuf::from(&w0)];
    for step in 0..5 {
        // both layers' batches live on the device before either stream starts
        let data: Vec<(Vec<f32>, Vec<f32>)> = (0..2)
            .map(|_| (rng.normals(b * n), rng.normals(b * m)))
            .collect();
        let dev_data: Vec<(DevBuf, DevBuf)> = data
            .iter()
            .map(|(x, dy)| (DevBuf::from(x), DevBuf::from(dy)))
            .collect();
        for l in 0..2 {
            let s = streams[(l + step) % 2].raw();
            let (x, dy) = &data[l];
            ok(unsafe {
                grass_optimizer_backward(
                    hosts[l].0,
                    b as i64,
                    x.as_ptr().cast(),
                    dy.as_ptr().cast(),
                    std::ptr::null(),
                    std::ptr::null_mut(),
                )
            });
            ok(unsafe {
                grass_optimizer_step(
                    hosts[l].0,
                    hw[l].as_mut_ptr().cast(),
                    std::ptr::null(),
                    1e-2,
                    std::ptr::null_mut(),
                )
            });
            let (dx, ddy) = &dev_data[l];
            ok(unsafe {
                grass_optimizer_backward(
                    devs[l].0,
                    b as i64,
                    dx.void(),
                    ddy.void(),
                    std::ptr::null(),
                    s,
                )
            });
            ok(unsafe { grass_optimizer_step(devs[l].0, dw[l].void(), std::ptr::null(), 1e-2, s) });
        }
        for s in &streams {
            s.sync();
        }
        for l in 0..2 {
            let got: Vec<f32> = dw[l].f32s().iter().zip(&w0).map(|(a, b)| a - b).collect();
            let want: Vec<f32> = hw[l].iter().zip(&w0).map(|(a, b)| a - b).collect();
            assert_close(&format!("layer {l} step {step}: W - W0"), &got, &want, 1e-4);
        }
    }
}

fn sparse_grad_call(
    ctx: *const grass_context,
    (m, n, b, r): (usize, usize, usize, usize),
    bufs: (*const f32, *const f32, *const i32, *const f32, *mut f32),
    ws: (*mut u8, usize),
) {
    let (x, dy, idx, sc, g) = bufs;
    ok(unsafe {
        grass_sparse_grad(
            ctx,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            x.cast(),
            dy.cast(),
            idx,
            sc,
            g,
            1,
            ws.0.cast(),
            ws.1,
            std::ptr::null_mut(),
        )
    });
}

/// A sparse gradient too large for one block within 64 MiB (r = 1024 rows of 8192 f32 plus
/// 4096 gathered f32 tokens each): the CUDA op runs in row blocks and must still match the host.
#[test]
#[ignore = "needs a CUDA GPU"]
fn blocked_sparse_grad_matches_the_host() {
    let g = gpu("blocked_sparse_grad_matches_the_host");
    let (m, n, b, r) = (1024usize, 8192usize, 4096usize, 1024usize);
    let mut ws_bytes = 0usize;
    ok(unsafe {
        grass_sparse_grad_workspace_size(
            g.cuda,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            &mut ws_bytes,
        )
    });
    assert!(ws_bytes <= 64 << 20, "workspace {ws_bytes}");
    assert!(
        ws_bytes < r * (b + n) * 4,
        "the rows are not blocked: {ws_bytes}"
    );
    let mut rng = Rng::new(17);
    let (x, dy) = (rng.normals(b * n), rng.normals(b * m));
    let idx = rng.sorted_indices(r, m);
    let scales: Vec<f32> = (0..r).map(|_| 0.5 + rng.unit() as f32).collect();
    let start = rng.normals(r * n);
    let mut want = start.clone();
    let mut hws = 0usize;
    ok(unsafe {
        grass_sparse_grad_workspace_size(
            g.cpu,
            m as i64,
            n as i64,
            b as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            GRASS_DTYPE_F32,
            &mut hws,
        )
    });
    let mut host_ws = vec![0u8; hws];
    sparse_grad_call(
        g.cpu,
        (m, n, b, r),
        (
            x.as_ptr(),
            dy.as_ptr(),
            idx.as_ptr(),
            scales.as_ptr(),
            want.as_mut_ptr(),
        ),
        (host_ws.as_mut_ptr(), hws),
    );
    let (dx, ddy, didx, dsc) = (
        DevBuf::from(&x),
        DevBuf::from(&dy),
        DevBuf::from(&idx),
        DevBuf::from(&scales),
    );
    let (out, dws) = (DevBuf::from(&start), DevBuf::poisoned(ws_bytes));
    sparse_grad_call(
        g.cuda,
        (m, n, b, r),
        (dx.ptr(), ddy.ptr(), didx.ptr(), dsc.ptr(), out.ptr()),
        (dws.ptr(), ws_bytes),
    );
    sync();
    assert_close(
        "blocked sparse gradient (accumulate)",
        &out.f32s(),
        &want,
        grass::core::dtype::tolerance(grass::core::dtype::Dtype::F32, b),
    );
}
