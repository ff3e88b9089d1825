/* grass_select for every method, scaling and power. top_r is checked exactly; the sampling
 * methods structurally (sorted, in range, distinct for the _nr methods), by their scale formula,
 * and statistically (inclusion frequencies match the probabilities the scales assume). */
#include "testkit.h"

typedef struct selection {
  int32_t* indices;
  float* scales;
} selection;

static grass_projection_config make_config(grass_method method, grass_scaling scaling,
                                           int32_t power, int64_t rank) {
  grass_projection_config cfg;
  TK_OK(grass_projection_config_init(&cfg));
  cfg.method = method;
  cfg.scaling = scaling;
  cfg.power = power;
  cfg.rank = rank;
  cfg.seed = 0x5eed;
  cfg.layer_id = 3;
  return cfg;
}

static int run_select(grass_context* ctx, const grass_projection_config* cfg, int64_t d,
                      uint32_t refresh, const float* scores, selection* out) {
  size_t r = (size_t)cfg->rank;
  size_t ws_bytes = 0;
  TK_OK(grass_select_workspace_size(ctx, d, cfg->rank, &ws_bytes));
  void* ws = tk_workspace(ws_bytes);
  out->indices = (int32_t*)malloc(r * sizeof(int32_t));
  out->scales = (float*)malloc(r * sizeof(float));
  tk_poison(out->indices, r * sizeof(int32_t));
  tk_poison(out->scales, r * sizeof(float));
  grass_status s = grass_select(ctx, cfg, d, refresh, NULL, scores, out->indices, out->scales, ws,
                                ws_bytes, NULL);
  free(ws);
  if (s != GRASS_OK) {
    printf("     grass_select failed: %s\n", grass_last_error_message());
  }
  return s == GRASS_OK;
}

static void free_selection(selection* s) {
  free(s->indices);
  free(s->scales);
}

static int is_distinct_method(grass_method m) {
  return m == GRASS_METHOD_TOP_R || m == GRASS_METHOD_MULTINOMIAL_NR ||
         m == GRASS_METHOD_UNIFORM_NR;
}

/* Sorted ascending, inside [0, d), distinct where the method promises it, finite scales. */
static int structure_ok(const selection* s, size_t r, int64_t d, grass_method method,
                        const char* what) {
  int ok = 1;
  for (size_t j = 0; j < r; ++j) {
    if (s->indices[j] < 0 || s->indices[j] >= d) {
      printf("     %s: indices[%zu] = %d outside [0, %lld)\n", what, j, s->indices[j],
             (long long)d);
      ok = 0;
    }
    if (j > 0 && s->indices[j - 1] > s->indices[j]) {
      printf("     %s: indices not sorted at %zu: %d > %d\n", what, j, s->indices[j - 1],
             s->indices[j]);
      ok = 0;
    }
    if (j > 0 && is_distinct_method(method) && s->indices[j - 1] == s->indices[j]) {
      printf("     %s: index %d repeated\n", what, s->indices[j]);
      ok = 0;
    }
    if (!(isfinite(s->scales[j]) && s->scales[j] > 0.0f)) {
      printf("     %s: scales[%zu] = %g is not finite and positive\n", what, j,
             (double)s->scales[j]);
      ok = 0;
    }
  }
  if (!ok) tk_fail_at(__FILE__, __LINE__, what);
  return ok;
}

/* Sampling weights w_i = s_i^p with non-finite and negative scores counted as 0. */
static void weights(const float* scores, int64_t d, int32_t power, double* w, double* total) {
  *total = 0.0;
  for (int64_t i = 0; i < d; ++i) {
    double s = scores[i];
    w[i] = (isfinite(s) && s > 0.0) ? (power == 1 ? s : s * s) : 0.0;
    *total += w[i];
  }
}

/* pi_i = min(1, c * w_i) with sum pi = r, by water-filling over the largest weights (assumes at
 * least r positive weights). */
static void inclusion(const double* w, int64_t d, size_t r, double* pi) {
  char* capped = (char*)calloc((size_t)d, 1);
  for (;;) {
    double rest = 0.0;
    size_t ncap = 0;
    for (int64_t i = 0; i < d; ++i) {
      if (capped[i]) {
        ++ncap;
      } else {
        rest += w[i];
      }
    }
    double c = (double)(r - ncap) / rest;
    int changed = 0;
    for (int64_t i = 0; i < d; ++i) {
      if (!capped[i] && c * w[i] >= 1.0) {
        capped[i] = 1;
        changed = 1;
      }
    }
    if (!changed) {
      for (int64_t i = 0; i < d; ++i) pi[i] = capped[i] ? 1.0 : c * w[i];
      break;
    }
  }
  free(capped);
}

/* The scale each selected index must carry. */
static void expected_scales(const selection* s, size_t r, int64_t d, const float* scores,
                            const grass_projection_config* cfg, double* want) {
  double* w = tk_doubles((size_t)d);
  double* pi = tk_doubles((size_t)d);
  double total = 0.0;
  weights(scores, d, cfg->power, w, &total);
  inclusion(w, d, r, pi);
  for (size_t j = 0; j < r; ++j) {
    int32_t i = s->indices[j];
    if (cfg->scaling == GRASS_SCALING_NONE) {
      want[j] = 1.0;
      continue;
    }
    switch (cfg->method) {
      case GRASS_METHOD_TOP_R: want[j] = 1.0; break;
      case GRASS_METHOD_MULTINOMIAL: want[j] = 1.0 / sqrt((double)r * w[i] / total); break;
      case GRASS_METHOD_MULTINOMIAL_NR: want[j] = 1.0 / sqrt(pi[i]); break;
      default: want[j] = sqrt((double)d / (double)r); break;
    }
  }
  free(w);
  free(pi);
}

/* top_r: the r largest scores, ties broken by the lower index, written in index order. */
static void expected_top_r(const float* scores, int64_t d, size_t r, int32_t* want) {
  char* taken = (char*)calloc((size_t)d, 1);
  for (size_t j = 0; j < r; ++j) {
    int64_t best = -1;
    for (int64_t i = 0; i < d; ++i) {
      if (!taken[i] && (best < 0 || scores[i] > scores[best])) best = i;
    }
    taken[best] = 1;
  }
  size_t j = 0;
  for (int64_t i = 0; i < d; ++i) {
    if (taken[i]) want[j++] = (int32_t)i;
  }
  free(taken);
}

static void check_method(grass_context* ctx, grass_method method, grass_scaling scaling,
                         int32_t power, int64_t d, size_t r, uint64_t seed) {
  tk_rng rng = {seed};
  float* scores = (float*)malloc((size_t)d * sizeof(float));
  for (int64_t i = 0; i < d; ++i) scores[i] = (float)(0.01 + tk_uniform(&rng));
  grass_projection_config cfg = make_config(method, scaling, power, (int64_t)r);
  char what[96];
  snprintf(what, sizeof what, "select(method=%d scaling=%d p=%d d=%lld r=%zu)", (int)method,
           (int)scaling, (int)power, (long long)d, r);

  selection s;
  if (run_select(ctx, &cfg, d, 7, scores, &s)) {
    structure_ok(&s, r, d, method, what);
    double* want = tk_doubles(r);
    expected_scales(&s, r, d, scores, &cfg, want);
    tk_compare(what, s.scales, GRASS_DTYPE_F32, want, NULL, r, 4.0);
    free(want);
    if (method == GRASS_METHOD_TOP_R) {
      int32_t* top = (int32_t*)malloc(r * sizeof(int32_t));
      expected_top_r(scores, d, r, top);
      for (size_t j = 0; j < r; ++j) {
        if (s.indices[j] != top[j]) {
          printf("     %s: indices[%zu] expected %d, got %d\n", what, j, top[j], s.indices[j]);
          tk_fail_at(__FILE__, __LINE__, "top_r picks the r largest scores");
          break;
        }
      }
      free(top);
    }
    if (r == (size_t)d && is_distinct_method(method)) {
      for (size_t j = 0; j < r; ++j) TK_CHECK(s.indices[j] == (int32_t)j);
    }
    /* the same inputs give the same selection */
    selection again;
    if (run_select(ctx, &cfg, d, 7, scores, &again)) {
      TK_SAME_BYTES(s.indices, again.indices, r * sizeof(int32_t));
      TK_SAME_BYTES(s.scales, again.scales, r * sizeof(float));
      free_selection(&again);
    }
    free_selection(&s);
  }
  free(scores);
}

/* The sampling methods draw differently for another refresh index, seed or layer id. */
static void check_keys(grass_context* ctx, grass_method method) {
  const int64_t d = 64;
  const size_t r = 8;
  float scores[64];
  for (int i = 0; i < 64; ++i) scores[i] = 1.0f + (float)(i % 5);
  grass_projection_config base = make_config(method, GRASS_SCALING_UNBIASED, 2, (int64_t)r);
  selection first;
  if (!run_select(ctx, &base, d, 0, scores, &first)) return;
  int differs_refresh = 0, differs_seed = 0, differs_layer = 0;
  for (uint32_t t = 1; t <= 4; ++t) {
    grass_projection_config cfg = base;
    selection s;
    if (run_select(ctx, &cfg, d, t, scores, &s)) {
      differs_refresh |= memcmp(first.indices, s.indices, r * sizeof(int32_t)) != 0;
      free_selection(&s);
    }
    cfg.seed = base.seed + t;
    if (run_select(ctx, &cfg, d, 0, scores, &s)) {
      differs_seed |= memcmp(first.indices, s.indices, r * sizeof(int32_t)) != 0;
      free_selection(&s);
    }
    cfg = base;
    cfg.layer_id = base.layer_id + t;
    if (run_select(ctx, &cfg, d, 0, scores, &s)) {
      differs_layer |= memcmp(first.indices, s.indices, r * sizeof(int32_t)) != 0;
      free_selection(&s);
    }
  }
  TK_CHECK(differs_refresh);
  TK_CHECK(differs_seed);
  TK_CHECK(differs_layer);
  free_selection(&first);
}

/* Over many refreshes each index is chosen as often as the probability its scale assumes:
 * pi_i for the _nr methods, r * q_i expected draws for the with-replacement ones. */
static void check_frequencies(grass_context* ctx, grass_method method, int32_t power) {
  enum { D = 20, R = 5, T = 4000 };
  float scores[D];
  for (int i = 0; i < D; ++i) scores[i] = 0.2f + 0.15f * (float)i;
  scores[D - 1] = 6.0f; /* large enough to be capped at pi = 1 for power 2 */
  grass_projection_config cfg = make_config(method, GRASS_SCALING_UNBIASED, power, R);
  double count[D] = {0};
  for (uint32_t t = 0; t < T; ++t) {
    selection s;
    if (!run_select(ctx, &cfg, D, t, scores, &s)) return;
    for (int j = 0; j < R; ++j) count[s.indices[j]] += 1.0;
    free_selection(&s);
  }
  double w[D], p[D], total = 0.0;
  weights(scores, D, power, w, &total);
  if (method == GRASS_METHOD_UNIFORM || method == GRASS_METHOD_UNIFORM_NR) {
    for (int i = 0; i < D; ++i) w[i] = 1.0;
    total = D;
  }
  int with_replacement = method == GRASS_METHOD_MULTINOMIAL || method == GRASS_METHOD_UNIFORM;
  if (with_replacement) {
    for (int i = 0; i < D; ++i) p[i] = w[i] / total;
  } else {
    inclusion(w, D, R, p);
  }
  int bad = 0;
  for (int i = 0; i < D; ++i) {
    /* with replacement: T*R draws of probability p; without: T trials of probability p */
    double trials = with_replacement ? (double)T * R : (double)T;
    double freq = count[i] / trials;
    double sigma = sqrt(p[i] * (1.0 - p[i]) / trials);
    if (fabs(freq - p[i]) > 5.0 * sigma + 1e-12) {
      if (bad < 5) {
        printf("     method %d p=%d: index %d chosen with frequency %.4f, expected %.4f (5 sigma "
               "= %.4f)\n",
               (int)method, (int)power, i, freq, p[i], 5.0 * sigma);
      }
      ++bad;
    }
  }
  if (bad) tk_fail_at(__FILE__, __LINE__, "selection frequencies match the probabilities");
}

/* Zero, negative and non-finite scores count as 0; with no positive score the choice is
 * uniform; with fewer positive scores than r, all positive rows are chosen. */
static void check_degenerate_scores(grass_context* ctx) {
  const grass_method methods[] = {GRASS_METHOD_TOP_R, GRASS_METHOD_MULTINOMIAL,
                                  GRASS_METHOD_MULTINOMIAL_NR, GRASS_METHOD_UNIFORM,
                                  GRASS_METHOD_UNIFORM_NR};
  const float nan = nanf(""), inf = INFINITY;
  float mixed[8] = {nan, inf, -1.0f, 0.5f, 2.0f, -inf, 1.0f, 3.0f}; /* positive: 3, 4, 6, 7 */
  float zeros[8] = {0};
  float nans[8] = {nan, nan, nan, nan, nan, nan, nan, nan};
  float two_positive[8] = {0, 0, 5.0f, 0, 0, 1.0f, 0, 0};
  for (int mi = 0; mi < 5; ++mi) {
    grass_method method = methods[mi];
    int uniform = method == GRASS_METHOD_UNIFORM || method == GRASS_METHOD_UNIFORM_NR;
    char what[64];
    selection s;

    grass_projection_config cfg = make_config(method, GRASS_SCALING_UNBIASED, 2, 3);
    snprintf(what, sizeof what, "mixed scores, method %d", (int)method);
    if (run_select(ctx, &cfg, 8, 1, mixed, &s)) {
      structure_ok(&s, 3, 8, method, what);
      if (!uniform) {
        for (int j = 0; j < 3; ++j) {
          int32_t i = s.indices[j];
          if (!(i == 3 || i == 4 || i == 6 || i == 7)) {
            printf("     %s: chose index %d whose score %g counts as 0\n", what, i,
                   (double)mixed[i]);
            tk_fail_at(__FILE__, __LINE__, "rows with zero weight are never preferred");
          }
        }
      }
      if (method == GRASS_METHOD_TOP_R) {
        TK_CHECK(s.indices[0] == 4 && s.indices[1] == 6 && s.indices[2] == 7);
      }
      free_selection(&s);
    }

    float* fallback[2] = {zeros, nans};
    for (int f = 0; f < 2; ++f) {
      snprintf(what, sizeof what, "%s scores, method %d", f ? "NaN" : "zero", (int)method);
      if (run_select(ctx, &cfg, 8, 1, fallback[f], &s)) {
        structure_ok(&s, 3, 8, method, what);
        /* uniform fallback: the unbiased scale of a uniform choice */
        if (method != GRASS_METHOD_TOP_R) {
          for (int j = 0; j < 3; ++j) {
            TK_CHECK(fabs(s.scales[j] - sqrt(8.0 / 3.0)) <= 1e-6 * sqrt(8.0 / 3.0));
          }
        } else {
          TK_CHECK(s.indices[0] == 0 && s.indices[1] == 1 && s.indices[2] == 2);
        }
        free_selection(&s);
      }
    }

    if (is_distinct_method(method) && !uniform) {
      snprintf(what, sizeof what, "two positive scores, method %d", (int)method);
      if (run_select(ctx, &cfg, 8, 1, two_positive, &s)) {
        structure_ok(&s, 3, 8, method, what);
        int has2 = 0, has5 = 0;
        for (int j = 0; j < 3; ++j) {
          has2 |= s.indices[j] == 2;
          has5 |= s.indices[j] == 5;
        }
        TK_CHECK(has2 && has5);
        free_selection(&s);
      }
    }
  }
}

static void check_top_r_ties(grass_context* ctx) {
  float scores[6] = {1.0f, 3.0f, 3.0f, 2.0f, 3.0f, 3.0f};
  grass_projection_config cfg = make_config(GRASS_METHOD_TOP_R, GRASS_SCALING_UNBIASED, 2, 3);
  selection s;
  if (run_select(ctx, &cfg, 6, 0, scores, &s)) {
    TK_CHECK(s.indices[0] == 1 && s.indices[1] == 2 && s.indices[2] == 4);
    for (int j = 0; j < 3; ++j) TK_CHECK(s.scales[j] == 1.0f);
    free_selection(&s);
  }
}

int main(void) {
  grass_context* ctx = tk_cpu();
  const grass_method methods[] = {GRASS_METHOD_TOP_R, GRASS_METHOD_MULTINOMIAL,
                                  GRASS_METHOD_MULTINOMIAL_NR, GRASS_METHOD_UNIFORM,
                                  GRASS_METHOD_UNIFORM_NR};
  const size_t ranks[] = {1, 7, 50};
  uint64_t seed = 100;
  for (int mi = 0; mi < 5; ++mi) {
    for (int sc = 0; sc < 2; ++sc) {
      for (int32_t p = 1; p <= 2; ++p) {
        for (int ri = 0; ri < 3; ++ri) {
          check_method(ctx, methods[mi], sc ? GRASS_SCALING_NONE : GRASS_SCALING_UNBIASED, p,
                       50, ranks[ri], seed++);
        }
      }
    }
  }
  for (int mi = 1; mi < 5; ++mi) check_keys(ctx, methods[mi]);
  for (int mi = 1; mi < 5; ++mi) {
    check_frequencies(ctx, methods[mi], 2);
    check_frequencies(ctx, methods[mi], 1);
  }
  check_degenerate_scores(ctx);
  check_top_r_ties(ctx);
  grass_context_destroy(ctx);
  return tk_report("test_select");
}
