/* struct_size and sizes at their limits, as a C caller meets them:
 *   - config and info structs in buffers of exactly their struct_size (ASan fails any read or
 *     write past it), accepted; every size this library does not know is rejected with
 *     GRASS_ERROR_STRUCT_SIZE, a message that lists the known sizes, and nothing written;
 *   - ABI 3's smaller info structs (before full_rank) in buffers of exactly their size are still
 *     filled (a client built against ABI 3 runs unchanged);
 *   - workspace queries over dimensions at 2^31 - 1 fail with GRASS_ERROR_INVALID_VALUE instead
 *     of answering a wrapped size, and write nothing. */
#include "testkit.h"

static void* exact(size_t bytes) {
  void* p = malloc(bytes);
  if (p == NULL) abort();
  memset(p, 0xAB, bytes);
  return p;
}

/* The state size of a dense optimizer of 10 elements created from an older release of
 * grass_adamw_config: `fields` bytes of `ac` in a buffer of exactly `size` bytes (the rest
 * 0xAB), its struct_size `size`. */
static size_t older_dense_state_size(grass_context* ctx, const grass_adamw_config* ac,
                                     size_t size, size_t fields) {
  unsigned char* old = exact(size);
  memcpy(old, ac, fields);
  memcpy(old, &size, sizeof(size_t));
  grass_optimizer* opt = NULL;
  TK_OK(grass_optimizer_create_dense(ctx, (const grass_adamw_config*)(const void*)old, 10,
                                     GRASS_DTYPE_F32, GRASS_DTYPE_F32, &opt));
  size_t bytes = 0;
  TK_OK(grass_optimizer_state_size(opt, &bytes));
  grass_optimizer_destroy(opt);
  free(old);
  return bytes;
}

static void configs(grass_context* ctx) {
  grass_projection_config* pc = exact(sizeof *pc);
  grass_adamw_config* ac = exact(sizeof *ac);
  TK_OK(grass_projection_config_init(pc));
  TK_OK(grass_adamw_config_init(ac));
  pc->rank = 4;
  pc->side = GRASS_SIDE_ROWS;
  grass_projection* proj = NULL;
  TK_OK(grass_projection_create(ctx, pc, 16, 8, 4, GRASS_DTYPE_F32, &proj));
  grass_optimizer* opt = NULL;
  TK_OK(grass_optimizer_create_dense(ctx, ac, 10, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &opt));

  const size_t psize = sizeof *pc, asize = sizeof *ac;
  const size_t bad_p[] = {0, 1, 8, psize - 8, psize + 8, (size_t)-1};
  const size_t bad_a[] = {0, 1, 8, asize - 4, asize + 4, (size_t)-1};
  for (size_t i = 0; i < sizeof bad_p / sizeof bad_p[0]; ++i) {
    pc->struct_size = bad_p[i];
    grass_projection* none = NULL;
    TK_FAILS(grass_projection_create(ctx, pc, 16, 8, 4, GRASS_DTYPE_F32, &none),
             GRASS_ERROR_STRUCT_SIZE, "grass_projection_create",
             "is not a size of grass_projection_config");
    TK_CHECK(none == NULL);
    char known[64];
    snprintf(known, sizeof known, "(%zu)", psize);
    TK_CHECK(strstr(grass_last_error_message(), known) != NULL);
  }
  for (size_t i = 0; i < sizeof bad_a / sizeof bad_a[0]; ++i) {
    ac->struct_size = bad_a[i];
    grass_optimizer* none = NULL;
    TK_FAILS(grass_optimizer_create_dense(ctx, ac, 10, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &none),
             GRASS_ERROR_STRUCT_SIZE, "grass_optimizer_create_dense",
             "adamw_config->struct_size");
    TK_CHECK(none == NULL);
  }

  /* info structs: exactly their size is filled; any other size leaves them untouched */
  grass_projection_info* pi = exact(sizeof *pi);
  pi->struct_size = sizeof *pi;
  TK_OK(grass_projection_get_info(proj, pi));
  TK_CHECK(pi->m == 16 && pi->n == 8 && pi->rank == 4 && pi->struct_size == sizeof *pi);
  grass_optimizer_info* oi = exact(sizeof *oi);
  oi->struct_size = sizeof *oi;
  TK_OK(grass_optimizer_get_info(opt, oi));
  TK_CHECK(oi->state_elements == 10 && oi->is_sparse == 0 && oi->struct_size == sizeof *oi);
  unsigned char* raw = exact(sizeof *pi + 16);
  grass_projection_info* big = (grass_projection_info*)(void*)raw;
  /* ABI 3's releases end at memory_bytes: 88 and 48 bytes, accepted in buffers of that size */
  unsigned char* abi3 = exact(88);
  memcpy(abi3, &(size_t){88}, sizeof(size_t));
  TK_OK(grass_projection_get_info(proj, (grass_projection_info*)(void*)abi3));
  int64_t abi3_rank = 0;
  memcpy(&abi3_rank, abi3 + offsetof(grass_projection_info, rank), sizeof abi3_rank);
  TK_CHECK(abi3_rank == 4);
  free(abi3);
  abi3 = exact(48);
  memcpy(abi3, &(size_t){48}, sizeof(size_t));
  TK_OK(grass_optimizer_get_info(opt, (grass_optimizer_info*)(void*)abi3));
  int64_t abi3_elems = 0;
  memcpy(&abi3_elems, abi3 + offsetof(grass_optimizer_info, state_elements), sizeof abi3_elems);
  TK_CHECK(abi3_elems == 10);
  free(abi3);
  /* ABI 3-5's grass_adamw_config ends at state_dtype (40 bytes): accepted in a buffer of that
   * size (row_warmup, which it lacks, takes its default) */
  TK_CHECK(offsetof(grass_adamw_config, row_warmup) == 40);
  const size_t abi5_bytes = older_dense_state_size(ctx, ac, 40, 40);
  /* ABI 6's release ends at row_warmup (44 bytes of fields in 48): accepted in a buffer of that
   * size whatever its padding holds, and its dense optimizers keep the moments of state_dtype
   * (ABI 7's dense_state_dtype, which it lacks, is f32 by default) */
  TK_CHECK(offsetof(grass_adamw_config, dense_state_dtype) == 44 && sizeof *ac == 56);
  TK_CHECK(ac->state_dtype == GRASS_DTYPE_BF16 && ac->dense_state_dtype == GRASS_DTYPE_F32);
  const size_t abi6_bytes = older_dense_state_size(ctx, ac, 48, 44);
  size_t abi7_bytes = 0;
  TK_OK(grass_optimizer_state_size(opt, &abi7_bytes));
  TK_CHECK(abi7_bytes - abi6_bytes == 2 * 10 * 2); /* M and V of 10 elements: f32 vs bf16 */
  TK_CHECK(abi5_bytes == abi6_bytes);
  TK_CHECK(offsetof(grass_projection_info, full_rank) == 88);
  TK_CHECK(offsetof(grass_optimizer_info, full_rank) == 48);

  const size_t bad_i[] = {0, sizeof *pi - 4, sizeof *pi + 8};
  for (size_t i = 0; i < sizeof bad_i / sizeof bad_i[0]; ++i) {
    memset(raw, 0xAB, sizeof *pi + 16);
    big->struct_size = bad_i[i];
    TK_FAILS(grass_projection_get_info(proj, big), GRASS_ERROR_STRUCT_SIZE,
             "grass_projection_get_info", "info->struct_size");
    TK_CHECK(big->struct_size == bad_i[i]);
    int untouched = 1;
    for (size_t b = sizeof(size_t); b < sizeof *pi + 16; ++b) untouched &= raw[b] == 0xAB;
    TK_CHECK(untouched);
  }
  free(raw);
  free(oi);
  free(pi);
  grass_optimizer_destroy(opt);
  grass_projection_destroy(proj);
  free(ac);
  free(pc);
}

static void size_limits(grass_context* ctx) {
  const int64_t big = 2147483647; /* 2^31 - 1 */
  size_t bytes = 12345;
  /* answered 192 bytes when the sum wrapped */
  TK_FAILS(grass_scores_workspace_size(ctx, big, big, big, GRASS_SIDE_COLS, GRASS_DTYPE_BF16,
                                       &bytes),
           GRASS_ERROR_INVALID_VALUE, "grass_scores_workspace_size", "2^63 - 1");
  TK_CHECK(bytes == 12345);
  TK_FAILS(grass_sparse_grad_workspace_size(ctx, big, big, big, GRASS_SIDE_ROWS, big,
                                            GRASS_DTYPE_F16, &bytes),
           GRASS_ERROR_INVALID_VALUE, "grass_sparse_grad_workspace_size", "2^63 - 1");
  TK_CHECK(bytes == 12345);
  TK_FAILS(grass_scores_workspace_size(ctx, big + 1, 4, 4, GRASS_SIDE_ROWS, GRASS_DTYPE_F32,
                                       &bytes),
           GRASS_ERROR_INVALID_VALUE, "grass_scores_workspace_size", "m = 2147483648");
  TK_CHECK(bytes == 12345);
  /* the largest single dimension alone is fine */
  TK_OK(grass_select_workspace_size(ctx, big, 1, &bytes));
  TK_CHECK(bytes != 12345 && bytes >= (size_t)big * 8);
  TK_OK(grass_adamw_workspace_size(ctx, big, &bytes));
}

int main(void) {
  grass_context* ctx = NULL;
  TK_OK(grass_context_create_cpu(&ctx));
  configs(ctx);
  size_limits(ctx);
  grass_context_destroy(ctx);
  return tk_report("test_struct_size");
}
