/* Consumer of an installed grass through the C header only. */
#include <grass.h>

#include <stdio.h>
#include <string.h>

int main(void) {
  if (strcmp(grass_version(), GRASS_EXPECTED_VERSION) != 0 ||
      grass_abi_version() != GRASS_ABI_VERSION) {
    printf("version mismatch: library %s, expected %s\n", grass_version(), GRASS_EXPECTED_VERSION);
    return 1;
  }
  grass_context* ctx = NULL;
  grass_status s = grass_context_create_cpu(&ctx);
  if (s != GRASS_OK) {
    printf("consumer_c: %s\n", grass_last_error_message());
    return 1;
  }
  float x[2 * 3] = {1, 2, 3, 4, 5, 6}, dy[2 * 4] = {1, -1, 2, -2, 0.5f, 1, -1, 3};
  float scores[4];
  size_t bytes = 0;
  s = grass_scores_workspace_size(ctx, 4, 3, 2, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, &bytes);
  static unsigned char ws[1 << 16];
  if (s == GRASS_OK && bytes <= sizeof ws) {
    s = grass_row_scores(ctx, 4, 3, 2, GRASS_SIDE_ROWS, GRASS_DTYPE_F32, x, dy, scores, ws, bytes,
                         NULL);
  }
  grass_context_destroy(ctx);
  if (s != GRASS_OK) {
    printf("consumer_c: %s\n", grass_last_error_message());
    return 1;
  }
  printf("consumer_c: grass %s, row scores %.3f %.3f %.3f %.3f\n", grass_version(),
         (double)scores[0], (double)scores[1], (double)scores[2], (double)scores[3]);
  return 0;
}
