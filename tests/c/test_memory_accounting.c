/* grass_optimizer_info.memory_bytes is documented as the bytes of context memory the optimizer
 * owns (states, accumulator, selection). On a CPU context that memory is heap memory, which
 * AddressSanitizer counts: the bytes allocated by creating an optimizer must match what it
 * reports plus what the context's shared workspace grew by, up to the handle structs
 * themselves. Built only with GRASS_SANITIZE. */
#include <stddef.h>

#include "testkit.h"

/* From AddressSanitizer's runtime (sanitizer/allocator_interface.h, which GCC does not ship). */
size_t __sanitizer_get_current_allocated_bytes(void);

enum { SLACK = 2048 }; /* the handle structs and their boxes */

static void check(grass_context* ctx, int sparse, int64_t m, int64_t n, int64_t tokens,
                  int64_t rank, grass_dtype act, grass_dtype state) {
  grass_projection_config pc;
  grass_adamw_config ac;
  TK_OK(grass_projection_config_init(&pc));
  TK_OK(grass_adamw_config_init(&ac));
  pc.rank = rank;
  ac.state_dtype = state;
  ac.refresh_mode = GRASS_REFRESH_CARRY;
  grass_optimizer* o = NULL;
  size_t ws_before = 0, ws_after = 0;
  TK_OK(grass_context_workspace_bytes(ctx, &ws_before));
  size_t before = __sanitizer_get_current_allocated_bytes();
  if (sparse) {
    TK_OK(grass_optimizer_create_sparse(ctx, &pc, &ac, m, n, tokens, act, GRASS_DTYPE_F32, &o));
  } else {
    TK_OK(grass_optimizer_create_dense(ctx, &ac, m * n, GRASS_DTYPE_F32, act, &o));
  }
  size_t allocated = __sanitizer_get_current_allocated_bytes() - before;
  TK_OK(grass_context_workspace_bytes(ctx, &ws_after));
  allocated -= ws_after - ws_before; /* the shared workspace is the context's, not the handle's */
  grass_optimizer_info info;
  info.struct_size = sizeof info;
  TK_OK(grass_optimizer_get_info(o, &info));
  long long reported = (long long)info.memory_bytes;
  long long actual = (long long)allocated;
  printf("%s %lldx%lld tokens=%lld rank=%lld act=%s state=%s: allocated %lld bytes, "
         "memory_bytes %lld\n",
         sparse ? "sparse" : "dense", (long long)m, (long long)n, (long long)tokens,
         (long long)rank, tk_dtype_name(act), tk_dtype_name(state), actual, reported);
  if (reported < actual - SLACK || reported > actual) {
    tk_fail_at(__FILE__, __LINE__, "memory_bytes matches the memory the optimizer allocated");
    printf("     memory_bytes %lld, allocated %lld (%lld bytes not accounted for)\n", reported,
           actual, actual - reported);
  }
  grass_optimizer_destroy(o);
}

int main(void) {
  grass_context* ctx = tk_cpu();
  check(ctx, 0, 64, 33, 1, 1, GRASS_DTYPE_F32, GRASS_DTYPE_F32);
  check(ctx, 0, 64, 33, 1, 1, GRASS_DTYPE_BF16, GRASS_DTYPE_BF16);
  check(ctx, 1, 256, 128, 128, 32, GRASS_DTYPE_F32, GRASS_DTYPE_F32);
  check(ctx, 1, 128, 32, 128, 16, GRASS_DTYPE_BF16, GRASS_DTYPE_BF16);
  check(ctx, 1, 64, 4096, 512, 64, GRASS_DTYPE_F32, GRASS_DTYPE_F32);
  check(ctx, 1, 4096, 1024, 64, 128, GRASS_DTYPE_BF16, GRASS_DTYPE_F32);
  grass_context_destroy(ctx);
  return tk_report("test_memory_accounting");
}
