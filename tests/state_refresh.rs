//! `grass_state_refresh` on the CPU backend: carry keeps exactly the surviving rows, in place,
//! and each row then runs as its own Adam.

mod common;

use std::ptr;

use common::*;
use grass::ffi::*;

/// Carry moves rows in place; on random selections with repeats, rows moving both ways and
/// rows leaving, it must put every row where an out-of-place merge of the two lists says.
#[test]
fn carry_in_place_matches_an_out_of_place_merge() {
    let ctx = Ctx::cpu();
    let (r, k) = (24usize, 3usize);
    let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let mut rng = Rng(31);
    for trial in 0..200 {
        let d = [2u64, 5, 12, 40][trial % 4];
        let sorted = |rng: &mut Rng| {
            let mut v: Vec<i32> = (0..r).map(|_| (rng.next_u64() % d) as i32).collect();
            v.sort_unstable();
            v
        };
        let (old, new) = (sorted(&mut rng), sorted(&mut rng));
        let (m0, v0) = (rng.vec(r * k), rng.vec(r * k));
        let steps0: Vec<i32> = (0..r as i32).map(|j| 1 + j).collect();
        let (mut ms, mut vs, mut steps) = (m0.clone(), v0.clone(), steps0.clone());
        refresh(
            &ctx,
            &cfg,
            k,
            Some(&old),
            &new,
            &mut ms,
            &mut vs,
            &mut steps,
        );
        let mut a = 0;
        for (b, &val) in new.iter().enumerate() {
            while a < r && old[a] < val {
                a += 1;
            }
            let from = (a < r && old[a] == val).then(|| {
                a += 1;
                a - 1
            });
            let row = |x: &[f32], i: usize| x[i * k..(i + 1) * k].to_vec();
            let what = format!("trial {trial}: new row {b} of {new:?} from {old:?}");
            match from {
                Some(f) => {
                    assert_eq!(row(&ms, b), row(&m0, f), "M, {what}");
                    assert_eq!(row(&vs, b), row(&v0, f), "V, {what}");
                    assert_eq!(steps[b], steps0[f], "count, {what}");
                }
                None => {
                    assert!(
                        row(&ms, b).iter().chain(&row(&vs, b)).all(|&x| x == 0.0),
                        "{what}"
                    );
                    assert_eq!(steps[b], 0, "count, {what}");
                }
            }
        }
    }
}

#[test]
fn carry_keeps_exactly_the_surviving_rows() {
    let ctx = Ctx::cpu();
    let (r, k) = (4usize, 3usize);
    let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let old = [1i32, 3, 3, 8];
    let new = [0i32, 3, 8, 9];
    let m0: Vec<f32> = (0..r * k).map(|e| e as f32 + 1.0).collect();
    let v0: Vec<f32> = (0..r * k).map(|e| e as f32 + 100.0).collect();
    let (mut ms, mut vs, mut steps) = (m0.clone(), v0.clone(), [5i32, 6, 7, 8]);
    refresh(
        &ctx,
        &cfg,
        k,
        Some(&old),
        &new,
        &mut ms,
        &mut vs,
        &mut steps,
    );
    // new row 1 (index 3) takes old row 1 (first 3), new row 2 (index 8) old row 3; others zero
    let want = |src: &[f32]| -> Vec<f32> {
        let mut o = vec![0f32; r * k];
        o[k..2 * k].copy_from_slice(&src[k..2 * k]);
        o[2 * k..3 * k].copy_from_slice(&src[3 * k..4 * k]);
        o
    };
    assert_eq!(ms, want(&m0));
    assert_eq!(vs, want(&v0));
    assert_eq!(steps, [0, 6, 8, 0], "step counts move with their rows");
    cfg.refresh_mode = GRASS_REFRESH_RESET;
    refresh(
        &ctx,
        &cfg,
        k,
        Some(&old),
        &new,
        &mut ms,
        &mut vs,
        &mut steps,
    );
    assert!(ms.iter().chain(&vs).all(|&v| v == 0.0));
    assert_eq!(steps, [0; 4]);
}

/// With carry every state row is an Adam parameter of its own: rows that stay selected keep
/// their moments and step counts, entering rows start fresh (their first update is ≈ sign(g),
/// not inflated by the layer's step count). Checked against a per-row f64 reference over
/// refreshes whose selections overlap, leave and re-enter.
#[test]
fn carry_runs_each_row_as_its_own_adam() {
    let ctx = Ctx::cpu();
    let (m, n, r) = (12usize, 5usize, 4usize);
    let mut cfg = adamw(0.0, GRASS_DECAY_OFF);
    cfg.refresh_mode = GRASS_REFRESH_CARRY;
    let mut rng = Rng(21);
    let w0 = rng.vec(m * n);
    let mut w = w0.clone();
    let (mut ms, mut vs, mut steps) = (vec![0f32; r * n], vec![0f32; r * n], vec![0i32; r]);
    let mut want_w: Vec<f64> = w0.iter().map(|&v| v as f64).collect();
    let (mut ref_m, mut ref_v, mut ref_t) = (vec![0f64; m * n], vec![0f64; m * n], vec![0i32; m]);
    let (b1, b2, eps, alpha) = (
        cfg.beta1 as f64,
        cfg.beta2 as f64,
        cfg.eps as f64,
        cfg.alpha as f64,
    );
    // the default row warm-up ramps each row by its own count, as the bias corrections do
    let warmup = cfg.row_warmup as f64;
    assert!(warmup > 0.0);
    let sc = vec![1.0f32; r];
    let lr = 1e-2f32;
    let selections: [[i32; 4]; 4] = [[0, 3, 5, 9], [3, 5, 7, 11], [0, 3, 7, 9], [0, 3, 7, 9]];
    let mut old: Option<[i32; 4]> = None;
    for sel in selections {
        refresh(
            &ctx,
            &cfg,
            n,
            old.as_ref().map(|o| &o[..]),
            &sel,
            &mut ms,
            &mut vs,
            &mut steps,
        );
        for i in 0..m {
            if !sel.contains(&(i as i32)) {
                ref_t[i] = 0;
                ref_m[i * n..(i + 1) * n].fill(0.0);
                ref_v[i * n..(i + 1) * n].fill(0.0);
            }
        }
        for _ in 0..6 {
            let g = rng.vec(r * n);
            sparse_adamw_step(
                &ctx,
                &cfg,
                (m, n),
                GRASS_SIDE_ROWS,
                GRASS_DTYPE_F32,
                w.as_mut_ptr().cast(),
                &sel,
                &sc,
                &g,
                (ms.as_mut_ptr().cast(), vs.as_mut_ptr().cast()),
                &mut steps,
                lr,
                ptr::null_mut(),
            );
            for (j, &i) in sel.iter().enumerate() {
                let i = i as usize;
                ref_t[i] += 1;
                let t = ref_t[i];
                for c in 0..n {
                    let (e, gv) = (i * n + c, g[j * n + c] as f64);
                    ref_m[e] = b1 * ref_m[e] + (1.0 - b1) * gv;
                    ref_v[e] = b2 * ref_v[e] + (1.0 - b2) * gv * gv;
                    let u = (ref_m[e] / (1.0 - b1.powi(t)))
                        / ((ref_v[e] / (1.0 - b2.powi(t))).sqrt() + eps);
                    want_w[e] -= lr as f64 * alpha * (t as f64 / warmup).min(1.0) * u;
                }
            }
        }
        let counts: Vec<i32> = sel.iter().map(|&i| ref_t[i as usize]).collect();
        assert_eq!(steps, counts, "step counts after selection {sel:?}");
        for e in 0..m * n {
            assert!(
                (w[e] as f64 - want_w[e]).abs() < 2e-5,
                "W[{e}] = {} but the per-row reference gives {} (selection {sel:?})",
                w[e],
                want_w[e]
            );
        }
        old = Some(sel);
    }
    assert_eq!(
        steps,
        [12, 24, 18, 12],
        "rows 0, 3, 7, 9 were selected 2, 4, 3, 2 times"
    );
}
