/* A non-finite gradient (or learning rate) skips the step: the call succeeds, writes
 * GRASS_STEP_SKIPPED_NONFINITE to `*skipped`, and leaves W, M, V and the step counts (every
 * row's, for the compressed step) bit-identical. Checked for the layer-1 steps with every kind
 * of non-finite value and dtype, and for the optimizer handles, where
 * grass_optimizer_last_step_skipped reports the same outcome and a skipped step must not
 * disturb the training that follows. */
#include "testkit.h"

enum { M = 10, N = 6, R = 4, K = N };

/* the outcome numbers are ABI */
_Static_assert(GRASS_STEP_APPLIED == 0, "GRASS_STEP_APPLIED");
_Static_assert(GRASS_STEP_SKIPPED_NONFINITE == 1, "GRASS_STEP_SKIPPED_NONFINITE");
_Static_assert(GRASS_STEP_SKIPPED_BAD_INDICES == 2, "GRASS_STEP_SKIPPED_BAD_INDICES");

typedef struct buffers {
  unsigned char w[M * N * 4];
  unsigned char ms[M * N * 4], vs[M * N * 4];
  int32_t row_steps[R]; /* the compressed step's: one count per state row */
  int32_t step;         /* the dense step's */
} buffers;

static void fill(buffers* b, grass_dtype w_dtype, grass_dtype s_dtype, size_t wn, size_t sn,
                 uint64_t seed) {
  tk_rng rng = {seed};
  for (size_t e = 0; e < wn; ++e) tk_store(b->w, w_dtype, e, tk_nonzero(&rng));
  for (size_t e = 0; e < sn; ++e) {
    tk_store(b->ms, s_dtype, e, 0.1f * tk_nonzero(&rng));
    tk_store(b->vs, s_dtype, e, 0.01f);
  }
  const int32_t counts[R] = {5, 0, 12, 1};
  memcpy(b->row_steps, counts, sizeof counts);
  b->step = 5;
}

static void check_sparse_skip(grass_dtype w_dtype, grass_dtype s_dtype, float bad, size_t where,
                              int bad_lr_scale) {
  grass_context* ctx = tk_cpu();
  grass_adamw_config cfg;
  TK_OK(grass_adamw_config_init(&cfg));
  cfg.state_dtype = s_dtype;
  cfg.weight_decay = 0.1f;
  cfg.decay_mode = GRASS_DECAY_DENSE; /* a skipped step must not decay either */
  cfg.row_warmup = 0; /* the good step below moves W by a full step, which bf16 resolves */
  buffers b, before;
  fill(&b, w_dtype, s_dtype, M * N, R * K, 11 + where);
  before = b;
  int32_t idx[R] = {0, 3, 3, 9};
  float scales[R] = {1.0f, 2.0f, 0.5f, 1.0f};
  float g[R * K];
  tk_rng rng = {12};
  for (int e = 0; e < R * K; ++e) g[e] = tk_nonzero(&rng);
  float lr_scale = 1.0f;
  if (bad_lr_scale) {
    lr_scale = bad;
  } else {
    g[where] = bad;
  }
  int32_t skipped = -1;
  TK_OK(grass_sparse_adamw_step(ctx, &cfg, M, N, GRASS_SIDE_ROWS, R, w_dtype, b.w, idx, scales, g,
                                b.ms, b.vs, b.row_steps, 0.01f, &lr_scale, &skipped, NULL, 0,
                                NULL));
  TK_CHECK(skipped == GRASS_STEP_SKIPPED_NONFINITE);
  TK_SAME_BYTES(&b, &before, sizeof b);
  /* the flag is optional */
  TK_OK(grass_sparse_adamw_step(ctx, &cfg, M, N, GRASS_SIDE_ROWS, R, w_dtype, b.w, idx, scales, g,
                                b.ms, b.vs, b.row_steps, 0.01f, &lr_scale, NULL, NULL, 0, NULL));
  TK_SAME_BYTES(&b, &before, sizeof b);
  /* and a good step afterwards clears it */
  g[where] = 1.0f;
  lr_scale = 1.0f;
  TK_OK(grass_sparse_adamw_step(ctx, &cfg, M, N, GRASS_SIDE_ROWS, R, w_dtype, b.w, idx, scales, g,
                                b.ms, b.vs, b.row_steps, 0.01f, &lr_scale, &skipped, NULL, 0,
                                NULL));
  TK_CHECK(skipped == GRASS_STEP_APPLIED);
  for (int j = 0; j < R; ++j) TK_CHECK(b.row_steps[j] == before.row_steps[j] + 1);
  TK_CHECK(b.step == before.step); /* the dense count is not the compressed step's */
  TK_CHECK(tk_first_diff(b.w, before.w, sizeof b.w) >= 0);
  grass_context_destroy(ctx);
}

static void check_dense_skip(grass_dtype w_dtype, grass_dtype g_dtype, grass_dtype s_dtype,
                             int which) {
  grass_context* ctx = tk_cpu();
  grass_adamw_config cfg;
  TK_OK(grass_adamw_config_init(&cfg));
  cfg.state_dtype = s_dtype;
  cfg.weight_decay = 0.1f;
  const size_t numel = M * N;
  buffers b, before;
  fill(&b, w_dtype, s_dtype, numel, numel, 21 + (uint64_t)which);
  before = b;
  tk_rng rng = {22};
  void* grad = tk_random_tensor(&rng, g_dtype, numel, 1.0f, NULL);
  const float values[3] = {nanf(""), INFINITY, -INFINITY};
  size_t at = (size_t)which * 17 % numel;
  if (g_dtype == GRASS_DTYPE_F32) {
    ((float*)grad)[at] = values[which];
  } else { /* the 16-bit encodings of NaN, +inf and -inf */
    const uint16_t bf16[3] = {0x7fc0, 0x7f80, 0xff80};
    const uint16_t f16[3] = {0x7e00, 0x7c00, 0xfc00};
    ((uint16_t*)grad)[at] = g_dtype == GRASS_DTYPE_BF16 ? bf16[which] : f16[which];
  }
  int32_t skipped = -1;
  TK_OK(grass_adamw_step(ctx, &cfg, (int64_t)numel, w_dtype, b.w, g_dtype, grad, b.ms, b.vs,
                         &b.step, 0.01f, NULL, &skipped, NULL, 0, NULL));
  TK_CHECK(skipped == GRASS_STEP_SKIPPED_NONFINITE);
  TK_SAME_BYTES(&b, &before, sizeof b);
  free(grad);
  grass_context_destroy(ctx);
}

/* Optimizer handles: a batch with a NaN in dY is skipped; training then continues exactly as
 * for a twin optimizer that never saw that batch. */
static void check_optimizer_skip(void) {
  enum { BT = 8 };
  grass_context* ctx = tk_cpu();
  grass_projection_config pc;
  TK_OK(grass_projection_config_init(&pc));
  pc.rank = R;
  pc.refresh_every = 100;
  grass_adamw_config ac;
  TK_OK(grass_adamw_config_init(&ac));
  grass_optimizer *a = NULL, *twin = NULL, *dense = NULL;
  TK_OK(grass_optimizer_create_sparse(ctx, &pc, &ac, M, N, BT, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                      &a));
  TK_OK(grass_optimizer_create_sparse(ctx, &pc, &ac, M, N, BT, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                      &twin));
  TK_OK(grass_optimizer_create_dense(ctx, &ac, M, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &dense));
  tk_rng rng = {31};
  float w_a[M * N], w_twin[M * N], bias[M], bias_before[M], grad[M];
  float x[BT * N], dy[BT * M], bad_x[BT * N];
  for (int e = 0; e < M * N; ++e) w_a[e] = w_twin[e] = tk_nonzero(&rng);
  for (int e = 0; e < M; ++e) bias[e] = tk_nonzero(&rng);

  for (int s = 0; s < 4; ++s) {
    for (int e = 0; e < BT * N; ++e) bad_x[e] = x[e] = tk_nonzero(&rng);
    for (int e = 0; e < BT * M; ++e) dy[e] = tk_nonzero(&rng);
    if (s == 2) {
      /* a poisoned batch for `a` only; the NaN sits in X, which every selected row of g sees
       * (a NaN in an unselected row of dY never reaches g, so it would not skip the step) */
      bad_x[5] = nanf("");
      float w_before[M * N];
      memcpy(w_before, w_a, sizeof w_a);
      TK_OK(grass_optimizer_backward(a, BT, bad_x, dy, NULL, NULL));
      TK_OK(grass_optimizer_step(a, w_a, NULL, 0.01f, NULL));
      int32_t skipped = -1;
      TK_OK(grass_optimizer_last_step_skipped(a, &skipped, NULL));
      TK_CHECK(skipped == GRASS_STEP_SKIPPED_NONFINITE);
      TK_SAME_BYTES(w_a, w_before, sizeof w_a);
      grass_optimizer_info info;
      info.struct_size = sizeof info;
      TK_OK(grass_optimizer_get_info(a, &info));
      TK_CHECK(info.steps == 3);      /* skipped steps count as calls */
      TK_CHECK(info.accumulated == 0); /* and clear the accumulator */
      continue;
    }
    TK_OK(grass_optimizer_backward(a, BT, x, dy, NULL, NULL));
    TK_OK(grass_optimizer_step(a, w_a, NULL, 0.01f, NULL));
    TK_OK(grass_optimizer_backward(twin, BT, x, dy, NULL, NULL));
    TK_OK(grass_optimizer_step(twin, w_twin, NULL, 0.01f, NULL));
    int32_t skipped = -1;
    TK_OK(grass_optimizer_last_step_skipped(a, &skipped, NULL));
    TK_CHECK(skipped == GRASS_STEP_APPLIED);
  }
  /* the skipped step left M, V and the Adam step as they were */
  TK_SAME_BYTES(w_a, w_twin, sizeof w_a);

  /* dense handle: an infinite gradient is skipped */
  for (int e = 0; e < M; ++e) grad[e] = tk_nonzero(&rng);
  TK_OK(grass_optimizer_step(dense, bias, grad, 0.01f, NULL));
  memcpy(bias_before, bias, sizeof bias);
  grad[M - 1] = -INFINITY;
  TK_OK(grass_optimizer_step(dense, bias, grad, 0.01f, NULL));
  int32_t skipped = -1;
  TK_OK(grass_optimizer_last_step_skipped(dense, &skipped, NULL));
  TK_CHECK(skipped == GRASS_STEP_SKIPPED_NONFINITE);
  TK_SAME_BYTES(bias, bias_before, sizeof bias);

  grass_optimizer_destroy(a);
  grass_optimizer_destroy(twin);
  grass_optimizer_destroy(dense);
  grass_context_destroy(ctx);
}

int main(void) {
  const float bad[3] = {nanf(""), INFINITY, -INFINITY};
  const grass_dtype w_dtypes[3] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16, GRASS_DTYPE_F16};
  const grass_dtype s_dtypes[2] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16};
  for (int b = 0; b < 3; ++b) {
    for (int wi = 0; wi < 3; ++wi) {
      for (int si = 0; si < 2; ++si) {
        check_sparse_skip(w_dtypes[wi], s_dtypes[si], bad[b], 0, 0);
        check_sparse_skip(w_dtypes[wi], s_dtypes[si], bad[b], R * K - 1, 0);
        check_sparse_skip(w_dtypes[wi], s_dtypes[si], bad[b], 7, 0);
      }
    }
    /* a non-finite effective learning rate (lr * lr_scale) is skipped the same way */
    check_sparse_skip(GRASS_DTYPE_F32, GRASS_DTYPE_F32, bad[b], 0, 1);
  }
  for (int which = 0; which < 3; ++which) {
    for (int wi = 0; wi < 3; ++wi) {
      for (int gi = 0; gi < 3; ++gi) {
        check_dense_skip(w_dtypes[wi], w_dtypes[gi], s_dtypes[(wi + gi) % 2], which);
      }
    }
  }
  check_optimizer_skip();
  return tk_report("test_nonfinite");
}
