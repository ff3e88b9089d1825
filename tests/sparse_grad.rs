//! `grass_sparse_grad` on the CPU backend: the selected, scaled rows of G against a naive f64
//! reference, accumulation, and half-precision inputs.

mod common;

use std::ptr;

use common::*;
use grass::core::dtype::{tolerance, Dtype};
use grass::ffi::*;

#[test]
fn sparse_grad_equals_selected_rows_of_g_and_accumulates() {
    let ctx = Ctx::cpu();
    for side in [GRASS_SIDE_ROWS, GRASS_SIDE_COLS] {
        let p = problem(31, 17, 13, 9);
        let (d, k) = if side == GRASS_SIDE_ROWS {
            (p.m, p.n)
        } else {
            (p.n, p.m)
        };
        let idx: Vec<i32> = vec![0, 3, 3, 7, (d - 1) as i32];
        let sc: Vec<f32> = vec![0.5, 1.5, -2.0, 1.0, 3.0];
        let mut g = vec![f32::NAN; idx.len() * k];
        sparse_grad(
            &ctx, p.m, p.n, p.b, side, &p.x, &p.dy, &idx, &sc, &mut g, false,
        );
        let mut want = vec![];
        for (j, &i) in idx.iter().enumerate() {
            want.extend(
                projected_row(&p, side, i as usize)
                    .iter()
                    .map(|v| v * sc[j] as f64),
            );
        }
        compare("g", &want, &g, tolerance(Dtype::F32, p.b)).unwrap();
        sparse_grad(
            &ctx, p.m, p.n, p.b, side, &p.x, &p.dy, &idx, &sc, &mut g, true,
        );
        let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
        compare("accumulated g", &twice, &g, tolerance(Dtype::F32, p.b)).unwrap();
    }
}

#[test]
fn half_precision_inputs_match_the_reference() {
    let ctx = Ctx::cpu();
    let p = problem(24, 40, 16, 3);
    for (dtype, code) in [
        (Dtype::Bf16, GRASS_DTYPE_BF16),
        (Dtype::F16, GRASS_DTYPE_F16),
    ] {
        let conv = |v: &[f32]| -> Vec<u16> {
            v.iter()
                .map(|&f| {
                    if dtype == Dtype::Bf16 {
                        half::bf16::from_f32(f).to_bits()
                    } else {
                        half::f16::from_f32(f).to_bits()
                    }
                })
                .collect()
        };
        let back = |v: &[u16]| -> Vec<f32> {
            v.iter()
                .map(|&b| {
                    if dtype == Dtype::Bf16 {
                        half::bf16::from_bits(b).to_f32()
                    } else {
                        half::f16::from_bits(b).to_f32()
                    }
                })
                .collect()
        };
        let (xh, dyh) = (conv(&p.x), conv(&p.dy));
        let gref = full_grad(&back(&xh), &back(&dyh), p.b, p.m, p.n);
        let idx = [1i32, 5, 9, 20];
        let sc = [1.0f32, 2.0, 0.5, 1.0];
        let mut ws = 0usize;
        let mut g = vec![f32::NAN; 4 * p.n];
        unsafe {
            check(grass_sparse_grad_workspace_size(
                ctx.0,
                24,
                40,
                16,
                GRASS_SIDE_ROWS,
                4,
                code,
                &mut ws,
            ))
            .unwrap();
            let mut w = vec![0u8; ws];
            check(grass_sparse_grad(
                ctx.0,
                24,
                40,
                16,
                GRASS_SIDE_ROWS,
                4,
                code,
                xh.as_ptr().cast(),
                dyh.as_ptr().cast(),
                idx.as_ptr(),
                sc.as_ptr(),
                g.as_mut_ptr(),
                0,
                w.as_mut_ptr().cast(),
                ws,
                ptr::null_mut(),
            ))
            .unwrap();
        }
        let want: Vec<f64> = idx
            .iter()
            .zip(sc)
            .flat_map(|(&i, s)| {
                gref[i as usize * p.n..(i as usize + 1) * p.n]
                    .iter()
                    .map(move |v| v * s as f64)
            })
            .collect();
        // inputs are exact in f32 after conversion; only the f32 accumulation rounds
        compare(dtype.name(), &want, &g, tolerance(Dtype::F32, p.b)).unwrap();
    }
}
