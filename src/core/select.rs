//! Choosing the r projected indices and their scales from row scores (docs/api.md, "Selection").
//!
//! Scores that are NaN, infinite or negative count as zero (such a row is never preferred).
//! When no score is positive the distribution falls back to uniform, so a selection always
//! returns `r` valid indices with finite scales. Outputs are sorted by index (duplicates of
//! `multinomial` are adjacent), which lets the update kernels handle repeated rows in one place.

use crate::core::config::{Method, Scaling, Selection};
use crate::core::error::Result;
use crate::core::rng::{Purpose, Stream};
use crate::core::scratch::{bytes, Carve, Plan};

/// Scratch of [`select`] for `d` scores: weights, their auxiliary copy, sort keys and order.
struct Layout {
    w: usize,
    aux: usize,
    keys: usize,
    order: usize,
}

fn layout(plan: &mut Plan, d: usize) -> Layout {
    Layout {
        w: plan.take(bytes(d, 8)),
        aux: plan.take(bytes(d, 8)),
        keys: plan.take(bytes(d, 8)),
        order: plan.take(bytes(d, 4)),
    }
}

/// Scratch bytes [`select`] needs for `d` scores.
pub fn workspace_size(d: usize, _rank: usize) -> usize {
    let mut plan = Plan::sizing();
    layout(&mut plan, d);
    plan.size()
}

fn sanitized_weight(s: f32, power: u32) -> f64 {
    if !(s.is_finite() && s > 0.0) {
        return 0.0;
    }
    let s = s as f64;
    if power == 1 {
        s
    } else {
        s * s
    }
}

fn scale_from_prob(p: f64) -> f32 {
    let rho = 1.0 / p.sqrt();
    (rho.min(f32::MAX as f64)) as f32
}

/// Selects `sel.rank` indices out of `scores.len()` for the given refresh.
pub fn select(
    scores: &[f32],
    sel: &Selection,
    refresh_index: u32,
    indices: &mut [i32],
    scales: &mut [f32],
    workspace: &mut [u8],
) -> Result<()> {
    let d = scores.len();
    let r = sel.rank;
    sel.validate(d)?;
    debug_assert!(indices.len() == r && scales.len() == r);
    let mut plan = Plan::within(workspace.as_ptr() as usize, workspace.len());
    let l = layout(&mut plan, d);
    plan.check()?;
    let mut ws = Carve::new(workspace);
    let w: &mut [f64] = ws.at(l.w, d)?;
    let aux: &mut [f64] = ws.at(l.aux, d)?;
    let keys: &mut [u64] = ws.at(l.keys, d)?;
    let order: &mut [u32] = ws.at(l.order, d)?;
    let rng = Stream {
        seed: sel.seed,
        layer_id: sel.layer_id,
        refresh_index,
    };

    let uniform = matches!(sel.method, Method::Uniform | Method::UniformNr);
    let mut total = 0.0f64;
    for (wi, &s) in w.iter_mut().zip(scores) {
        *wi = if uniform {
            1.0
        } else {
            sanitized_weight(s, sel.power)
        };
        total += *wi;
    }
    if !(total > 0.0 && total.is_finite()) {
        w.iter_mut().for_each(|x| *x = 1.0);
        total = d as f64;
    }

    match sel.method {
        Method::TopR => {
            for (i, o) in order.iter_mut().enumerate() {
                *o = i as u32;
            }
            let by_weight = |a: &u32, b: &u32| {
                w[*b as usize]
                    .partial_cmp(&w[*a as usize])
                    .unwrap()
                    .then(a.cmp(b))
            };
            if r < d {
                order.select_nth_unstable_by(r - 1, by_weight);
            }
            for j in 0..r {
                indices[j] = order[j] as i32;
                scales[j] = 1.0;
            }
        }
        Method::Uniform => {
            let rho = ((d as f64) / (r as f64)).sqrt() as f32;
            for j in 0..r {
                let u = rng.uniform(Purpose::Draw, j as u32);
                indices[j] = ((u * d as f64) as usize).min(d - 1) as i32;
                scales[j] = rho;
            }
        }
        Method::Multinomial => {
            let cum = aux;
            let mut acc = 0.0;
            for i in 0..d {
                acc += w[i];
                cum[i] = acc;
            }
            for j in 0..r {
                let t = rng.uniform(Purpose::Draw, j as u32) * acc;
                let mut i = cum.partition_point(|&c| c <= t).min(d - 1);
                while w[i] == 0.0 && i > 0 {
                    i -= 1; // rounding pushed t past the last positive weight
                }
                indices[j] = i as i32;
                scales[j] = scale_from_prob(r as f64 * (w[i] / total));
            }
        }
        Method::MultinomialNr | Method::UniformNr => {
            let pi = aux;
            inclusion_probabilities(w, total, r, order, pi);
            systematic(pi, r, &rng, keys, indices);
            for j in 0..r {
                let i = indices[j] as usize;
                scales[j] = if sel.method == Method::UniformNr {
                    ((d as f64) / (r as f64)).sqrt() as f32
                } else {
                    scale_from_prob(pi[i])
                };
            }
        }
    }
    if sel.scaling == Scaling::None {
        scales.iter_mut().for_each(|s| *s = 1.0);
    }
    sort_pairs(indices, scales, keys);
    Ok(())
}

/// `π_i = min(1, c·w_i)` with `Σπ = r` (water-filling over the largest weights). When fewer than
/// `r` weights are positive, those get `π = 1` and the rest is spread evenly over the zero rows.
pub fn inclusion_probabilities(w: &[f64], total: f64, r: usize, order: &mut [u32], pi: &mut [f64]) {
    let d = w.len();
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    order.sort_unstable_by(|a, b| {
        w[*b as usize]
            .partial_cmp(&w[*a as usize])
            .unwrap()
            .then(a.cmp(b))
    });
    let nnz = w.iter().filter(|&&x| x > 0.0).count();
    let mut rem = total;
    let mut k = 0;
    while k < r && k < nnz {
        let c = (r - k) as f64 / rem;
        if w[order[k] as usize] * c >= 1.0 {
            rem -= w[order[k] as usize];
            k += 1;
        } else {
            break;
        }
    }
    if k == nnz {
        let zero_pi = if d > nnz {
            (r - nnz) as f64 / (d - nnz) as f64
        } else {
            0.0
        };
        for i in 0..d {
            pi[i] = if w[i] > 0.0 { 1.0 } else { zero_pi };
        }
    } else {
        let c = (r - k) as f64 / rem;
        for i in 0..d {
            pi[i] = (c * w[i]).min(1.0);
        }
        for &o in &order[..k] {
            pi[o as usize] = 1.0;
        }
    }
}

/// Marks a key as taken: bit 31 is free because indices are below 2^31 (the random bits sit
/// above bit 32, so marking never changes the order or an index read before it).
const TAKEN: u64 = 1 << 31;

/// Systematic sampling over a random order: exactly `r` distinct indices, index `i` included
/// with probability `π_i`, written to `out` in the order they are taken. `keys` holds `π.len()`
/// entries of scratch.
pub fn systematic(pi: &[f64], r: usize, rng: &Stream, keys: &mut [u64], out: &mut [i32]) {
    for (i, key) in keys.iter_mut().enumerate() {
        *key = ((rng.bits(Purpose::Order, i as u32)[0] as u64) << 32) | i as u64;
    }
    keys.sort_unstable();
    let sum: f64 = keys.iter().map(|&k| pi[(k & 0xffff_ffff) as usize]).sum();
    let norm = r as f64 / sum;
    let u = rng.uniform(Purpose::Offset, 0);
    let (mut cum, mut next, mut chosen) = (0.0f64, 0usize, 0usize);
    for key in keys.iter_mut() {
        let i = (*key & 0xffff_ffff) as usize;
        cum += pi[i] * norm;
        if next < r && u + (next as f64) < cum {
            out[chosen] = i as i32;
            chosen += 1;
            *key |= TAKEN;
            next += 1;
            while next < r && u + (next as f64) < cum {
                next += 1; // an interval longer than 1 after rounding: never take a row twice
            }
        }
    }
    // Rounding can leave fewer than r picks; complete with the most probable rows not taken.
    while chosen < r {
        let mut best: Option<usize> = None;
        for (pos, key) in keys.iter().enumerate() {
            if key & TAKEN == 0 {
                let i = (key & 0xffff_ffff) as usize;
                if best.is_none_or(|b| pi[i] > pi[(keys[b] & 0xffff_ffff) as usize]) {
                    best = Some(pos);
                }
            }
        }
        let pos = best.expect("fewer than r rows available");
        out[chosen] = (keys[pos] & 0xffff_ffff) as i32;
        keys[pos] |= TAKEN;
        chosen += 1;
    }
}

/// Sorts (index, scale) pairs by index; `tmp` holds at least `indices.len()` entries.
fn sort_pairs(indices: &mut [i32], scales: &mut [f32], tmp: &mut [u64]) {
    let r = indices.len();
    for j in 0..r {
        tmp[j] = ((indices[j] as u64) << 32) | scales[j].to_bits() as u64;
    }
    tmp[..r].sort_unstable();
    for j in 0..r {
        indices[j] = (tmp[j] >> 32) as i32;
        scales[j] = f32::from_bits(tmp[j] as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inclusion weight above 1 (which rounding can produce) swallows two sampling points;
    /// the completion step must still return r distinct rows.
    #[test]
    fn systematic_completes_to_r_distinct_rows() {
        let pi = [2.0, 0.5, 0.5, 0.25];
        for refresh in 0..64 {
            let rng = Stream {
                seed: 5,
                layer_id: 1,
                refresh_index: refresh,
            };
            let mut keys = [0u64; 4];
            let mut out = [-1i32; 3];
            systematic(&pi, 3, &rng, &mut keys, &mut out);
            let mut seen = out.to_vec();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 3, "refresh {refresh}: {out:?}");
            assert!(out.contains(&0));
        }
    }
}
