/* grass_row_scores and grass_resolve_side against a naive reference: the norms of the rows
 * (side ROWS) or columns (side COLS) of the full gradient G = dY^T X, built in double. */
#include "testkit.h"

/* d scores of the projected side, and the magnitude their rounding errors scale with. */
static void reference_scores(int64_t m, int64_t n, int64_t b, grass_side side, const double* x,
                             const double* dy, double* ref, double* mag) {
  int64_t d = side == GRASS_SIDE_ROWS ? m : n;
  for (int64_t i = 0; i < d; ++i) {
    ref[i] = 0.0;
    mag[i] = 0.0;
  }
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t c = 0; c < n; ++c) {
      double g = 0.0, a = 0.0;
      for (int64_t t = 0; t < b; ++t) {
        g += dy[t * m + r] * x[t * n + c];
        a += fabs(dy[t * m + r] * x[t * n + c]);
      }
      int64_t i = side == GRASS_SIDE_ROWS ? r : c;
      ref[i] += g * g;
      mag[i] += a * a;
    }
  }
  for (int64_t i = 0; i < d; ++i) {
    ref[i] = sqrt(ref[i]);
    mag[i] = sqrt(mag[i]);
  }
}

static void check_scores(grass_context* ctx, int64_t m, int64_t n, int64_t b, grass_side side,
                         grass_dtype dtype, uint64_t seed) {
  tk_rng rng = {seed};
  double* x = tk_doubles((size_t)(b * n));
  double* dy = tk_doubles((size_t)(b * m));
  void* xb = tk_random_tensor(&rng, dtype, (size_t)(b * n), 1.0f, x);
  void* dyb = tk_random_tensor(&rng, dtype, (size_t)(b * m), 1.0f, dy);

  grass_side resolved = -1;
  int64_t d = 0, k = 0;
  TK_OK(grass_resolve_side(m, n, side, &resolved, &d, &k));
  size_t ws_bytes = 0;
  TK_OK(grass_scores_workspace_size(ctx, m, n, b, side, dtype, &ws_bytes));
  void* ws = tk_workspace(ws_bytes);
  float* scores = (float*)malloc((size_t)d * sizeof(float));
  tk_poison(scores, (size_t)d * sizeof(float));
  TK_OK(grass_row_scores(ctx, m, n, b, side, dtype, xb, dyb, scores, ws, ws_bytes, NULL));

  double* ref = tk_doubles((size_t)d);
  double* mag = tk_doubles((size_t)d);
  reference_scores(m, n, b, resolved, x, dy, ref, mag);
  char what[96];
  snprintf(what, sizeof what, "scores(%lldx%lld b=%lld side=%d %s)", (long long)m, (long long)n,
           (long long)b, (int)side, tk_dtype_name(dtype));
  /* K: b products per element of G, then k squares per norm */
  tk_compare(what, scores, GRASS_DTYPE_F32, ref, mag, (size_t)d, (double)(b + k));

  free(ref);
  free(mag);
  free(scores);
  free(ws);
  free(xb);
  free(dyb);
  free(x);
  free(dy);
}

static void check_resolve_side(void) {
  struct {
    int64_t m, n;
    grass_side side, want_side;
    int64_t want_d, want_k;
  } cases[] = {
      {24, 40, GRASS_SIDE_AUTO, GRASS_SIDE_COLS, 40, 24},
      {40, 24, GRASS_SIDE_AUTO, GRASS_SIDE_ROWS, 40, 24},
      {32, 32, GRASS_SIDE_AUTO, GRASS_SIDE_ROWS, 32, 32},
      {24, 40, GRASS_SIDE_ROWS, GRASS_SIDE_ROWS, 24, 40},
      {40, 24, GRASS_SIDE_COLS, GRASS_SIDE_COLS, 24, 40},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; ++i) {
    grass_side s = -1;
    int64_t d = -1, k = -1;
    TK_OK(grass_resolve_side(cases[i].m, cases[i].n, cases[i].side, &s, &d, &k));
    TK_CHECK(s == cases[i].want_side);
    TK_CHECK(d == cases[i].want_d);
    TK_CHECK(k == cases[i].want_k);
  }
  /* every out-pointer is optional */
  TK_OK(grass_resolve_side(3, 5, GRASS_SIDE_AUTO, NULL, NULL, NULL));
}

int main(void) {
  grass_context* ctx = tk_cpu();
  check_resolve_side();

  const grass_dtype dtypes[] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16, GRASS_DTYPE_F16};
  const grass_side sides[] = {GRASS_SIDE_ROWS, GRASS_SIDE_COLS, GRASS_SIDE_AUTO};
  uint64_t seed = 1;
  for (int di = 0; di < 3; ++di) {
    for (int si = 0; si < 3; ++si) {
      check_scores(ctx, 24, 40, 16, sides[si], dtypes[di], seed++);
      check_scores(ctx, 40, 24, 16, sides[si], dtypes[di], seed++);
      check_scores(ctx, 1, 7, 1, sides[si], dtypes[di], seed++);
    }
  }
  /* Large enough that the scores are computed in more than one chunk of rows. */
  check_scores(ctx, 2100, 1024, 3, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, seed++);
  check_scores(ctx, 1024, 2100, 3, GRASS_SIDE_COLS, GRASS_DTYPE_BF16, seed++);

  grass_context_destroy(ctx);
  return tk_report("test_row_scores");
}
