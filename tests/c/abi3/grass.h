/* grass.h of grass 0.3.0 (ABI 3), its declarations without the comments: what a client built
 * against ABI 3 compiled with. tests/c/test_abi3_client.c runs such a client against this
 * library. Not to be updated: it is the old ABI. */
#ifndef GRASS_H
#define GRASS_H

#include <stddef.h>
#include <stdint.h>

#define GRASS_VERSION_MAJOR 0

#define GRASS_VERSION_MINOR 3

#define GRASS_VERSION_PATCH 0

#define GRASS_ABI_VERSION 3

enum grass_status
#ifdef __cplusplus
  : int32_t
#endif // __cplusplus
 {
  GRASS_OK = 0,
  GRASS_ERROR_NULL_POINTER = 1,
  GRASS_ERROR_INVALID_VALUE = 2,
  GRASS_ERROR_INVALID_ENUM = 3,
  GRASS_ERROR_DTYPE = 4,
  GRASS_ERROR_STRUCT_SIZE = 5,
  GRASS_ERROR_WORKSPACE_TOO_SMALL = 6,
  GRASS_ERROR_INVALID_STATE = 7,
  GRASS_ERROR_BAD_CHECKPOINT = 8,
  GRASS_ERROR_WRONG_CONTEXT = 9,
  GRASS_ERROR_MISALIGNED = 10,
  GRASS_ERROR_CUDA_UNAVAILABLE = 100,
  GRASS_ERROR_CUDA = 101,
  GRASS_ERROR_UNSUPPORTED = 102,
  GRASS_ERROR_OUT_OF_MEMORY = 103,
  GRASS_ERROR_PANIC = 200,
  GRASS_ERROR_INTERNAL = 201,
};
#ifndef __cplusplus
typedef int32_t grass_status;
#endif // __cplusplus

typedef struct grass_context grass_context;

typedef struct grass_optimizer grass_optimizer;

typedef struct grass_projection grass_projection;

typedef int32_t grass_side;

typedef int32_t grass_method;

typedef int32_t grass_scaling;

typedef struct grass_projection_config {
  size_t struct_size;
  grass_side side;
  int64_t rank;
  grass_method method;
  int32_t power;
  grass_scaling scaling;
  int64_t refresh_every;
  uint64_t seed;
  uint32_t layer_id;
} grass_projection_config;

typedef int32_t grass_decay_mode;

typedef int32_t grass_refresh_mode;

typedef int32_t grass_dtype;

typedef struct grass_adamw_config {
  size_t struct_size;
  float beta1;
  float beta2;
  float eps;
  float weight_decay;
  grass_decay_mode decay_mode;
  float alpha;
  grass_refresh_mode refresh_mode;
  grass_dtype state_dtype;
} grass_adamw_config;

typedef int32_t grass_device_kind;

typedef struct grass_memory_layer {
  size_t struct_size;
  int64_t m;
  int64_t n;
  int64_t rank;
  grass_side side;
  grass_dtype w_dtype;
  grass_dtype act_dtype;
  int64_t count;
} grass_memory_layer;

typedef struct grass_memory_report {
  size_t struct_size;
  int64_t weight_bytes;
  int64_t grass_state_bytes;
  int64_t grass_gradient_bytes;
  int64_t grass_selection_bytes;
  int64_t grass_workspace_bytes;
  int64_t grass_handle_bytes;
  int64_t grass_total_bytes;
  int64_t adamw_state_bytes;
  int64_t adamw_gradient_bytes;
  int64_t adamw_total_bytes;
  int64_t galore_state_bytes;
  int64_t galore_gradient_bytes;
  int64_t galore_projection_bytes;
  int64_t galore_total_bytes;
} grass_memory_report;

typedef struct grass_optimizer_info {
  size_t struct_size;
  int32_t is_sparse;
  int64_t steps;
  int32_t accumulated;
  int64_t state_elements;
  int64_t memory_bytes;
} grass_optimizer_info;

typedef struct grass_projection_info {
  size_t struct_size;
  grass_side side;
  int64_t m;
  int64_t n;
  int64_t d;
  int64_t k;
  int64_t rank;
  uint32_t refresh_count;
  int64_t steps_since_refresh;
  int32_t has_selection;
  int32_t refresh_due;
  int64_t memory_bytes;
} grass_projection_info;

typedef int32_t grass_step_outcome;

#define GRASS_DTYPE_F32 0

#define GRASS_DTYPE_BF16 1

#define GRASS_DTYPE_F16 2

#define GRASS_SIDE_ROWS 0

#define GRASS_SIDE_COLS 1

#define GRASS_SIDE_AUTO 2

#define GRASS_METHOD_TOP_R 0

#define GRASS_METHOD_MULTINOMIAL 1

#define GRASS_METHOD_MULTINOMIAL_NR 2

#define GRASS_METHOD_UNIFORM 3

#define GRASS_METHOD_UNIFORM_NR 4

#define GRASS_SCALING_UNBIASED 0

#define GRASS_SCALING_NONE 1

#define GRASS_DECAY_OFF 0

#define GRASS_DECAY_SELECTED 1

#define GRASS_DECAY_DENSE 2

#define GRASS_REFRESH_RESET 0

#define GRASS_REFRESH_CARRY 1

#define GRASS_STEP_APPLIED 0

#define GRASS_STEP_SKIPPED_NONFINITE 1

#define GRASS_STEP_SKIPPED_BAD_INDICES 2

#define GRASS_STEP_SKIPPED_BAD_STEP_COUNT 3

#define GRASS_DEVICE_CPU 0

#define GRASS_DEVICE_CUDA 1

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

const char *grass_version(void);

uint32_t grass_abi_version(void);

const char *grass_status_string(int32_t status);

const char *grass_last_error_message(void);

grass_status grass_projection_config_init(struct grass_projection_config *config);

grass_status grass_adamw_config_init(struct grass_adamw_config *config);

grass_status grass_context_create_cpu(struct grass_context **ctx_out);

grass_status grass_context_create_cuda(int32_t ordinal, struct grass_context **ctx_out);

void grass_context_destroy(struct grass_context *ctx);

grass_status grass_context_device_kind(const struct grass_context *ctx,
                                       grass_device_kind *kind_out);

grass_status grass_cuda_available(int32_t *available_out, char *reason, size_t reason_len);

grass_status grass_context_workspace_bytes(const struct grass_context *ctx, size_t *bytes_out);

grass_status grass_context_reserve_workspace(const struct grass_context *ctx, size_t bytes);

grass_status grass_memory_plan(const struct grass_context *ctx,
                               const struct grass_adamw_config *adamw_config,
                               const struct grass_memory_layer *layers,
                               size_t layer_count,
                               int64_t max_tokens,
                               struct grass_memory_report *report);

grass_status grass_resolve_side(int64_t m,
                                int64_t n,
                                grass_side side,
                                grass_side *side_out,
                                int64_t *d_out,
                                int64_t *k_out);

grass_status grass_scores_workspace_size(const struct grass_context *ctx,
                                         int64_t m,
                                         int64_t n,
                                         int64_t b,
                                         grass_side side,
                                         grass_dtype dtype,
                                         size_t *bytes_out);

grass_status grass_row_scores(const struct grass_context *ctx,
                              int64_t m,
                              int64_t n,
                              int64_t b,
                              grass_side side,
                              grass_dtype dtype,
                              const void *x,
                              const void *dy,
                              float *scores,
                              void *workspace,
                              size_t workspace_bytes,
                              void *stream);

grass_status grass_select_workspace_size(const struct grass_context *ctx,
                                         int64_t d,
                                         int64_t r,
                                         size_t *bytes_out);

grass_status grass_select(const struct grass_context *ctx,
                          const struct grass_projection_config *config,
                          int64_t d,
                          uint32_t refresh_index,
                          const uint32_t *refresh_index_at,
                          const float *scores,
                          int32_t *indices,
                          float *scales,
                          void *workspace,
                          size_t workspace_bytes,
                          void *stream);

grass_status grass_sparse_grad_workspace_size(const struct grass_context *ctx,
                                              int64_t m,
                                              int64_t n,
                                              int64_t b,
                                              grass_side side,
                                              int64_t r,
                                              grass_dtype dtype,
                                              size_t *bytes_out);

grass_status grass_sparse_grad(const struct grass_context *ctx,
                               int64_t m,
                               int64_t n,
                               int64_t b,
                               grass_side side,
                               int64_t r,
                               grass_dtype dtype,
                               const void *x,
                               const void *dy,
                               const int32_t *indices,
                               const float *scales,
                               float *g,
                               int32_t accumulate,
                               void *workspace,
                               size_t workspace_bytes,
                               void *stream);

grass_status grass_sparse_adamw_workspace_size(const struct grass_context *ctx,
                                               int64_t m,
                                               int64_t n,
                                               grass_side side,
                                               int64_t r,
                                               size_t *bytes_out);

grass_status grass_sparse_adamw_step(const struct grass_context *ctx,
                                     const struct grass_adamw_config *config,
                                     int64_t m,
                                     int64_t n,
                                     grass_side side,
                                     int64_t r,
                                     grass_dtype w_dtype,
                                     void *w,
                                     const int32_t *indices,
                                     const float *scales,
                                     const float *g,
                                     void *m_state,
                                     void *v_state,
                                     int32_t *row_steps,
                                     float lr,
                                     const float *lr_scale,
                                     int32_t *skipped,
                                     void *workspace,
                                     size_t workspace_bytes,
                                     void *stream);

grass_status grass_adamw_workspace_size(const struct grass_context *ctx,
                                        int64_t numel,
                                        size_t *bytes_out);

grass_status grass_adamw_step(const struct grass_context *ctx,
                              const struct grass_adamw_config *config,
                              int64_t numel,
                              grass_dtype w_dtype,
                              void *w,
                              grass_dtype grad_dtype,
                              const void *grad,
                              void *m_state,
                              void *v_state,
                              int32_t *step,
                              float lr,
                              const float *lr_scale,
                              int32_t *skipped,
                              void *workspace,
                              size_t workspace_bytes,
                              void *stream);

grass_status grass_state_refresh_workspace_size(const struct grass_context *ctx,
                                                grass_refresh_mode refresh_mode,
                                                grass_dtype state_dtype,
                                                int64_t r,
                                                int64_t k,
                                                size_t *bytes_out);

grass_status grass_state_refresh(const struct grass_context *ctx,
                                 grass_refresh_mode refresh_mode,
                                 grass_dtype state_dtype,
                                 int64_t r,
                                 int64_t k,
                                 const int32_t *old_indices,
                                 const int32_t *new_indices,
                                 void *m_state,
                                 void *v_state,
                                 int32_t *row_steps,
                                 void *workspace,
                                 size_t workspace_bytes,
                                 void *stream);

size_t grass_dtype_size(grass_dtype dtype);

grass_status grass_optimizer_create_sparse(const struct grass_context *ctx,
                                           const struct grass_projection_config *projection_config,
                                           const struct grass_adamw_config *adamw_config,
                                           int64_t m,
                                           int64_t n,
                                           int64_t max_tokens,
                                           grass_dtype act_dtype,
                                           grass_dtype w_dtype,
                                           struct grass_optimizer **optimizer_out);

grass_status grass_optimizer_create_dense(const struct grass_context *ctx,
                                          const struct grass_adamw_config *adamw_config,
                                          int64_t numel,
                                          grass_dtype w_dtype,
                                          grass_dtype grad_dtype,
                                          struct grass_optimizer **optimizer_out);

void grass_optimizer_destroy(struct grass_optimizer *optimizer);

grass_status grass_optimizer_projection(struct grass_optimizer *optimizer,
                                        struct grass_projection **projection_out);

grass_status grass_optimizer_refresh_due(const struct grass_optimizer *optimizer, int32_t *due_out);

grass_status grass_optimizer_backward(struct grass_optimizer *optimizer,
                                      int64_t b,
                                      const void *x,
                                      const void *dy,
                                      const float *scores,
                                      void *stream);

grass_status grass_optimizer_step(struct grass_optimizer *optimizer,
                                  void *w,
                                  const void *grad,
                                  float lr,
                                  void *stream);

grass_status grass_optimizer_last_step_skipped(const struct grass_optimizer *optimizer,
                                               int32_t *skipped_out,
                                               void *stream);

grass_status grass_optimizer_get_info(const struct grass_optimizer *optimizer,
                                      struct grass_optimizer_info *info);

grass_status grass_optimizer_state_size(const struct grass_optimizer *optimizer, size_t *bytes_out);

grass_status grass_optimizer_export_state(const struct grass_optimizer *optimizer,
                                          void *dst,
                                          size_t bytes,
                                          void *stream);

grass_status grass_optimizer_import_state(struct grass_optimizer *optimizer,
                                          const void *src,
                                          size_t bytes,
                                          void *stream);

grass_status grass_projection_create(const struct grass_context *ctx,
                                     const struct grass_projection_config *config,
                                     int64_t m,
                                     int64_t n,
                                     int64_t max_tokens,
                                     grass_dtype dtype,
                                     struct grass_projection **projection_out);

void grass_projection_destroy(struct grass_projection *projection);

grass_status grass_projection_get_info(const struct grass_projection *projection,
                                       struct grass_projection_info *info);

grass_status grass_projection_scores(const struct grass_projection *projection,
                                     int64_t b,
                                     const void *x,
                                     const void *dy,
                                     float *scores,
                                     void *stream);

grass_status grass_projection_refresh(struct grass_projection *projection,
                                      int64_t b,
                                      const void *x,
                                      const void *dy,
                                      void *stream);

grass_status grass_projection_refresh_from_scores(struct grass_projection *projection,
                                                  const float *scores,
                                                  void *stream);

grass_status grass_projection_advance(struct grass_projection *projection);

grass_status grass_projection_compress(const struct grass_projection *projection,
                                       int64_t b,
                                       const void *x,
                                       const void *dy,
                                       float *g,
                                       int32_t accumulate,
                                       void *stream);

grass_status grass_projection_selection(const struct grass_projection *projection,
                                        const int32_t **indices_out,
                                        const float **scales_out);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif
