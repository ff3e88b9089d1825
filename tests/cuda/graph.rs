//! A whole GRASS step (compressed gradient and compressed AdamW) captured in a CUDA graph on
//! a non-default stream and replayed: the replays must equal the same steps run eagerly.

use cudarc::driver::sys;
use grass::core::dtype::Dtype;
use grass::ffi::*;

use crate::adamw::adamw_config;
use crate::gpu::*;
use crate::handles::{projection_config, sparse_optimizer, Optimizer};

fn step(o: &Optimizer, b: usize, x: &DevBuf, dy: &DevBuf, w: &DevBuf, stream: &Stream) {
    ok(unsafe {
        grass_optimizer_backward(
            o.0,
            b as i64,
            x.void(),
            dy.void(),
            std::ptr::null(),
            stream.raw(),
        )
    });
    ok(unsafe { grass_optimizer_step(o.0, w.void(), std::ptr::null(), 1e-2, stream.raw()) });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_captured_step_replays_like_eager_steps() {
    let g = gpu("a_captured_step_replays_like_eager_steps");
    let mut rng = Rng::new(14);
    let (m, n, b, r) = (128usize, 96usize, 64usize, 32usize);
    let pc = projection_config(GRASS_METHOD_MULTINOMIAL_NR, r as i64, 1000);
    let ac = adamw_config(GRASS_DECAY_DENSE, Dtype::F32, GRASS_REFRESH_RESET);
    let (eager, graphed) = (
        sparse_optimizer(g.cuda, &pc, &ac, m, n, b),
        sparse_optimizer(g.cuda, &pc, &ac, m, n, b),
    );
    let (x, dy) = (
        DevBuf::from(&rng.normals(b * n)),
        DevBuf::from(&rng.normals(b * m)),
    );
    let w0 = rng.normals(m * n);
    let (we, wg) = (DevBuf::from(&w0), DevBuf::from(&w0));
    let stream = Stream::new();
    let replays = 5;

    // The first step refreshes the selection (not captured); the next ones only compute.
    step(&eager, b, &x, &dy, &we, &stream);
    step(&graphed, b, &x, &dy, &wg, &stream);
    for _ in 0..replays {
        step(&eager, b, &x, &dy, &we, &stream);
    }
    stream.sync();

    let mut graph = std::ptr::null_mut();
    let mut exec = std::ptr::null_mut();
    unsafe {
        sys::cuStreamBeginCapture_v2(
            stream.0,
            sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
        )
        .result()
        .expect("cuStreamBeginCapture");
    }
    step(&graphed, b, &x, &dy, &wg, &stream);
    unsafe {
        sys::cuStreamEndCapture(stream.0, &mut graph)
            .result()
            .expect("cuStreamEndCapture");
        sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0)
            .result()
            .expect("cuGraphInstantiate");
        for _ in 0..replays {
            sys::cuGraphLaunch(exec, stream.0)
                .result()
                .expect("cuGraphLaunch");
        }
    }
    stream.sync();
    assert_same_bits(
        "W after replays vs eager steps",
        &wg.bytes(),
        &we.bytes(),
        4,
    );
    assert_ne!(wg.bytes(), as_bytes(&w0), "the replays must have changed W");
    // Every row's device step count advanced once per replay (the blob's counters, the last
    // outcome and then r step counts, follow its header: 17 u64 fields in format 3,
    // src/handles/checkpoint.rs).
    let (mut be, mut bg) = (0, 0);
    ok(unsafe { grass_optimizer_state_size(eager.0, &mut be) });
    ok(unsafe { grass_optimizer_state_size(graphed.0, &mut bg) });
    let (mut ee, mut eg) = (vec![0u8; be], vec![0u8; bg]);
    ok(unsafe { grass_optimizer_export_state(eager.0, ee.as_mut_ptr().cast(), be, stream.raw()) });
    ok(unsafe {
        grass_optimizer_export_state(graphed.0, eg.as_mut_ptr().cast(), bg, stream.raw())
    });
    const HEADER_BYTES: usize = 17 * 8;
    let counters = |blob: &[u8]| from_bytes::<i32>(&blob[HEADER_BYTES..HEADER_BYTES + 4 * (1 + r)]);
    assert_eq!(counters(&eg), counters(&ee));
    let want: Vec<i32> = std::iter::once(GRASS_STEP_APPLIED)
        .chain(std::iter::repeat_n(replays + 1, r))
        .collect();
    assert_eq!(counters(&eg), want);
    unsafe {
        sys::cuGraphExecDestroy(exec);
        sys::cuGraphDestroy(graph);
    }
}
