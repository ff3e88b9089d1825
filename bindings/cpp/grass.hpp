// grass.hpp: header-only C++17 wrapper over the C ABI in grass.h.
//
// Ownership: Context, Projection and Optimizer own their handle through a std::unique_ptr with
// the matching grass_*_destroy as deleter; they are move-only. ProjectionRef borrows the
// projection an Optimizer owns. As with the C handles, a Context must outlive every Projection
// and Optimizer created on it, and one handle must not be used from two threads at once.
//
// Errors: every fallible call throws grass::Error, which carries the grass_status and the
// message of grass_last_error_message() (it names the function, the argument and the problem).
// A failed call has written nothing, so the objects stay usable after an exception.
//
// Buffers are raw pointers in the context's memory (host pointers for a CPU context, device
// pointers for a CUDA context); streams are the caller's CUstream / cudaStream_t as void*,
// ignored by CPU contexts.

#ifndef GRASS_HPP
#define GRASS_HPP

#if !defined(_MSVC_LANG) && __cplusplus < 201703L
#error "grass.hpp needs C++17 or newer"
#endif

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "grass.h"

namespace grass {

// A CUstream / cudaStream_t; nullptr is the default stream (and what CPU contexts expect).
using Stream = void*;

enum class Dtype : int32_t {
  F32 = GRASS_DTYPE_F32,
  Bf16 = GRASS_DTYPE_BF16,
  F16 = GRASS_DTYPE_F16,
};

enum class Side : int32_t {
  Rows = GRASS_SIDE_ROWS,
  Cols = GRASS_SIDE_COLS,
  Auto = GRASS_SIDE_AUTO,
};

enum class Method : int32_t {
  TopR = GRASS_METHOD_TOP_R,
  Multinomial = GRASS_METHOD_MULTINOMIAL,
  MultinomialNr = GRASS_METHOD_MULTINOMIAL_NR,
  Uniform = GRASS_METHOD_UNIFORM,
  UniformNr = GRASS_METHOD_UNIFORM_NR,
};

enum class Scaling : int32_t {
  Unbiased = GRASS_SCALING_UNBIASED,
  None = GRASS_SCALING_NONE,
};

enum class DecayMode : int32_t {
  Off = GRASS_DECAY_OFF,
  Selected = GRASS_DECAY_SELECTED,
  Dense = GRASS_DECAY_DENSE,
};

enum class RefreshMode : int32_t {
  Reset = GRASS_REFRESH_RESET,
  Carry = GRASS_REFRESH_CARRY,
};

enum class DeviceKind : int32_t {
  Cpu = GRASS_DEVICE_CPU,
  Cuda = GRASS_DEVICE_CUDA,
};

// What an AdamW step did (the GRASS_STEP_* value a step writes to `*skipped`).
enum class StepOutcome : int32_t {
  Applied = GRASS_STEP_APPLIED,
  // The gradient held a NaN or infinity, or the effective learning rate (lr * lr_scale) was not
  // a finite non-negative number.
  SkippedNonfinite = GRASS_STEP_SKIPPED_NONFINITE,
  // The indices were not sorted ascending within [0, d) (CUDA contexts only; a CPU context
  // throws Error with GRASS_ERROR_INVALID_VALUE instead).
  SkippedBadIndices = GRASS_STEP_SKIPPED_BAD_INDICES,
  // A step count was negative (CUDA contexts only; a CPU context throws Error with
  // GRASS_ERROR_INVALID_VALUE instead).
  SkippedBadStepCount = GRASS_STEP_SKIPPED_BAD_STEP_COUNT,
};

// A short description of `outcome`, e.g. for a log line.
[[nodiscard]] inline const char* step_outcome_string(StepOutcome outcome) noexcept {
  switch (outcome) {
    case StepOutcome::Applied:
      return "applied";
    case StepOutcome::SkippedNonfinite:
      return "skipped: non-finite gradient or learning rate";
    case StepOutcome::SkippedBadIndices:
      return "skipped: indices not sorted within [0, d)";
    case StepOutcome::SkippedBadStepCount:
      return "skipped: a step count was negative";
  }
  return "unknown step outcome";
}

// A failed grass call: the status code and the library's message for it.
class Error : public std::runtime_error {
 public:
  Error(grass_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}

  [[nodiscard]] grass_status status() const noexcept { return status_; }

  // The fixed description of status(), e.g. "an argument is out of range".
  [[nodiscard]] const char* status_string() const noexcept {
    return grass_status_string(static_cast<int32_t>(status_));
  }

 private:
  grass_status status_;
};

// Throws grass::Error unless `status` is GRASS_OK. Must be called right after the failing call,
// on the same thread, because it reads the thread's last error message.
inline void check(grass_status status) {
  if (status == GRASS_OK) {
    return;
  }
  const char* message = grass_last_error_message();
  if (message == nullptr || *message == '\0') {
    message = grass_status_string(static_cast<int32_t>(status));
  }
  throw Error(status, message);
}

[[nodiscard]] inline const char* version() noexcept { return grass_version(); }

[[nodiscard]] inline uint32_t abi_version() noexcept { return grass_abi_version(); }

// True when the loaded library implements the ABI this header was written for: its own
// generation or a later one that only adds to it (ABI 4, 5 and 6 each add to the one
// before; CHANGELOG.md says which generations are additive).
[[nodiscard]] inline bool abi_compatible() noexcept {
  return grass_abi_version() >= GRASS_ABI_VERSION;
}

// The rank rule: the rank a projection of projected dimension `d` gets when its config's rank
// is 0 (the default): d/2 rounded to the nearest multiple of 8, at least 8, at most d.
[[nodiscard]] inline int64_t default_rank(int64_t d) {
  int64_t r = 0;
  check(grass_default_rank(d, &r));
  return r;
}

// The residual step's scale the measurements support (Optimizer::step_residual's default).
[[nodiscard]] inline float default_residual_scale() noexcept {
  return grass_default_residual_scale();
}

[[nodiscard]] inline const char* status_string(grass_status status) noexcept {
  return grass_status_string(static_cast<int32_t>(status));
}

[[nodiscard]] inline const char* last_error_message() noexcept {
  return grass_last_error_message();
}

// Bytes per element: 4 for f32, 2 for bf16 and f16.
[[nodiscard]] inline std::size_t dtype_size(Dtype dtype) noexcept {
  return grass_dtype_size(static_cast<grass_dtype>(dtype));
}

struct CudaAvailability {
  bool available;
  std::string reason;
};

// Whether a CUDA context could be created here, and why (not); creates no context.
[[nodiscard]] inline CudaAvailability cuda_available() {
  int32_t available = 0;
  char reason[512] = {};
  check(grass_cuda_available(&available, reason, sizeof reason));
  return CudaAvailability{available != 0, std::string(reason)};
}

struct ResolvedSide {
  Side side;  // Rows or Cols, never Auto
  int64_t d;  // projected dimension
  int64_t k;  // kept dimension: compressed tensors are rank x k
};

[[nodiscard]] inline ResolvedSide resolve_side(int64_t m, int64_t n, Side side) {
  grass_side resolved = GRASS_SIDE_ROWS;
  int64_t d = 0;
  int64_t k = 0;
  check(grass_resolve_side(m, n, static_cast<grass_side>(side), &resolved, &d, &k));
  return ResolvedSide{static_cast<Side>(resolved), d, k};
}

// grass_projection_config with the library's defaults (grass_projection_config_init) and
// chainable setters:
//   auto cfg = grass::ProjectionConfig().rank(64).method(grass::Method::TopR);
// rank() is 0 until set: the rank rule picks r per layer (grass::default_rank).
class ProjectionConfig {
 public:
  ProjectionConfig() { check(grass_projection_config_init(&c_)); }
  explicit ProjectionConfig(const grass_projection_config& raw) noexcept : c_(raw) {}

  ProjectionConfig& side(Side v) noexcept {
    c_.side = static_cast<grass_side>(v);
    return *this;
  }
  ProjectionConfig& rank(int64_t v) noexcept {
    c_.rank = v;
    return *this;
  }
  ProjectionConfig& method(Method v) noexcept {
    c_.method = static_cast<grass_method>(v);
    return *this;
  }
  ProjectionConfig& power(int32_t v) noexcept {
    c_.power = v;
    return *this;
  }
  ProjectionConfig& scaling(Scaling v) noexcept {
    c_.scaling = static_cast<grass_scaling>(v);
    return *this;
  }
  ProjectionConfig& refresh_every(int64_t v) noexcept {
    c_.refresh_every = v;
    return *this;
  }
  ProjectionConfig& seed(uint64_t v) noexcept {
    c_.seed = v;
    return *this;
  }
  ProjectionConfig& layer_id(uint32_t v) noexcept {
    c_.layer_id = v;
    return *this;
  }

  [[nodiscard]] Side side() const noexcept { return static_cast<Side>(c_.side); }
  [[nodiscard]] int64_t rank() const noexcept { return c_.rank; }
  [[nodiscard]] Method method() const noexcept { return static_cast<Method>(c_.method); }
  [[nodiscard]] int32_t power() const noexcept { return c_.power; }
  [[nodiscard]] Scaling scaling() const noexcept { return static_cast<Scaling>(c_.scaling); }
  [[nodiscard]] int64_t refresh_every() const noexcept { return c_.refresh_every; }
  [[nodiscard]] uint64_t seed() const noexcept { return c_.seed; }
  [[nodiscard]] uint32_t layer_id() const noexcept { return c_.layer_id; }

  [[nodiscard]] const grass_projection_config& raw() const noexcept { return c_; }
  [[nodiscard]] grass_projection_config& raw() noexcept { return c_; }

 private:
  grass_projection_config c_{};
};

// grass_adamw_config with the library's defaults (grass_adamw_config_init) and chainable
// setters. The default alpha 0.177 wants a learning rate about 10-20x AdamW's (docs/api.md).
class AdamWConfig {
 public:
  AdamWConfig() { check(grass_adamw_config_init(&c_)); }
  explicit AdamWConfig(const grass_adamw_config& raw) noexcept : c_(raw) {}

  AdamWConfig& beta1(float v) noexcept {
    c_.beta1 = v;
    return *this;
  }
  AdamWConfig& beta2(float v) noexcept {
    c_.beta2 = v;
    return *this;
  }
  AdamWConfig& eps(float v) noexcept {
    c_.eps = v;
    return *this;
  }
  AdamWConfig& weight_decay(float v) noexcept {
    c_.weight_decay = v;
    return *this;
  }
  AdamWConfig& decay_mode(DecayMode v) noexcept {
    c_.decay_mode = static_cast<grass_decay_mode>(v);
    return *this;
  }
  AdamWConfig& alpha(float v) noexcept {
    c_.alpha = v;
    return *this;
  }
  AdamWConfig& refresh_mode(RefreshMode v) noexcept {
    c_.refresh_mode = static_cast<grass_refresh_mode>(v);
    return *this;
  }
  // The GRASS layers' moments (default bf16).
  AdamWConfig& state_dtype(Dtype v) noexcept {
    c_.state_dtype = static_cast<grass_dtype>(v);
    return *this;
  }
  // The moments of dense optimizers (Optimizer::dense; default f32).
  AdamWConfig& dense_state_dtype(Dtype v) noexcept {
    c_.dense_state_dtype = static_cast<grass_dtype>(v);
    return *this;
  }
  // Steps W over which a state row's update ramps up (x min(1, t/W)) after a refresh zeroed
  // its moments; 0 turns it off.
  AdamWConfig& row_warmup(int32_t v) noexcept {
    c_.row_warmup = v;
    return *this;
  }

  [[nodiscard]] float beta1() const noexcept { return c_.beta1; }
  [[nodiscard]] float beta2() const noexcept { return c_.beta2; }
  [[nodiscard]] float eps() const noexcept { return c_.eps; }
  [[nodiscard]] float weight_decay() const noexcept { return c_.weight_decay; }
  [[nodiscard]] DecayMode decay_mode() const noexcept {
    return static_cast<DecayMode>(c_.decay_mode);
  }
  [[nodiscard]] float alpha() const noexcept { return c_.alpha; }
  [[nodiscard]] RefreshMode refresh_mode() const noexcept {
    return static_cast<RefreshMode>(c_.refresh_mode);
  }
  [[nodiscard]] Dtype state_dtype() const noexcept { return static_cast<Dtype>(c_.state_dtype); }
  [[nodiscard]] Dtype dense_state_dtype() const noexcept {
    return static_cast<Dtype>(c_.dense_state_dtype);
  }
  [[nodiscard]] int32_t row_warmup() const noexcept { return c_.row_warmup; }

  [[nodiscard]] const grass_adamw_config& raw() const noexcept { return c_; }
  [[nodiscard]] grass_adamw_config& raw() noexcept { return c_; }

 private:
  grass_adamw_config c_{};
};

// One kind of parameter of a model for Context::memory_plan: an m x n weight trained with
// GRASS at `rank`, or (rank 0) a dense parameter of m * n elements; `count` of them. The side
// defaults to the library's default side (ProjectionConfig().side()); grass::default_rank(d)
// gives the rank a handle with the default rank 0 gets.
[[nodiscard]] inline grass_memory_layer memory_layer(int64_t m, int64_t n, int64_t rank,
                                                     int64_t count,
                                                     Side side = ProjectionConfig().side(),
                                                     Dtype w_dtype = Dtype::Bf16,
                                                     Dtype act_dtype = Dtype::Bf16) noexcept {
  grass_memory_layer l{};
  l.struct_size = sizeof l;
  l.m = m;
  l.n = n;
  l.rank = rank;
  l.side = static_cast<grass_side>(side);
  l.w_dtype = static_cast<grass_dtype>(w_dtype);
  l.act_dtype = static_cast<grass_dtype>(act_dtype);
  l.count = count;
  return l;
}

namespace detail {

struct ContextDeleter {
  void operator()(grass_context* p) const noexcept { grass_context_destroy(p); }
};

struct ProjectionDeleter {
  void operator()(grass_projection* p) const noexcept { grass_projection_destroy(p); }
};

struct OptimizerDeleter {
  void operator()(grass_optimizer* p) const noexcept { grass_optimizer_destroy(p); }
};

}  // namespace detail

// A device (CPU or one CUDA device) and the stateless layer-1 ops that run on it. Each op takes
// scratch sized by its *_workspace_size query and never allocates.
class Context {
 public:
  // Takes ownership of a handle from grass_context_create_* (may be NULL).
  explicit Context(grass_context* adopt) noexcept : p_(adopt) {}

  [[nodiscard]] static Context cpu() {
    grass_context* p = nullptr;
    check(grass_context_create_cpu(&p));
    return Context(p);
  }

  // Throws Error with GRASS_ERROR_CUDA_UNAVAILABLE where no usable GPU, driver or library exists.
  [[nodiscard]] static Context cuda(int32_t ordinal = 0) {
    grass_context* p = nullptr;
    check(grass_context_create_cuda(ordinal, &p));
    return Context(p);
  }

  [[nodiscard]] grass_context* get() const noexcept { return p_.get(); }
  [[nodiscard]] grass_context* release() noexcept { return p_.release(); }
  explicit operator bool() const noexcept { return static_cast<bool>(p_); }

  [[nodiscard]] DeviceKind device_kind() const {
    grass_device_kind kind = GRASS_DEVICE_CPU;
    check(grass_context_device_kind(get(), &kind));
    return static_cast<DeviceKind>(kind);
  }

  [[nodiscard]] std::size_t scores_workspace_size(int64_t m, int64_t n, int64_t b, Side side,
                                                  Dtype dtype) const {
    std::size_t bytes = 0;
    check(grass_scores_workspace_size(get(), m, n, b, static_cast<grass_side>(side),
                                      static_cast<grass_dtype>(dtype), &bytes));
    return bytes;
  }

  void row_scores(int64_t m, int64_t n, int64_t b, Side side, Dtype dtype, const void* x,
                  const void* dy, float* scores, void* workspace, std::size_t workspace_bytes,
                  Stream stream = nullptr) const {
    check(grass_row_scores(get(), m, n, b, static_cast<grass_side>(side),
                           static_cast<grass_dtype>(dtype), x, dy, scores, workspace,
                           workspace_bytes, stream));
  }

  [[nodiscard]] std::size_t select_workspace_size(int64_t d, int64_t r) const {
    std::size_t bytes = 0;
    check(grass_select_workspace_size(get(), d, r, &bytes));
    return bytes;
  }

  void select(const ProjectionConfig& config, int64_t d, uint32_t refresh_index,
              const float* scores, int32_t* indices, float* scales, void* workspace,
              std::size_t workspace_bytes, Stream stream = nullptr) const {
    check(grass_select(get(), &config.raw(), d, refresh_index, nullptr, scores, indices, scales,
                       workspace, workspace_bytes, stream));
  }

  // As select, with the refresh index read from context memory (e.g. a device-side counter).
  void select_at(const ProjectionConfig& config, int64_t d, const uint32_t* refresh_index_at,
                 const float* scores, int32_t* indices, float* scales, void* workspace,
                 std::size_t workspace_bytes, Stream stream = nullptr) const {
    check(grass_select(get(), &config.raw(), d, 0, refresh_index_at, scores, indices, scales,
                       workspace, workspace_bytes, stream));
  }

  [[nodiscard]] std::size_t sparse_grad_workspace_size(int64_t m, int64_t n, int64_t b, Side side,
                                                       int64_t r, Dtype dtype) const {
    std::size_t bytes = 0;
    check(grass_sparse_grad_workspace_size(get(), m, n, b, static_cast<grass_side>(side), r,
                                           static_cast<grass_dtype>(dtype), &bytes));
    return bytes;
  }

  void sparse_grad(int64_t m, int64_t n, int64_t b, Side side, int64_t r, Dtype dtype,
                   const void* x, const void* dy, const int32_t* indices, const float* scales,
                   float* g, bool accumulate, void* workspace, std::size_t workspace_bytes,
                   Stream stream = nullptr) const {
    check(grass_sparse_grad(get(), m, n, b, static_cast<grass_side>(side), r,
                            static_cast<grass_dtype>(dtype), x, dy, indices, scales, g,
                            accumulate ? 1 : 0, workspace, workspace_bytes, stream));
  }

  [[nodiscard]] std::size_t sparse_adamw_workspace_size(int64_t m, int64_t n, Side side,
                                                        int64_t r) const {
    std::size_t bytes = 0;
    check(grass_sparse_adamw_workspace_size(get(), m, n, static_cast<grass_side>(side), r,
                                            &bytes));
    return bytes;
  }

  // `row_steps` holds r step counts, one per state row of M and V (the Adam step of that row
  // since it was zeroed): each is incremented when the step is applied and gives its row its
  // own bias corrections. `*skipped` receives a GRASS_STEP_* outcome (see StepOutcome).
  // `lr_scale` and `skipped` may be nullptr; like every buffer they live in context memory.
  void sparse_adamw_step(const AdamWConfig& config, int64_t m, int64_t n, Side side, int64_t r,
                         Dtype w_dtype, void* w, const int32_t* indices, const float* scales,
                         const float* g, void* m_state, void* v_state, int32_t* row_steps,
                         float lr, const float* lr_scale, int32_t* skipped, void* workspace,
                         std::size_t workspace_bytes, Stream stream = nullptr) const {
    check(grass_sparse_adamw_step(get(), &config.raw(), m, n, static_cast<grass_side>(side), r,
                                  static_cast<grass_dtype>(w_dtype), w, indices, scales, g,
                                  m_state, v_state, row_steps, lr, lr_scale, skipped, workspace,
                                  workspace_bytes, stream));
  }

  [[nodiscard]] std::size_t residual_workspace_size(int64_t m, int64_t n, int64_t b, Side side,
                                                    Dtype dtype) const {
    std::size_t bytes = 0;
    check(grass_residual_workspace_size(get(), m, n, b, static_cast<grass_side>(side),
                                        static_cast<grass_dtype>(dtype), &bytes));
    return bytes;
  }

  // The rows (or columns) of W not in `indices` move by -lr·alpha·residual_scale·sign(G_u),
  // G = dYᵀX computed in chunks (no m x n buffer). `*skipped` is read first (a skipped outcome
  // moves nothing) and receives GRASS_STEP_SKIPPED_NONFINITE for a non-finite X, dY or lr.
  void residual_step(const AdamWConfig& config, int64_t m, int64_t n, int64_t b, Side side,
                     int64_t r, Dtype dtype, const void* x, const void* dy, Dtype w_dtype,
                     void* w, const int32_t* indices, float residual_scale, float lr,
                     const float* lr_scale, int32_t* skipped, void* workspace,
                     std::size_t workspace_bytes, Stream stream = nullptr) const {
    check(grass_residual_step(get(), &config.raw(), m, n, b, static_cast<grass_side>(side), r,
                              static_cast<grass_dtype>(dtype), x, dy,
                              static_cast<grass_dtype>(w_dtype), w, indices, residual_scale,
                              lr, lr_scale, skipped, workspace, workspace_bytes, stream));
  }

  [[nodiscard]] std::size_t adamw_workspace_size(int64_t numel) const {
    std::size_t bytes = 0;
    check(grass_adamw_workspace_size(get(), numel, &bytes));
    return bytes;
  }

  // `*step` is the parameter's single Adam step count (read and incremented); `*skipped`
  // receives a GRASS_STEP_* outcome. `lr_scale` and `skipped` may be nullptr.
  void adamw_step(const AdamWConfig& config, int64_t numel, Dtype w_dtype, void* w,
                  Dtype grad_dtype, const void* grad, void* m_state, void* v_state, int32_t* step,
                  float lr, const float* lr_scale, int32_t* skipped, void* workspace,
                  std::size_t workspace_bytes, Stream stream = nullptr) const {
    check(grass_adamw_step(get(), &config.raw(), numel, static_cast<grass_dtype>(w_dtype), w,
                           static_cast<grass_dtype>(grad_dtype), grad, m_state, v_state, step, lr,
                           lr_scale, skipped, workspace, workspace_bytes, stream));
  }

  [[nodiscard]] std::size_t state_refresh_workspace_size(RefreshMode refresh_mode,
                                                         Dtype state_dtype, int64_t r,
                                                         int64_t k) const {
    std::size_t bytes = 0;
    check(grass_state_refresh_workspace_size(get(), static_cast<grass_refresh_mode>(refresh_mode),
                                             static_cast<grass_dtype>(state_dtype), r, k,
                                             &bytes));
    return bytes;
  }

  // Adapts M, V (r x k of `state_dtype`, Dtype::F32 or Dtype::BF16) and `row_steps` (r step
  // counts, one per state row) to a new selection: Reset zeroes them all; Carry moves each kept
  // row and its count to its new position and zeroes the rows and counts of entering indices.
  // `old_indices` may be nullptr (no previous selection).
  void state_refresh(RefreshMode refresh_mode, Dtype state_dtype, int64_t r, int64_t k,
                     const int32_t* old_indices, const int32_t* new_indices, void* m_state,
                     void* v_state, int32_t* row_steps, void* workspace,
                     std::size_t workspace_bytes, Stream stream = nullptr) const {
    check(grass_state_refresh(get(), static_cast<grass_refresh_mode>(refresh_mode),
                              static_cast<grass_dtype>(state_dtype), r, k, old_indices,
                              new_indices, m_state, v_state, row_steps, workspace,
                              workspace_bytes, stream));
  }

  // Bytes of the workspace the context's handles share (grows, never shrinks).
  [[nodiscard]] std::size_t workspace_bytes() const {
    std::size_t bytes = 0;
    check(grass_context_workspace_bytes(get(), &bytes));
    return bytes;
  }

  // Grows the shared workspace to at least `bytes` now (e.g. a MemoryPlan's workspace).
  void reserve_workspace(std::size_t bytes) const {
    check(grass_context_reserve_workspace(get(), bytes));
  }

  // What training a model takes on this context (see grass_memory_plan): `layers` describe
  // the weights (rank > 0: GRASS) and dense parameters (rank 0), with X and dY of at most
  // `max_tokens` rows per backward call and states at `config`'s state dtype.
  [[nodiscard]] grass_memory_report memory_plan(const std::vector<grass_memory_layer>& layers,
                                                int64_t max_tokens,
                                                const AdamWConfig& config = AdamWConfig()) const {
    grass_memory_report report{};
    report.struct_size = sizeof report;
    check(grass_memory_plan(get(), &config.raw(), layers.empty() ? nullptr : layers.data(),
                            layers.size(), max_tokens, &report));
    return report;
  }

 private:
  std::unique_ptr<grass_context, detail::ContextDeleter> p_;
};

// The current selection of a projection (context memory, owned by the projection; the contents
// change at each refresh).
struct SelectionView {
  const int32_t* indices;
  const float* scales;
};

namespace detail {

// The calls shared by an owned Projection and a borrowed ProjectionRef.
template <typename Derived>
class ProjectionOps {
 public:
  [[nodiscard]] grass_projection_info info() const {
    grass_projection_info out{};
    out.struct_size = sizeof out;
    check(grass_projection_get_info(handle(), &out));
    return out;
  }

  // This batch's d row scores, without changing the projection (for an all-reduce).
  void scores(int64_t b, const void* x, const void* dy, float* scores,
              Stream stream = nullptr) const {
    check(grass_projection_scores(handle(), b, x, dy, scores, stream));
  }

  void refresh(int64_t b, const void* x, const void* dy, Stream stream = nullptr) {
    check(grass_projection_refresh(handle(), b, x, dy, stream));
  }

  void refresh_from_scores(const float* scores, Stream stream = nullptr) {
    check(grass_projection_refresh_from_scores(handle(), scores, stream));
  }

  void advance() { check(grass_projection_advance(handle())); }

  void compress(int64_t b, const void* x, const void* dy, float* g, bool accumulate,
                Stream stream = nullptr) const {
    check(grass_projection_compress(handle(), b, x, dy, g, accumulate ? 1 : 0, stream));
  }

  [[nodiscard]] SelectionView selection() const {
    const int32_t* indices = nullptr;
    const float* scales = nullptr;
    check(grass_projection_selection(handle(), &indices, &scales));
    return SelectionView{indices, scales};
  }

 private:
  grass_projection* handle() const noexcept { return static_cast<const Derived*>(this)->get(); }
};

}  // namespace detail

// A projection borrowed from an Optimizer: valid while the optimizer lives. Refreshing it
// directly bypasses the optimizer's state remap; leave refreshes to Optimizer::backward.
class ProjectionRef : public detail::ProjectionOps<ProjectionRef> {
 public:
  explicit ProjectionRef(grass_projection* p) noexcept : p_(p) {}
  [[nodiscard]] grass_projection* get() const noexcept { return p_; }

 private:
  grass_projection* p_;
};

// A projection of its own: σ, ρ, the refresh counter and the generator key of one layer.
class Projection : public detail::ProjectionOps<Projection> {
 public:
  explicit Projection(grass_projection* adopt) noexcept : p_(adopt) {}

  // For an m x n weight whose X and dY have `dtype` and at most `max_tokens` rows per call.
  [[nodiscard]] static Projection create(const Context& ctx, const ProjectionConfig& config,
                                         int64_t m, int64_t n, int64_t max_tokens, Dtype dtype) {
    grass_projection* p = nullptr;
    check(grass_projection_create(ctx.get(), &config.raw(), m, n, max_tokens,
                                  static_cast<grass_dtype>(dtype), &p));
    return Projection(p);
  }

  [[nodiscard]] grass_projection* get() const noexcept { return p_.get(); }
  [[nodiscard]] grass_projection* release() noexcept { return p_.release(); }
  explicit operator bool() const noexcept { return static_cast<bool>(p_); }
  [[nodiscard]] ProjectionRef ref() const noexcept { return ProjectionRef(p_.get()); }

 private:
  std::unique_ptr<grass_projection, detail::ProjectionDeleter> p_;
};

// The optimizer of one parameter: a GRASS layer (compressed AdamW in a selected subspace, with
// its own projection and gradient accumulator) or a dense parameter (plain AdamW).
class Optimizer {
 public:
  explicit Optimizer(grass_optimizer* adopt) noexcept : p_(adopt) {}

  // A GRASS layer: an m x n weight of `w_dtype` fed with X and dY of `act_dtype` that have at
  // most `max_tokens` rows per micro-batch.
  [[nodiscard]] static Optimizer sparse(const Context& ctx, const ProjectionConfig& projection,
                                        const AdamWConfig& adamw, int64_t m, int64_t n,
                                        int64_t max_tokens, Dtype act_dtype, Dtype w_dtype) {
    grass_optimizer* p = nullptr;
    check(grass_optimizer_create_sparse(ctx.get(), &projection.raw(), &adamw.raw(), m, n,
                                        max_tokens, static_cast<grass_dtype>(act_dtype),
                                        static_cast<grass_dtype>(w_dtype), &p));
    return Optimizer(p);
  }

  // Plain AdamW for a parameter of `numel` elements (embeddings, norms, biases).
  [[nodiscard]] static Optimizer dense(const Context& ctx, const AdamWConfig& adamw,
                                       int64_t numel, Dtype w_dtype, Dtype grad_dtype) {
    grass_optimizer* p = nullptr;
    check(grass_optimizer_create_dense(ctx.get(), &adamw.raw(), numel,
                                       static_cast<grass_dtype>(w_dtype),
                                       static_cast<grass_dtype>(grad_dtype), &p));
    return Optimizer(p);
  }

  [[nodiscard]] grass_optimizer* get() const noexcept { return p_.get(); }
  [[nodiscard]] grass_optimizer* release() noexcept { return p_.release(); }
  explicit operator bool() const noexcept { return static_cast<bool>(p_); }

  // The projection of a GRASS layer (throws for a dense optimizer).
  [[nodiscard]] ProjectionRef projection() const {
    grass_projection* p = nullptr;
    check(grass_optimizer_projection(get(), &p));
    return ProjectionRef(p);
  }

  // Whether the next backward() refreshes the selection (a data-parallel caller then
  // all-reduces scores first and passes them to backward()).
  [[nodiscard]] bool refresh_due() const {
    int32_t due = 0;
    check(grass_optimizer_refresh_due(get(), &due));
    return due != 0;
  }

  // One micro-batch of a GRASS layer: X (b x n) and dY (b x m). `scores` (d floats) replaces
  // this batch's own row scores when a refresh is due.
  void backward(int64_t b, const void* x, const void* dy, const float* scores = nullptr,
                Stream stream = nullptr) {
    check(grass_optimizer_backward(get(), b, x, dy, scores, stream));
  }

  // A GRASS layer's step from the accumulated compressed gradient.
  void step(void* w, float lr, Stream stream = nullptr) {
    check(grass_optimizer_step(get(), w, nullptr, lr, stream));
  }

  // A dense parameter's step from its gradient (of the optimizer's grad dtype).
  void step(void* w, const void* grad, float lr, Stream stream = nullptr) {
    check(grass_optimizer_step(get(), w, grad, lr, stream));
  }

  // The step on grad_scale times the gradient (clip factor / (loss scale * micro-batches)),
  // with no extra pass over W: `grad` nullptr for a GRASS layer, the gradient for a dense
  // parameter, as in step(). grad_scale must be finite and >= 0.
  void step_scaled(void* w, const void* grad, float lr, float grad_scale,
                   Stream stream = nullptr) {
    check(grass_optimizer_step_scaled(get(), w, grad, lr, grad_scale, stream));
  }

  // A GRASS layer's step_scaled, then the full-rank residual: every row (or column) the
  // selection leaves out moves by -lr·alpha·residual_scale·sign(G_u), G from the step's whole
  // batch of activations x (b x n) and output gradients dy (b x m). One more weight-gradient
  // GEMM per step; not for micro-batches (the sign of a sum is not the sum of signs).
  void step_residual(void* w, int64_t b, const void* x, const void* dy, float lr,
                     float grad_scale = 1.0f, float residual_scale = default_residual_scale(),
                     Stream stream = nullptr) {
    check(grass_optimizer_step_residual(get(), w, b, x, dy, lr, grad_scale, residual_scale,
                                        stream));
  }

  // The squared norm of the gradient the next step uses (before its grad_scale) into
  // `sq_norm_out`, one float in context memory (enqueued on CUDA, no synchronization): `grad`
  // nullptr for a GRASS layer (its accumulated compressed gradient), the gradient for a dense
  // parameter. Sum the values of every optimizer for a global norm.
  void grad_sq_norm(const void* grad, float* sq_norm_out, Stream stream = nullptr) const {
    check(grass_optimizer_grad_sq_norm(get(), grad, sq_norm_out, stream));
  }

  // What the last step did: applied, or why it was skipped (synchronizes on CUDA; throws
  // GRASS_ERROR_INVALID_STATE before the first step).
  [[nodiscard]] StepOutcome last_step_outcome(Stream stream = nullptr) const {
    int32_t outcome = GRASS_STEP_APPLIED;
    check(grass_optimizer_last_step_skipped(get(), &outcome, stream));
    return static_cast<StepOutcome>(outcome);
  }

  // Whether the last step was skipped, for whatever reason (synchronizes on CUDA).
  [[nodiscard]] bool last_step_skipped(Stream stream = nullptr) const {
    return last_step_outcome(stream) != StepOutcome::Applied;
  }

  // A dense parameter's layer id, recorded by its checkpoints so that parameters of one size
  // cannot be restored into each other (a GRASS layer's is its ProjectionConfig's: setting
  // another throws GRASS_ERROR_INVALID_STATE).
  void set_layer_id(uint32_t layer_id) { check(grass_optimizer_set_layer_id(get(), layer_id)); }

  [[nodiscard]] grass_optimizer_info info() const {
    grass_optimizer_info out{};
    out.struct_size = sizeof out;
    check(grass_optimizer_get_info(get(), &out));
    return out;
  }

  [[nodiscard]] std::size_t state_size() const {
    std::size_t bytes = 0;
    check(grass_optimizer_state_size(get(), &bytes));
    return bytes;
  }

  // The whole state as a versioned, checksummed blob (host memory).
  [[nodiscard]] std::vector<uint8_t> export_state(Stream stream = nullptr) const {
    std::vector<uint8_t> blob(state_size());
    export_state_to(blob.data(), blob.size(), stream);
    return blob;
  }

  void export_state_to(void* dst, std::size_t bytes, Stream stream = nullptr) const {
    check(grass_optimizer_export_state(get(), dst, bytes, stream));
  }

  // Restores a blob of an optimizer of the same identity (kind, shapes, side, rank, dtypes,
  // layer id); throws Error with GRASS_ERROR_BAD_CHECKPOINT, naming both identities and
  // changing nothing, when it does not match or is damaged.
  void import_state(const void* src, std::size_t bytes, Stream stream = nullptr) {
    check(grass_optimizer_import_state(get(), src, bytes, stream));
  }

  void import_state(const std::vector<uint8_t>& blob, Stream stream = nullptr) {
    import_state(blob.data(), blob.size(), stream);
  }

 private:
  std::unique_ptr<grass_optimizer, detail::OptimizerDeleter> p_;
};

// Saves the states of a set of optimizers, in this order, to one file (written through a
// temporary file and a rename): grass_checkpoint_save.
inline void checkpoint_save(const std::string& path,
                            const std::vector<grass_optimizer*>& optimizers,
                            Stream stream = nullptr) {
  check(grass_checkpoint_save(path.c_str(), optimizers.data(), optimizers.size(), stream));
}

inline void checkpoint_save(const std::string& path, const std::vector<Optimizer>& optimizers,
                            Stream stream = nullptr) {
  std::vector<grass_optimizer*> raw;
  raw.reserve(optimizers.size());
  for (const Optimizer& o : optimizers) raw.push_back(o.get());
  checkpoint_save(path, raw, stream);
}

// Restores a set of optimizers of the same identities, in the same order, from a file of
// checkpoint_save. The whole file is checked first: a missing, damaged, truncated or
// mismatched file throws Error with GRASS_ERROR_BAD_CHECKPOINT and changes no optimizer.
inline void checkpoint_load(const std::string& path,
                            const std::vector<grass_optimizer*>& optimizers,
                            Stream stream = nullptr) {
  check(grass_checkpoint_load(path.c_str(), optimizers.data(), optimizers.size(), stream));
}

inline void checkpoint_load(const std::string& path, std::vector<Optimizer>& optimizers,
                            Stream stream = nullptr) {
  std::vector<grass_optimizer*> raw;
  raw.reserve(optimizers.size());
  for (Optimizer& o : optimizers) raw.push_back(o.get());
  checkpoint_load(path, raw, stream);
}

}  // namespace grass

#endif  // GRASS_HPP
