//! Times the CPU AdamW steps through the C ABI: a dense step on a 4096 x 4096 f32 parameter and
//! a compressed step (r = 512 rows of a 4096 x 4096 f32 weight, f32 states). Reports the best
//! and the median of the repetitions and the bytes moved per second.
//!
//!     cargo bench --bench cpu_adamw            # GRASS_BENCH_REPS (default 15)

use std::ptr;
use std::time::Instant;

use grass::ffi::*;

fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm up (page faults, caches)
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (t[0], t[reps / 2])
}

fn main() {
    let reps: usize = std::env::var("GRASS_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut ctx = ptr::null_mut();
    assert_eq!(
        unsafe { grass_context_create_cpu(&mut ctx) },
        grass_status::GRASS_OK
    );
    let mut cfg: grass_adamw_config = unsafe { std::mem::zeroed() };
    unsafe { grass_adamw_config_init(&mut cfg) };
    cfg.weight_decay = 0.01;

    let numel = 4096 * 4096;
    let mut w: Vec<f32> = (0..numel)
        .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
        .collect();
    let g: Vec<f32> = (0..numel)
        .map(|i| ((i % 89) as f32 - 44.0) * 1e-4)
        .collect();
    let (mut m, mut v) = (vec![0f32; numel], vec![0f32; numel]);
    let mut step = 0i32;
    let (best, median) = time(reps, || {
        let st = unsafe {
            grass_adamw_step(
                ctx,
                &cfg,
                numel as i64,
                GRASS_DTYPE_F32,
                w.as_mut_ptr().cast(),
                GRASS_DTYPE_F32,
                g.as_ptr().cast(),
                m.as_mut_ptr().cast(),
                v.as_mut_ptr().cast(),
                &mut step,
                1e-3,
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, grass_status::GRASS_OK);
    });
    // reads w, g, m, v and writes w, m, v
    let bytes = 7.0 * 4.0 * numel as f64;
    println!(
        "dense adamw 4096x4096 f32: best {:.2} ms, median {:.2} ms, {:.1} GB/s ({threads} threads available)",
        best * 1e3,
        median * 1e3,
        bytes / best / 1e9
    );

    let (mm, nn, r) = (4096usize, 4096usize, 512usize);
    let idx: Vec<i32> = (0..r as i32).map(|j| j * 8).collect();
    let sc = vec![1.0f32; r];
    let gc: Vec<f32> = (0..r * nn)
        .map(|i| ((i % 89) as f32 - 44.0) * 1e-4)
        .collect();
    let (mut ms, mut vs) = (vec![0f32; r * nn], vec![0f32; r * nn]);
    let mut row_steps = vec![0i32; r];
    let (best, median) = time(reps, || {
        let st = unsafe {
            grass_sparse_adamw_step(
                ctx,
                &cfg,
                mm as i64,
                nn as i64,
                GRASS_SIDE_ROWS,
                r as i64,
                GRASS_DTYPE_F32,
                w.as_mut_ptr().cast(),
                idx.as_ptr(),
                sc.as_ptr(),
                gc.as_ptr(),
                ms.as_mut_ptr().cast(),
                vs.as_mut_ptr().cast(),
                row_steps.as_mut_ptr(),
                1e-3,
                ptr::null(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
                ptr::null_mut(),
            )
        };
        assert_eq!(st, grass_status::GRASS_OK);
    });
    // reads g, m, v and the selected rows of w; writes m, v and those rows
    let bytes = 8.0 * 4.0 * (r * nn) as f64;
    println!(
        "compressed adamw r=512 of 4096x4096 f32: best {:.2} ms, median {:.2} ms, {:.1} GB/s",
        best * 1e3,
        median * 1e3,
        bytes / best / 1e9
    );
    unsafe { grass_context_destroy(ctx) };
}
