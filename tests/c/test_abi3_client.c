/* A client built against ABI 3's grass.h (grass 0.3.0, kept verbatim in tests/c/abi3/grass.h)
 * runs unchanged against this library: its config structs, its smaller info structs (without
 * full_rank), the handle calls and a checkpoint round trip, in buffers of exactly the sizes it
 * was compiled with (ASan fails any access past them). */
#include "abi3/grass.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond)                                           \
  do {                                                         \
    if (!(cond)) {                                             \
      printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
      ++failures;                                              \
    }                                                          \
  } while (0)

#define OK(call)                                                                        \
  do {                                                                                  \
    grass_status s_ = (call);                                                           \
    if (s_ != GRASS_OK) {                                                               \
      printf("FAIL %s:%d: %s: %s\n", __FILE__, __LINE__, #call, grass_last_error_message()); \
      ++failures;                                                                       \
    }                                                                                   \
  } while (0)

enum { M = 24, N = 16, B = 6, R = 4 };

static void* exact(size_t bytes) {
  void* p = malloc(bytes);
  if (p == NULL) abort();
  memset(p, 0xAB, bytes);
  return p;
}

int main(void) {
  EXPECT(GRASS_ABI_VERSION == 3);
  EXPECT(grass_abi_version() >= GRASS_ABI_VERSION); /* the check an ABI 3 client should make */
  grass_context* ctx = NULL;
  OK(grass_context_create_cpu(&ctx));
  grass_projection_config* pc = exact(sizeof *pc);
  grass_adamw_config* ac = exact(sizeof *ac);
  OK(grass_projection_config_init(pc));
  OK(grass_adamw_config_init(ac));
  pc->rank = R;
  pc->side = GRASS_SIDE_ROWS;
  grass_optimizer* opt = NULL;
  OK(grass_optimizer_create_sparse(ctx, pc, ac, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &opt));
  if (opt == NULL) return 1;

  float x[B * N], dy[B * M], w[M * N];
  for (int i = 0; i < B * N; i++) x[i] = (float)((i * 7) % 11) - 5.0f + 0.5f;
  for (int i = 0; i < B * M; i++) dy[i] = (float)((i * 5) % 13) - 6.0f + 0.25f;
  for (int i = 0; i < M * N; i++) w[i] = 0.01f * (float)(i % 17);
  for (int step = 0; step < 3; step++) {
    OK(grass_optimizer_backward(opt, B, x, dy, NULL, NULL));
    OK(grass_optimizer_step(opt, w, NULL, 1e-2f, NULL));
  }

  /* ABI 3's info structs, exactly their size */
  grass_optimizer_info* oi = exact(sizeof *oi);
  oi->struct_size = sizeof *oi;
  OK(grass_optimizer_get_info(opt, oi));
  EXPECT(oi->is_sparse == 1 && oi->steps == 3 && oi->state_elements == R * N);
  EXPECT(oi->memory_bytes > 0);
  grass_projection* proj = NULL;
  OK(grass_optimizer_projection(opt, &proj));
  grass_projection_info* pi = exact(sizeof *pi);
  pi->struct_size = sizeof *pi;
  OK(grass_projection_get_info(proj, pi));
  EXPECT(pi->rank == R && pi->d == M && pi->k == N && pi->refresh_count == 1);

  /* a checkpoint round trip */
  size_t bytes = 0;
  OK(grass_optimizer_state_size(opt, &bytes));
  unsigned char* blob = exact(bytes);
  OK(grass_optimizer_export_state(opt, blob, bytes, NULL));
  grass_optimizer* again = NULL;
  OK(grass_optimizer_create_sparse(ctx, pc, ac, M, N, B, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &again));
  OK(grass_optimizer_import_state(again, blob, bytes, NULL));
  grass_optimizer_info* ai = exact(sizeof *ai);
  ai->struct_size = sizeof *ai;
  OK(grass_optimizer_get_info(again, ai));
  EXPECT(ai->steps == 3);

  free(ai);
  free(blob);
  free(pi);
  free(oi);
  grass_optimizer_destroy(again);
  grass_optimizer_destroy(opt);
  free(ac);
  free(pc);
  grass_context_destroy(ctx);
  printf("test_abi3_client: %s\n", failures ? "failed" : "all checks passed");
  return failures ? 1 : 0;
}
