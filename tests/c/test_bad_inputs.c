/* Every class of bad input, on every entry point it applies to: NULL pointers, zero, negative and
 * oversized sizes, rank above the projected dimension, unknown enum values, unsupported dtypes,
 * wrong struct_size, too small workspaces, misaligned pointers, out-of-range and unsorted
 * indices, calls in the wrong order, and a CUDA context on a machine without CUDA. Each case
 * checks the specific status, that grass_last_error_message() names the function and the
 * argument, and that nothing was written: every buffer the call could write is poisoned or
 * snapshotted before and compared after. */
#include <float.h>

#include "testkit.h"

enum { M = 8, N = 6, B = 4, R = 3, K = N, D = M, NUMEL = M * N, SPARE = 4096 };

/* Valid arguments for every op (side ROWS, f32), and the buffers a call may write. */
typedef struct fixture {
  grass_context* ctx;
  grass_projection_config pc;
  grass_adamw_config ac;
  float x[B * N], dy[B * M];
  float scores[D], in_scores[D];
  int32_t indices[R];
  float scales[R];
  float g[R * K];
  float w[NUMEL];
  float ms[R * K], vs[R * K];
  int32_t row_steps[R]; /* the compressed step's: one count per state row */
  int32_t skipped;
  float lr_scale;
  float dw[NUMEL], dgrad[NUMEL], dm[NUMEL], dv[NUMEL];
  int32_t dstep;
  int32_t old_indices[R], new_indices[R];
  size_t bytes_out;
  unsigned char* ws;
  size_t ws_bytes;
  unsigned char spare[SPARE]; /* misaligned pointers point in here */
} fixture;

static fixture fx;
static unsigned char snapshot[sizeof(fixture)];
static unsigned char* ws_snapshot;

static void take_snapshot(void) {
  memcpy(snapshot, &fx, sizeof fx);
  memcpy(ws_snapshot, fx.ws, fx.ws_bytes);
}

/* Nothing the call could write has changed. */
static void check_unchanged(const char* call, int line) {
  long at = tk_first_diff(snapshot, &fx, sizeof fx);
  if (at >= 0) {
    tk_fail_at(__FILE__, line, call);
    printf("     the rejected call wrote to the fixture at byte offset %ld\n", at);
  }
  at = tk_first_diff(ws_snapshot, fx.ws, fx.ws_bytes);
  if (at >= 0) {
    tk_fail_at(__FILE__, line, call);
    printf("     the rejected call wrote to the workspace at byte %ld\n", at);
  }
}

#define BAD(call, status, func, arg)        \
  do {                                      \
    take_snapshot();                        \
    TK_FAILS(call, status, func, arg);      \
    check_unchanged(#call, __LINE__);       \
  } while (0)

static void* misaligned(void) { return fx.spare + 1; }

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static void setup(void) {
  memset(&fx, 0, sizeof fx);
  fx.ctx = tk_cpu();
  TK_OK(grass_projection_config_init(&fx.pc));
  fx.pc.rank = R;
  fx.pc.side = GRASS_SIDE_ROWS;
  TK_OK(grass_adamw_config_init(&fx.ac));
  tk_rng rng = {31};
  for (int i = 0; i < B * N; ++i) fx.x[i] = tk_nonzero(&rng);
  for (int i = 0; i < B * M; ++i) fx.dy[i] = tk_nonzero(&rng);
  for (int i = 0; i < D; ++i) fx.in_scores[i] = (float)(1 + i);
  fx.indices[0] = 1;
  fx.indices[1] = 4;
  fx.indices[2] = 6;
  for (int j = 0; j < R; ++j) {
    fx.scales[j] = 1.0f;
    fx.old_indices[j] = 2 * j;
    fx.new_indices[j] = 2 * j + 1;
  }
  for (int i = 0; i < R * K; ++i) {
    fx.g[i] = tk_nonzero(&rng);
    fx.ms[i] = 0.1f * tk_nonzero(&rng);
    fx.vs[i] = 0.01f;
  }
  for (int i = 0; i < NUMEL; ++i) {
    fx.w[i] = fx.dw[i] = tk_nonzero(&rng);
    fx.dgrad[i] = tk_nonzero(&rng);
    fx.dm[i] = 0.0f;
    fx.dv[i] = 0.0f;
  }
  fx.row_steps[0] = 2;
  fx.row_steps[1] = 0;
  fx.row_steps[2] = 7;
  fx.dstep = 2;
  fx.skipped = -7;
  fx.lr_scale = 1.0f;
  fx.bytes_out = 0xabcdef;
  tk_poison(fx.scores, sizeof fx.scores);
  tk_poison(fx.spare, sizeof fx.spare);

  grass_adamw_config carry = fx.ac;
  carry.refresh_mode = GRASS_REFRESH_CARRY;
  size_t a = 0, b = 0, c = 0, d = 0, e = 0, f = 0;
  TK_OK(grass_scores_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, &a));
  TK_OK(grass_select_workspace_size(fx.ctx, D, R, &b));
  TK_OK(grass_sparse_grad_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, R, GRASS_DTYPE_F32, &c));
  TK_OK(grass_sparse_adamw_workspace_size(fx.ctx, M, N, GRASS_SIDE_ROWS, R, &d));
  TK_OK(grass_adamw_workspace_size(fx.ctx, NUMEL, &e));
  TK_OK(grass_state_refresh_workspace_size(fx.ctx, carry.refresh_mode, carry.state_dtype,
                                           R, K, &f));
  fx.ws_bytes = max_size(max_size(max_size(a, b), max_size(c, d)), max_size(e, f));
  TK_CHECK(a > 0 && b > 0 && c > 0); /* the too-small cases below need scratch */
  TK_CHECK(f == 0);                    /* carry moves the state rows in place */
  fx.ws = (unsigned char*)malloc(fx.ws_bytes);
  tk_poison(fx.ws, fx.ws_bytes);
  ws_snapshot = (unsigned char*)malloc(fx.ws_bytes);
}

static void teardown(void) {
  grass_context_destroy(fx.ctx);
  free(fx.ws);
  free(ws_snapshot);
}

/* ---- library-wide functions ---------------------------------------------------------------- */

static void library_functions(void) {
  const char* f = "grass_projection_config_init";
  BAD(grass_projection_config_init(NULL), GRASS_ERROR_NULL_POINTER, f, "config");
  /* the ABI 3-5 symbol (parenthesized: not grass.h's macro) and the sized one */
  BAD((grass_adamw_config_init)(NULL), GRASS_ERROR_NULL_POINTER, "grass_adamw_config_init",
      "config");
  BAD(grass_adamw_config_init_sized(NULL, sizeof(grass_adamw_config)), GRASS_ERROR_NULL_POINTER,
      "grass_adamw_config_init_sized", "config");
  grass_adamw_config unsized;
  memset(&unsized, 0xAB, sizeof unsized);
  BAD(grass_adamw_config_init_sized(&unsized, sizeof unsized + 8), GRASS_ERROR_STRUCT_SIZE,
      "grass_adamw_config_init_sized", "config->struct_size");
  TK_CHECK(unsized.struct_size == (size_t)0xABABABABABABABABull);
  BAD(grass_context_create_cpu(NULL), GRASS_ERROR_NULL_POINTER, "grass_context_create_cpu",
      "ctx_out");
  grass_device_kind kind = 77;
  BAD(grass_context_device_kind(NULL, &kind), GRASS_ERROR_NULL_POINTER,
      "grass_context_device_kind", "ctx");
  BAD(grass_context_device_kind(fx.ctx, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_context_device_kind", "kind_out");
  TK_CHECK(kind == 77);
  BAD(grass_cuda_available(NULL, NULL, 0), GRASS_ERROR_NULL_POINTER, "grass_cuda_available",
      "available_out");

  f = "grass_resolve_side";
  int64_t d = -3, k = -3;
  grass_side s = -3;
  BAD(grass_resolve_side(0, N, GRASS_SIDE_ROWS, &s, &d, &k), GRASS_ERROR_INVALID_VALUE, f, "m");
  BAD(grass_resolve_side(M, -1, GRASS_SIDE_ROWS, &s, &d, &k), GRASS_ERROR_INVALID_VALUE, f, "n");
  BAD(grass_resolve_side((int64_t)1 << 40, N, GRASS_SIDE_ROWS, &s, &d, &k),
      GRASS_ERROR_INVALID_VALUE, f, "m");
  BAD(grass_resolve_side(M, N, 3, &s, &d, &k), GRASS_ERROR_INVALID_ENUM, f, "side");
  BAD(grass_resolve_side(M, N, -1, &s, &d, &k), GRASS_ERROR_INVALID_ENUM, f, "side");
  BAD(grass_resolve_side(M, N, GRASS_SIDE_ROWS, (grass_side*)misaligned(), &d, &k),
      GRASS_ERROR_MISALIGNED, f, "side_out");
  TK_CHECK(s == -3 && d == -3 && k == -3);

  /* fixed strings: every status has its own, unknown codes have one too, none is NULL */
  const grass_status all[] = {GRASS_OK,
                              GRASS_ERROR_NULL_POINTER,
                              GRASS_ERROR_INVALID_VALUE,
                              GRASS_ERROR_INVALID_ENUM,
                              GRASS_ERROR_DTYPE,
                              GRASS_ERROR_STRUCT_SIZE,
                              GRASS_ERROR_WORKSPACE_TOO_SMALL,
                              GRASS_ERROR_INVALID_STATE,
                              GRASS_ERROR_BAD_CHECKPOINT,
                              GRASS_ERROR_WRONG_CONTEXT,
                              GRASS_ERROR_MISALIGNED,
                              GRASS_ERROR_CUDA_UNAVAILABLE,
                              GRASS_ERROR_CUDA,
                              GRASS_ERROR_UNSUPPORTED,
                              GRASS_ERROR_OUT_OF_MEMORY,
                              GRASS_ERROR_PANIC,
                              GRASS_ERROR_INTERNAL};
  const size_t count = sizeof all / sizeof all[0];
  const char* unknown = grass_status_string(12345);
  TK_CHECK(unknown != NULL && *unknown != '\0');
  TK_CHECK(grass_status_string(-1) == unknown || strcmp(grass_status_string(-1), unknown) == 0);
  for (size_t i = 0; i < count; ++i) {
    const char* si = grass_status_string((int32_t)all[i]);
    TK_CHECK(si != NULL && *si != '\0' && strcmp(si, unknown) != 0);
    for (size_t j = 0; j < i; ++j) TK_CHECK(strcmp(si, grass_status_string((int32_t)all[j])) != 0);
  }
  TK_CHECK(grass_dtype_size(GRASS_DTYPE_F32) == 4);
  TK_CHECK(grass_dtype_size(GRASS_DTYPE_BF16) == 2);
  TK_CHECK(grass_dtype_size(GRASS_DTYPE_F16) == 2);
  TK_CHECK(grass_dtype_size(3) == 0);
  TK_CHECK(grass_dtype_size(-1) == 0);
}

/* ---- workspace queries --------------------------------------------------------------------- */

static void workspace_queries(void) {
  const char* f = "grass_scores_workspace_size";
  BAD(grass_scores_workspace_size(NULL, M, N, B, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, &fx.bytes_out),
      GRASS_ERROR_NULL_POINTER, f, "ctx");
  BAD(grass_scores_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, NULL),
      GRASS_ERROR_NULL_POINTER, f, "bytes_out");
  BAD(grass_scores_workspace_size(fx.ctx, M, N, 0, GRASS_SIDE_ROWS, GRASS_DTYPE_F32,
                                  &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "b");
  BAD(grass_scores_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, 5, &fx.bytes_out),
      GRASS_ERROR_INVALID_ENUM, f, "dtype");
  BAD(grass_scores_workspace_size(fx.ctx, M, N, B, 9, GRASS_DTYPE_F32, &fx.bytes_out),
      GRASS_ERROR_INVALID_ENUM, f, "side");
  BAD(grass_scores_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, GRASS_DTYPE_F32,
                                  (size_t*)misaligned()),
      GRASS_ERROR_MISALIGNED, f, "bytes_out");

  f = "grass_select_workspace_size";
  BAD(grass_select_workspace_size(fx.ctx, 0, R, &fx.bytes_out), GRASS_ERROR_INVALID_VALUE, f, "d");
  BAD(grass_select_workspace_size(fx.ctx, D, -2, &fx.bytes_out), GRASS_ERROR_INVALID_VALUE, f,
      "r");
  BAD(grass_select_workspace_size(fx.ctx, D, D + 1, &fx.bytes_out), GRASS_ERROR_INVALID_VALUE, f,
      "r");

  f = "grass_sparse_grad_workspace_size";
  BAD(grass_sparse_grad_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, M + 1, GRASS_DTYPE_F32,
                                       &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(grass_sparse_grad_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_COLS, N + 1, GRASS_DTYPE_F32,
                                       &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(grass_sparse_grad_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, 0, GRASS_DTYPE_F32,
                                       &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "r");

  f = "grass_sparse_adamw_workspace_size";
  BAD(grass_sparse_adamw_workspace_size(fx.ctx, M, N, GRASS_SIDE_ROWS, M + 1, &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(grass_sparse_adamw_workspace_size(fx.ctx, -M, N, GRASS_SIDE_ROWS, R, &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "m");

  f = "grass_adamw_workspace_size";
  BAD(grass_adamw_workspace_size(fx.ctx, 0, &fx.bytes_out), GRASS_ERROR_INVALID_VALUE, f, "numel");
  BAD(grass_adamw_workspace_size(NULL, NUMEL, &fx.bytes_out), GRASS_ERROR_NULL_POINTER, f, "ctx");

  f = "grass_state_refresh_workspace_size";
  BAD(grass_state_refresh_workspace_size(fx.ctx, 7, GRASS_DTYPE_F32, R, K, &fx.bytes_out),
      GRASS_ERROR_INVALID_ENUM, f, "refresh_mode = 7");
  BAD(grass_state_refresh_workspace_size(fx.ctx, GRASS_REFRESH_CARRY, GRASS_DTYPE_F16, R, K,
                                         &fx.bytes_out),
      GRASS_ERROR_DTYPE, f, "state_dtype");
  BAD(grass_state_refresh_workspace_size(fx.ctx, fx.ac.refresh_mode, fx.ac.state_dtype,
                                         R, 0, &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "k");
  BAD(grass_state_refresh_workspace_size(fx.ctx, fx.ac.refresh_mode, fx.ac.state_dtype,
                                         -1, K, &fx.bytes_out),
      GRASS_ERROR_INVALID_VALUE, f, "r");
}

/* ---- grass_row_scores ---------------------------------------------------------------------- */

static void row_scores(void) {
  const char* f = "grass_row_scores";
#define SCORES(ctx, m, n, b, side, dtype, x, dy, scores, ws, wsb) \
  grass_row_scores(ctx, m, n, b, side, dtype, x, dy, scores, ws, wsb, NULL)
  size_t need = 0;
  TK_OK(grass_scores_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, &need));
  const grass_side S = GRASS_SIDE_ROWS;
  const grass_dtype F = GRASS_DTYPE_F32;
  BAD(SCORES(NULL, M, N, B, S, F, fx.x, fx.dy, fx.scores, fx.ws, need), GRASS_ERROR_NULL_POINTER,
      f, "ctx");
  BAD(SCORES(fx.ctx, M, N, B, S, F, NULL, fx.dy, fx.scores, fx.ws, need), GRASS_ERROR_NULL_POINTER,
      f, "x");
  BAD(SCORES(fx.ctx, M, N, B, S, F, fx.x, NULL, fx.scores, fx.ws, need), GRASS_ERROR_NULL_POINTER,
      f, "dy");
  BAD(SCORES(fx.ctx, M, N, B, S, F, fx.x, fx.dy, NULL, fx.ws, need), GRASS_ERROR_NULL_POINTER, f,
      "scores");
  BAD(SCORES(fx.ctx, M, N, B, S, F, fx.x, fx.dy, fx.scores, NULL, need), GRASS_ERROR_NULL_POINTER,
      f, "workspace");
  BAD(SCORES(fx.ctx, 0, N, B, S, F, fx.x, fx.dy, fx.scores, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "m");
  BAD(SCORES(fx.ctx, M, -N, B, S, F, fx.x, fx.dy, fx.scores, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "n");
  BAD(SCORES(fx.ctx, M, N, -1, S, F, fx.x, fx.dy, fx.scores, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "b");
  BAD(SCORES(fx.ctx, M, N, B, 4, F, fx.x, fx.dy, fx.scores, fx.ws, need), GRASS_ERROR_INVALID_ENUM,
      f, "side");
  BAD(SCORES(fx.ctx, M, N, B, S, 3, fx.x, fx.dy, fx.scores, fx.ws, need), GRASS_ERROR_INVALID_ENUM,
      f, "dtype");
  BAD(SCORES(fx.ctx, M, N, B, S, F, fx.x, fx.dy, fx.scores, fx.ws, need - 1),
      GRASS_ERROR_WORKSPACE_TOO_SMALL, f, "workspace_bytes");
  BAD(SCORES(fx.ctx, M, N, B, S, F, fx.x, fx.dy, fx.scores, fx.ws, 0),
      GRASS_ERROR_WORKSPACE_TOO_SMALL, f, "workspace_bytes");
  BAD(SCORES(fx.ctx, M, N, B, S, F, fx.x, fx.dy, (float*)misaligned(), fx.ws, need),
      GRASS_ERROR_MISALIGNED, f, "scores");
  BAD(SCORES(fx.ctx, M, N, B, S, F, misaligned(), fx.dy, fx.scores, fx.ws, need),
      GRASS_ERROR_MISALIGNED, f, "x");
  BAD(SCORES(fx.ctx, M, N, B, S, GRASS_DTYPE_BF16, fx.x, fx.spare + 1, fx.scores, fx.ws,
             fx.ws_bytes),
      GRASS_ERROR_MISALIGNED, f, "dy");
#undef SCORES
}

/* ---- grass_select -------------------------------------------------------------------------- */

static void select_(void) {
  const char* f = "grass_select";
  size_t need = 0;
  TK_OK(grass_select_workspace_size(fx.ctx, D, R, &need));
  grass_projection_config c;
#define SELECT(cfg, d, scores, idx, scl, ws, wsb) \
  grass_select(fx.ctx, cfg, d, 0, NULL, scores, idx, scl, ws, wsb, NULL)
#define WITH(field, value) (c = fx.pc, c.field = (value), &c)
  tk_poison(fx.indices, sizeof fx.indices);
  tk_poison(fx.scales, sizeof fx.scales);
  BAD(grass_select(NULL, &fx.pc, D, 0, NULL, fx.in_scores, fx.indices, fx.scales, fx.ws, need, NULL),
      GRASS_ERROR_NULL_POINTER, f, "ctx");
  BAD(SELECT(NULL, D, fx.in_scores, fx.indices, fx.scales, fx.ws, need), GRASS_ERROR_NULL_POINTER,
      f, "config");
  BAD(SELECT(&fx.pc, D, NULL, fx.indices, fx.scales, fx.ws, need), GRASS_ERROR_NULL_POINTER, f,
      "scores");
  BAD(SELECT(&fx.pc, D, fx.in_scores, NULL, fx.scales, fx.ws, need), GRASS_ERROR_NULL_POINTER, f,
      "indices");
  BAD(SELECT(&fx.pc, D, fx.in_scores, fx.indices, NULL, fx.ws, need), GRASS_ERROR_NULL_POINTER, f,
      "scales");
  BAD(SELECT(WITH(struct_size, sizeof c - 8), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_STRUCT_SIZE, f, "struct_size");
  BAD(SELECT(WITH(struct_size, 0), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_STRUCT_SIZE, f, "struct_size");
  BAD(SELECT(WITH(method, 5), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_ENUM, f, "method");
  BAD(SELECT(WITH(scaling, 2), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_ENUM, f, "scaling");
  BAD(SELECT(WITH(side, -1), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_ENUM, f, "side");
  BAD(SELECT(WITH(rank, 0), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "rank");
  BAD(SELECT(WITH(rank, D + 1), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "rank");
  BAD(SELECT(WITH(power, 3), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "power");
  BAD(SELECT(WITH(refresh_every, 0), D, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "refresh_every");
  BAD(SELECT(&fx.pc, 0, fx.in_scores, fx.indices, fx.scales, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "d");
  BAD(SELECT(&fx.pc, D, fx.in_scores, fx.indices, fx.scales, fx.ws, need - 1),
      GRASS_ERROR_WORKSPACE_TOO_SMALL, f, "workspace_bytes");
  BAD(SELECT(&fx.pc, D, fx.in_scores, (int32_t*)misaligned(), fx.scales, fx.ws, need),
      GRASS_ERROR_MISALIGNED, f, "indices");
  BAD(SELECT(&fx.pc, D, fx.in_scores, fx.indices, (float*)(fx.spare + 2), fx.ws, need),
      GRASS_ERROR_MISALIGNED, f, "scales");
  TK_CHECK(tk_is_poisoned(fx.indices, sizeof fx.indices));
  TK_CHECK(tk_is_poisoned(fx.scales, sizeof fx.scales));
  fx.indices[0] = 1;
  fx.indices[1] = 4;
  fx.indices[2] = 6;
  for (int j = 0; j < R; ++j) fx.scales[j] = 1.0f;
#undef SELECT
#undef WITH
}

/* ---- grass_sparse_grad --------------------------------------------------------------------- */

static void sparse_grad(void) {
  const char* f = "grass_sparse_grad";
  size_t need = 0;
  TK_OK(grass_sparse_grad_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_ROWS, R, GRASS_DTYPE_F32,
                                         &need));
#define GRAD(m, n, b, side, r, dtype, x, dy, idx, scl, g, ws, wsb) \
  grass_sparse_grad(fx.ctx, m, n, b, side, r, dtype, x, dy, idx, scl, g, 0, ws, wsb, NULL)
  const grass_side S = GRASS_SIDE_ROWS;
  const grass_dtype F = GRASS_DTYPE_F32;
  tk_poison(fx.g, sizeof fx.g);
  BAD(GRAD(M, N, B, S, R, F, NULL, fx.dy, fx.indices, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_NULL_POINTER, f, "x");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, NULL, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_NULL_POINTER, f, "indices");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, fx.indices, NULL, fx.g, fx.ws, need),
      GRASS_ERROR_NULL_POINTER, f, "scales");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, fx.indices, fx.scales, NULL, fx.ws, need),
      GRASS_ERROR_NULL_POINTER, f, "g");
  BAD(GRAD(M, N, B, S, M + 1, F, fx.x, fx.dy, fx.indices, fx.scales, fx.g, fx.ws, fx.ws_bytes),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(GRAD(M, N, B, GRASS_SIDE_COLS, N + 1, F, fx.x, fx.dy, fx.indices, fx.scales, fx.g, fx.ws,
           fx.ws_bytes),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(GRAD(M, N, B, S, 0, F, fx.x, fx.dy, fx.indices, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(GRAD(M, N, 0, S, R, F, fx.x, fx.dy, fx.indices, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "b");
  BAD(GRAD(M, N, B, S, R, 7, fx.x, fx.dy, fx.indices, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_INVALID_ENUM, f, "dtype");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, fx.indices, fx.scales, fx.g, fx.ws, need - 1),
      GRASS_ERROR_WORKSPACE_TOO_SMALL, f, "workspace_bytes");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, fx.indices, fx.scales, (float*)misaligned(), fx.ws, need),
      GRASS_ERROR_MISALIGNED, f, "g");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, (const int32_t*)misaligned(), fx.scales, fx.g, fx.ws,
           need),
      GRASS_ERROR_MISALIGNED, f, "indices");
  BAD(GRAD(M, N, B, S, R, GRASS_DTYPE_F16, misaligned(), fx.dy, fx.indices, fx.scales, fx.g, fx.ws,
           fx.ws_bytes),
      GRASS_ERROR_MISALIGNED, f, "x");

  /* indices: out of range, negative, unsorted */
  int32_t out_of_range[R] = {1, 4, D};
  int32_t negative[R] = {-1, 4, 6};
  int32_t unsorted[R] = {4, 1, 6};
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, out_of_range, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, negative, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  BAD(GRAD(M, N, B, S, R, F, fx.x, fx.dy, unsorted, fx.scales, fx.g, fx.ws, need),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  /* in range for side COLS is n, not m */
  int32_t beyond_cols[R] = {1, 2, N};
  size_t need_cols = 0;
  TK_OK(grass_sparse_grad_workspace_size(fx.ctx, M, N, B, GRASS_SIDE_COLS, R, F, &need_cols));
  BAD(GRAD(M, N, B, GRASS_SIDE_COLS, R, F, fx.x, fx.dy, beyond_cols, fx.scales, fx.g, fx.ws,
           need_cols),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  TK_CHECK(tk_is_poisoned(fx.g, sizeof fx.g));
#undef GRAD
  tk_rng rng = {32};
  for (int i = 0; i < R * K; ++i) fx.g[i] = tk_nonzero(&rng);
}

/* ---- grass_sparse_adamw_step --------------------------------------------------------------- */

static void sparse_adamw_step(void) {
  const char* f = "grass_sparse_adamw_step";
  grass_adamw_config c;
#define STEP_ARGS(cfg, m, n, side, r, wd, w, idx, g, ms, vs, steps, lr)                          \
  grass_sparse_adamw_step(fx.ctx, cfg, m, n, side, r, wd, w, idx, fx.scales, g, ms, vs, steps, lr, \
                          &fx.lr_scale, &fx.skipped, NULL, 0, NULL)
#define STEP(cfg) STEP_ARGS(cfg, M, N, GRASS_SIDE_ROWS, R, GRASS_DTYPE_F32, fx.w, fx.indices, \
                            fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f)
#define WITH(field, value) (c = fx.ac, c.field = (value), &c)
  const grass_side S = GRASS_SIDE_ROWS;
  const grass_dtype F = GRASS_DTYPE_F32;
  BAD(grass_sparse_adamw_step(NULL, &fx.ac, M, N, S, R, F, fx.w, fx.indices, fx.scales, fx.g,
                              fx.ms, fx.vs, fx.row_steps, 0.01f, NULL, NULL, NULL, 0, NULL),
      GRASS_ERROR_NULL_POINTER, f, "ctx");
  BAD(STEP(NULL), GRASS_ERROR_NULL_POINTER, f, "config");
  BAD(STEP(WITH(struct_size, sizeof c + 4)), GRASS_ERROR_STRUCT_SIZE, f, "struct_size");
  BAD(STEP(WITH(beta1, 1.0f)), GRASS_ERROR_INVALID_VALUE, f, "beta1");
  BAD(STEP(WITH(beta1, -0.1f)), GRASS_ERROR_INVALID_VALUE, f, "beta1");
  BAD(STEP(WITH(beta2, nanf(""))), GRASS_ERROR_INVALID_VALUE, f, "beta2");
  BAD(STEP(WITH(eps, 0.0f)), GRASS_ERROR_INVALID_VALUE, f, "eps");
  BAD(STEP(WITH(weight_decay, -1.0f)), GRASS_ERROR_INVALID_VALUE, f, "weight_decay");
  BAD(STEP(WITH(alpha, INFINITY)), GRASS_ERROR_INVALID_VALUE, f, "alpha");
  BAD(STEP(WITH(decay_mode, 3)), GRASS_ERROR_INVALID_ENUM, f, "decay_mode");
  BAD(STEP(WITH(refresh_mode, 2)), GRASS_ERROR_INVALID_ENUM, f, "refresh_mode");
  BAD(STEP(WITH(state_dtype, 3)), GRASS_ERROR_INVALID_ENUM, f, "state_dtype");
  BAD(STEP(WITH(state_dtype, GRASS_DTYPE_F16)), GRASS_ERROR_DTYPE, f, "state_dtype");

  const grass_adamw_config* A = &fx.ac;
  BAD(STEP_ARGS(A, M, N, S, R, F, NULL, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_NULL_POINTER, f, "w");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, NULL, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_NULL_POINTER, f, "indices");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, NULL, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_NULL_POINTER, f, "g");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, NULL, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_NULL_POINTER, f, "m_state");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, NULL, fx.row_steps, 0.01f),
      GRASS_ERROR_NULL_POINTER, f, "v_state");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, NULL, 0.01f),
      GRASS_ERROR_NULL_POINTER, f, "row_steps");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, -0.01f),
      GRASS_ERROR_INVALID_VALUE, f, "lr");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, nanf("")),
      GRASS_ERROR_INVALID_VALUE, f, "lr");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, INFINITY),
      GRASS_ERROR_INVALID_VALUE, f, "lr");
  BAD(STEP_ARGS(A, M, N, S, M + 1, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(STEP_ARGS(A, 0, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_VALUE, f, "m");
  BAD(STEP_ARGS(A, M, N, 7, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_ENUM, f, "side");
  BAD(STEP_ARGS(A, M, N, S, R, -1, fx.w, fx.indices, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_ENUM, f, "w_dtype");
  BAD(STEP_ARGS(A, M, N, S, R, GRASS_DTYPE_BF16, misaligned(), fx.indices, fx.g, fx.ms, fx.vs,
                fx.row_steps, 0.01f),
      GRASS_ERROR_MISALIGNED, f, "w");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, misaligned(), fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_MISALIGNED, f, "m_state");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, fx.indices, fx.g, fx.ms, fx.vs, (int32_t*)misaligned(),
                0.01f),
      GRASS_ERROR_MISALIGNED, f, "row_steps");
  BAD(grass_sparse_adamw_step(fx.ctx, A, M, N, S, R, F, fx.w, fx.indices, fx.scales, fx.g, fx.ms,
                              fx.vs, fx.row_steps, 0.01f, (const float*)misaligned(), &fx.skipped,
                              NULL, 0, NULL),
      GRASS_ERROR_MISALIGNED, f, "lr_scale");
  BAD(grass_sparse_adamw_step(fx.ctx, A, M, N, S, R, F, fx.w, fx.indices, fx.scales, fx.g, fx.ms,
                              fx.vs, fx.row_steps, 0.01f, NULL, (int32_t*)misaligned(), NULL, 0,
                              NULL),
      GRASS_ERROR_MISALIGNED, f, "skipped");

  int32_t out_of_range[R] = {1, 4, D};
  int32_t negative[R] = {-5, 4, 6};
  int32_t unsorted[R] = {1, 6, 4};
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, out_of_range, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, negative, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  BAD(STEP_ARGS(A, M, N, S, R, F, fx.w, unsorted, fx.g, fx.ms, fx.vs, fx.row_steps, 0.01f),
      GRASS_ERROR_INVALID_VALUE, f, "indices");
  /* a CPU context rejects bad indices with an error, not with GRASS_STEP_SKIPPED_BAD_INDICES:
   * neither the outcome nor any row's count was written (BAD compared the whole fixture) */
  TK_CHECK(fx.skipped == -7);
  TK_CHECK(fx.row_steps[0] == 2 && fx.row_steps[1] == 0 && fx.row_steps[2] == 7);
#undef STEP_ARGS
#undef STEP
#undef WITH
}

/* ---- grass_adamw_step ---------------------------------------------------------------------- */

static void adamw_step(void) {
  const char* f = "grass_adamw_step";
#define DSTEP(numel, wd, w, gd, grad, ms, vs, step, lr) \
  grass_adamw_step(fx.ctx, &fx.ac, numel, wd, w, gd, grad, ms, vs, step, lr, NULL, &fx.skipped, \
                   NULL, 0, NULL)
  const grass_dtype F = GRASS_DTYPE_F32;
  BAD(DSTEP(0, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f), GRASS_ERROR_INVALID_VALUE, f,
      "numel");
  BAD(DSTEP(-NUMEL, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f),
      GRASS_ERROR_INVALID_VALUE, f, "numel");
  BAD(DSTEP(NUMEL, F, fx.dw, F, NULL, fx.dm, fx.dv, &fx.dstep, 0.1f), GRASS_ERROR_NULL_POINTER, f,
      "grad");
  BAD(DSTEP(NUMEL, F, NULL, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f), GRASS_ERROR_NULL_POINTER,
      f, "w");
  BAD(DSTEP(NUMEL, F, fx.dw, 9, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f), GRASS_ERROR_INVALID_ENUM,
      f, "grad_dtype");
  BAD(DSTEP(NUMEL, 9, fx.dw, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f), GRASS_ERROR_INVALID_ENUM,
      f, "w_dtype");
  BAD(DSTEP(NUMEL, F, fx.dw, GRASS_DTYPE_BF16, misaligned(), fx.dm, fx.dv, &fx.dstep, 0.1f),
      GRASS_ERROR_MISALIGNED, f, "grad");
  BAD(DSTEP(NUMEL, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, -1.0f),
      GRASS_ERROR_INVALID_VALUE, f, "lr");
  /* the dense step keeps one count, named `step` */
  BAD(DSTEP(NUMEL, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, NULL, 0.1f), GRASS_ERROR_NULL_POINTER, f,
      "step");
  TK_CHECK(strstr(grass_last_error_message(), "row_steps") == NULL);
  BAD(DSTEP(NUMEL, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, (int32_t*)misaligned(), 0.1f),
      GRASS_ERROR_MISALIGNED, f, "step");
  BAD(grass_adamw_step(fx.ctx, NULL, NUMEL, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f,
                       NULL, NULL, NULL, 0, NULL),
      GRASS_ERROR_NULL_POINTER, f, "config");
  grass_adamw_config c = fx.ac;
  c.state_dtype = GRASS_DTYPE_F16;
  BAD(grass_adamw_step(fx.ctx, &c, NUMEL, F, fx.dw, F, fx.dgrad, fx.dm, fx.dv, &fx.dstep, 0.1f,
                       NULL, NULL, NULL, 0, NULL),
      GRASS_ERROR_DTYPE, f, "state_dtype");
#undef DSTEP
}

/* ---- grass_state_refresh ------------------------------------------------------------------- */

static void state_refresh(void) {
  const char* f = "grass_state_refresh";
  grass_adamw_config carry = fx.ac;
  carry.refresh_mode = GRASS_REFRESH_CARRY;
  size_t need = 0;
  TK_OK(grass_state_refresh_workspace_size(fx.ctx, carry.refresh_mode, carry.state_dtype,
                                           R, K, &need));
#define REFRESH(cfg, r, k, old, new_, ms, vs, steps, wsb) \
  grass_state_refresh(fx.ctx, (cfg)->refresh_mode, (cfg)->state_dtype, r, k, old, new_, ms, vs, \
                      steps, fx.ws, wsb, NULL)
  BAD(REFRESH(&carry, R, K, fx.old_indices, NULL, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_NULL_POINTER, f, "new_indices");
  BAD(REFRESH(&carry, R, K, fx.old_indices, fx.new_indices, fx.ms, NULL, fx.row_steps, need),
      GRASS_ERROR_NULL_POINTER, f, "v_state");
  BAD(REFRESH(&carry, R, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, NULL, need),
      GRASS_ERROR_NULL_POINTER, f, "row_steps");
  BAD(REFRESH(&fx.ac, R, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, NULL, need),
      GRASS_ERROR_NULL_POINTER, f, "row_steps"); /* reset writes the counts too */
  BAD(REFRESH(&carry, R, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs,
              (int32_t*)misaligned(), need),
      GRASS_ERROR_MISALIGNED, f, "row_steps");
  BAD(REFRESH(&carry, 0, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_VALUE, f, "r");
  BAD(REFRESH(&carry, R, -K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_VALUE, f, "k");
  /* no scratch: a NULL workspace of 0 bytes will do (the bad calls here must still fail
     before writing anything, which BAD checks) */
  TK_CHECK(need == 0);
  int32_t unsorted[R] = {3, 1, 5};
  int32_t negative[R] = {-1, 1, 5};
  BAD(REFRESH(&carry, R, K, fx.old_indices, unsorted, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_VALUE, f, "new_indices");
  BAD(REFRESH(&carry, R, K, negative, fx.new_indices, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_VALUE, f, "old_indices");
  BAD(REFRESH(&fx.ac, R, K, fx.old_indices, unsorted, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_VALUE, f, "new_indices");
  BAD(REFRESH(&carry, R, K, (const int32_t*)misaligned(), fx.new_indices, fx.ms, fx.vs,
              fx.row_steps, need),
      GRASS_ERROR_MISALIGNED, f, "old_indices");
  grass_adamw_config bad = carry;
  bad.refresh_mode = 9;
  BAD(REFRESH(&bad, R, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_ENUM, f, "refresh_mode");
  bad = carry;
  bad.state_dtype = GRASS_DTYPE_F16;
  BAD(REFRESH(&bad, R, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_DTYPE, f, "state_dtype = f16");
  bad.state_dtype = 5;
  BAD(REFRESH(&bad, R, K, fx.old_indices, fx.new_indices, fx.ms, fx.vs, fx.row_steps, need),
      GRASS_ERROR_INVALID_ENUM, f, "state_dtype = 5");
#undef REFRESH
}

/* ---- handles ------------------------------------------------------------------------------- */

#define SENTINEL(type) ((type*)(uintptr_t)0x5e471e10)

static void projection_handle(void) {
  const char* f = "grass_projection_create";
  grass_projection* p = SENTINEL(grass_projection);
  grass_projection_config c;
#define CREATE(cfg, m, n, tokens, dtype) \
  grass_projection_create(fx.ctx, cfg, m, n, tokens, dtype, &p)
#define WITH(field, value) (c = fx.pc, c.field = (value), &c)
  BAD(grass_projection_create(NULL, &fx.pc, M, N, B, GRASS_DTYPE_F32, &p),
      GRASS_ERROR_NULL_POINTER, f, "ctx");
  BAD(CREATE(NULL, M, N, B, GRASS_DTYPE_F32), GRASS_ERROR_NULL_POINTER, f, "config");
  BAD(grass_projection_create(fx.ctx, &fx.pc, M, N, B, GRASS_DTYPE_F32, NULL),
      GRASS_ERROR_NULL_POINTER, f, "projection_out");
  BAD(CREATE(WITH(rank, M + 1), M, N, B, GRASS_DTYPE_F32), GRASS_ERROR_INVALID_VALUE, f, "rank");
  c = fx.pc;
  c.side = GRASS_SIDE_COLS; /* d = n */
  c.rank = N + 1;
  BAD(CREATE(&c, M, N, B, GRASS_DTYPE_F32), GRASS_ERROR_INVALID_VALUE, f, "rank");
  BAD(CREATE(&fx.pc, M, N, 0, GRASS_DTYPE_F32), GRASS_ERROR_INVALID_VALUE, f, "max_tokens");
  BAD(CREATE(&fx.pc, M, 0, B, GRASS_DTYPE_F32), GRASS_ERROR_INVALID_VALUE, f, "n");
  BAD(CREATE(&fx.pc, M, N, B, 3), GRASS_ERROR_INVALID_ENUM, f, "dtype");
  BAD(CREATE(WITH(struct_size, 7), M, N, B, GRASS_DTYPE_F32), GRASS_ERROR_STRUCT_SIZE, f,
      "struct_size");
  BAD(CREATE(WITH(method, 99), M, N, B, GRASS_DTYPE_F32), GRASS_ERROR_INVALID_ENUM, f, "method");
  BAD(CREATE(WITH(refresh_every, -1), M, N, B, GRASS_DTYPE_F32), GRASS_ERROR_INVALID_VALUE, f,
      "refresh_every");
  TK_CHECK(p == SENTINEL(grass_projection));
#undef CREATE
#undef WITH

  p = NULL;
  TK_OK(grass_projection_create(fx.ctx, &fx.pc, M, N, B, GRASS_DTYPE_F32, &p));
  /* calls in the wrong order: nothing selected yet */
  const int32_t* sel = SENTINEL(const int32_t);
  BAD(grass_projection_selection(p, &sel, NULL), GRASS_ERROR_INVALID_STATE,
      "grass_projection_selection", "selection");
  TK_CHECK(sel == SENTINEL(const int32_t));
  tk_poison(fx.g, sizeof fx.g);
  BAD(grass_projection_compress(p, B, fx.x, fx.dy, fx.g, 0, NULL), GRASS_ERROR_INVALID_STATE,
      "grass_projection_compress", "refresh");
  BAD(grass_projection_refresh(p, B + 1, fx.x, fx.dy, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_projection_refresh", "max_tokens");
  BAD(grass_projection_refresh(p, B, NULL, fx.dy, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_projection_refresh", "x");
  BAD(grass_projection_refresh(NULL, B, fx.x, fx.dy, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_projection_refresh", "projection");
  BAD(grass_projection_scores(p, B, fx.x, fx.dy, NULL, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_projection_scores", "scores");
  BAD(grass_projection_scores(p, 0, fx.x, fx.dy, fx.scores, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_projection_scores", "b");
  BAD(grass_projection_refresh_from_scores(p, NULL, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_projection_refresh_from_scores", "scores");
  BAD(grass_projection_refresh_from_scores(p, (const float*)misaligned(), NULL),
      GRASS_ERROR_MISALIGNED, "grass_projection_refresh_from_scores", "scores");
  BAD(grass_projection_advance(NULL), GRASS_ERROR_NULL_POINTER, "grass_projection_advance",
      "projection");

  grass_projection_info info;
  memset(&info, 0x11, sizeof info);
  info.struct_size = sizeof info - 4; /* neither ABI 4's size nor ABI 3's (sizeof - 8) */
  grass_projection_info before = info;
  BAD(grass_projection_get_info(p, &info), GRASS_ERROR_STRUCT_SIZE, "grass_projection_get_info",
      "struct_size");
  TK_SAME_BYTES(&info, &before, sizeof info);
  BAD(grass_projection_get_info(p, NULL), GRASS_ERROR_NULL_POINTER, "grass_projection_get_info",
      "info");

  /* after a refresh: compress with too many tokens is still rejected and writes nothing */
  TK_OK(grass_projection_refresh(p, B, fx.x, fx.dy, NULL));
  BAD(grass_projection_compress(p, B + 1, fx.x, fx.dy, fx.g, 0, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_projection_compress", "max_tokens");
  BAD(grass_projection_compress(p, B, fx.x, fx.dy, (float*)misaligned(), 0, NULL),
      GRASS_ERROR_MISALIGNED, "grass_projection_compress", "g");
  TK_CHECK(tk_is_poisoned(fx.g, sizeof fx.g));
  grass_projection_destroy(p);
  grass_projection_destroy(NULL);
  tk_rng rng = {33};
  for (int i = 0; i < R * K; ++i) fx.g[i] = tk_nonzero(&rng);
}

static void optimizer_handle(void) {
  const char* f = "grass_optimizer_create_sparse";
  grass_optimizer* o = SENTINEL(grass_optimizer);
  grass_projection_config pc = fx.pc;
  grass_adamw_config ac = fx.ac;
  BAD(grass_optimizer_create_sparse(fx.ctx, NULL, &ac, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                    &o),
      GRASS_ERROR_NULL_POINTER, f, "projection_config");
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, NULL, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                    &o),
      GRASS_ERROR_NULL_POINTER, f, "adamw_config");
  pc.rank = M + 1;
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, &ac, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                    &o),
      GRASS_ERROR_INVALID_VALUE, f, "rank");
  pc = fx.pc;
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, &ac, M, N, B, GRASS_DTYPE_F32, 8, &o),
      GRASS_ERROR_INVALID_ENUM, f, "w_dtype");
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, &ac, M, N, B, 8, GRASS_DTYPE_F32, &o),
      GRASS_ERROR_INVALID_ENUM, f, "act_dtype");
  ac.state_dtype = GRASS_DTYPE_F16;
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, &ac, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                    &o),
      GRASS_ERROR_DTYPE, f, "state_dtype");
  ac = fx.ac;
  ac.struct_size = 0;
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, &ac, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                    &o),
      GRASS_ERROR_STRUCT_SIZE, f, "struct_size");
  ac = fx.ac;
  BAD(grass_optimizer_create_sparse(fx.ctx, &pc, &ac, M, N, -B, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                    &o),
      GRASS_ERROR_INVALID_VALUE, f, "max_tokens");
  f = "grass_optimizer_create_dense";
  BAD(grass_optimizer_create_dense(fx.ctx, &ac, 0, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &o),
      GRASS_ERROR_INVALID_VALUE, f, "numel");
  BAD(grass_optimizer_create_dense(fx.ctx, &ac, NUMEL, GRASS_DTYPE_F32, 4, &o),
      GRASS_ERROR_INVALID_ENUM, f, "grad_dtype");
  BAD(grass_optimizer_create_dense(fx.ctx, &ac, NUMEL, GRASS_DTYPE_F32, GRASS_DTYPE_F32, NULL),
      GRASS_ERROR_NULL_POINTER, f, "optimizer_out");
  TK_CHECK(o == SENTINEL(grass_optimizer));

  grass_optimizer* sparse = NULL;
  grass_optimizer* dense = NULL;
  int32_t due = -1;
  TK_OK(grass_optimizer_create_sparse(fx.ctx, &fx.pc, &fx.ac, M, N, B, GRASS_DTYPE_F32,
                                      GRASS_DTYPE_F32, &sparse));
  TK_OK(grass_optimizer_create_dense(fx.ctx, &fx.ac, NUMEL, GRASS_DTYPE_F32, GRASS_DTYPE_F32,
                                     &dense));
  /* wrong order and wrong kind */
  BAD(grass_optimizer_step(sparse, fx.w, NULL, 0.01f, NULL), GRASS_ERROR_INVALID_STATE,
      "grass_optimizer_step", "grass_optimizer_backward");
  int32_t skipped = -3;
  BAD(grass_optimizer_last_step_skipped(sparse, &skipped, NULL), GRASS_ERROR_INVALID_STATE,
      "grass_optimizer_last_step_skipped", "step");
  TK_CHECK(skipped == -3);
  BAD(grass_optimizer_backward(dense, B, fx.x, fx.dy, NULL, NULL), GRASS_ERROR_INVALID_STATE,
      "grass_optimizer_backward", "dense");
  grass_projection* proj = SENTINEL(grass_projection);
  BAD(grass_optimizer_projection(dense, &proj), GRASS_ERROR_INVALID_STATE,
      "grass_optimizer_projection", "dense");
  TK_CHECK(proj == SENTINEL(grass_projection));
  BAD(grass_optimizer_step(dense, fx.dw, NULL, 0.01f, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_step", "grad");
  BAD(grass_optimizer_step(dense, fx.dw, misaligned(), 0.01f, NULL), GRASS_ERROR_MISALIGNED,
      "grass_optimizer_step", "grad");
  BAD(grass_optimizer_step(dense, fx.dw, fx.dgrad, -0.01f, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_optimizer_step", "lr");
  BAD(grass_optimizer_step(NULL, fx.dw, fx.dgrad, 0.01f, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_step", "optimizer");
  BAD(grass_optimizer_backward(sparse, B + 1, fx.x, fx.dy, NULL, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_optimizer_backward", "max_tokens");
  BAD(grass_optimizer_backward(sparse, B, fx.x, NULL, NULL, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_backward", "dy");
  BAD(grass_optimizer_backward(sparse, B, fx.x, fx.dy, (const float*)misaligned(), NULL),
      GRASS_ERROR_MISALIGNED, "grass_optimizer_backward", "scores");

  /* the rejected micro-batches above did not refresh the selection either */
  grass_projection* owned = NULL;
  TK_OK(grass_optimizer_projection(sparse, &owned));
  grass_projection_info pinfo;
  pinfo.struct_size = sizeof pinfo;
  TK_OK(grass_projection_get_info(owned, &pinfo));
  TK_CHECK(pinfo.has_selection == 0 && pinfo.refresh_count == 0);
  TK_OK(grass_optimizer_refresh_due(sparse, &due));
  TK_CHECK(due == 1);

  TK_OK(grass_optimizer_backward(sparse, B, fx.x, fx.dy, NULL, NULL));
  /* and after a good one, a rejected one changes neither selection nor accumulator */
  grass_optimizer_info oinfo;
  oinfo.struct_size = sizeof oinfo;
  BAD(grass_optimizer_backward(sparse, B + 1, fx.x, fx.dy, NULL, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_optimizer_backward", "max_tokens");
  TK_OK(grass_optimizer_get_info(sparse, &oinfo));
  TK_CHECK(oinfo.accumulated == 1);
  TK_OK(grass_projection_get_info(owned, &pinfo));
  TK_CHECK(pinfo.refresh_count == 1);
  BAD(grass_optimizer_step(sparse, fx.w, fx.dgrad, 0.01f, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_optimizer_step", "grad");
  BAD(grass_optimizer_step(sparse, NULL, NULL, 0.01f, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_step", "w");
  BAD(grass_optimizer_step(sparse, misaligned(), NULL, 0.01f, NULL), GRASS_ERROR_MISALIGNED,
      "grass_optimizer_step", "w");

  /* grass_optimizer_step_scaled: every step check, and grad_scale finite and >= 0 */
  const float bad_scales[] = {-1.0f, -FLT_MIN, NAN, INFINITY};
  for (size_t i = 0; i < sizeof bad_scales / sizeof bad_scales[0]; ++i) {
    BAD(grass_optimizer_step_scaled(sparse, fx.w, NULL, 0.01f, bad_scales[i], NULL),
        GRASS_ERROR_INVALID_VALUE, "grass_optimizer_step_scaled", "grad_scale");
    BAD(grass_optimizer_step_scaled(dense, fx.dw, fx.dgrad, 0.01f, bad_scales[i], NULL),
        GRASS_ERROR_INVALID_VALUE, "grass_optimizer_step_scaled", "grad_scale");
  }
  BAD(grass_optimizer_step_scaled(sparse, fx.w, NULL, NAN, 0.5f, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_optimizer_step_scaled", "lr");
  BAD(grass_optimizer_step_scaled(sparse, fx.w, fx.dgrad, 0.01f, 0.5f, NULL),
      GRASS_ERROR_INVALID_VALUE, "grass_optimizer_step_scaled", "grad");
  BAD(grass_optimizer_step_scaled(dense, fx.dw, NULL, 0.01f, 0.5f, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_step_scaled", "grad");
  BAD(grass_optimizer_step_scaled(NULL, fx.dw, fx.dgrad, 0.01f, 0.5f, NULL),
      GRASS_ERROR_NULL_POINTER, "grass_optimizer_step_scaled", "optimizer");
  BAD(grass_optimizer_step_scaled(sparse, misaligned(), NULL, 0.01f, 0.5f, NULL),
      GRASS_ERROR_MISALIGNED, "grass_optimizer_step_scaled", "w");

  /* grass_optimizer_grad_sq_norm: the gradient argument as in the step, a float out */
  BAD(grass_optimizer_grad_sq_norm(sparse, NULL, NULL, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_grad_sq_norm", "sq_norm_out");
  BAD(grass_optimizer_grad_sq_norm(sparse, NULL, (float*)misaligned(), NULL),
      GRASS_ERROR_MISALIGNED, "grass_optimizer_grad_sq_norm", "sq_norm_out");
  BAD(grass_optimizer_grad_sq_norm(sparse, fx.dgrad, &fx.lr_scale, NULL),
      GRASS_ERROR_INVALID_VALUE, "grass_optimizer_grad_sq_norm", "grad");
  BAD(grass_optimizer_grad_sq_norm(dense, NULL, &fx.lr_scale, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_grad_sq_norm", "grad");
  BAD(grass_optimizer_grad_sq_norm(NULL, fx.dgrad, &fx.lr_scale, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_grad_sq_norm", "optimizer");
  /* the norm of the micro-batch accumulated above, then the step on a scaled gradient */
  float sq = -1.0f;
  TK_OK(grass_optimizer_grad_sq_norm(sparse, NULL, &sq, NULL));
  TK_CHECK(sq > 0.0f && isfinite(sq));
  TK_OK(grass_optimizer_grad_sq_norm(dense, fx.dgrad, &sq, NULL));
  TK_CHECK(sq > 0.0f && isfinite(sq));

  /* checkpoint files: path, optimizers and count are checked before any file is touched */
  grass_optimizer* set[2] = {sparse, dense};
  grass_optimizer* twice[2] = {sparse, sparse};
  grass_optimizer* with_null[2] = {sparse, NULL};
  const char* path = "test_bad_inputs.grass";
  remove(path);
  BAD(grass_checkpoint_save(NULL, set, 2, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_checkpoint_save", "path");
  BAD(grass_checkpoint_save("", set, 2, NULL), GRASS_ERROR_INVALID_VALUE, "grass_checkpoint_save",
      "path");
  BAD(grass_checkpoint_save(path, NULL, 2, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_checkpoint_save", "optimizers");
  BAD(grass_checkpoint_save(path, set, 0, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_checkpoint_save", "count");
  BAD(grass_checkpoint_save(path, with_null, 2, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_checkpoint_save", "optimizers[1]");
  BAD(grass_checkpoint_save(path, twice, 2, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_checkpoint_save", "optimizers[1]");
  BAD(grass_checkpoint_save("/nonexistent-grass-dir/x.grass", set, 2, NULL),
      GRASS_ERROR_INVALID_VALUE, "grass_checkpoint_save", "path");
  TK_CHECK(fopen(path, "rb") == NULL); /* nothing written */
  BAD(grass_checkpoint_load(path, set, 2, NULL), GRASS_ERROR_BAD_CHECKPOINT,
      "grass_checkpoint_load", "path");
  BAD(grass_checkpoint_load(path, twice, 2, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_checkpoint_load", "optimizers[1]");
  BAD(grass_checkpoint_load(NULL, set, 2, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_checkpoint_load", "path");

  /* layer ids: any for a dense parameter, only its own for a GRASS layer */
  BAD(grass_optimizer_set_layer_id(NULL, 1), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_set_layer_id", "optimizer");
  BAD(grass_optimizer_set_layer_id(sparse, fx.pc.layer_id + 1), GRASS_ERROR_INVALID_STATE,
      "grass_optimizer_set_layer_id", "layer_id");
  TK_OK(grass_optimizer_set_layer_id(sparse, fx.pc.layer_id));

  /* the rank rule: d within the size limits, an out pointer */
  int64_t rank = -5;
  BAD(grass_default_rank(0, &rank), GRASS_ERROR_INVALID_VALUE, "grass_default_rank", "d");
  BAD(grass_default_rank(2147483648LL, &rank), GRASS_ERROR_INVALID_VALUE, "grass_default_rank",
      "d");
  TK_CHECK(rank == -5);
  BAD(grass_default_rank(128, NULL), GRASS_ERROR_NULL_POINTER, "grass_default_rank", "rank_out");
  TK_OK(grass_default_rank(128, &rank));
  TK_CHECK(rank == 64);

  grass_optimizer_info info;
  memset(&info, 0x22, sizeof info);
  info.struct_size = 4;
  grass_optimizer_info before = info;
  BAD(grass_optimizer_get_info(sparse, &info), GRASS_ERROR_STRUCT_SIZE, "grass_optimizer_get_info",
      "struct_size");
  TK_SAME_BYTES(&info, &before, sizeof info);
  BAD(grass_optimizer_state_size(sparse, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_state_size", "bytes_out");
  size_t bytes = 0;
  TK_OK(grass_optimizer_state_size(sparse, &bytes));
  unsigned char* blob = (unsigned char*)malloc(bytes);
  tk_poison(blob, bytes);
  BAD(grass_optimizer_export_state(sparse, blob, bytes - 1, NULL), GRASS_ERROR_INVALID_VALUE,
      "grass_optimizer_export_state", "bytes");
  BAD(grass_optimizer_export_state(sparse, NULL, bytes, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_export_state", "dst");
  TK_CHECK(tk_is_poisoned(blob, bytes));
  BAD(grass_optimizer_import_state(sparse, NULL, bytes, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_import_state", "src");
  free(blob);

  due = -1;
  BAD(grass_optimizer_refresh_due(sparse, NULL), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_refresh_due", "due_out");
  BAD(grass_optimizer_refresh_due(NULL, &due), GRASS_ERROR_NULL_POINTER,
      "grass_optimizer_refresh_due", "optimizer");
  TK_CHECK(due == -1);
  grass_optimizer_destroy(sparse);
  grass_optimizer_destroy(dense);
  grass_optimizer_destroy(NULL);
}

/* ---- CUDA on a machine without it ---------------------------------------------------------- */

static void cuda_context(void) {
  int32_t available = -1;
  char reason[256];
  tk_poison(reason, sizeof reason);
  TK_OK(grass_cuda_available(&available, reason, sizeof reason));
  TK_CHECK(available == 0 || available == 1);
  TK_CHECK(memchr(reason, '\0', sizeof reason) != NULL && reason[0] != '\0');
  printf("grass_cuda_available: %d (%s)\n", (int)available, reason);

  char tiny[8];
  tk_poison(tiny, sizeof tiny);
  TK_OK(grass_cuda_available(&available, tiny, sizeof tiny));
  TK_CHECK(strlen(tiny) <= 7); /* truncated and terminated */
  tk_poison(tiny, sizeof tiny);
  TK_OK(grass_cuda_available(&available, tiny, 1));
  TK_CHECK(tiny[0] == '\0' && tiny[1] == (char)TK_POISON_BYTE);
  TK_OK(grass_cuda_available(&available, NULL, 0));

  grass_context* cuda = SENTINEL(grass_context);
  BAD(grass_context_create_cuda(-1, &cuda), GRASS_ERROR_INVALID_VALUE,
      "grass_context_create_cuda", "ordinal");
  BAD(grass_context_create_cuda(0, NULL), GRASS_ERROR_NULL_POINTER, "grass_context_create_cuda",
      "ctx_out");
  TK_CHECK(cuda == SENTINEL(grass_context));
  if (!available) {
    /* the message says why, e.g. that the driver library cannot be loaded */
    BAD(grass_context_create_cuda(0, &cuda), GRASS_ERROR_CUDA_UNAVAILABLE,
        "grass_context_create_cuda", NULL);
    TK_CHECK(strlen(grass_last_error_message()) > strlen("grass_context_create_cuda: "));
    TK_CHECK(cuda == SENTINEL(grass_context));
  } else {
    printf("CUDA is available here: the CUDA_UNAVAILABLE case does not apply\n");
  }
}

int main(void) {
  setup();
  TK_CHECK(strcmp(grass_last_error_message(), "") == 0); /* "" before any failure */
  library_functions();
  workspace_queries();
  row_scores();
  select_();
  sparse_grad();
  sparse_adamw_step();
  adamw_step();
  state_refresh();
  projection_handle();
  optimizer_handle();
  cuda_context();
  teardown();
  return tk_report("test_bad_inputs");
}
