// XLA FFI handlers of grass's layer-1 ops. Each handler decodes XLA's buffers and attributes,
// calls one libgrass op on them and maps its status to an FFI error. XLA owns every buffer:
// scratch arrives as the last result (a u8 vector sized by the matching *_workspace_size
// query at trace time), and in-place updates are results aliased to their inputs.
//
// Every op has two symbols: <Name>Cpu (the CPU context, no stream) and <Name>Cuda (the CUDA
// context of the call's device ordinal and XLA's stream). Both are registered under one target
// name, for platforms "cpu" and "CUDA".

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "contexts.h"
#include "grass.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace grass_jax {
namespace {

using U8Result = ffi::Result<ffi::Buffer<ffi::U8>>;

ffi::Error DtypeOf(const ffi::AnyBuffer& b, const char* name, grass_dtype* out) {
  switch (b.element_type()) {
    case ffi::DataType::F32: *out = GRASS_DTYPE_F32; return ffi::Error::Success();
    case ffi::DataType::BF16: *out = GRASS_DTYPE_BF16; return ffi::Error::Success();
    case ffi::DataType::F16: *out = GRASS_DTYPE_F16; return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument(std::string(name) +
                                         " must be float32, bfloat16 or float16");
  }
}

ffi::Error Rank2(const ffi::AnyBuffer& b, const char* name, int64_t* rows, int64_t* cols) {
  auto d = b.dimensions();
  if (d.size() != 2) {
    return ffi::Error::InvalidArgument(std::string(name) + " must be 2-D, got rank " +
                                       std::to_string(d.size()));
  }
  *rows = d[0];
  *cols = d[1];
  return ffi::Error::Success();
}

// XLA honours input_output_aliases by handing the same buffer as argument and result.
ffi::Error SameBuffer(const void* arg, const void* result, const char* name) {
  if (arg == result) return ffi::Error::Success();
  return ffi::Error::Internal(std::string(name) +
                              ": XLA did not alias the result to its input");
}

// A small buffer (step counts, flags, scalars) must hold exactly `want` elements; `what` says
// what they are.
template <typename B>
ffi::Error CountOf(const B& b, const char* name, int64_t want, const char* what) {
  int64_t got = static_cast<int64_t>(b.element_count());
  if (got == want) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(name) + " must hold " + std::to_string(want) +
                                     " " + what + ", got " + std::to_string(got) +
                                     " elements");
}

#define GRASS_TRY(expr)                        \
  do {                                         \
    ffi::Error grass_try_err = (expr);         \
    if (grass_try_err.failure()) return grass_try_err; \
  } while (0)

// ---------------------------------------------------------------------------------------------
// Op bodies, shared by both platforms.

ffi::Error RowScores(const Device& dev, ffi::AnyBuffer x, ffi::AnyBuffer dy, int32_t side,
                     ffi::Result<ffi::Buffer<ffi::F32>> scores, U8Result ws) {
  int64_t b, n, b2, m;
  grass_dtype dt, dt2;
  GRASS_TRY(Rank2(x, "x", &b, &n));
  GRASS_TRY(Rank2(dy, "dy", &b2, &m));
  GRASS_TRY(DtypeOf(x, "x", &dt));
  GRASS_TRY(DtypeOf(dy, "dy", &dt2));
  if (b != b2 || dt != dt2) {
    return ffi::Error::InvalidArgument("x and dy must have the same rows and dtype");
  }
  return StatusError(grass_row_scores(dev.ctx, m, n, b, side, dt, x.untyped_data(),
                                      dy.untyped_data(), scores->typed_data(),
                                      ws->untyped_data(), ws->size_bytes(), dev.stream));
}

ffi::Error Select(const Device& dev, ffi::Buffer<ffi::F32> scores,
                  ffi::Buffer<ffi::U32> refresh_index, int64_t rank, int32_t method,
                  int32_t power, int32_t scaling, uint64_t seed, uint32_t layer_id,
                  ffi::Result<ffi::Buffer<ffi::S32>> indices,
                  ffi::Result<ffi::Buffer<ffi::F32>> scales, U8Result ws) {
  grass_projection_config cfg;
  GRASS_TRY(StatusError(grass_projection_config_init(&cfg)));
  cfg.rank = rank;
  cfg.method = method;
  cfg.power = power;
  cfg.scaling = scaling;
  cfg.seed = seed;
  cfg.layer_id = layer_id;
  // The refresh index stays where XLA keeps it (host or device memory): no copy, no wait.
  return StatusError(grass_select(dev.ctx, &cfg, static_cast<int64_t>(scores.element_count()),
                                  0, refresh_index.typed_data(), scores.typed_data(),
                                  indices->typed_data(), scales->typed_data(),
                                  ws->untyped_data(), ws->size_bytes(), dev.stream));
}

ffi::Error SparseGrad(const Device& dev, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                      ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> scales,
                      int32_t side, ffi::Result<ffi::Buffer<ffi::F32>> g, U8Result ws) {
  int64_t b, n, b2, m;
  grass_dtype dt, dt2;
  GRASS_TRY(Rank2(x, "x", &b, &n));
  GRASS_TRY(Rank2(dy, "dy", &b2, &m));
  GRASS_TRY(DtypeOf(x, "x", &dt));
  GRASS_TRY(DtypeOf(dy, "dy", &dt2));
  if (b != b2 || dt != dt2) {
    return ffi::Error::InvalidArgument("x and dy must have the same rows and dtype");
  }
  int64_t r = static_cast<int64_t>(indices.element_count());
  if (static_cast<int64_t>(scales.element_count()) != r) {
    return ffi::Error::InvalidArgument("indices and scales must have the same length");
  }
  return StatusError(grass_sparse_grad(dev.ctx, m, n, b, side, r, dt, x.untyped_data(),
                                       dy.untyped_data(), indices.typed_data(),
                                       scales.typed_data(), g->typed_data(), /*accumulate=*/0,
                                       ws->untyped_data(), ws->size_bytes(), dev.stream));
}

struct AdamWAttrs {
  float beta1, beta2, eps, weight_decay, alpha;
  int32_t decay_mode;
};

// The grass_dtype of the optimizer states M and V (float32 or bfloat16, both the same).
ffi::Error StateDtype(const ffi::AnyBuffer& m_state, const ffi::AnyBuffer& v_state,
                      grass_dtype* out) {
  if (m_state.element_type() != v_state.element_type()) {
    return ffi::Error::InvalidArgument("m_state and v_state must have the same dtype");
  }
  switch (m_state.element_type()) {
    case ffi::DataType::F32: *out = GRASS_DTYPE_F32; break;
    case ffi::DataType::BF16: *out = GRASS_DTYPE_BF16; break;
    default: return ffi::Error::InvalidArgument("optimizer states must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

ffi::Error AdamWConfig(const AdamWAttrs& a, const ffi::AnyBuffer& m_state,
                       const ffi::AnyBuffer& v_state, grass_adamw_config* cfg) {
  GRASS_TRY(StatusError(grass_adamw_config_init(cfg)));
  cfg->beta1 = a.beta1;
  cfg->beta2 = a.beta2;
  cfg->eps = a.eps;
  cfg->weight_decay = a.weight_decay;
  cfg->alpha = a.alpha;
  cfg->decay_mode = a.decay_mode;
  GRASS_TRY(StateDtype(m_state, v_state, &cfg->state_dtype));
  // the same buffers' dtype for a dense parameter's step (grass_adamw_step reads this one)
  cfg->dense_state_dtype = cfg->state_dtype;
  return ffi::Error::Success();
}

// A weight of shape (*stack, m, n): `slices` = prod(stack) (1 for a 2-D weight).
ffi::Error StackedMatrix(const ffi::AnyBuffer& b, const char* name, int64_t* slices,
                         int64_t* rows, int64_t* cols) {
  auto d = b.dimensions();
  if (d.size() < 2) {
    return ffi::Error::InvalidArgument(std::string(name) +
                                       " must be 2-D (or stacked: leading layer axes), got rank " +
                                       std::to_string(d.size()));
  }
  int64_t s = 1;
  for (size_t i = 0; i + 2 < d.size(); ++i) s *= d[i];
  *slices = s;
  *rows = d[d.size() - 2];
  *cols = d[d.size() - 1];
  return ffi::Error::Success();
}

// The compressed step of a weight of shape (*stack, m, n): one grass_sparse_adamw_step per
// layer slice, in place, on each slice's rows of indices, scales, g, M, V and row_steps, with
// one outcome per slice in `skipped`. A 2-D weight is one slice.
ffi::Error SparseAdamWStep(const Device& dev, ffi::AnyBuffer w, ffi::Buffer<ffi::S32> indices,
                           ffi::Buffer<ffi::F32> scales, ffi::Buffer<ffi::F32> g,
                           ffi::AnyBuffer m_state, ffi::AnyBuffer v_state,
                           ffi::Buffer<ffi::S32> row_steps, ffi::Buffer<ffi::F32> lr_scale,
                           ffi::AnyBuffer /*after: orders the call, never read*/,
                           int32_t side, float beta1, float beta2, float eps,
                           float weight_decay, int32_t decay_mode, float alpha,
                           int32_t row_warmup, float lr, ffi::Result<ffi::AnyBuffer> w_out,
                           ffi::Result<ffi::AnyBuffer> m_out,
                           ffi::Result<ffi::AnyBuffer> v_out,
                           ffi::Result<ffi::Buffer<ffi::S32>> row_steps_out,
                           ffi::Result<ffi::Buffer<ffi::S32>> skipped, U8Result ws) {
  int64_t slices, m, n;
  grass_dtype wd;
  GRASS_TRY(StackedMatrix(w, "w", &slices, &m, &n));
  GRASS_TRY(DtypeOf(w, "w", &wd));
  GRASS_TRY(SameBuffer(w.untyped_data(), w_out->untyped_data(), "w"));
  GRASS_TRY(SameBuffer(m_state.untyped_data(), m_out->untyped_data(), "m_state"));
  GRASS_TRY(SameBuffer(v_state.untyped_data(), v_out->untyped_data(), "v_state"));
  GRASS_TRY(SameBuffer(row_steps.untyped_data(), row_steps_out->untyped_data(), "row_steps"));
  GRASS_TRY(CountOf(*skipped, "skipped", slices, "int32 outcomes (one per layer slice)"));
  GRASS_TRY(CountOf(lr_scale, "lr_scale", 1, "float32 (a scalar)"));
  if (slices == 0) return ffi::Error::Success();
  int64_t total = static_cast<int64_t>(indices.element_count());
  int64_t r = total / slices;
  if (r * slices != total || static_cast<int64_t>(scales.element_count()) != total) {
    return ffi::Error::InvalidArgument(
        "indices and scales must both hold rank entries per layer slice");
  }
  GRASS_TRY(CountOf(row_steps, "row_steps", total,
                    "int32 Adam step counts (one per state row of each layer slice)"));
  int64_t k = r == 0 ? 0 : static_cast<int64_t>(g.element_count()) / total;
  if (k * total != static_cast<int64_t>(g.element_count()) ||
      m_state.element_count() != g.element_count() ||
      v_state.element_count() != g.element_count()) {
    return ffi::Error::InvalidArgument(
        "g, m_state and v_state must all be rank x k per layer slice");
  }
  grass_adamw_config cfg;
  GRASS_TRY(AdamWConfig({beta1, beta2, eps, weight_decay, alpha, decay_mode}, m_state, v_state,
                        &cfg));
  cfg.row_warmup = row_warmup;
  const size_t w_bytes = static_cast<size_t>(m * n) * grass_dtype_size(wd);
  const size_t state_bytes = static_cast<size_t>(r * k) * grass_dtype_size(cfg.state_dtype);
  char* w_at = static_cast<char*>(w_out->untyped_data());
  char* m_at = static_cast<char*>(m_out->untyped_data());
  char* v_at = static_cast<char*>(v_out->untyped_data());
  for (int64_t s = 0; s < slices; ++s) {
    GRASS_TRY(StatusError(grass_sparse_adamw_step(
        dev.ctx, &cfg, m, n, side, r, wd, w_at + s * w_bytes, indices.typed_data() + s * r,
        scales.typed_data() + s * r, g.typed_data() + s * r * k, m_at + s * state_bytes,
        v_at + s * state_bytes, row_steps_out->typed_data() + s * r, lr,
        lr_scale.typed_data(), skipped->typed_data() + s, ws->untyped_data(),
        ws->size_bytes(), dev.stream)));
  }
  return ffi::Error::Success();
}

// The residual step of a weight of shape (*stack, m, n): one grass_residual_step per layer
// slice, in place, from that slice's X (*stack, b, n), dY (*stack, b, m) and indices
// (*stack, r), gated on and reporting into that slice's outcome in `skipped` (*stack).
ffi::Error ResidualStep(const Device& dev, ffi::AnyBuffer w, ffi::AnyBuffer x, ffi::AnyBuffer dy,
                        ffi::Buffer<ffi::S32> indices, ffi::Buffer<ffi::F32> lr_scale,
                        ffi::Buffer<ffi::S32> skipped, int32_t side, float alpha,
                        float residual_scale, float lr, ffi::Result<ffi::AnyBuffer> w_out,
                        ffi::Result<ffi::Buffer<ffi::S32>> skipped_out, U8Result ws) {
  int64_t slices, m, n, xs, b, n2, ds, b2, m2;
  grass_dtype wd, dt, dt2;
  GRASS_TRY(StackedMatrix(w, "w", &slices, &m, &n));
  GRASS_TRY(StackedMatrix(x, "x", &xs, &b, &n2));
  GRASS_TRY(StackedMatrix(dy, "dy", &ds, &b2, &m2));
  GRASS_TRY(DtypeOf(w, "w", &wd));
  GRASS_TRY(DtypeOf(x, "x", &dt));
  GRASS_TRY(DtypeOf(dy, "dy", &dt2));
  if (xs != slices || ds != slices || b != b2 || n2 != n || m2 != m || dt != dt2) {
    return ffi::Error::InvalidArgument(
        "x must be (*stack, b, n) and dy (*stack, b, m) of one dtype for w (*stack, m, n)");
  }
  GRASS_TRY(SameBuffer(w.untyped_data(), w_out->untyped_data(), "w"));
  GRASS_TRY(SameBuffer(skipped.untyped_data(), skipped_out->untyped_data(), "skipped"));
  GRASS_TRY(CountOf(skipped, "skipped", slices, "int32 outcomes (one per layer slice)"));
  GRASS_TRY(CountOf(lr_scale, "lr_scale", 1, "float32 (a scalar)"));
  if (slices == 0) return ffi::Error::Success();
  int64_t total = static_cast<int64_t>(indices.element_count());
  int64_t r = total / slices;
  if (r * slices != total) {
    return ffi::Error::InvalidArgument("indices must hold rank entries per layer slice");
  }
  grass_adamw_config cfg;
  GRASS_TRY(StatusError(grass_adamw_config_init(&cfg)));
  cfg.alpha = alpha;
  const size_t w_bytes = static_cast<size_t>(m * n) * grass_dtype_size(wd);
  const size_t x_bytes = static_cast<size_t>(b * n) * grass_dtype_size(dt);
  const size_t dy_bytes = static_cast<size_t>(b * m) * grass_dtype_size(dt);
  char* w_at = static_cast<char*>(w_out->untyped_data());
  const char* x_at = static_cast<const char*>(x.untyped_data());
  const char* dy_at = static_cast<const char*>(dy.untyped_data());
  for (int64_t s = 0; s < slices; ++s) {
    GRASS_TRY(StatusError(grass_residual_step(
        dev.ctx, &cfg, m, n, b, side, r, dt, x_at + s * x_bytes, dy_at + s * dy_bytes, wd,
        w_at + s * w_bytes, indices.typed_data() + s * r, residual_scale, lr,
        lr_scale.typed_data(), skipped_out->typed_data() + s, ws->untyped_data(),
        ws->size_bytes(), dev.stream)));
  }
  return ffi::Error::Success();
}

ffi::Error StateRefresh(const Device& dev, ffi::Buffer<ffi::S32> old_indices,
                        ffi::Buffer<ffi::S32> new_indices, ffi::AnyBuffer m_state,
                        ffi::AnyBuffer v_state, ffi::Buffer<ffi::S32> row_steps,
                        int32_t refresh_mode, ffi::Result<ffi::AnyBuffer> m_out,
                        ffi::Result<ffi::AnyBuffer> v_out,
                        ffi::Result<ffi::Buffer<ffi::S32>> row_steps_out, U8Result ws) {
  GRASS_TRY(SameBuffer(m_state.untyped_data(), m_out->untyped_data(), "m_state"));
  GRASS_TRY(SameBuffer(v_state.untyped_data(), v_out->untyped_data(), "v_state"));
  GRASS_TRY(SameBuffer(row_steps.untyped_data(), row_steps_out->untyped_data(), "row_steps"));
  int64_t r = static_cast<int64_t>(new_indices.element_count());
  if (static_cast<int64_t>(old_indices.element_count()) != r || r == 0) {
    return ffi::Error::InvalidArgument("old_indices and new_indices must both have rank entries");
  }
  GRASS_TRY(CountOf(row_steps, "row_steps", r,
                    "int32 Adam step counts (one per state row, r = the length of new_indices)"));
  int64_t k = static_cast<int64_t>(m_state.element_count()) / r;
  if (k * r != static_cast<int64_t>(m_state.element_count()) ||
      v_state.element_count() != m_state.element_count()) {
    return ffi::Error::InvalidArgument("m_state and v_state must both be rank x k");
  }
  grass_dtype state_dtype = GRASS_DTYPE_F32;
  GRASS_TRY(StateDtype(m_state, v_state, &state_dtype));
  return StatusError(grass_state_refresh(dev.ctx, refresh_mode, state_dtype, r, k,
                                         old_indices.typed_data(),
                                         new_indices.typed_data(), m_out->untyped_data(),
                                         v_out->untyped_data(), row_steps_out->typed_data(),
                                         ws->untyped_data(), ws->size_bytes(), dev.stream));
}

ffi::Error AdamWStep(const Device& dev, ffi::AnyBuffer w, ffi::AnyBuffer grad,
                     ffi::AnyBuffer m_state, ffi::AnyBuffer v_state, ffi::Buffer<ffi::S32> step,
                     ffi::Buffer<ffi::F32> lr_scale,
                     ffi::AnyBuffer /*after: orders the call, never read*/, float beta1,
                     float beta2, float eps, float weight_decay, int32_t decay_mode, float lr,
                     ffi::Result<ffi::AnyBuffer> w_out, ffi::Result<ffi::AnyBuffer> m_out,
                     ffi::Result<ffi::AnyBuffer> v_out,
                     ffi::Result<ffi::Buffer<ffi::S32>> step_out,
                     ffi::Result<ffi::Buffer<ffi::S32>> skipped, U8Result ws) {
  grass_dtype wd, gd;
  GRASS_TRY(DtypeOf(w, "w", &wd));
  GRASS_TRY(DtypeOf(grad, "grad", &gd));
  GRASS_TRY(SameBuffer(w.untyped_data(), w_out->untyped_data(), "w"));
  GRASS_TRY(SameBuffer(m_state.untyped_data(), m_out->untyped_data(), "m_state"));
  GRASS_TRY(SameBuffer(v_state.untyped_data(), v_out->untyped_data(), "v_state"));
  GRASS_TRY(SameBuffer(step.untyped_data(), step_out->untyped_data(), "step"));
  // A dense parameter keeps one Adam step count (its elements always step together).
  GRASS_TRY(CountOf(step, "step", 1, "int32 (a scalar Adam step count)"));
  GRASS_TRY(CountOf(lr_scale, "lr_scale", 1, "float32 (a scalar)"));
  GRASS_TRY(CountOf(*skipped, "skipped", 1, "int32 (a scalar)"));
  size_t numel = w.element_count();
  if (grad.element_count() != numel || m_state.element_count() != numel ||
      v_state.element_count() != numel) {
    return ffi::Error::InvalidArgument("w, grad, m_state and v_state must have the same size");
  }
  grass_adamw_config cfg;
  GRASS_TRY(AdamWConfig({beta1, beta2, eps, weight_decay, 1.0f, decay_mode}, m_state, v_state,
                        &cfg));
  return StatusError(grass_adamw_step(
      dev.ctx, &cfg, static_cast<int64_t>(numel), wd, w_out->untyped_data(), gd,
      grad.untyped_data(), m_out->untyped_data(), v_out->untyped_data(), step_out->typed_data(),
      lr, lr_scale.typed_data(), skipped->typed_data(), ws->untyped_data(), ws->size_bytes(),
      dev.stream));
}

// ---------------------------------------------------------------------------------------------
// Platform adapters: resolve the Device, then run the shared body.

template <auto Body>
struct OnCpu {
  template <typename... A>
  ffi::Error operator()(A... args) const {
    Device dev;
    GRASS_TRY(CpuDevice(&dev));
    return Body(dev, args...);
  }
};

template <auto Body>
struct OnCuda {
  template <typename... A>
  ffi::Error operator()(void* stream, int32_t ordinal, A... args) const {
    Device dev;
    GRASS_TRY(CudaDevice(ordinal, stream, &dev));
    return Body(dev, args...);
  }
};

// The CUDA bindings start with XLA's stream and the device ordinal; the rest is shared.
ffi::Binding<ffi::ExecutionStage::kExecute> CpuBind() { return ffi::Ffi::Bind(); }
auto CudaBind() {
  return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<void*>>().Ctx<ffi::DeviceOrdinal>();
}

template <typename B>
auto RowScoresArgs(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()                   // x (b x n)
      .template Arg<ffi::AnyBuffer>()                       // dy (b x m)
      .template Attr<int32_t>("side")                       // GRASS_SIDE_ROWS or _COLS
      .template Ret<ffi::Buffer<ffi::F32>>()                // scores (d)
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

template <typename B>
auto SelectArgs(B b) {
  return std::move(b).template Arg<ffi::Buffer<ffi::F32>>()            // scores (d)
      .template Arg<ffi::Buffer<ffi::U32>>()                // refresh index (scalar)
      .template Attr<int64_t>("rank")
      .template Attr<int32_t>("method")
      .template Attr<int32_t>("power")
      .template Attr<int32_t>("scaling")
      .template Attr<uint64_t>("seed")
      .template Attr<uint32_t>("layer_id")
      .template Ret<ffi::Buffer<ffi::S32>>()                // indices (r)
      .template Ret<ffi::Buffer<ffi::F32>>()                // scales (r)
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

template <typename B>
auto SparseGradArgs(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()                   // x (b x n)
      .template Arg<ffi::AnyBuffer>()                       // dy (b x m)
      .template Arg<ffi::Buffer<ffi::S32>>()                // indices (r)
      .template Arg<ffi::Buffer<ffi::F32>>()                // scales (r)
      .template Attr<int32_t>("side")
      .template Ret<ffi::Buffer<ffi::F32>>()                // g (r x k)
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

template <typename B>
auto SparseAdamWArgs(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()                   // w (m x n)
      .template Arg<ffi::Buffer<ffi::S32>>()                // indices (r)
      .template Arg<ffi::Buffer<ffi::F32>>()                // scales (r)
      .template Arg<ffi::Buffer<ffi::F32>>()                // g (r x k)
      .template Arg<ffi::AnyBuffer>()                       // M (r x k)
      .template Arg<ffi::AnyBuffer>()                       // V (r x k)
      .template Arg<ffi::Buffer<ffi::S32>>()                // row_steps (r)
      .template Arg<ffi::Buffer<ffi::F32>>()                // lr_scale (scalar)
      .template Arg<ffi::AnyBuffer>()                       // after (ordering only)
      .template Attr<int32_t>("side")
      .template Attr<float>("beta1")
      .template Attr<float>("beta2")
      .template Attr<float>("eps")
      .template Attr<float>("weight_decay")
      .template Attr<int32_t>("decay_mode")
      .template Attr<float>("alpha")
      .template Attr<int32_t>("row_warmup")
      .template Attr<float>("lr")
      .template Ret<ffi::AnyBuffer>()                       // w, aliased
      .template Ret<ffi::AnyBuffer>()                       // M, aliased
      .template Ret<ffi::AnyBuffer>()                       // V, aliased
      .template Ret<ffi::Buffer<ffi::S32>>()                // row_steps, aliased
      .template Ret<ffi::Buffer<ffi::S32>>()                // skipped: GRASS_STEP_* (scalar)
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

template <typename B>
auto StateRefreshArgs(B b) {
  return std::move(b).template Arg<ffi::Buffer<ffi::S32>>()            // old indices (r)
      .template Arg<ffi::Buffer<ffi::S32>>()                // new indices (r)
      .template Arg<ffi::AnyBuffer>()                       // M (r x k)
      .template Arg<ffi::AnyBuffer>()                       // V (r x k)
      .template Arg<ffi::Buffer<ffi::S32>>()                // row_steps (r)
      .template Attr<int32_t>("refresh_mode")
      .template Ret<ffi::AnyBuffer>()                       // M, aliased
      .template Ret<ffi::AnyBuffer>()                       // V, aliased
      .template Ret<ffi::Buffer<ffi::S32>>()                // row_steps, aliased
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

template <typename B>
auto ResidualArgs(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()                   // w (*stack, m, n)
      .template Arg<ffi::AnyBuffer>()                       // x (*stack, b, n)
      .template Arg<ffi::AnyBuffer>()                       // dy (*stack, b, m)
      .template Arg<ffi::Buffer<ffi::S32>>()                // indices (*stack, r)
      .template Arg<ffi::Buffer<ffi::F32>>()                // lr_scale (scalar)
      .template Arg<ffi::Buffer<ffi::S32>>()                // skipped (*stack): the gate
      .template Attr<int32_t>("side")
      .template Attr<float>("alpha")
      .template Attr<float>("residual_scale")
      .template Attr<float>("lr")
      .template Ret<ffi::AnyBuffer>()                       // w, aliased
      .template Ret<ffi::Buffer<ffi::S32>>()                // skipped, aliased
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

template <typename B>
auto AdamWArgs(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>()                   // w
      .template Arg<ffi::AnyBuffer>()                       // grad
      .template Arg<ffi::AnyBuffer>()                       // M
      .template Arg<ffi::AnyBuffer>()                       // V
      .template Arg<ffi::Buffer<ffi::S32>>()                // step (scalar)
      .template Arg<ffi::Buffer<ffi::F32>>()                // lr_scale (scalar)
      .template Arg<ffi::AnyBuffer>()                       // after (ordering only)
      .template Attr<float>("beta1")
      .template Attr<float>("beta2")
      .template Attr<float>("eps")
      .template Attr<float>("weight_decay")
      .template Attr<int32_t>("decay_mode")
      .template Attr<float>("lr")
      .template Ret<ffi::AnyBuffer>()                       // w, aliased
      .template Ret<ffi::AnyBuffer>()                       // M, aliased
      .template Ret<ffi::AnyBuffer>()                       // V, aliased
      .template Ret<ffi::Buffer<ffi::S32>>()                // step, aliased
      .template Ret<ffi::Buffer<ffi::S32>>()                // skipped: GRASS_STEP_* (scalar)
      .template Ret<ffi::Buffer<ffi::U8>>();                // workspace
}

}  // namespace
}  // namespace grass_jax

// The library is built with hidden visibility; only the handler symbols are exported.
#define GRASS_JAX_EXPORT extern "C" __attribute__((visibility("default")))

#define GRASS_JAX_HANDLERS(Name, Body, Args)                                           \
  GRASS_JAX_EXPORT XLA_FFI_Error* Name##Cpu(XLA_FFI_CallFrame* call_frame);           \
  GRASS_JAX_EXPORT XLA_FFI_Error* Name##Cuda(XLA_FFI_CallFrame* call_frame);          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(Name##Cpu, grass_jax::OnCpu<grass_jax::Body>{},       \
                                grass_jax::Args(grass_jax::CpuBind()));               \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(Name##Cuda, grass_jax::OnCuda<grass_jax::Body>{},     \
                                grass_jax::Args(grass_jax::CudaBind()));

GRASS_JAX_HANDLERS(GrassRowScores, RowScores, RowScoresArgs)
GRASS_JAX_HANDLERS(GrassSelect, Select, SelectArgs)
GRASS_JAX_HANDLERS(GrassSparseGrad, SparseGrad, SparseGradArgs)
GRASS_JAX_HANDLERS(GrassSparseAdamWStep, SparseAdamWStep, SparseAdamWArgs)
GRASS_JAX_HANDLERS(GrassStateRefresh, StateRefresh, StateRefreshArgs)
GRASS_JAX_HANDLERS(GrassAdamWStep, AdamWStep, AdamWArgs)
GRASS_JAX_HANDLERS(GrassResidualStep, ResidualStep, ResidualArgs)
