//! Projection and optimizer handles on CUDA against the same handles on the CPU, and the
//! state blob's round trip (CUDA to CUDA, and CUDA to CPU).

use grass::core::dtype::Dtype;
use grass::ffi::*;

use crate::adamw::adamw_config;
use crate::gpu::*;

pub fn projection_config(
    method: grass_method,
    rank: i64,
    refresh_every: i64,
) -> grass_projection_config {
    let mut cfg = std::mem::MaybeUninit::<grass_projection_config>::uninit();
    ok(unsafe { grass_projection_config_init(cfg.as_mut_ptr()) });
    let mut cfg = unsafe { cfg.assume_init() };
    cfg.method = method;
    cfg.rank = rank;
    cfg.refresh_every = refresh_every;
    cfg.seed = 1234;
    cfg.layer_id = 3;
    cfg
}

pub struct Optimizer(pub *mut grass_optimizer);

impl Drop for Optimizer {
    fn drop(&mut self) {
        unsafe { grass_optimizer_destroy(self.0) };
    }
}

pub fn sparse_optimizer(
    ctx: *const grass_context,
    p: &grass_projection_config,
    a: &grass_adamw_config,
    m: usize,
    n: usize,
    b: usize,
) -> Optimizer {
    let mut o = std::ptr::null_mut();
    ok(unsafe {
        grass_optimizer_create_sparse(
            ctx,
            p,
            a,
            m as i64,
            n as i64,
            b as i64,
            GRASS_DTYPE_F32,
            GRASS_DTYPE_F32,
            &mut o,
        )
    });
    Optimizer(o)
}

/// The selection of an optimizer's projection, read from its context's memory.
fn selection(o: &Optimizer, cuda: bool, r: usize) -> (Vec<i32>, Vec<f32>) {
    let mut p = std::ptr::null_mut();
    ok(unsafe { grass_optimizer_projection(o.0, &mut p) });
    let (mut i, mut s) = (std::ptr::null(), std::ptr::null());
    ok(unsafe { grass_projection_selection(p, &mut i, &mut s) });
    if cuda {
        (read_device(i, r), read_device(s, r))
    } else {
        unsafe {
            (
                std::slice::from_raw_parts(i, r).to_vec(),
                std::slice::from_raw_parts(s, r).to_vec(),
            )
        }
    }
}

/// One micro-batch on both optimizers with the same data; on a refresh the host's exact
/// scores go to both, so that both select the same rows.
fn backward_both(cpu: &Optimizer, dev: &Optimizer, rng: &mut Rng, m: usize, n: usize, b: usize) {
    let (x, dy) = (rng.normals(b * n), rng.normals(b * m));
    let mut due = 0;
    ok(unsafe { grass_optimizer_refresh_due(cpu.0, &mut due) });
    let mut scores: Vec<f32> = Vec::new();
    if due == 1 {
        let mut p = std::ptr::null_mut();
        ok(unsafe { grass_optimizer_projection(cpu.0, &mut p) });
        let mut info = std::mem::MaybeUninit::<grass_projection_info>::zeroed();
        unsafe { (*info.as_mut_ptr()).struct_size = std::mem::size_of::<grass_projection_info>() };
        ok(unsafe { grass_projection_get_info(p, info.as_mut_ptr()) });
        scores = vec![0.0; unsafe { info.assume_init() }.d as usize];
        ok(unsafe {
            grass_projection_scores(
                p,
                b as i64,
                x.as_ptr().cast(),
                dy.as_ptr().cast(),
                scores.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        });
    }
    let dscores = DevBuf::from(&scores);
    ok(unsafe {
        grass_optimizer_backward(
            cpu.0,
            b as i64,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            if due == 1 {
                scores.as_ptr()
            } else {
                std::ptr::null()
            },
            std::ptr::null_mut(),
        )
    });
    let (dx, ddy) = (DevBuf::from(&x), DevBuf::from(&dy));
    ok(unsafe {
        grass_optimizer_backward(
            dev.0,
            b as i64,
            dx.void(),
            ddy.void(),
            if due == 1 {
                dscores.ptr()
            } else {
                std::ptr::null()
            },
            std::ptr::null_mut(),
        )
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_optimizer_on_cuda_follows_the_host() {
    let g = gpu("sparse_optimizer_on_cuda_follows_the_host");
    let mut rng = Rng::new(11);
    let (m, n, b, r) = (64usize, 96usize, 20usize, 16usize);
    for method in [
        GRASS_METHOD_MULTINOMIAL_NR,
        GRASS_METHOD_MULTINOMIAL,
        GRASS_METHOD_TOP_R,
    ] {
        for refresh in [GRASS_REFRESH_RESET, GRASS_REFRESH_CARRY] {
            let pc = projection_config(method, r as i64, 3);
            let mut ac = adamw_config(GRASS_DECAY_SELECTED, Dtype::F32, refresh);
            ac.weight_decay = 0.01;
            let (cpu, dev) = (
                sparse_optimizer(g.cpu, &pc, &ac, m, n, b),
                sparse_optimizer(g.cuda, &pc, &ac, m, n, b),
            );
            let w0 = rng.normals(m * n);
            let mut hw = w0.clone();
            let dw = DevBuf::from(&w0);
            for step in 0..7 {
                for _ in 0..2 {
                    backward_both(&cpu, &dev, &mut rng, m, n, b);
                }
                let what = format!("method {method} refresh {refresh} step {step}");
                let (ci, cs) = selection(&cpu, false, r);
                let (gi, gs) = selection(&dev, true, r);
                assert_eq!(gi, ci, "indices, {what}");
                assert_same_bits(&format!("scales, {what}"), as_bytes(&gs), as_bytes(&cs), 4);
                ok(unsafe {
                    grass_optimizer_step(
                        cpu.0,
                        hw.as_mut_ptr().cast(),
                        std::ptr::null(),
                        1e-2,
                        std::ptr::null_mut(),
                    )
                });
                ok(unsafe {
                    grass_optimizer_step(
                        dev.0,
                        dw.void(),
                        std::ptr::null(),
                        1e-2,
                        std::ptr::null_mut(),
                    )
                });
                let dgot: Vec<f32> = dw.f32s().iter().zip(&w0).map(|(a, b)| a - b).collect();
                let dwant: Vec<f32> = hw.iter().zip(&w0).map(|(a, b)| a - b).collect();
                assert_close(&format!("W - W0, {what}"), &dgot, &dwant, 1e-4);
            }
        }
    }
}

fn export(o: &Optimizer) -> Vec<u8> {
    let mut bytes = 0;
    ok(unsafe { grass_optimizer_state_size(o.0, &mut bytes) });
    let mut blob = vec![0u8; bytes];
    ok(unsafe {
        grass_optimizer_export_state(o.0, blob.as_mut_ptr().cast(), bytes, std::ptr::null_mut())
    });
    blob
}

fn import(o: &Optimizer, blob: &[u8]) {
    ok(unsafe {
        grass_optimizer_import_state(o.0, blob.as_ptr().cast(), blob.len(), std::ptr::null_mut())
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn optimizer_state_round_trips_through_export_and_import() {
    let g = gpu("optimizer_state_round_trips_through_export_and_import");
    let mut rng = Rng::new(12);
    let (m, n, b, r) = (48usize, 32usize, 16usize, 8usize);
    let pc = projection_config(GRASS_METHOD_MULTINOMIAL, r as i64, 2);
    let ac = adamw_config(GRASS_DECAY_SELECTED, Dtype::Bf16, GRASS_REFRESH_CARRY);
    let a = sparse_optimizer(g.cuda, &pc, &ac, m, n, b);
    let w0 = rng.normals(m * n);
    let dw = DevBuf::from(&w0);
    for _ in 0..3 {
        let (dx, ddy) = (
            DevBuf::from(&rng.normals(b * n)),
            DevBuf::from(&rng.normals(b * m)),
        );
        ok(unsafe {
            grass_optimizer_backward(
                a.0,
                b as i64,
                dx.void(),
                ddy.void(),
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        });
        ok(unsafe {
            grass_optimizer_step(a.0, dw.void(), std::ptr::null(), 1e-2, std::ptr::null_mut())
        });
    }
    let blob = export(&a);
    let bopt = sparse_optimizer(g.cuda, &pc, &ac, m, n, b);
    import(&bopt, &blob);
    assert_same_bits("blob exported after import", &export(&bopt), &blob, 1);
    let copt = sparse_optimizer(g.cpu, &pc, &ac, m, n, b);
    import(&copt, &blob); // the layout is the same in host and device memory

    let w = dw.f32s();
    let (x, dy) = (rng.normals(b * n), rng.normals(b * m));
    let (dx, ddy) = (DevBuf::from(&x), DevBuf::from(&dy));
    let (wa, wb) = (DevBuf::from(&w), DevBuf::from(&w));
    let mut wc = w.clone();
    for (o, wp) in [(&a, wa.void()), (&bopt, wb.void())] {
        ok(unsafe {
            grass_optimizer_backward(
                o.0,
                b as i64,
                dx.void(),
                ddy.void(),
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        });
        ok(unsafe { grass_optimizer_step(o.0, wp, std::ptr::null(), 1e-2, std::ptr::null_mut()) });
    }
    ok(unsafe {
        grass_optimizer_backward(
            copt.0,
            b as i64,
            x.as_ptr().cast(),
            dy.as_ptr().cast(),
            std::ptr::null(),
            std::ptr::null_mut(),
        )
    });
    ok(unsafe {
        grass_optimizer_step(
            copt.0,
            wc.as_mut_ptr().cast(),
            std::ptr::null(),
            1e-2,
            std::ptr::null_mut(),
        )
    });
    assert_same_bits(
        "W after a step from the imported state",
        &wb.bytes(),
        &wa.bytes(),
        4,
    );
    let da: Vec<f32> = wa.f32s().iter().zip(&w).map(|(p, q)| p - q).collect();
    let dc: Vec<f32> = wc.iter().zip(&w).map(|(p, q)| p - q).collect();
    assert_close("host step from the CUDA state", &dc, &da, 1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_optimizer_on_cuda_matches_the_host_bit_for_bit() {
    let g = gpu("dense_optimizer_on_cuda_matches_the_host_bit_for_bit");
    let mut rng = Rng::new(13);
    let numel = 777usize;
    let ac = adamw_config(GRASS_DECAY_SELECTED, Dtype::F32, GRASS_REFRESH_RESET);
    let (mut co, mut go) = (std::ptr::null_mut(), std::ptr::null_mut());
    ok(unsafe {
        grass_optimizer_create_dense(
            g.cpu,
            &ac,
            numel as i64,
            GRASS_DTYPE_BF16,
            GRASS_DTYPE_F32,
            &mut co,
        )
    });
    ok(unsafe {
        grass_optimizer_create_dense(
            g.cuda,
            &ac,
            numel as i64,
            GRASS_DTYPE_BF16,
            GRASS_DTYPE_F32,
            &mut go,
        )
    });
    let (co, go) = (Optimizer(co), Optimizer(go));
    let mut hw = encode(&rng.normals(numel), Dtype::Bf16);
    let dw = DevBuf::from_bytes(&hw);
    for step in 0..4 {
        let grad = rng.normals(numel);
        let dg = DevBuf::from(&grad);
        ok(unsafe {
            grass_optimizer_step(
                co.0,
                hw.as_mut_ptr().cast(),
                grad.as_ptr().cast(),
                1e-3,
                std::ptr::null_mut(),
            )
        });
        ok(unsafe { grass_optimizer_step(go.0, dw.void(), dg.void(), 1e-3, std::ptr::null_mut()) });
        assert_same_bits(&format!("W after step {step}"), &dw.bytes(), &hw, 2);
    }
    let mut skipped = -1;
    ok(unsafe { grass_optimizer_last_step_skipped(go.0, &mut skipped, std::ptr::null_mut()) });
    assert_eq!(skipped, 0);
    assert_same_bits("dense state", &export(&go), &export(&co), 1);
}
