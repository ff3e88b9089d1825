//! Row scores (`grass_row_scores`), computed straight from activations and output gradients
//! in row chunks: the `m x n` gradient never exists.

use crate::core::dtype::Dtype;
use crate::core::error::Result;
use crate::core::scratch::{bytes, Carve, Plan};
use crate::core::shape::Projected;
use crate::cpu::activations::{chunk_tokens, conversion_per_token, kept_f32, Act, Activations};
use crate::cpu::gemm::{matmul, View};

/// Rows of G per chunk: at most 8 MiB of f32 and at most a quarter of the rows, so even a
/// small layer never has its whole gradient in scratch.
fn chunk_rows(p: &Projected) -> usize {
    ((2usize << 20) / p.k).min(p.d.div_ceil(4)).max(1)
}

/// Scratch of [`row_scores`]: B's rows of one chunk of tokens in f32 when B is not already,
/// then that chunk of tokens of one chunk of A's columns, and one chunk of G's rows.
///
/// `conversion (tc·k·4 when X and dY are not f32) + tc·c·4 + c·k·4` with `c` = rows per chunk
/// (`c·k·4 ≤ 8 MiB`, `c ≤ d/4`) and `tc` = tokens per chunk (`tc·(conversion/token + c·4) ≤
/// 48 MiB`): at most 56 MiB plus alignment.
struct Layout {
    rows: usize,
    tokens: usize,
    conv: usize,
    cols: usize,
    out: usize,
}

fn layout(plan: &mut Plan, p: &Projected, b: usize, dtype: Dtype) -> Layout {
    let rows = chunk_rows(p);
    let conv_token = conversion_per_token(dtype, p.k);
    let tokens = chunk_tokens(b, conv_token.saturating_add(bytes(rows, 4)));
    Layout {
        rows,
        tokens,
        conv: plan.take(bytes(tokens, conv_token)),
        cols: plan.take(bytes(tokens.saturating_mul(rows), 4)),
        out: plan.take(bytes(rows.saturating_mul(p.k), 4)),
    }
}

pub fn scores_workspace_size(p: &Projected, b: usize, dtype: Dtype) -> usize {
    let mut plan = Plan::sizing();
    layout(&mut plan, p, b, dtype);
    plan.size()
}

/// Calls `f(i0, rows, chunk)` for consecutive chunks of the projected-side gradient's rows:
/// `chunk` holds rows `i0..i0 + rows` of G (`rows x k`, f32), each summed over chunks of
/// tokens into scratch, so no more than one chunk of G exists at a time.
pub(crate) fn for_each_grad_chunk(
    p: &Projected,
    act: &Activations<'_>,
    ws: &mut [u8],
    mut f: impl FnMut(usize, usize, &[f32]),
) -> Result<()> {
    let (a, b) = act.operands(p);
    let (bt, d, k) = (act.b, p.d, p.k);
    let mut plan = Plan::within(ws.as_ptr() as usize, ws.len());
    let l = layout(&mut plan, p, bt, b.dtype());
    plan.check()?;
    let (c, tc) = (l.rows, l.tokens);
    let mut ws = Carve::new(ws);
    let conv: &mut [f32] = ws.at(l.conv, conversion_per_token(b.dtype(), k) / 4 * tc)?;
    let cols: &mut [f32] = ws.at(l.cols, tc * c)?;
    let out: &mut [f32] = ws.at(l.out, c * k)?;
    // with a single token chunk B is converted once, not once per chunk of rows
    let once = tc >= bt;
    if once && b.dtype() != Dtype::F32 {
        kept_f32(b, k, 0, bt, conv);
    }
    let mut i0 = 0;
    while i0 < d {
        let cn = c.min(d - i0);
        let mut t0 = 0;
        while t0 < bt {
            let tn = tc.min(bt - t0);
            // A's columns i0..i0 + cn of these tokens: read in place when A is f32 (the GEMM
            // packs strided operands itself), else gathered into f32 scratch
            let a_chunk = match a {
                Act::F32(s) => View {
                    data: &s[t0 * d + i0..(t0 + tn - 1) * d + i0 + cn],
                    rows: cn,
                    cols: tn,
                    rs: 1,
                    cs: d,
                },
                _ => {
                    for t in 0..tn {
                        for i in 0..cn {
                            cols[t * cn + i] = a.get((t0 + t) * d + i0 + i);
                        }
                    }
                    View::transposed(&cols[..tn * cn], tn, cn)
                }
            };
            let bmat: &[f32] = match b {
                Act::F32(s) => &s[t0 * k..(t0 + tn) * k],
                _ if once => &conv[..bt * k],
                _ => kept_f32(b, k, t0, tn, conv),
            };
            matmul(
                a_chunk,
                View::row_major(bmat, tn, k),
                &mut out[..cn * k],
                t0 > 0,
            );
            t0 += tn;
        }
        f(i0, cn, &out[..cn * k]);
        i0 += cn;
    }
    Ok(())
}

/// `scores[i] = ‖row i of the projected-side gradient‖₂` for all `d` rows: per chunk of rows,
/// the chunk of G is summed over chunks of tokens.
pub fn row_scores(
    p: &Projected,
    act: &Activations<'_>,
    scores: &mut [f32],
    ws: &mut [u8],
) -> Result<()> {
    let k = p.k;
    for_each_grad_chunk(p, act, ws, |i0, cn, out| {
        for i in 0..cn {
            let s: f64 = out[i * k..(i + 1) * k]
                .iter()
                .map(|&v| v as f64 * v as f64)
                .sum();
            scores[i0 + i] = s.sqrt() as f32;
        }
    })
}
