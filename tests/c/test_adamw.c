/* The optimizer ops of layer 1 against a naive double-precision reference:
 *   grass_sparse_adamw_step  (W f32/bf16/f16, states f32/bf16, both sides, every decay mode,
 *                             repeated indices, long runs of one index, lr_scale, and state
 *                             rows at different step counts, each with its own bias
 *                             corrections),
 *   grass_adamw_step         (every W, gradient and state dtype, decay on and off),
 *   grass_state_refresh      (reset and carry of M, V and the row step counts, f32 and bf16
 *                             states, rows that move to another position),
 * the identity of the compressed step with r = m, top_r, no scaling and plain AdamW, and of
 * each state row of a compressed step with a dense AdamW step on that row at its own count.
 * Each step's reference starts from the library's previous outputs, so several steps in a row
 * check the bias correction without compounding rounding differences. */
#include "testkit.h"

typedef struct hyper {
  float beta1, beta2, eps, weight_decay, alpha, lr, lr_scale; /* lr_scale 0: pass NULL */
  grass_decay_mode decay;
} hyper;

static grass_adamw_config make_config(const hyper* h, grass_dtype state_dtype) {
  grass_adamw_config cfg;
  TK_OK(grass_adamw_config_init(&cfg));
  cfg.beta1 = h->beta1;
  cfg.beta2 = h->beta2;
  cfg.eps = h->eps;
  cfg.weight_decay = h->weight_decay;
  cfg.decay_mode = h->decay;
  cfg.alpha = h->alpha;
  cfg.state_dtype = state_dtype;       /* a GRASS layer's moments (grass_sparse_adamw_step) */
  cfg.dense_state_dtype = state_dtype; /* a dense parameter's (grass_adamw_step) */
  return cfg;
}

/* One Adam moment update in double; returns u and the new moments. */
static double adam(const hyper* h, int32_t t, double m, double v, double g, double* m_out,
                   double* v_out) {
  double b1 = h->beta1, b2 = h->beta2;
  *m_out = b1 * m + (1.0 - b1) * g;
  *v_out = b2 * v + (1.0 - b2) * g * g;
  double c1 = 1.0 - pow(b1, t), c2 = 1.0 - pow(b2, t);
  return (*m_out / c1) / (sqrt(*v_out / c2) + h->eps);
}

static double effective_lr(const hyper* h) {
  return h->lr_scale != 0.0f ? (double)h->lr * h->lr_scale : (double)h->lr;
}

/* ---- grass_sparse_adamw_step --------------------------------------------------------------- */

/* The step count state row j starts from: `step0` plus a spread, so that the rows of one step
 * (and the rows of one run of repeated indices) sit at different points of their bias
 * correction: row 0 at step0, the others up to 26 steps further. */
static int32_t start_count(int32_t step0, int64_t j) {
  static const int32_t spread[7] = {0, 1, 4, 0, 26, 2, 9};
  return step0 + spread[j % 7];
}

/* `run` > 0: the first `run` selected indices are one row (a run longer than the library's
 * per-run cache of bias corrections); otherwise a spread-out selection with one repeat. */
static void check_sparse_adamw_step(grass_context* ctx, int64_t m, int64_t n, grass_side side,
                              grass_dtype w_dtype, grass_dtype s_dtype, const hyper* h,
                              int32_t step0, int steps, int run, uint64_t seed) {
  tk_rng rng = {seed};
  grass_side rs = 0;
  int64_t d = 0, k = 0;
  TK_OK(grass_resolve_side(m, n, side, &rs, &d, &k));
  const int64_t r = d / 2;
  const size_t wn = (size_t)(m * n), sn = (size_t)(r * k);
  grass_adamw_config cfg = make_config(h, s_dtype);

  void* w = tk_random_tensor(&rng, w_dtype, wn, 1.0f, NULL);
  void* ms = tk_random_tensor(&rng, s_dtype, sn, 0.1f, NULL);
  void* vs = malloc(sn * tk_size(s_dtype));
  for (size_t e = 0; e < sn; ++e) {
    tk_store(vs, s_dtype, e, (float)(0.001 + 0.01 * tk_uniform(&rng)));
  }
  int32_t* idx = (int32_t*)malloc((size_t)r * sizeof(int32_t));
  float* scales = (float*)malloc((size_t)r * sizeof(float));
  for (int64_t j = 0; j < r; ++j) {
    if (run > 0) {
      idx[j] = (int32_t)(j < run ? 1 : j - run + 2);
    } else {
      idx[j] = (int32_t)(2 * j + (j % 2));
    }
    if (idx[j] >= d) idx[j] = (int32_t)(d - 1);
    scales[j] = (float)(0.5 + tk_uniform(&rng));
  }
  if (run == 0 && r >= 4) idx[3] = idx[2]; /* a repeated row: its two updates add up */
  float* g = (float*)malloc(sn * sizeof(float));
  /* exactly r counts (ASan sees an access past them) */
  int32_t* row_steps = (int32_t*)malloc((size_t)r * sizeof(int32_t));
  int32_t* want_steps = (int32_t*)malloc((size_t)r * sizeof(int32_t));
  for (int64_t j = 0; j < r; ++j) row_steps[j] = start_count(step0, j);
  int32_t skipped = -1;
  float lr_scale = h->lr_scale;
  size_t ws_bytes = 0;
  TK_OK(grass_sparse_adamw_workspace_size(ctx, m, n, side, r, &ws_bytes));
  void* ws = tk_workspace(ws_bytes);

  double* ref_w = tk_doubles(wn);
  double* mag_w = tk_doubles(wn);
  double* ref_m = tk_doubles(sn);
  double* mag_m = tk_doubles(sn);
  double* ref_v = tk_doubles(sn);
  double* mag_v = tk_doubles(sn);
  void* w_before = malloc(wn * tk_size(w_dtype));
  const double lr = effective_lr(h);
  const double decay = h->weight_decay > 0.0f ? 1.0 - lr * h->weight_decay : 1.0;
  const double row_decay = h->decay == GRASS_DECAY_SELECTED ? decay : 1.0;
  const double all_decay = h->decay == GRASS_DECAY_DENSE ? decay : 1.0;

  for (int s = 0; s < steps; ++s) {
    for (size_t e = 0; e < sn; ++e) g[e] = tk_nonzero(&rng);
    memcpy(w_before, w, wn * tk_size(w_dtype));
    for (int64_t j = 0; j < r; ++j) want_steps[j] = row_steps[j] + 1;
    for (size_t e = 0; e < wn; ++e) {
      ref_w[e] = tk_load(w, w_dtype, e) * all_decay;
      mag_w[e] = fabs(ref_w[e]);
    }
    /* decay once per distinct selected row, then add every update of that row */
    for (int64_t j = 0; j < r; ++j) {
      if (j > 0 && idx[j] == idx[j - 1]) continue;
      for (int64_t c = 0; c < k; ++c) {
        size_t at = (size_t)(rs == GRASS_SIDE_ROWS ? idx[j] * n + c : c * n + idx[j]);
        ref_w[at] *= row_decay;
        mag_w[at] = fabs(ref_w[at]);
      }
    }
    for (int64_t j = 0; j < r; ++j) {
      for (int64_t c = 0; c < k; ++c) {
        size_t e = (size_t)(j * k + c);
        double m0 = tk_load(ms, s_dtype, e), v0 = tk_load(vs, s_dtype, e);
        /* row j's own count: its bias corrections are 1 - beta^t_j */
        double u = adam(h, want_steps[j], m0, v0, g[e], &ref_m[e], &ref_v[e]);
        mag_m[e] = h->beta1 * fabs(m0) + (1.0 - h->beta1) * fabs(g[e]);
        mag_v[e] = fabs(ref_v[e]);
        /* the row warm-up (the library's default unless the config changes it) */
        double ramp = cfg.row_warmup > 0 && want_steps[j] < cfg.row_warmup
                          ? (double)want_steps[j] / cfg.row_warmup
                          : 1.0;
        double upd = -lr * h->alpha * scales[j] * ramp * u;
        size_t at = (size_t)(rs == GRASS_SIDE_ROWS ? idx[j] * n + c : c * n + idx[j]);
        ref_w[at] += upd;
        mag_w[at] += fabs(upd);
      }
    }
    skipped = -1;
    TK_OK(grass_sparse_adamw_step(ctx, &cfg, m, n, side, r, w_dtype, w, idx, scales, g, ms, vs,
                                  row_steps, h->lr, h->lr_scale != 0.0f ? &lr_scale : NULL,
                                  &skipped, ws, ws_bytes, NULL));
    TK_CHECK(skipped == GRASS_STEP_APPLIED);

    char what[160];
    snprintf(what, sizeof what,
             "sparse step %d of rows from count %d (%lldx%lld side=%d W %s state %s decay %d "
             "run %d)",
             s + 1, (int)step0, (long long)m, (long long)n, (int)side, tk_dtype_name(w_dtype),
             tk_dtype_name(s_dtype), (int)h->decay, run);
    for (int64_t j = 0; j < r; ++j) {
      if (row_steps[j] != want_steps[j]) {
        tk_fail_at(__FILE__, __LINE__, "each row's step count is incremented");
        printf("     %s: row_steps[%lld] = %d, expected %d\n", what, (long long)j,
               (int)row_steps[j], (int)want_steps[j]);
      }
    }
    char part[192];
    snprintf(part, sizeof part, "%s W", what);
    tk_compare(part, w, w_dtype, ref_w, mag_w, wn, run > 0 ? 16.0 + run : 16.0);
    snprintf(part, sizeof part, "%s M", what);
    tk_compare(part, ms, s_dtype, ref_m, mag_m, sn, 3.0);
    snprintf(part, sizeof part, "%s V", what);
    tk_compare(part, vs, s_dtype, ref_v, mag_v, sn, 4.0);

    /* rows (columns) that were not selected are untouched unless the decay is dense */
    if (h->decay != GRASS_DECAY_DENSE || h->weight_decay == 0.0f) {
      char* selected = (char*)calloc((size_t)d, 1);
      for (int64_t j = 0; j < r; ++j) selected[idx[j]] = 1;
      size_t es = tk_size(w_dtype);
      int bad = 0;
      for (size_t e = 0; e < wn; ++e) {
        size_t i = rs == GRASS_SIDE_ROWS ? e / (size_t)n : e % (size_t)n;
        if (!selected[i] && memcmp((char*)w + e * es, (char*)w_before + e * es, es) != 0) {
          if (bad++ < 3) printf("     %s: unselected W[%zu] changed\n", what, e);
        }
      }
      if (bad) tk_fail_at(__FILE__, __LINE__, "the update is structured-sparse");
      free(selected);
    }
  }

  free(ref_w);
  free(mag_w);
  free(ref_m);
  free(mag_m);
  free(ref_v);
  free(mag_v);
  free(w_before);
  free(ws);
  free(w);
  free(ms);
  free(vs);
  free(idx);
  free(scales);
  free(g);
  free(row_steps);
  free(want_steps);
}

/* ---- grass_adamw_step ---------------------------------------------------------------------- */

static void check_adamw_step(grass_context* ctx, int64_t numel, grass_dtype w_dtype,
                             grass_dtype g_dtype, grass_dtype s_dtype, const hyper* h,
                             int32_t step0, int steps, uint64_t seed) {
  tk_rng rng = {seed};
  const size_t ne = (size_t)numel;
  grass_adamw_config cfg = make_config(h, s_dtype);
  void* w = tk_random_tensor(&rng, w_dtype, ne, 1.0f, NULL);
  void* ms = tk_random_tensor(&rng, s_dtype, ne, 0.1f, NULL);
  void* vs = malloc(ne * tk_size(s_dtype));
  for (size_t e = 0; e < ne; ++e) {
    tk_store(vs, s_dtype, e, (float)(0.001 + 0.01 * tk_uniform(&rng)));
  }
  double* gd = tk_doubles(ne);
  double* ref_w = tk_doubles(ne);
  double* mag_w = tk_doubles(ne);
  double* ref_m = tk_doubles(ne);
  double* mag_m = tk_doubles(ne);
  double* ref_v = tk_doubles(ne);
  int32_t step = step0, skipped = -1;
  float lr_scale = h->lr_scale;
  size_t ws_bytes = 0;
  TK_OK(grass_adamw_workspace_size(ctx, numel, &ws_bytes));
  void* ws = tk_workspace(ws_bytes);
  const double lr = effective_lr(h);
  const double decay =
      h->weight_decay > 0.0f && h->decay != GRASS_DECAY_OFF ? 1.0 - lr * h->weight_decay : 1.0;

  for (int s = 0; s < steps; ++s) {
    void* g = tk_random_tensor(&rng, g_dtype, ne, 1.0f, gd);
    const int32_t t = step + 1;
    for (size_t e = 0; e < ne; ++e) {
      double m0 = tk_load(ms, s_dtype, e), v0 = tk_load(vs, s_dtype, e);
      double u = adam(h, t, m0, v0, gd[e], &ref_m[e], &ref_v[e]);
      mag_m[e] = h->beta1 * fabs(m0) + (1.0 - h->beta1) * fabs(gd[e]);
      double w0 = tk_load(w, w_dtype, e) * decay;
      ref_w[e] = w0 - lr * u;
      mag_w[e] = fabs(w0) + fabs(lr * u);
    }
    skipped = -1;
    TK_OK(grass_adamw_step(ctx, &cfg, numel, w_dtype, w, g_dtype, g, ms, vs, &step, h->lr,
                           h->lr_scale != 0.0f ? &lr_scale : NULL, &skipped, ws, ws_bytes, NULL));
    TK_CHECK(step == t);
    TK_CHECK(skipped == 0);
    char what[128];
    snprintf(what, sizeof what, "dense step %d (W %s grad %s state %s decay %d)", t,
             tk_dtype_name(w_dtype), tk_dtype_name(g_dtype), tk_dtype_name(s_dtype),
             (int)h->decay);
    char part[160];
    snprintf(part, sizeof part, "%s W", what);
    tk_compare(part, w, w_dtype, ref_w, mag_w, ne, 16.0);
    snprintf(part, sizeof part, "%s M", what);
    tk_compare(part, ms, s_dtype, ref_m, mag_m, ne, 3.0);
    snprintf(part, sizeof part, "%s V", what);
    tk_compare(part, vs, s_dtype, ref_v, NULL, ne, 4.0);
    free(g);
  }
  free(ws);
  free(w);
  free(ms);
  free(vs);
  free(gd);
  free(ref_w);
  free(mag_w);
  free(ref_m);
  free(mag_m);
  free(ref_v);
}

/* ---- grass_state_refresh ------------------------------------------------------------------- */

/* One selection change: row j of the new state comes from row src[j] of the old one under
 * carry (-1: an entering index, zeroed). */
typedef struct refresh_case {
  const char* name;
  int32_t old_idx[5], new_idx[5];
  int src[5];
} refresh_case;

static const refresh_case refresh_cases[] = {
    /* kept rows stay in place; repeats pair up in order */
    {"in place", {1, 3, 3, 5, 8}, {0, 3, 3, 5, 9}, {-1, 1, 2, 3, -1}},
    /* kept rows move one position up (an index below them entered) */
    {"shifted", {1, 3, 5, 8, 9}, {0, 1, 3, 5, 7}, {-1, 0, 1, 2, -1}},
    /* kept rows move down (indices below them left) */
    {"shifted down", {0, 2, 4, 6, 7}, {4, 6, 7, 8, 9}, {2, 3, 4, -1, -1}},
};

static void check_refresh(grass_context* ctx, grass_refresh_mode mode, grass_dtype s_dtype,
                          int with_old, const refresh_case* rc) {
  enum { R = 5, K = 7 };
  tk_rng rng = {4242};
  const size_t sn = R * K, es = tk_size(s_dtype);
  void* ms = tk_random_tensor(&rng, s_dtype, sn, 1.0f, NULL);
  void* vs = tk_random_tensor(&rng, s_dtype, sn, 1.0f, NULL);
  void* m0 = malloc(sn * es);
  void* v0 = malloc(sn * es);
  memcpy(m0, ms, sn * es);
  memcpy(v0, vs, sn * es);
  /* exactly R counts, all different, so that a count that moves can be told apart */
  const int32_t steps0[R] = {17, 3, 250, 1, 40};
  int32_t* row_steps = (int32_t*)malloc(R * sizeof(int32_t));
  memcpy(row_steps, steps0, sizeof steps0);
  size_t ws_bytes = 0;
  TK_OK(grass_state_refresh_workspace_size(ctx, mode, s_dtype, R, K, &ws_bytes));
  void* ws = tk_workspace(ws_bytes);
  TK_OK(grass_state_refresh(ctx, mode, s_dtype, R, K, with_old ? rc->old_idx : NULL, rc->new_idx,
                            ms, vs, row_steps, ws, ws_bytes, NULL));
  int bad = 0;
  for (int j = 0; j < R; ++j) {
    int from = (mode == GRASS_REFRESH_CARRY && with_old) ? rc->src[j] : -1;
    for (int c = 0; c < K; ++c) {
      size_t e = (size_t)(j * K + c);
      double want_m = from < 0 ? 0.0 : tk_load(m0, s_dtype, (size_t)(from * K + c));
      double want_v = from < 0 ? 0.0 : tk_load(v0, s_dtype, (size_t)(from * K + c));
      double got_m = tk_load(ms, s_dtype, e), got_v = tk_load(vs, s_dtype, e);
      if (got_m != want_m || got_v != want_v) {
        if (bad++ < 5) {
          printf("     refresh mode %d %s %s old=%s: row %d col %d: expected M %g V %g, got M "
                 "%g V %g\n",
                 (int)mode, rc->name, tk_dtype_name(s_dtype), with_old ? "yes" : "NULL", j, c,
                 want_m, want_v, got_m, got_v);
        }
      }
    }
    /* reset zeroes every count; carry moves a kept row's count with it and zeroes an entering
     * row's, so that the entering row starts like a fresh Adam parameter */
    int32_t want_t = from < 0 ? 0 : steps0[from];
    if (row_steps[j] != want_t) {
      tk_fail_at(__FILE__, __LINE__, "the step counts follow their state rows");
      printf("     refresh mode %d %s %s old=%s: row_steps[%d] = %d, expected %d\n", (int)mode,
             rc->name, tk_dtype_name(s_dtype), with_old ? "yes" : "NULL", j, (int)row_steps[j],
             (int)want_t);
    }
  }
  if (bad) tk_fail_at(__FILE__, __LINE__, "state refresh moves the right rows");
  free(ws);
  free(ms);
  free(vs);
  free(m0);
  free(v0);
  free(row_steps);
}

/* Carry, then a step: a kept row continues its bias correction where it was, an entering row
 * takes the first step of a fresh Adam parameter (|u| = 1 for every element when eps is
 * negligible: m/(1-beta1) = g and sqrt(v/(1-beta2)) = |g|), whatever the rows around it count. */
static void check_carry_then_step(grass_context* ctx) {
  enum { M = 12, N = 8, R = 4, K = N };
  const int32_t old_idx[R] = {2, 5, 7, 10};
  const int32_t new_idx[R] = {1, 5, 7, 11}; /* 1 and 11 enter; 5 and 7 stay */
  hyper h = {0.9f, 0.999f, 1e-12f, 0.0f, 1.0f, 0.01f, 0.0f, GRASS_DECAY_OFF};
  grass_adamw_config cfg = make_config(&h, GRASS_DTYPE_F32);
  cfg.row_warmup = 0; /* Adam's own first step, without the row warm-up's ramp */
  cfg.refresh_mode = GRASS_REFRESH_CARRY;
  tk_rng rng = {777};
  float* w = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, M * N, 1.0f, NULL);
  float* w0 = (float*)malloc(M * N * sizeof(float));
  memcpy(w0, w, M * N * sizeof(float));
  float* ms = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, R * K, 0.1f, NULL);
  float* vs = (float*)malloc(R * K * sizeof(float));
  for (int e = 0; e < R * K; ++e) vs[e] = (float)(0.001 + 0.01 * tk_uniform(&rng));
  float m_kept[2 * K], v_kept[2 * K];
  memcpy(m_kept, ms + K, sizeof m_kept); /* old rows 1 and 2 (indices 5 and 7) */
  memcpy(v_kept, vs + K, sizeof v_kept);
  float scales[R] = {1.0f, 1.0f, 1.0f, 1.0f};
  float g[R * K];
  for (int e = 0; e < R * K; ++e) g[e] = tk_nonzero(&rng);
  int32_t* row_steps = (int32_t*)malloc(R * sizeof(int32_t));
  const int32_t before[R] = {30, 30, 2, 30};
  memcpy(row_steps, before, sizeof before);
  size_t ws_bytes = 0, ws2 = 0;
  TK_OK(grass_state_refresh_workspace_size(ctx, cfg.refresh_mode, cfg.state_dtype,
                                           R, K, &ws_bytes));
  TK_OK(grass_sparse_adamw_workspace_size(ctx, M, N, GRASS_SIDE_ROWS, R, &ws2));
  if (ws2 > ws_bytes) ws_bytes = ws2;
  void* ws = tk_workspace(ws_bytes);
  TK_OK(grass_state_refresh(ctx, cfg.refresh_mode, cfg.state_dtype,
                            R, K, old_idx, new_idx, ms, vs, row_steps, ws, ws_bytes,
                            NULL));
  TK_CHECK(row_steps[0] == 0 && row_steps[1] == 30 && row_steps[2] == 2 && row_steps[3] == 0);
  int32_t skipped = -1;
  TK_OK(grass_sparse_adamw_step(ctx, &cfg, M, N, GRASS_SIDE_ROWS, R, GRASS_DTYPE_F32, w, new_idx,
                                scales, g, ms, vs, row_steps, h.lr, NULL, &skipped, ws, ws_bytes,
                                NULL));
  TK_CHECK(skipped == GRASS_STEP_APPLIED);
  TK_CHECK(row_steps[0] == 1 && row_steps[1] == 31 && row_steps[2] == 3 && row_steps[3] == 1);
  double ref[R * K], mag[R * K];
  float got[R * K];
  int fresh_bad = 0;
  for (int j = 0; j < R; ++j) {
    for (int c = 0; c < K; ++c) {
      int e = j * K + c;
      double m0 = 0.0, v0 = 0.0;
      if (j == 1 || j == 2) {
        m0 = m_kept[(j - 1) * K + c];
        v0 = v_kept[(j - 1) * K + c];
      }
      double mo, vo;
      double u = adam(&h, row_steps[j], m0, v0, g[e], &mo, &vo);
      size_t at = (size_t)(new_idx[j] * N + c);
      ref[e] = (double)w0[at] - h.lr * u;
      mag[e] = fabs((double)w0[at]) + fabs(h.lr * u);
      got[e] = w[at];
      /* an entering row moves by lr exactly (up to rounding); under the layer's count of 30 it
       * would have moved by about 0.58 lr */
      if ((j == 0 || j == 3) && !(fabs(fabs((double)w[at] - w0[at]) - h.lr) <= 1e-6)) {
        if (fresh_bad++ < 3) {
          printf("     entering row %d col %d moved by %.9g, expected +-%g\n", j, c,
                 (double)w[at] - w0[at], (double)h.lr);
        }
      }
    }
  }
  if (fresh_bad) tk_fail_at(__FILE__, __LINE__, "an entering row steps like a fresh parameter");
  tk_compare("carry then step: W of the selected rows", got, GRASS_DTYPE_F32, ref, mag, R * K,
             16.0);
  free(w);
  free(w0);
  free(ms);
  free(vs);
  free(row_steps);
  free(ws);
}

/* ---- r = m, top_r, no scaling: the compressed step is plain AdamW ---------------------------- */

static void check_full_rank_is_adamw(grass_context* ctx, grass_decay_mode decay) {
  const int64_t m = 12, n = 20, b = 9;
  tk_rng rng = {9090};
  hyper h = {0.9f, 0.95f, 1e-6f, 0.1f, 1.0f, 0.01f, 0.0f, decay};
  grass_adamw_config cfg = make_config(&h, GRASS_DTYPE_F32);
  cfg.row_warmup = 0; /* plain AdamW: no row warm-up */
  float* x = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, (size_t)(b * n), 1.0f, NULL);
  float* dy = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, (size_t)(b * m), 1.0f, NULL);
  float* w_sparse = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, (size_t)(m * n), 1.0f, NULL);
  float* w_dense = (float*)malloc((size_t)(m * n) * sizeof(float));
  memcpy(w_dense, w_sparse, (size_t)(m * n) * sizeof(float));
  float* scores = (float*)malloc((size_t)m * sizeof(float));
  int32_t* idx = (int32_t*)malloc((size_t)m * sizeof(int32_t));
  float* scales = (float*)malloc((size_t)m * sizeof(float));
  float* g = (float*)malloc((size_t)(m * n) * sizeof(float));
  float* state = (float*)calloc((size_t)(4 * m * n), sizeof(float));
  int32_t* row_steps = (int32_t*)calloc((size_t)m, sizeof(int32_t)); /* r = m counts */
  int32_t step_dense = 0;

  grass_projection_config pc;
  TK_OK(grass_projection_config_init(&pc));
  pc.method = GRASS_METHOD_TOP_R;
  pc.scaling = GRASS_SCALING_NONE;
  pc.side = GRASS_SIDE_ROWS;
  pc.rank = m;
  size_t ws1 = 0, ws2 = 0, ws3 = 0;
  TK_OK(grass_scores_workspace_size(ctx, m, n, b, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, &ws1));
  TK_OK(grass_select_workspace_size(ctx, m, m, &ws2));
  TK_OK(grass_sparse_grad_workspace_size(ctx, m, n, b, GRASS_SIDE_ROWS, m, GRASS_DTYPE_F32, &ws3));
  size_t ws_bytes = ws1 > ws2 ? ws1 : ws2;
  ws_bytes = ws3 > ws_bytes ? ws3 : ws_bytes;
  void* ws = tk_workspace(ws_bytes);
  TK_OK(grass_row_scores(ctx, m, n, b, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, x, dy, scores, ws,
                         ws_bytes, NULL));
  TK_OK(grass_select(ctx, &pc, m, 0, NULL, scores, idx, scales, ws, ws_bytes, NULL));
  for (int64_t j = 0; j < m; ++j) TK_CHECK(idx[j] == j && scales[j] == 1.0f);

  for (int s = 0; s < 3; ++s) {
    for (int64_t e = 0; e < b * m; ++e) dy[e] = tk_nonzero(&rng);
    TK_OK(grass_sparse_grad(ctx, m, n, b, GRASS_SIDE_ROWS, m, GRASS_DTYPE_F32, x, dy, idx, scales,
                            g, 0, ws, ws_bytes, NULL));
    TK_OK(grass_sparse_adamw_step(ctx, &cfg, m, n, GRASS_SIDE_ROWS, m, GRASS_DTYPE_F32, w_sparse,
                                  idx, scales, g, state, state + m * n, row_steps, h.lr, NULL,
                                  NULL, NULL, 0, NULL));
    TK_OK(grass_adamw_step(ctx, &cfg, m * n, GRASS_DTYPE_F32, w_dense, GRASS_DTYPE_F32, g,
                           state + 2 * m * n, state + 3 * m * n, &step_dense, h.lr, NULL, NULL,
                           NULL, 0, NULL));
  }
  TK_CHECK(step_dense == 3);
  for (int64_t j = 0; j < m; ++j) TK_CHECK(row_steps[j] == 3);
  TK_SAME_BYTES(w_sparse, w_dense, (size_t)(m * n) * sizeof(float));
  TK_SAME_BYTES(state, state + 2 * m * n, (size_t)(2 * m * n) * sizeof(float));
  free(ws);
  free(x);
  free(dy);
  free(w_sparse);
  free(w_dense);
  free(scores);
  free(idx);
  free(scales);
  free(g);
  free(state);
  free(row_steps);
}

/* Each state row of a compressed step (alpha 1, scale 1, distinct indices, side ROWS) is a
 * dense AdamW step on that row of W at the row's own step count: bit for bit, whatever counts
 * the other rows are at. */
static void check_rows_are_dense_adamw(grass_context* ctx, grass_dtype s_dtype) {
  enum { M = 12, N = 20, R = 4, K = N };
  const int32_t idx[R] = {1, 4, 5, 9};
  const int32_t start[R] = {0, 3, 10, 1000};
  hyper h = {0.9f, 0.95f, 1e-6f, 0.1f, 1.0f, 0.01f, 0.0f, GRASS_DECAY_SELECTED};
  grass_adamw_config cfg = make_config(&h, s_dtype);
  cfg.row_warmup = 0; /* plain AdamW: no row warm-up */
  tk_rng rng = {9191};
  const size_t es = tk_size(s_dtype);
  float* w_sparse = (float*)tk_random_tensor(&rng, GRASS_DTYPE_F32, M * N, 1.0f, NULL);
  float* w_dense = (float*)malloc(M * N * sizeof(float));
  memcpy(w_dense, w_sparse, M * N * sizeof(float));
  unsigned char* ms = (unsigned char*)tk_random_tensor(&rng, s_dtype, R * K, 0.1f, NULL);
  unsigned char* vs = (unsigned char*)malloc(R * K * es);
  for (size_t e = 0; e < R * K; ++e) {
    tk_store(vs, s_dtype, e, (float)(0.001 + 0.01 * tk_uniform(&rng)));
  }
  unsigned char* dm = (unsigned char*)malloc(R * K * es);
  unsigned char* dv = (unsigned char*)malloc(R * K * es);
  memcpy(dm, ms, R * K * es);
  memcpy(dv, vs, R * K * es);
  float scales[R] = {1.0f, 1.0f, 1.0f, 1.0f};
  float g[R * K];
  int32_t* row_steps = (int32_t*)malloc(R * sizeof(int32_t));
  int32_t dense_steps[R];
  memcpy(row_steps, start, sizeof start);
  memcpy(dense_steps, start, sizeof start);
  size_t ws_bytes = 0, ws2 = 0;
  TK_OK(grass_sparse_adamw_workspace_size(ctx, M, N, GRASS_SIDE_ROWS, R, &ws_bytes));
  TK_OK(grass_adamw_workspace_size(ctx, K, &ws2));
  if (ws2 > ws_bytes) ws_bytes = ws2;
  void* ws = tk_workspace(ws_bytes);
  for (int s = 0; s < 3; ++s) {
    for (int e = 0; e < R * K; ++e) g[e] = tk_nonzero(&rng);
    int32_t skipped = -1;
    TK_OK(grass_sparse_adamw_step(ctx, &cfg, M, N, GRASS_SIDE_ROWS, R, GRASS_DTYPE_F32, w_sparse,
                                  idx, scales, g, ms, vs, row_steps, h.lr, NULL, &skipped, ws,
                                  ws_bytes, NULL));
    TK_CHECK(skipped == GRASS_STEP_APPLIED);
    for (int j = 0; j < R; ++j) {
      TK_OK(grass_adamw_step(ctx, &cfg, K, GRASS_DTYPE_F32, w_dense + idx[j] * N, GRASS_DTYPE_F32,
                             g + j * K, dm + (size_t)j * K * es, dv + (size_t)j * K * es,
                             &dense_steps[j], h.lr, NULL, NULL, ws, ws_bytes, NULL));
    }
  }
  for (int j = 0; j < R; ++j) {
    TK_CHECK(row_steps[j] == start[j] + 3 && dense_steps[j] == row_steps[j]);
  }
  TK_SAME_BYTES(w_sparse, w_dense, M * N * sizeof(float));
  TK_SAME_BYTES(ms, dm, R * K * es);
  TK_SAME_BYTES(vs, dv, R * K * es);
  free(w_sparse);
  free(w_dense);
  free(ms);
  free(vs);
  free(dm);
  free(dv);
  free(row_steps);
  free(ws);
}

int main(void) {
  grass_context* ctx = tk_cpu();
  const grass_dtype w_dtypes[] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16, GRASS_DTYPE_F16};
  const grass_dtype s_dtypes[] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16};
  const grass_side sides[] = {GRASS_SIDE_ROWS, GRASS_SIDE_COLS};
  hyper base = {0.9f, 0.999f, 1e-8f, 0.1f, 0.5f, 0.05f, 0.0f, GRASS_DECAY_SELECTED};
  uint64_t seed = 5000;

  for (int wi = 0; wi < 3; ++wi) {
    for (int si = 0; si < 2; ++si) {
      for (int sd = 0; sd < 2; ++sd) {
        check_sparse_adamw_step(ctx, 24, 20, sides[sd], w_dtypes[wi], s_dtypes[si], &base, 0, 3, 0,
                          seed++);
        check_sparse_adamw_step(ctx, 20, 24, sides[sd], w_dtypes[wi], s_dtypes[si], &base, 1000, 1, 0,
                          seed++);
        /* one row selected 10 times, its state rows at different counts */
        check_sparse_adamw_step(ctx, 24, 20, sides[sd], w_dtypes[wi], s_dtypes[si], &base, 2, 2, 10,
                          seed++);
      }
    }
  }
  const grass_decay_mode decays[] = {GRASS_DECAY_OFF, GRASS_DECAY_SELECTED, GRASS_DECAY_DENSE};
  for (int di = 0; di < 3; ++di) {
    hyper h = base;
    h.decay = decays[di];
    h.lr_scale = 0.5f;
    h.beta2 = 0.95f;
    h.alpha = 0.25f;
    for (int sd = 0; sd < 2; ++sd) {
      for (int wi = 0; wi < 2; ++wi) {
        check_sparse_adamw_step(ctx, 16, 12, sides[sd], w_dtypes[wi], GRASS_DTYPE_F32, &h, 4, 2, 0,
                          seed++);
      }
    }
  }

  for (int wi = 0; wi < 3; ++wi) {
    for (int gi = 0; gi < 3; ++gi) {
      for (int si = 0; si < 2; ++si) {
        check_adamw_step(ctx, 257, w_dtypes[wi], w_dtypes[gi], s_dtypes[si], &base, 0, 3, seed++);
      }
    }
  }
  for (int di = 0; di < 3; ++di) {
    hyper h = base;
    h.decay = decays[di];
    h.lr_scale = 2.0f;
    check_adamw_step(ctx, 33, GRASS_DTYPE_F32, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &h, 10, 2, seed++);
  }

  for (size_t ci = 0; ci < sizeof refresh_cases / sizeof refresh_cases[0]; ++ci) {
    for (int si = 0; si < 2; ++si) {
      check_refresh(ctx, GRASS_REFRESH_RESET, s_dtypes[si], 1, &refresh_cases[ci]);
      check_refresh(ctx, GRASS_REFRESH_RESET, s_dtypes[si], 0, &refresh_cases[ci]);
      check_refresh(ctx, GRASS_REFRESH_CARRY, s_dtypes[si], 1, &refresh_cases[ci]);
      check_refresh(ctx, GRASS_REFRESH_CARRY, s_dtypes[si], 0, &refresh_cases[ci]);
    }
  }
  check_carry_then_step(ctx);
  check_rows_are_dense_adamw(ctx, GRASS_DTYPE_F32);
  check_rows_are_dense_adamw(ctx, GRASS_DTYPE_BF16);

  check_full_rank_is_adamw(ctx, GRASS_DECAY_SELECTED);
  check_full_rank_is_adamw(ctx, GRASS_DECAY_DENSE);
  grass_context_destroy(ctx);
  return tk_report("test_adamw");
}
