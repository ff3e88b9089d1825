/* grass_sparse_grad against a naive reference, with and without accumulation, both sides, every
 * activation dtype, and repeated indices (as multinomial sampling produces them):
 *   row j of g = scales[j] * sum_t A[t, indices[j]] * B[t, :]
 * with (A, B) = (dY, X) for side ROWS and (X, dY) for side COLS, i.e. g = P^T G. */
#include "testkit.h"

static void check_grad(grass_context* ctx, int64_t m, int64_t n, int64_t b, grass_side side,
                       grass_dtype dtype, int accumulate, uint64_t seed) {
  tk_rng rng = {seed};
  grass_side resolved = 0;
  int64_t d = 0, k = 0;
  TK_OK(grass_resolve_side(m, n, side, &resolved, &d, &k));
  const int64_t r = d >= 6 ? d / 2 : d;

  double* x = tk_doubles((size_t)(b * n));
  double* dy = tk_doubles((size_t)(b * m));
  void* xb = tk_random_tensor(&rng, dtype, (size_t)(b * n), 1.0f, x);
  void* dyb = tk_random_tensor(&rng, dtype, (size_t)(b * m), 1.0f, dy);

  /* sorted indices with a repeat, and scales like the sampling methods give */
  int32_t* idx = (int32_t*)malloc((size_t)r * sizeof(int32_t));
  float* scales = (float*)malloc((size_t)r * sizeof(float));
  for (int64_t j = 0; j < r; ++j) {
    idx[j] = (int32_t)((j * d) / r);
    scales[j] = (float)(0.5 + 2.0 * tk_uniform(&rng));
  }
  if (r >= 3) idx[2] = idx[1];

  size_t g_elems = (size_t)(r * k);
  float* g = (float*)malloc(g_elems * sizeof(float));
  double* g0 = tk_doubles(g_elems);
  if (accumulate) {
    for (size_t e = 0; e < g_elems; ++e) g0[e] = g[e] = tk_nonzero(&rng);
  } else {
    tk_poison(g, g_elems * sizeof(float)); /* must be overwritten, never read */
  }

  size_t ws_bytes = 0;
  TK_OK(grass_sparse_grad_workspace_size(ctx, m, n, b, side, r, dtype, &ws_bytes));
  void* ws = tk_workspace(ws_bytes);
  TK_OK(grass_sparse_grad(ctx, m, n, b, side, r, dtype, xb, dyb, idx, scales, g, accumulate, ws,
                          ws_bytes, NULL));

  double* ref = tk_doubles(g_elems);
  double* mag = tk_doubles(g_elems);
  for (int64_t j = 0; j < r; ++j) {
    for (int64_t c = 0; c < k; ++c) {
      double sum = 0.0, abs_sum = 0.0;
      for (int64_t t = 0; t < b; ++t) {
        double a = resolved == GRASS_SIDE_ROWS ? dy[t * m + idx[j]] : x[t * n + idx[j]];
        double bb = resolved == GRASS_SIDE_ROWS ? x[t * n + c] : dy[t * m + c];
        sum += a * bb;
        abs_sum += fabs(a * bb);
      }
      size_t e = (size_t)(j * k + c);
      ref[e] = scales[j] * sum + (accumulate ? g0[e] : 0.0);
      mag[e] = scales[j] * abs_sum + (accumulate ? fabs(g0[e]) : 0.0);
    }
  }
  char what[112];
  snprintf(what, sizeof what, "g(%lldx%lld b=%lld side=%d r=%lld %s%s)", (long long)m,
           (long long)n, (long long)b, (int)side, (long long)r, tk_dtype_name(dtype),
           accumulate ? " accumulate" : "");
  tk_compare(what, g, GRASS_DTYPE_F32, ref, mag, g_elems, (double)(b + 2));

  free(ref);
  free(mag);
  free(ws);
  free(g);
  free(g0);
  free(idx);
  free(scales);
  free(xb);
  free(dyb);
  free(x);
  free(dy);
}

/* Two micro-batches accumulated equal one batch of both (up to rounding). */
static void check_micro_batches(grass_context* ctx) {
  const int64_t m = 16, n = 12, b = 10, r = 5;
  tk_rng rng = {77};
  float* x = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, (size_t)(2 * b * n), 1.0f, NULL);
  float* dy = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, (size_t)(2 * b * m), 1.0f, NULL);
  int32_t idx[5] = {0, 3, 3, 9, 15};
  float scales[5] = {1.0f, 0.5f, 2.0f, 1.5f, 1.0f};
  size_t ws1 = 0, ws2 = 0;
  TK_OK(grass_sparse_grad_workspace_size(ctx, m, n, b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, &ws1));
  TK_OK(grass_sparse_grad_workspace_size(ctx, m, n, 2 * b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32,
                                         &ws2));
  void* w1 = tk_workspace(ws1);
  void* w2 = tk_workspace(ws2);
  float split[5 * 12], whole[5 * 12];
  TK_OK(grass_sparse_grad(ctx, m, n, b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, x, dy, idx, scales,
                          split, 0, w1, ws1, NULL));
  TK_OK(grass_sparse_grad(ctx, m, n, b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, x + b * n,
                          dy + b * m, idx, scales, split, 1, w1, ws1, NULL));
  TK_OK(grass_sparse_grad(ctx, m, n, 2 * b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, x, dy, idx,
                          scales, whole, 0, w2, ws2, NULL));
  double ref[5 * 12], mag[5 * 12];
  for (int e = 0; e < 5 * 12; ++e) {
    ref[e] = whole[e];
    mag[e] = 0.0;
    int j = e / 12, c = e % 12;
    for (int64_t t = 0; t < 2 * b; ++t) {
      mag[e] += fabs(scales[j] * dy[t * m + idx[j]] * x[t * n + c]);
    }
  }
  tk_compare("g(two micro-batches) vs g(one batch)", split, GRASS_DTYPE_F32, ref, mag, 5 * 12,
             (double)(2 * b + 2));
  free(w1);
  free(w2);
  free(x);
  free(dy);
}

/* Workspaces are untyped bytes: any start address works with exactly the queried size. */
static void check_workspace_offsets(grass_context* ctx) {
  const int64_t m = 30, n = 20, b = 8, r = 6;
  tk_rng rng = {88};
  void* x = tk_random_tensor(&rng, GRASS_DTYPE_BF16, (size_t)(b * n), 1.0f, NULL);
  void* dy = tk_random_tensor(&rng, GRASS_DTYPE_BF16, (size_t)(b * m), 1.0f, NULL);
  float scores[30], scales[6], g[6 * 20], ms[6 * 20] = {0}, vs[6 * 20] = {0};
  int32_t idx[6];
  int32_t row_steps[6] = {0}; /* one step count per state row */
  grass_projection_config pc;
  TK_OK(grass_projection_config_init(&pc));
  pc.rank = r;
  pc.side = GRASS_SIDE_ROWS;
  grass_adamw_config ac;
  TK_OK(grass_adamw_config_init(&ac));
  ac.refresh_mode = GRASS_REFRESH_CARRY;
  size_t sizes[4];
  TK_OK(grass_scores_workspace_size(ctx, m, n, b, GRASS_SIDE_ROWS, GRASS_DTYPE_BF16, &sizes[0]));
  TK_OK(grass_select_workspace_size(ctx, m, r, &sizes[1]));
  TK_OK(grass_sparse_grad_workspace_size(ctx, m, n, b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_BF16,
                                         &sizes[2]));
  TK_OK(grass_state_refresh_workspace_size(ctx, ac.refresh_mode, ac.state_dtype, r, n, &sizes[3]));
  for (size_t off = 0; off < 64; off += 3) {
    unsigned char* ws[4];
    for (int i = 0; i < 4; ++i) ws[i] = (unsigned char*)malloc(sizes[i] + off);
    TK_OK(grass_row_scores(ctx, m, n, b, GRASS_SIDE_ROWS, GRASS_DTYPE_BF16, x, dy, scores,
                           ws[0] + off, sizes[0], NULL));
    TK_OK(grass_select(ctx, &pc, m, 0, NULL, scores, idx, scales, ws[1] + off, sizes[1], NULL));
    TK_OK(grass_sparse_grad(ctx, m, n, b, GRASS_SIDE_ROWS, r, GRASS_DTYPE_BF16, x, dy, idx,
                            scales, g, 0, ws[2] + off, sizes[2], NULL));
    TK_OK(grass_state_refresh(ctx, ac.refresh_mode, ac.state_dtype,
                              r, n, idx, idx, ms, vs, row_steps, ws[3] + off,
                              sizes[3], NULL));
    for (int i = 0; i < 4; ++i) free(ws[i]);
  }
  free(x);
  free(dy);
}

int main(void) {
  grass_context* ctx = tk_cpu();
  const grass_dtype dtypes[] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16, GRASS_DTYPE_F16};
  const grass_side sides[] = {GRASS_SIDE_ROWS, GRASS_SIDE_COLS, GRASS_SIDE_AUTO};
  uint64_t seed = 1000;
  for (int di = 0; di < 3; ++di) {
    for (int si = 0; si < 3; ++si) {
      for (int acc = 0; acc <= 1; ++acc) {
        check_grad(ctx, 24, 40, 16, sides[si], dtypes[di], acc, seed++);
        check_grad(ctx, 40, 24, 9, sides[si], dtypes[di], acc, seed++);
        check_grad(ctx, 2, 3, 1, sides[si], dtypes[di], acc, seed++);
      }
    }
  }
  check_grad(ctx, 300, 200, 64, GRASS_SIDE_ROWS, GRASS_DTYPE_BF16, 1, seed++);
  check_micro_batches(ctx);
  check_workspace_offsets(ctx);
  grass_context_destroy(ctx);
  return tk_report("test_sparse_grad");
}
