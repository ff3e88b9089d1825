//! The compressed and the dense AdamW step and the state refresh agree with the host bit for
//! bit, over several steps, for every weight, gradient and state dtype.

use grass::core::dtype::Dtype;
use grass::ffi::*;

use crate::gpu::*;

const STATES: [Dtype; 2] = [Dtype::F32, Dtype::Bf16];

pub fn adamw_config(
    decay: grass_decay_mode,
    state: Dtype,
    refresh: grass_refresh_mode,
) -> grass_adamw_config {
    let mut cfg = std::mem::MaybeUninit::<grass_adamw_config>::uninit();
    ok(unsafe {
        grass_adamw_config_init_sized(cfg.as_mut_ptr(), std::mem::size_of::<grass_adamw_config>())
    });
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.decay_mode = decay;
    cfg.weight_decay = if decay == GRASS_DECAY_OFF { 0.0 } else { 0.1 };
    cfg.alpha = 0.25;
    cfg.state_dtype = code(state);
    cfg.dense_state_dtype = code(state); // grass_adamw_step's moments
    cfg.refresh_mode = refresh;
    cfg
}

/// One backend's buffers of a step: W, M, V, the counters (the outcome, then the step counts)
/// and the op's scratch. Host buffers for the CPU context, device buffers for CUDA.
enum Bufs {
    Host {
        w: Vec<u8>,
        m: Vec<u8>,
        v: Vec<u8>,
        counters: Vec<i32>,
        lr_scale: Vec<f32>,
        ws: Vec<u8>,
    },
    Dev {
        w: DevBuf,
        m: DevBuf,
        v: DevBuf,
        counters: DevBuf,
        lr_scale: DevBuf,
        ws: DevBuf,
    },
}

impl Bufs {
    /// `steps`: the initial step counts (one per state row, or one for a dense step).
    fn new(cuda: bool, w: &[u8], state_bytes: usize, ws: usize, steps: &[i32]) -> Bufs {
        let counters: Vec<i32> = std::iter::once(-1).chain(steps.iter().copied()).collect();
        if cuda {
            Bufs::Dev {
                w: DevBuf::from_bytes(w),
                m: DevBuf::from_bytes(&vec![0; state_bytes]),
                v: DevBuf::from_bytes(&vec![0; state_bytes]),
                counters: DevBuf::from(&counters),
                lr_scale: DevBuf::from(&[1f32]),
                ws: DevBuf::poisoned(ws),
            }
        } else {
            Bufs::Host {
                w: w.to_vec(),
                m: vec![0; state_bytes],
                v: vec![0; state_bytes],
                counters,
                lr_scale: vec![1.0],
                ws: vec![0; ws],
            }
        }
    }
    /// (w, m, v, steps, skipped, lr_scale, ws, ws_bytes)
    #[allow(clippy::type_complexity)]
    fn ptrs(
        &mut self,
    ) -> (
        *mut u8,
        *mut u8,
        *mut u8,
        *mut i32,
        *mut i32,
        *mut f32,
        *mut u8,
        usize,
    ) {
        match self {
            Bufs::Host {
                w,
                m,
                v,
                counters,
                lr_scale,
                ws,
            } => (
                w.as_mut_ptr(),
                m.as_mut_ptr(),
                v.as_mut_ptr(),
                unsafe { counters.as_mut_ptr().add(1) },
                counters.as_mut_ptr(),
                lr_scale.as_mut_ptr(),
                ws.as_mut_ptr(),
                ws.len(),
            ),
            Bufs::Dev {
                w,
                m,
                v,
                counters,
                lr_scale,
                ws,
            } => (
                w.ptr(),
                m.ptr(),
                v.ptr(),
                unsafe { counters.ptr::<i32>().add(1) },
                counters.ptr(),
                lr_scale.ptr(),
                ws.ptr(),
                ws.bytes,
            ),
        }
    }
    fn set_lr_scale(&mut self, s: f32) {
        match self {
            Bufs::Host { lr_scale, .. } => lr_scale[0] = s,
            Bufs::Dev { lr_scale, .. } => lr_scale.write(as_bytes(&[s])),
        }
    }
    /// (W, M, V, counters) as bytes.
    fn read(&self) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
        match self {
            Bufs::Host {
                w, m, v, counters, ..
            } => (w.clone(), m.clone(), v.clone(), as_bytes(counters).to_vec()),
            Bufs::Dev {
                w, m, v, counters, ..
            } => (w.bytes(), m.bytes(), v.bytes(), counters.bytes()),
        }
    }
}

fn compare(what: &str, cpu: &Bufs, gpu: &Bufs, w_dt: Dtype, s_dt: Dtype) {
    let (cw, cm, cv, cc) = cpu.read();
    let (gw, gm, gv, gc) = gpu.read();
    assert_same_bits(&format!("W, {what}"), &gw, &cw, w_dt.size());
    assert_same_bits(&format!("M, {what}"), &gm, &cm, s_dt.size());
    assert_same_bits(&format!("V, {what}"), &gv, &cv, s_dt.size());
    assert_same_bits(&format!("outcome and step counts, {what}"), &gc, &cc, 4);
}

#[allow(clippy::too_many_arguments)]
fn sparse_adamw_step(
    ctx: *const grass_context,
    cfg: &grass_adamw_config,
    m: usize,
    n: usize,
    side: grass_side,
    r: usize,
    w_dt: Dtype,
    b: &mut Bufs,
    idx: *const i32,
    scales: *const f32,
    g: *const f32,
    lr: f32,
    use_scale: bool,
) {
    let (w, ms, vs, step, skipped, lr_scale, ws, wsb) = b.ptrs();
    ok(unsafe {
        grass_sparse_adamw_step(
            ctx,
            cfg,
            m as i64,
            n as i64,
            side,
            r as i64,
            code(w_dt),
            w.cast(),
            idx,
            scales,
            g,
            ms.cast(),
            vs.cast(),
            step,
            lr,
            if use_scale {
                lr_scale
            } else {
                std::ptr::null_mut()
            },
            skipped,
            ws.cast(),
            wsb,
            std::ptr::null_mut(),
        )
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_adamw_step_matches_the_host_bit_for_bit() {
    let gpu_ = gpu("sparse_adamw_step_matches_the_host_bit_for_bit");
    let mut rng = Rng::new(6);
    // (m, n, r), r capped at d: repeated rows, r = 1, r = d, k = 1, sizes off the block of 256.
    for (m, n, r0, side) in [(40usize, 24usize, 10usize), (1, 37, 1), (300, 2, 300)]
        .into_iter()
        .flat_map(|(m, n, r)| [GRASS_SIDE_ROWS, GRASS_SIDE_COLS].map(|s| (m, n, r, s)))
    {
        let (d, k) = if side == GRASS_SIDE_ROWS {
            (m, n)
        } else {
            (n, m)
        };
        let r = r0.min(d);
        for w_dt in DTYPES {
            for s_dt in STATES {
                for decay in [GRASS_DECAY_OFF, GRASS_DECAY_SELECTED, GRASS_DECAY_DENSE] {
                    // counts 1..7 over the steps: rows ramping and rows past a warm-up of 5
                    let cfg = grass_adamw_config {
                        row_warmup: if decay == GRASS_DECAY_SELECTED { 0 } else { 5 },
                        ..adamw_config(decay, s_dt, GRASS_REFRESH_RESET)
                    };
                    let w0 = encode(&rng.normals(m * n), w_dt);
                    let idx = rng.sorted_indices(r, d); // repeats allowed: one run per row
                    let scales: Vec<f32> = (0..r).map(|_| 0.5 + rng.unit() as f32).collect();
                    let mut wsb = 0;
                    ok(unsafe {
                        grass_sparse_adamw_workspace_size(
                            gpu_.cuda, m as i64, n as i64, side, r as i64, &mut wsb,
                        )
                    });
                    // rows at different step counts, as after a refresh with carry
                    let steps0: Vec<i32> = (0..r).map(|j| (j % 4) as i32).collect();
                    let mut cpu = Bufs::new(false, &w0, r * k * s_dt.size(), 0, &steps0);
                    let mut dev = Bufs::new(true, &w0, r * k * s_dt.size(), wsb, &steps0);
                    let (didx, dsc) = (DevBuf::from(&idx), DevBuf::from(&scales));
                    for t in 0..4 {
                        let mut g = rng.normals(r * k);
                        let lr_scale = if t == 2 { 0.5 } else { 1.0 };
                        if t == 3 {
                            g[r * k / 2] = f32::NAN; // skipped: nothing but the flag changes
                        }
                        cpu.set_lr_scale(lr_scale);
                        dev.set_lr_scale(lr_scale);
                        let dg = DevBuf::from(&g);
                        sparse_adamw_step(
                            gpu_.cpu,
                            &cfg,
                            m,
                            n,
                            side,
                            r,
                            w_dt,
                            &mut cpu,
                            idx.as_ptr(),
                            scales.as_ptr(),
                            g.as_ptr(),
                            1e-2,
                            t % 2 == 0,
                        );
                        sparse_adamw_step(
                            gpu_.cuda,
                            &cfg,
                            m,
                            n,
                            side,
                            r,
                            w_dt,
                            &mut dev,
                            didx.ptr(),
                            dsc.ptr(),
                            dg.ptr(),
                            1e-2,
                            t % 2 == 0,
                        );
                        let what = format!(
                            "{m}x{n} r={r} side {side} W {w_dt:?} state {s_dt:?} decay {decay} step {t}"
                        );
                        compare(&what, &cpu, &dev, w_dt, s_dt);
                    }
                    let (_, _, _, c) = dev.read();
                    let want: Vec<i32> = std::iter::once(GRASS_STEP_SKIPPED_NONFINITE)
                        .chain(steps0.iter().map(|t| t + 3))
                        .collect();
                    assert_eq!(
                        from_bytes::<i32>(&c),
                        want,
                        "three steps applied, the last skipped"
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_non_finite_learning_rate_scale_skips_the_step() {
    let gpu_ = gpu("a_non_finite_learning_rate_scale_skips_the_step");
    let mut rng = Rng::new(7);
    let (m, n, r) = (8usize, 6usize, 3usize);
    let cfg = adamw_config(GRASS_DECAY_DENSE, Dtype::F32, GRASS_REFRESH_RESET);
    let w0 = encode(&rng.normals(m * n), Dtype::F32);
    let mut wsb = 0;
    ok(unsafe {
        grass_sparse_adamw_workspace_size(
            gpu_.cuda,
            m as i64,
            n as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            &mut wsb,
        )
    });
    let mut dev = Bufs::new(true, &w0, r * n * 4, wsb, &[0; 3]);
    dev.set_lr_scale(f32::INFINITY);
    let (didx, dsc, dg) = (
        DevBuf::from(&[0i32, 2, 5]),
        DevBuf::from(&[1f32; 3]),
        DevBuf::from(&rng.normals(r * n)),
    );
    sparse_adamw_step(
        gpu_.cuda,
        &cfg,
        m,
        n,
        GRASS_SIDE_ROWS,
        r,
        Dtype::F32,
        &mut dev,
        didx.ptr(),
        dsc.ptr(),
        dg.ptr(),
        1e-2,
        true,
    );
    let (w, mm, _, c) = dev.read();
    assert_eq!(w, w0, "W must be untouched");
    assert!(mm.iter().all(|&x| x == 0), "M must be untouched");
    assert_eq!(
        from_bytes::<i32>(&c),
        vec![GRASS_STEP_SKIPPED_NONFINITE, 0, 0, 0]
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_indices_step_counts_or_scales_skip_the_step_on_the_device() {
    let gpu_ = gpu("bad_indices_step_counts_or_scales_skip_the_step_on_the_device");
    let mut rng = Rng::new(8);
    let (m, n, r) = (8usize, 6usize, 3usize);
    let cfg = adamw_config(GRASS_DECAY_OFF, Dtype::F32, GRASS_REFRESH_RESET);
    let w0 = encode(&rng.normals(m * n), Dtype::F32);
    let mut wsb = 0;
    ok(unsafe {
        grass_sparse_adamw_workspace_size(
            gpu_.cuda,
            m as i64,
            n as i64,
            GRASS_SIDE_ROWS,
            r as i64,
            &mut wsb,
        )
    });
    // (indices, step counts, scales, outcome): unsorted or out-of-range indices, a negative
    // count, a non-finite scale (a CPU context rejects each with a status); each is skipped
    // with its own outcome, W, M and the counts left as they were
    let one = [1f32; 3];
    let cases = [
        ([2i32, 1, 5], [0i32; 3], one, GRASS_STEP_SKIPPED_BAD_INDICES),
        ([0, 2, 8], [0; 3], one, GRASS_STEP_SKIPPED_BAD_INDICES),
        ([-1, 2, 5], [0; 3], one, GRASS_STEP_SKIPPED_BAD_INDICES),
        (
            [0, 2, 5],
            [4, -1, 2],
            one,
            GRASS_STEP_SKIPPED_BAD_STEP_COUNT,
        ),
        (
            [0, 2, 5],
            [0; 3],
            [1.0, f32::NAN, 1.0],
            GRASS_STEP_SKIPPED_NONFINITE,
        ),
        (
            [0, 2, 5],
            [0; 3],
            [1.0, 1.0, f32::INFINITY],
            GRASS_STEP_SKIPPED_NONFINITE,
        ),
    ];
    for (idx, steps, scales, outcome) in cases {
        let mut dev = Bufs::new(true, &w0, r * n * 4, wsb, &steps);
        let (didx, dsc, dg) = (
            DevBuf::from(&idx),
            DevBuf::from(&scales),
            DevBuf::from(&rng.normals(r * n)),
        );
        sparse_adamw_step(
            gpu_.cuda,
            &cfg,
            m,
            n,
            GRASS_SIDE_ROWS,
            r,
            Dtype::F32,
            &mut dev,
            didx.ptr(),
            dsc.ptr(),
            dg.ptr(),
            1e-2,
            false,
        );
        let (w, mm, _, c) = dev.read();
        let what = format!("indices {idx:?}, counts {steps:?}, scales {scales:?}");
        assert_eq!(w, w0, "{what}: W must be untouched");
        assert!(mm.iter().all(|&x| x == 0), "{what}: M must be untouched");
        let want: Vec<i32> = std::iter::once(outcome).chain(steps).collect();
        assert_eq!(from_bytes::<i32>(&c), want, "{what}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn adamw_step_matches_the_host_bit_for_bit() {
    let gpu_ = gpu("adamw_step_matches_the_host_bit_for_bit");
    let mut rng = Rng::new(9);
    for numel in [1000usize, 1_500_007, 1] {
        for w_dt in DTYPES {
            for g_dt in DTYPES {
                for s_dt in STATES {
                    for decay in [GRASS_DECAY_OFF, GRASS_DECAY_SELECTED] {
                        if numel != 1000 && (g_dt != w_dt || decay == GRASS_DECAY_OFF) {
                            continue; // the other sizes check the grid stride once per pair
                        }
                        let cfg = adamw_config(decay, s_dt, GRASS_REFRESH_RESET);
                        let w0 = encode(&rng.normals(numel), w_dt);
                        let mut wsb = 0;
                        ok(unsafe {
                            grass_adamw_workspace_size(gpu_.cuda, numel as i64, &mut wsb)
                        });
                        let mut cpu = Bufs::new(false, &w0, numel * s_dt.size(), 0, &[0]);
                        let mut dev = Bufs::new(true, &w0, numel * s_dt.size(), wsb, &[0]);
                        for t in 0..3 {
                            let mut g = rng.normals(numel);
                            if t == 2 {
                                g[numel - 1] = f32::INFINITY;
                            }
                            let g = encode(&g, g_dt);
                            let dg = DevBuf::from_bytes(&g);
                            for (ctx, b, gp) in [
                                (gpu_.cpu, &mut cpu, g.as_ptr()),
                                (gpu_.cuda, &mut dev, dg.ptr::<u8>() as *const u8),
                            ] {
                                let (w, ms, vs, step, skipped, lr_scale, ws, wsl) = b.ptrs();
                                ok(unsafe {
                                    grass_adamw_step(
                                        ctx,
                                        &cfg,
                                        numel as i64,
                                        code(w_dt),
                                        w.cast(),
                                        code(g_dt),
                                        gp.cast(),
                                        ms.cast(),
                                        vs.cast(),
                                        step,
                                        3e-3,
                                        lr_scale,
                                        skipped,
                                        ws.cast(),
                                        wsl,
                                        std::ptr::null_mut(),
                                    )
                                });
                            }
                            let what = format!("numel {numel} W {w_dt:?} grad {g_dt:?} state {s_dt:?} decay {decay} step {t}");
                            compare(&what, &cpu, &dev, w_dt, s_dt);
                        }
                    }
                }
            }
        }
    }
}

/// One refresh on both backends from the same states; M, V and the step counts must agree.
#[allow(clippy::too_many_arguments)]
fn check_refresh(
    gpu_: &Gpu,
    cfg: &grass_adamw_config,
    r: usize,
    k: usize,
    old: Option<&[i32]>,
    new: &[i32],
    ms: &[u8],
    vs: &[u8],
    what: &str,
) {
    let s_size = if cfg.state_dtype == GRASS_DTYPE_F32 {
        4
    } else {
        2
    };
    let mut wsb = 0;
    ok(unsafe {
        grass_state_refresh_workspace_size(
            gpu_.cuda,
            cfg.refresh_mode,
            cfg.state_dtype,
            r as i64,
            k as i64,
            &mut wsb,
        )
    });
    let mut cws = 0;
    ok(unsafe {
        grass_state_refresh_workspace_size(
            gpu_.cpu,
            cfg.refresh_mode,
            cfg.state_dtype,
            r as i64,
            k as i64,
            &mut cws,
        )
    });
    let steps0: Vec<i32> = (0..r as i32).map(|j| 5 + j).collect();
    let (mut hm, mut hv, mut hsteps, mut hws) =
        (ms.to_vec(), vs.to_vec(), steps0.clone(), vec![0u8; cws]);
    ok(unsafe {
        grass_state_refresh(
            gpu_.cpu,
            cfg.refresh_mode,
            cfg.state_dtype,
            r as i64,
            k as i64,
            old.map_or(std::ptr::null(), |o| o.as_ptr()),
            new.as_ptr(),
            hm.as_mut_ptr().cast(),
            hv.as_mut_ptr().cast(),
            hsteps.as_mut_ptr(),
            hws.as_mut_ptr().cast(),
            hws.len(),
            std::ptr::null_mut(),
        )
    });
    let dold = old.map(DevBuf::from);
    let dnew = DevBuf::from(new);
    let (dm, dv, dstep, dws) = (
        DevBuf::from_bytes(ms),
        DevBuf::from_bytes(vs),
        DevBuf::from(&steps0),
        DevBuf::poisoned(wsb),
    );
    ok(unsafe {
        grass_state_refresh(
            gpu_.cuda,
            cfg.refresh_mode,
            cfg.state_dtype,
            r as i64,
            k as i64,
            dold.as_ref().map_or(std::ptr::null_mut(), |o| o.ptr()),
            dnew.ptr(),
            dm.void(),
            dv.void(),
            dstep.ptr(),
            dws.void(),
            wsb,
            std::ptr::null_mut(),
        )
    });
    assert_same_bits(&format!("M, {what}"), &dm.bytes(), &hm, s_size);
    assert_same_bits(&format!("V, {what}"), &dv.bytes(), &hv, s_size);
    assert_eq!(dstep.i32s(), hsteps, "step counts, {what}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn state_refresh_matches_the_host_bit_for_bit() {
    let gpu_ = gpu("state_refresh_matches_the_host_bit_for_bit");
    let mut rng = Rng::new(10);
    let (r, k) = (12usize, 7usize);
    let old = vec![0i32, 2, 2, 2, 5, 6, 9, 9, 11, 15, 15, 20];
    let new = vec![1i32, 2, 2, 5, 5, 7, 9, 9, 9, 15, 20, 21];
    for s_dt in STATES {
        for mode in [GRASS_REFRESH_RESET, GRASS_REFRESH_CARRY] {
            for with_old in [true, false] {
                let cfg = adamw_config(GRASS_DECAY_OFF, s_dt, mode);
                let ms = encode(&rng.normals(r * k), s_dt);
                let vs = encode(
                    &rng.normals(r * k).iter().map(|x| x * x).collect::<Vec<_>>(),
                    s_dt,
                );
                let what = format!("state {s_dt:?} mode {mode} old {with_old}");
                let old = with_old.then_some(&old[..]);
                check_refresh(&gpu_, &cfg, r, k, old, &new, &ms, &vs, &what);
            }
        }
    }
    // r = 1, k = 1, rows wider than a block, and more rows than the carry kernel looks up
    // at a time (1024), with random selections.
    for &(r, k, d) in &[
        (1usize, 1usize, 3usize),
        (1, 300, 1),
        (9, 300, 4),
        (200, 3, 150),
        (2500, 1100, 1800),
        (3000, 2, 600),
    ] {
        for s_dt in STATES {
            let cfg = adamw_config(GRASS_DECAY_OFF, s_dt, GRASS_REFRESH_CARRY);
            let (old, new) = (rng.sorted_indices(r, d), rng.sorted_indices(r, d));
            let ms = encode(&rng.normals(r * k), s_dt);
            let vs = encode(&rng.normals(r * k), s_dt);
            let what = format!("r={r} k={k} d={d} state {s_dt:?} old {old:?} new {new:?}");
            check_refresh(&gpu_, &cfg, r, k, Some(&old), &new, &ms, &vs, &what);
        }
    }
}
