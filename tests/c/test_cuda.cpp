// CUDA contexts against CPU contexts, through the C ABI the way a C/C++ user drives them: device
// memory from the CUDA driver API, loaded at run time (example::CudaDriver of
// examples/device_memory.hpp, so nothing here needs the CUDA toolkit), every layer-1 op on the
// same random (never zero) inputs on both contexts, a chain of ops on a non-default stream, and
// the layer-2 handles with checkpoints that cross contexts. It mirrors tests/cuda/*.rs, which
// encode what the backend guarantees: selection, both AdamW steps and the state refresh equal the
// CPU bit for bit; results that pass through a GEMM (row scores, the sparse gradient) agree within
// the tolerance below.
//
// Without a usable GPU it prints one line "SKIPPED: <reason>" and exits 77, which ctest reports
// as Skipped (SKIP_RETURN_CODE in CMakeLists.txt); with GRASS_REQUIRE_GPU=1 (scripts/gpu_all.sh)
// a missing GPU fails instead. `test_cuda --host` (ctest: test_cuda_on_host) is a rehearsal that
// runs everywhere: the same comparisons with a second CPU context in place of the CUDA context
// and host memory of the same sizes in place of device memory, so that ASan checks every buffer
// this test hands the CUDA context, and the test's own logic runs where there is no GPU.
//
// Tolerance of GEMM results. Both backends read the same stored inputs (X and dY in f32, bf16 or
// f16; ρ in f32), form each product exactly in f32 (two bf16 or f16 significands fit in f32's
// 24 bits) or with one f32 rounding, accumulate the K = b terms of each element in f32 (cuBLAS
// with CUBLAS_COMPUTE_32F, no TF32) in different orders, and store an f32 result. The input dtype
// therefore changes the values but not the error, and the tolerance for X and dY of any dtype D
// is testkit.h's formula for an f32 result:
//
//     tol(D, K) = eps(f32) + 8 * eps(f32) * sqrt(K),   eps(f32) = 2^-23
//
// checked per element as |cuda - cpu| <= 2 * tol * mag (each backend lies within tol * mag of
// the exact value; mag is the same op run by the CPU context on |X|, |dY| (and |g| when
// accumulating, K = b + 1): the sum of the absolute values of the terms, or for a score the norm
// of those sums), and for the whole tensor as ‖cuda − cpu‖₂ / ‖cpu‖₂ <= 8 * eps(f32) * sqrt(K),
// the check of tests/cuda (grass::core::dtype::tolerance(F32, b)). For b = 40 that is 6e-6
// relative for f32 and bf16 alike: a bf16-sized tolerance (2^-8) would let wrong results pass,
// since the bf16 inputs are exact and identical on both sides.
//
// ASan cannot see device memory (the rehearsal above is where the sizes are checked): every
// device buffer below is sized from the same expression as its host twin, and outputs start
// poisoned (0xFF: NaN, or -1 for integers) so that an element a backend did not write shows as a
// mismatch.
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "device_memory.hpp"  // examples/: example::CudaDriver
#include "testkit.hpp"

namespace {

constexpr int kSkipped = 77;  // SKIP_RETURN_CODE of test_cuda in CMakeLists.txt
constexpr double kEpsF32 = 0x1.0p-23;

using Bytes = std::vector<uint8_t>;

// A grass call that must succeed; prints the status and the library's message otherwise.
#define OK(call) ok_at((call), __FILE__, __LINE__, #call)

bool ok_at(grass_status s, const char* file, int line, const char* call) {
  if (s == GRASS_OK) return true;
  tk_fail_at(file, line, call);
  std::printf("     status %d (%s): %s\n", static_cast<int>(s),
              grass_status_string(static_cast<int32_t>(s)), grass_last_error_message());
  return false;
}

// The driver entry points this test needs besides example::CudaDriver's (cuda.h signatures):
// streams and synchronization, looked up in the same libcuda.so.1 (dlopen counts references).
class DriverSync {
 public:
  DriverSync() {
    lib_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) throw std::runtime_error("cannot load libcuda.so.1");
    try {
      load(ctx_sync_, "cuCtxSynchronize");
      load(stream_create_, "cuStreamCreate");
      load(stream_destroy_, "cuStreamDestroy_v2");
      load(stream_sync_, "cuStreamSynchronize");
    } catch (...) {
      dlclose(lib_);
      throw;
    }
  }
  ~DriverSync() { dlclose(lib_); }
  DriverSync(const DriverSync&) = delete;
  DriverSync& operator=(const DriverSync&) = delete;

  void ctx_sync() const { check(ctx_sync_(), "cuCtxSynchronize"); }
  // A stream that does not synchronize with the legacy default stream (CU_STREAM_NON_BLOCKING).
  void* stream_create() const {
    void* s = nullptr;
    check(stream_create_(&s, 0x1u), "cuStreamCreate");
    return s;
  }
  void stream_destroy(void* s) const noexcept { stream_destroy_(s); }
  void stream_sync(void* s) const { check(stream_sync_(s), "cuStreamSynchronize"); }

 private:
  template <typename F>
  void load(F& f, const char* name) {
    f = reinterpret_cast<F>(dlsym(lib_, name));
    if (f == nullptr) throw std::runtime_error(std::string("libcuda.so.1 has no ") + name);
  }
  static void check(int rc, const char* what) {
    if (rc != 0) {
      throw std::runtime_error(std::string(what) + " failed: CUresult " + std::to_string(rc));
    }
  }

  void* lib_ = nullptr;
  int (*ctx_sync_)() = nullptr;
  int (*stream_create_)(void**, unsigned) = nullptr;
  int (*stream_destroy_)(void*) = nullptr;
  int (*stream_sync_)(void*) = nullptr;
};

// Where the CUDA context's buffers live, and its streams.
class Memory {
 public:
  virtual ~Memory() = default;
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) noexcept = 0;
  virtual void upload(void* dst, const void* src, size_t bytes) = 0;
  virtual void download(void* dst, const void* src, size_t bytes) = 0;
  virtual void sync() = 0;  // waits for all work of the context
  virtual void* stream_create() = 0;
  virtual void stream_destroy(void* s) noexcept = 0;
  virtual void stream_sync(void* s) = 0;
};

// Device memory of CUDA device 0 and its primary context (current on this thread).
class CudaMemory final : public Memory {
 public:
  CudaMemory() : driver_(0) {}
  void* alloc(size_t bytes) override { return driver_.alloc(bytes); }
  void free(void* p) noexcept override { driver_.free(p); }
  void upload(void* dst, const void* src, size_t bytes) override {
    driver_.upload(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    driver_.download(dst, src, bytes);
  }
  void sync() override { sync_.ctx_sync(); }
  void* stream_create() override { return sync_.stream_create(); }
  void stream_destroy(void* s) noexcept override { sync_.stream_destroy(s); }
  void stream_sync(void* s) override { sync_.stream_sync(s); }

 private:
  example::CudaDriver driver_;  // first: loads the driver, retains the primary context
  DriverSync sync_;
};

// The rehearsal (--host): host memory of exactly the sizes the CUDA run allocates, so that ASan
// checks every buffer the test hands the "CUDA" context (then a second CPU context, which
// ignores streams).
class HostMemory final : public Memory {
 public:
  void* alloc(size_t bytes) override {
    void* p = std::malloc(bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void free(void* p) noexcept override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
  }
  void sync() override {}
  void* stream_create() override { return &fake_stream_; }
  void stream_destroy(void*) noexcept override {}
  void stream_sync(void*) override {}

 private:
  int fake_stream_ = 0;
};

// Both contexts of the test and the memory behind the CUDA context's buffers.
struct Gpu {
  std::unique_ptr<Memory> mem;
  bool rehearsal = false;  // --host: `cuda` is a second CPU context
  grass_context* cpu = nullptr;
  grass_context* cuda = nullptr;
  Gpu() = default;
  Gpu(const Gpu&) = delete;
  Gpu& operator=(const Gpu&) = delete;
  ~Gpu() {  // the contexts go before the driver that the buffers came from
    grass_context_destroy(cuda);
    grass_context_destroy(cpu);
  }
};

Gpu* G = nullptr;

// Device memory owned by the test: at least one byte (cuMemAlloc rejects 0), copies that finish
// before they return (a context synchronization on either side, so that no stream, not even a
// non-blocking one, reads a buffer before its upload has landed or is still using it when it is
// read back or freed).
class DevBuf {
 public:
  explicit DevBuf(size_t bytes)
      : bytes_(bytes), ptr_(G->mem->alloc(std::max<size_t>(bytes, 1))) {}
  DevBuf(DevBuf&& o) noexcept : bytes_(o.bytes_), ptr_(o.ptr_) { o.ptr_ = nullptr; }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf& operator=(DevBuf&&) = delete;
  ~DevBuf() {
    if (ptr_ == nullptr) return;
    try {
      G->mem->sync();
    } catch (const std::exception& e) {
      std::printf("     freeing a device buffer: %s\n", e.what());
    }
    G->mem->free(ptr_);
  }

  // `bytes` bytes of 0xFF: NaN as floats, -1 as integers.
  static DevBuf poisoned(size_t bytes) {
    DevBuf b(bytes);
    b.write(Bytes(bytes, 0xFF));
    return b;
  }
  static DevBuf from(const Bytes& data) {
    DevBuf b(data.size());
    b.write(data);
    return b;
  }
  template <typename T>
  static DevBuf of(const std::vector<T>& v) {
    DevBuf b(v.size() * sizeof(T));
    b.write(v.data(), b.bytes_);
    return b;
  }

  void write(const void* src, size_t bytes) {
    if (bytes > bytes_) throw std::logic_error("DevBuf::write past the end of the buffer");
    G->mem->sync();
    if (bytes > 0) G->mem->upload(ptr_, src, bytes);
    G->mem->sync();
  }
  void write(const Bytes& data) { write(data.data(), data.size()); }

  Bytes read() const {
    G->mem->sync();
    Bytes out(bytes_);
    if (bytes_ > 0) G->mem->download(out.data(), ptr_, bytes_);
    return out;
  }
  template <typename T>
  std::vector<T> read_as() const {
    const Bytes b = read();
    std::vector<T> v(b.size() / sizeof(T));
    if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
    return v;
  }

  template <typename T = void>
  T* ptr() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  void* ptr_;
};

// Reads `count` elements of device memory the test does not own (a handle's selection).
template <typename T>
std::vector<T> read_device(const T* src, size_t count) {
  G->mem->sync();
  std::vector<T> v(count);
  if (count > 0) G->mem->download(v.data(), src, count * sizeof(T));
  return v;
}

// A non-blocking CUDA stream created and destroyed by a test.
class Stream {
 public:
  Stream() : s_(G->mem->stream_create()) {}
  ~Stream() { G->mem->stream_destroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  void* get() const { return s_; }

 private:
  void* s_;
};

// ---- data -------------------------------------------------------------------------------------

size_t sz(int64_t v) { return static_cast<size_t>(v); }

template <typename T>
Bytes to_bytes(const std::vector<T>& v) {
  Bytes b(v.size() * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// `count` values tk_nonzero() * scale (never zero), stored as `d`.
Bytes random_tensor(tk_rng* rng, grass_dtype d, size_t count, float scale = 1.0f) {
  Bytes out(count * tk_size(d));
  for (size_t i = 0; i < count; ++i) tk_store(out.data(), d, i, tk_nonzero(rng) * scale);
  return out;
}

std::vector<float> random_floats(tk_rng* rng, size_t count, float scale = 1.0f) {
  std::vector<float> v(count);
  for (auto& x : v) x = tk_nonzero(rng) * scale;
  return v;
}

// The same tensor with every sign bit cleared: |t|, exact in every dtype (little-endian).
Bytes abs_tensor(const Bytes& t, grass_dtype d) {
  Bytes out = t;
  const size_t elem = tk_size(d);
  for (size_t i = elem - 1; i < out.size(); i += elem) out[i] &= 0x7f;
  return out;
}

std::vector<float> abs_floats(std::vector<float> v) {
  for (auto& x : v) x = std::fabs(x);
  return v;
}

// `r` indices below `d`, sorted ascending, repeats allowed.
std::vector<int32_t> sorted_indices(tk_rng* rng, size_t r, int64_t d) {
  std::vector<int32_t> v(r);
  for (auto& x : v) x = static_cast<int32_t>(tk_next(rng) % static_cast<uint64_t>(d));
  std::sort(v.begin(), v.end());
  return v;
}

// Scales ρ in [0.5, 1.5).
std::vector<float> random_scales(tk_rng* rng, size_t r) {
  std::vector<float> v(r);
  for (auto& x : v) x = 0.5f + static_cast<float>(tk_uniform(rng));
  return v;
}

// Scratch of exactly `bytes` bytes on the host (ASan sees any overrun); NULL for none.
void* host_ptr(Bytes& ws) { return ws.empty() ? nullptr : ws.data(); }

// ---- comparisons ------------------------------------------------------------------------------

uint64_t element_bits(const Bytes& b, size_t i, size_t elem) {
  uint64_t v = 0;
  for (size_t j = elem; j-- > 0;) v = (v << 8) | b[i * elem + j];
  return v;
}

// Bitwise equality of two tensors of `elem`-byte elements; prints the first mismatches.
bool same_bits(const std::string& what, const Bytes& got, const Bytes& want, size_t elem) {
  if (got.size() != want.size()) {
    ++tk_failures;
    std::printf("FAIL %s: %zu bytes, expected %zu\n", what.c_str(), got.size(), want.size());
    return false;
  }
  if (got == want) return true;
  size_t bad = 0;
  for (size_t i = 0; i < got.size() / elem; ++i) {
    const uint64_t g = element_bits(got, i, elem), w = element_bits(want, i, elem);
    if (g == w) continue;
    if (bad < 6) {
      std::printf("     %s[%zu]: expected 0x%llx, got 0x%llx\n", what.c_str(), i,
                  static_cast<unsigned long long>(w), static_cast<unsigned long long>(g));
    }
    ++bad;
  }
  ++tk_failures;
  std::printf("FAIL %s: %zu of %zu element(s) differ\n", what.c_str(), bad, got.size() / elem);
  return false;
}

template <typename T>
bool same_values(const std::string& what, const std::vector<T>& got, const std::vector<T>& want) {
  return same_bits(what, to_bytes(got), to_bytes(want), sizeof(T));
}

// ‖got − want‖₂ / ‖want‖₂ <= tol, NaN never passing (tests/cuda's assert_close).
bool close_norm(const std::string& what, const std::vector<float>& got,
                const std::vector<float>& want, double tol) {
  if (got.size() != want.size()) {
    ++tk_failures;
    std::printf("FAIL %s: %zu values, expected %zu\n", what.c_str(), got.size(), want.size());
    return false;
  }
  double num = 0.0, den = 0.0;
  size_t nan_at = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(got[i]) != std::isnan(want[i]) && nan_at == got.size()) nan_at = i;
    if (!std::isnan(want[i])) {
      const double e = static_cast<double>(got[i]) - static_cast<double>(want[i]);
      num += e * e;
      den += static_cast<double>(want[i]) * static_cast<double>(want[i]);
    }
  }
  const double rel = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
  if (nan_at == got.size() && rel <= tol) return true;
  ++tk_failures;
  std::printf("FAIL %s: relative error %.3e > %.3e", what.c_str(), rel, tol);
  if (nan_at != got.size()) std::printf(", NaN mismatch at %zu", nan_at);
  std::printf("\n");
  size_t shown = 0;
  for (size_t i = 0; i < got.size() && shown < 6; ++i) {
    if (got[i] != want[i]) {
      std::printf("     [%zu] expected %.9g got %.9g\n", i, static_cast<double>(want[i]),
                  static_cast<double>(got[i]));
      ++shown;
    }
  }
  return false;
}

// Both checks of a GEMM result (see the tolerance at the top): per element against `mag`, and
// the norm of the whole tensor.
bool close_gemm(const std::string& what, const std::vector<float>& got,
                const std::vector<float>& want, const std::vector<float>& mag, double k) {
  const double tol = tk_tol(GRASS_DTYPE_F32, k);
  size_t bad = 0;
  if (got.size() != want.size() || mag.size() != want.size()) {
    ++tk_failures;
    std::printf("FAIL %s: sizes %zu, %zu, %zu\n", what.c_str(), got.size(), want.size(),
                mag.size());
    return false;
  }
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i]));
    const double bound = 2.0 * tol * static_cast<double>(mag[i]);
    if (!(err <= bound)) {
      if (bad < 6) {
        std::printf("     %s[%zu]: cpu %.9g, cuda %.9g (|err| %.3g > %.3g)\n", what.c_str(), i,
                    static_cast<double>(want[i]), static_cast<double>(got[i]), err, bound);
      }
      ++bad;
    }
  }
  if (bad > 0) {
    ++tk_failures;
    std::printf("FAIL %s: %zu of %zu elements outside 2 * tol * mag (tol %.3g)\n", what.c_str(),
                bad, got.size(), tol);
  }
  return close_norm(what + " (norm)", got, want, 8.0 * kEpsF32 * std::sqrt(k)) && bad == 0;
}

std::string dims_text(int64_t m, int64_t n, int64_t b, grass_side side, grass_dtype dt) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lldx%lld b=%lld side %s %s", static_cast<long long>(m),
                static_cast<long long>(n), static_cast<long long>(b),
                side == GRASS_SIDE_ROWS ? "rows" : "cols", tk_dtype_name(dt));
  return buf;
}

// (d, k) of an m x n weight projected on `side`.
void resolve(int64_t m, int64_t n, grass_side side, int64_t* d, int64_t* k) {
  *d = 0;
  *k = 0;
  OK(grass_resolve_side(m, n, side, nullptr, d, k));
}

constexpr grass_side kSides[] = {GRASS_SIDE_ROWS, GRASS_SIDE_COLS};
constexpr grass_dtype kDtypes[] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16, GRASS_DTYPE_F16};
constexpr grass_dtype kStates[] = {GRASS_DTYPE_F32, GRASS_DTYPE_BF16};

// ---- row scores -------------------------------------------------------------------------------

size_t scores_ws(const grass_context* ctx, int64_t m, int64_t n, int64_t b, grass_side side,
                 grass_dtype dt) {
  size_t bytes = 0;
  OK(grass_scores_workspace_size(ctx, m, n, b, side, dt, &bytes));
  return bytes;
}

// Row scores of host X and dY on the CPU context.
std::vector<float> cpu_scores(int64_t m, int64_t n, int64_t b, grass_side side, grass_dtype dt,
                              const Bytes& x, const Bytes& dy, int64_t d) {
  std::vector<float> out(sz(d));
  Bytes ws(scores_ws(G->cpu, m, n, b, side, dt));
  OK(grass_row_scores(G->cpu, m, n, b, side, dt, x.data(), dy.data(), out.data(), host_ptr(ws),
                      ws.size(), nullptr));
  return out;
}

void row_scores() {
  tk_rng rng{101};
  // The second shape takes several chunks on either side; the others have one token, a kept
  // dimension of 1 and sizes off every block multiple.
  const int64_t shapes[][3] = {{96, 80, 33}, {500, 40000, 8}, {1, 37, 1}, {257, 3, 300},
                               {1025, 1, 2}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], n = s[1], b = s[2];
    for (grass_dtype dt : kDtypes) {
      for (grass_side side : kSides) {
        const Bytes x = random_tensor(&rng, dt, sz(b * n)), dy = random_tensor(&rng, dt, sz(b * m));
        int64_t d = 0, k = 0;
        resolve(m, n, side, &d, &k);
        const auto want = cpu_scores(m, n, b, side, dt, x, dy, d);
        const auto mag = cpu_scores(m, n, b, side, dt, abs_tensor(x, dt), abs_tensor(dy, dt), d);

        const size_t wsb = scores_ws(G->cuda, m, n, b, side, dt);
        const DevBuf dx = DevBuf::from(x), ddy = DevBuf::from(dy);
        const DevBuf out = DevBuf::poisoned(sz(d) * 4), dws = DevBuf::poisoned(wsb);
        OK(grass_row_scores(G->cuda, m, n, b, side, dt, dx.ptr(), ddy.ptr(), out.ptr<float>(),
                            dws.ptr(), wsb, nullptr));
        close_gemm("scores " + dims_text(m, n, b, side, dt), out.read_as<float>(), want, mag,
                   static_cast<double>(b));
      }
    }
  }
}

// ---- selection --------------------------------------------------------------------------------

grass_projection_config projection_config(grass_method method, int32_t power,
                                          grass_scaling scaling, int64_t rank, uint64_t seed) {
  grass_projection_config c;
  std::memset(&c, 0, sizeof c);
  OK(grass_projection_config_init(&c));
  c.method = method;
  c.power = power;
  c.scaling = scaling;
  c.rank = rank;
  c.seed = seed;
  c.layer_id = static_cast<uint32_t>(seed % 7);
  return c;
}

size_t select_ws(const grass_context* ctx, int64_t d, int64_t r) {
  size_t bytes = 0;
  OK(grass_select_workspace_size(ctx, d, r, &bytes));
  return bytes;
}

// Indices and scales of the CPU context's selection.
void cpu_select(const grass_projection_config& cfg, const std::vector<float>& scores,
                uint32_t refresh, std::vector<int32_t>* idx, std::vector<float>* scales) {
  const int64_t d = static_cast<int64_t>(scores.size());
  idx->assign(sz(cfg.rank), 0);
  scales->assign(sz(cfg.rank), 0.0f);
  Bytes ws(select_ws(G->cpu, d, cfg.rank));
  OK(grass_select(G->cpu, &cfg, d, refresh, nullptr, scores.data(), idx->data(), scales->data(),
                  host_ptr(ws), ws.size(), nullptr));
}

// The same scores, seed and refresh index on both contexts give the same indices and scales.
// `at_pointer`: the CUDA context reads the refresh index from device memory (and is given a
// wrong one by value, which it must ignore).
void check_select(const grass_projection_config& cfg, const std::vector<float>& scores,
                  uint32_t refresh, bool at_pointer, const std::string& what) {
  const int64_t d = static_cast<int64_t>(scores.size());
  const size_t r = sz(cfg.rank);
  std::vector<int32_t> want_idx;
  std::vector<float> want_sc;
  cpu_select(cfg, scores, refresh, &want_idx, &want_sc);

  const size_t wsb = select_ws(G->cuda, d, cfg.rank);
  const DevBuf ds = DevBuf::of(scores), dref = DevBuf::of(std::vector<uint32_t>{refresh});
  const DevBuf idx = DevBuf::poisoned(r * 4), sc = DevBuf::poisoned(r * 4);
  const DevBuf dws = DevBuf::poisoned(wsb);
  OK(grass_select(G->cuda, &cfg, d, at_pointer ? refresh + 1000u : refresh,
                  at_pointer ? dref.ptr<uint32_t>() : nullptr, ds.ptr<float>(), idx.ptr<int32_t>(),
                  sc.ptr<float>(), dws.ptr(), wsb, nullptr));
  same_values("indices, " + what, idx.read_as<int32_t>(), want_idx);
  same_values("scales, " + what, sc.read_as<float>(), want_sc);
}

// Scores of one kind: 0 random positive, 1 ties with NaN, infinities, negatives and zeros
// (which count as 0), 2 all zero (a uniform choice).
std::vector<float> scores_of_kind(tk_rng* rng, size_t d, int kind) {
  std::vector<float> s(d);
  for (auto& v : s) {
    if (kind == 0) {
      v = std::fabs(tk_nonzero(rng)) * 3.0f;
    } else if (kind == 1) {
      switch (tk_next(rng) % 8) {
        case 0: v = NAN; break;
        case 1: v = INFINITY; break;
        case 2: v = -1.0f; break;
        case 3: v = 0.0f; break;
        case 4: v = 2.0f; break;
        default: v = 0.5f; break;
      }
    } else {
      v = 0.0f;
    }
  }
  return s;
}

void select_rows() {
  tk_rng rng{102};
  const grass_method methods[] = {GRASS_METHOD_TOP_R, GRASS_METHOD_MULTINOMIAL,
                                  GRASS_METHOD_MULTINOMIAL_NR, GRASS_METHOD_UNIFORM,
                                  GRASS_METHOD_UNIFORM_NR};
  const int64_t shapes[][2] = {{1, 1},      {7, 3},      {7, 7},       {100, 1},
                               {100, 33},   {1000, 250}, {3001, 1000}, {13824, 1024}};
  uint64_t seed = 0;
  for (const auto& s : shapes) {
    const int64_t d = s[0], r = s[1];
    for (int kind = 0; kind < 3; ++kind) {
      const auto scores = scores_of_kind(&rng, sz(d), kind);
      for (grass_method method : methods) {
        for (int32_t power : {1, 2}) {
          for (grass_scaling scaling : {GRASS_SCALING_UNBIASED, GRASS_SCALING_NONE}) {
            ++seed;
            const auto cfg = projection_config(method, power, scaling, r, seed * 0x9E3779B9ull);
            const uint32_t refresh = static_cast<uint32_t>(seed % 5);
            char what[160];
            std::snprintf(what, sizeof what,
                          "select method %d power %d scaling %d d=%lld r=%lld kind %d refresh %u",
                          method, power, scaling, static_cast<long long>(d),
                          static_cast<long long>(r), kind, refresh);
            check_select(cfg, scores, refresh, seed % 2 == 0, what);
          }
        }
      }
    }
  }
}

// ---- sparse gradient --------------------------------------------------------------------------

size_t grad_ws(const grass_context* ctx, int64_t m, int64_t n, int64_t b, grass_side side,
               int64_t r, grass_dtype dt) {
  size_t bytes = 0;
  OK(grass_sparse_grad_workspace_size(ctx, m, n, b, side, r, dt, &bytes));
  return bytes;
}

// g (r x k) of the CPU context, into `g` (accumulating into it when asked).
void cpu_grad(int64_t m, int64_t n, int64_t b, grass_side side, grass_dtype dt, const Bytes& x,
              const Bytes& dy, const std::vector<int32_t>& idx, const std::vector<float>& scales,
              std::vector<float>* g, bool accumulate) {
  const int64_t r = static_cast<int64_t>(idx.size());
  Bytes ws(grad_ws(G->cpu, m, n, b, side, r, dt));
  OK(grass_sparse_grad(G->cpu, m, n, b, side, r, dt, x.data(), dy.data(), idx.data(),
                       scales.data(), g->data(), accumulate ? 1 : 0, host_ptr(ws), ws.size(),
                       nullptr));
}

void sparse_grad() {
  tk_rng rng{103};
  // r is capped at d: the later shapes give r = d, r = 1, k = 1 and b = 1.
  const int64_t shapes[][4] = {{64, 48, 40, 17}, {300, 200, 64, 150}, {33, 700, 9, 33},
                               {1, 37, 1, 1},    {257, 3, 1, 257},    {300, 257, 5, 1},
                               {1025, 1, 3, 1025}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], n = s[1], b = s[2];
    for (grass_dtype dt : kDtypes) {
      for (grass_side side : kSides) {
        for (bool accumulate : {false, true}) {
          const Bytes x = random_tensor(&rng, dt, sz(b * n));
          const Bytes dy = random_tensor(&rng, dt, sz(b * m));
          int64_t d = 0, k = 0;
          resolve(m, n, side, &d, &k);
          const int64_t r = std::min(s[3], d);
          const auto idx = sorted_indices(&rng, sz(r), d);
          const auto scales = random_scales(&rng, sz(r));
          const auto start = random_floats(&rng, sz(r * k));
          std::vector<float> want = start, mag = abs_floats(start);
          cpu_grad(m, n, b, side, dt, x, dy, idx, scales, &want, accumulate);
          cpu_grad(m, n, b, side, dt, abs_tensor(x, dt), abs_tensor(dy, dt), idx, scales, &mag,
                   accumulate);

          const size_t wsb = grad_ws(G->cuda, m, n, b, side, r, dt);
          const DevBuf dx = DevBuf::from(x), ddy = DevBuf::from(dy);
          const DevBuf didx = DevBuf::of(idx), dsc = DevBuf::of(scales);
          const DevBuf out = accumulate ? DevBuf::of(start) : DevBuf::poisoned(sz(r * k) * 4);
          const DevBuf dws = DevBuf::poisoned(wsb);
          OK(grass_sparse_grad(G->cuda, m, n, b, side, r, dt, dx.ptr(), ddy.ptr(),
                               didx.ptr<int32_t>(), dsc.ptr<float>(), out.ptr<float>(),
                               accumulate ? 1 : 0, dws.ptr(), wsb, nullptr));
          close_gemm("g " + dims_text(m, n, b, side, dt) + " r=" + std::to_string(r) +
                         (accumulate ? " accumulate" : ""),
                     out.read_as<float>(), want, mag,
                     static_cast<double>(b + (accumulate ? 1 : 0)));
        }
      }
    }
  }
}

// ---- AdamW steps ------------------------------------------------------------------------------

grass_adamw_config adamw_config(grass_decay_mode decay, grass_dtype state,
                                grass_refresh_mode refresh) {
  grass_adamw_config c;
  std::memset(&c, 0, sizeof c);
  OK(grass_adamw_config_init(&c));
  c.decay_mode = decay;
  c.weight_decay = decay == GRASS_DECAY_OFF ? 0.0f : 0.1f;
  c.alpha = 0.25f;
  c.state_dtype = state;        // a GRASS layer's moments
  c.dense_state_dtype = state;  // a dense parameter's (grass_adamw_step)
  c.refresh_mode = refresh;
  return c;
}

// One context's buffers of a step: W, M, V, the counters (the outcome, then the step counts)
// and lr_scale; host memory for the CPU context, device memory for the CUDA context.
class StepBufs {
 public:
  StepBufs(bool cuda, const Bytes& w, const Bytes& m, const Bytes& v,
           const std::vector<int32_t>& steps)
      : cuda_(cuda), w_(w), m_(m), v_(v), counters_(1 + steps.size(), -1), scale_{1.0f} {
    std::copy(steps.begin(), steps.end(), counters_.begin() + 1);
    if (cuda_) {
      dw_ = std::make_unique<DevBuf>(DevBuf::from(w_));
      dm_ = std::make_unique<DevBuf>(DevBuf::from(m_));
      dv_ = std::make_unique<DevBuf>(DevBuf::from(v_));
      dcounters_ = std::make_unique<DevBuf>(DevBuf::of(counters_));
      dscale_ = std::make_unique<DevBuf>(DevBuf::of(scale_));
    }
  }
  void* w() { return cuda_ ? dw_->ptr() : w_.data(); }
  void* m() { return cuda_ ? dm_->ptr() : m_.data(); }
  void* v() { return cuda_ ? dv_->ptr() : v_.data(); }
  int32_t* skipped() { return cuda_ ? dcounters_->ptr<int32_t>() : counters_.data(); }
  int32_t* steps() { return skipped() + 1; }
  float* lr_scale() { return cuda_ ? dscale_->ptr<float>() : scale_.data(); }
  void set_lr_scale(float s) {
    scale_[0] = s;
    if (cuda_) dscale_->write(scale_.data(), sizeof(float));
  }
  Bytes w_bytes() const { return cuda_ ? dw_->read() : w_; }
  Bytes m_bytes() const { return cuda_ ? dm_->read() : m_; }
  Bytes v_bytes() const { return cuda_ ? dv_->read() : v_; }
  std::vector<int32_t> counters() const {
    return cuda_ ? dcounters_->read_as<int32_t>() : counters_;
  }

 private:
  bool cuda_;
  Bytes w_, m_, v_;
  std::vector<int32_t> counters_;
  std::vector<float> scale_;
  std::unique_ptr<DevBuf> dw_, dm_, dv_, dcounters_, dscale_;
};

void compare_steps(const std::string& what, const StepBufs& cpu, const StepBufs& dev,
                   grass_dtype w_dt, grass_dtype s_dt) {
  same_bits("W, " + what, dev.w_bytes(), cpu.w_bytes(), tk_size(w_dt));
  same_bits("M, " + what, dev.m_bytes(), cpu.m_bytes(), tk_size(s_dt));
  same_bits("V, " + what, dev.v_bytes(), cpu.v_bytes(), tk_size(s_dt));
  same_values("outcome and step counts, " + what, dev.counters(), cpu.counters());
}

size_t sparse_adamw_step_ws(const grass_context* ctx, int64_t m, int64_t n, grass_side side,
                            int64_t r) {
  size_t bytes = 0;
  OK(grass_sparse_adamw_workspace_size(ctx, m, n, side, r, &bytes));
  return bytes;
}

grass_status call_sparse_adamw_step(const grass_context* ctx, const grass_adamw_config& cfg, int64_t m,
                                    int64_t n, grass_side side, int64_t r, grass_dtype w_dt, StepBufs& bufs,
                                    const int32_t* idx, const float* scales, const float* g, float lr,
                                    bool use_scale, void* ws, size_t wsb, void* stream = nullptr) {
  return grass_sparse_adamw_step(ctx, &cfg, m, n, side, r, w_dt, bufs.w(), idx, scales, g,
                                 bufs.m(), bufs.v(), bufs.steps(), lr,
                                 use_scale ? bufs.lr_scale() : nullptr, bufs.skipped(), ws, wsb,
                                 stream);
}

Bytes zeros(size_t bytes) { return Bytes(bytes, 0); }

void sparse_adamw_step() {
  tk_rng rng{104};
  // (m, n, r), r capped at d: repeated rows, r = 1, r = d, k = 1, sizes off the block of 256.
  const int64_t shapes[][3] = {{40, 24, 10}, {1, 37, 1}, {300, 2, 300}};
  for (const auto& s : shapes) {
    const int64_t m = s[0], n = s[1];
    for (grass_side side : kSides) {
      int64_t d = 0, k = 0;
      resolve(m, n, side, &d, &k);
      const int64_t r = std::min(s[2], d);
      for (grass_dtype w_dt : kDtypes) {
        for (grass_dtype s_dt : kStates) {
          for (grass_decay_mode decay :
               {GRASS_DECAY_OFF, GRASS_DECAY_SELECTED, GRASS_DECAY_DENSE}) {
            const auto cfg = adamw_config(decay, s_dt, GRASS_REFRESH_RESET);
            const Bytes w0 = random_tensor(&rng, w_dt, sz(m * n));
            const auto idx = sorted_indices(&rng, sz(r), d);  // repeats: one run per row
            const auto scales = random_scales(&rng, sz(r));
            // rows at different step counts, as after a refresh with carry
            std::vector<int32_t> steps0(sz(r));
            for (size_t j = 0; j < steps0.size(); ++j) steps0[j] = static_cast<int32_t>(j % 4);
            const size_t state_bytes = sz(r * k) * tk_size(s_dt);
            StepBufs cpu(false, w0, zeros(state_bytes), zeros(state_bytes), steps0);
            StepBufs dev(true, w0, zeros(state_bytes), zeros(state_bytes), steps0);
            Bytes hws(sparse_adamw_step_ws(G->cpu, m, n, side, r));
            const size_t wsb = sparse_adamw_step_ws(G->cuda, m, n, side, r);
            const DevBuf dws = DevBuf::poisoned(wsb);
            const DevBuf didx = DevBuf::of(idx), dsc = DevBuf::of(scales);
            for (int t = 0; t < 4; ++t) {
              auto g = random_floats(&rng, sz(r * k));
              if (t == 3) g[sz(r * k) / 2] = NAN;  // skipped: nothing but the outcome changes
              const float lr_scale = t == 2 ? 0.5f : 1.0f;
              cpu.set_lr_scale(lr_scale);
              dev.set_lr_scale(lr_scale);
              const DevBuf dg = DevBuf::of(g);
              OK(call_sparse_adamw_step(G->cpu, cfg, m, n, side, r, w_dt, cpu, idx.data(), scales.data(),
                             g.data(), 1e-2f, t % 2 == 0, host_ptr(hws), hws.size()));
              OK(call_sparse_adamw_step(G->cuda, cfg, m, n, side, r, w_dt, dev, didx.ptr<int32_t>(),
                             dsc.ptr<float>(), dg.ptr<float>(), 1e-2f, t % 2 == 0, dws.ptr(),
                             wsb));
              char what[160];
              std::snprintf(what, sizeof what,
                            "sparse step %lldx%lld side %s r=%lld W %s state %s decay %d step %d",
                            static_cast<long long>(m), static_cast<long long>(n),
                            side == GRASS_SIDE_ROWS ? "rows" : "cols", static_cast<long long>(r),
                            tk_dtype_name(w_dt), tk_dtype_name(s_dt), decay, t);
              compare_steps(what, cpu, dev, w_dt, s_dt);
            }
            // three steps applied, the last one skipped
            std::vector<int32_t> want(1 + steps0.size(), GRASS_STEP_SKIPPED_NONFINITE);
            for (size_t j = 0; j < steps0.size(); ++j) want[1 + j] = steps0[j] + 3;
            same_values("counters after the sparse steps", dev.counters(), want);
          }
        }
      }
    }
  }
}

// Unsorted or out-of-range indices and negative step counts: the CPU context rejects the call,
// the CUDA context skips the step with its own outcome. Neither writes anything else.
void sparse_adamw_step_bad_inputs() {
  tk_rng rng{105};
  const int64_t m = 8, n = 6, r = 3;
  const auto cfg = adamw_config(GRASS_DECAY_DENSE, GRASS_DTYPE_F32, GRASS_REFRESH_RESET);
  const Bytes w0 = random_tensor(&rng, GRASS_DTYPE_F32, sz(m * n));
  const Bytes m0 = random_tensor(&rng, GRASS_DTYPE_F32, sz(r * n));
  const Bytes v0 = abs_tensor(random_tensor(&rng, GRASS_DTYPE_F32, sz(r * n)), GRASS_DTYPE_F32);
  const auto g = random_floats(&rng, sz(r * n));
  const std::vector<float> scales(sz(r), 1.0f);
  Bytes hws(sparse_adamw_step_ws(G->cpu, m, n, GRASS_SIDE_ROWS, r));
  const size_t wsb = sparse_adamw_step_ws(G->cuda, m, n, GRASS_SIDE_ROWS, r);
  const DevBuf dws = DevBuf::poisoned(wsb), dg = DevBuf::of(g), dsc = DevBuf::of(scales);

  const auto expect_untouched = [&](const StepBufs& b, const std::vector<int32_t>& counters,
                                    const std::string& what) {
    same_bits("W, " + what, b.w_bytes(), w0, 4);
    same_bits("M, " + what, b.m_bytes(), m0, 4);
    same_bits("V, " + what, b.v_bytes(), v0, 4);
    same_values("outcome and step counts, " + what, b.counters(), counters);
  };
  // The CUDA context checks on the device: it skips the step and writes the outcome alone. (In
  // the rehearsal that context is a CPU one, which rejects the call and writes nothing.)
  const auto expect_skip = [&](grass_status st, const StepBufs& dev, int32_t outcome,
                               const std::vector<int32_t>& steps0, const char* arg,
                               const std::string& what) {
    std::vector<int32_t> counters = steps0;
    counters.insert(counters.begin(), G->rehearsal ? -1 : outcome);
    if (G->rehearsal) {
      TK_FAILS(st, GRASS_ERROR_INVALID_VALUE, "grass_sparse_adamw_step", arg);
    } else {
      OK(st);
    }
    expect_untouched(dev, counters, "cuda, " + what);
  };

  const std::vector<std::vector<int32_t>> bad = {{2, 1, 5}, {0, 2, 8}, {-1, 2, 5}, {3, 3, 1}};
  for (const auto& idx : bad) {
    const std::string what = "indices {" + std::to_string(idx[0]) + ", " +
                             std::to_string(idx[1]) + ", " + std::to_string(idx[2]) + "}";
    const std::vector<int32_t> steps0 = {1, 0, 2};
    StepBufs dev(true, w0, m0, v0, steps0);
    const DevBuf didx = DevBuf::of(idx);
    expect_skip(call_sparse_adamw_step(G->cuda, cfg, m, n, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, dev,
                            didx.ptr<int32_t>(), dsc.ptr<float>(), dg.ptr<float>(), 1e-2f, true,
                            dws.ptr(), wsb),
                dev, GRASS_STEP_SKIPPED_BAD_INDICES, steps0, "indices", what);

    StepBufs cpu(false, w0, m0, v0, steps0);
    TK_FAILS(call_sparse_adamw_step(G->cpu, cfg, m, n, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, cpu, idx.data(),
                         scales.data(), g.data(), 1e-2f, true, host_ptr(hws), hws.size()),
             GRASS_ERROR_INVALID_VALUE, "grass_sparse_adamw_step", "indices");
    expect_untouched(cpu, {-1, 1, 0, 2}, "cpu, " + what);
  }

  // a negative step count: skipped too, with its own outcome, the counts left as they were
  const std::vector<int32_t> idx = {0, 2, 5}, steps0 = {4, -1, 2};
  const DevBuf didx = DevBuf::of(idx);
  StepBufs dev(true, w0, m0, v0, steps0);
  expect_skip(call_sparse_adamw_step(G->cuda, cfg, m, n, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, dev,
                          didx.ptr<int32_t>(), dsc.ptr<float>(), dg.ptr<float>(), 1e-2f, false,
                          dws.ptr(), wsb),
              dev, GRASS_STEP_SKIPPED_BAD_STEP_COUNT, steps0, "row_steps", "a negative count");
  StepBufs cpu(false, w0, m0, v0, steps0);
  TK_FAILS(call_sparse_adamw_step(G->cpu, cfg, m, n, GRASS_SIDE_ROWS, r, GRASS_DTYPE_F32, cpu, idx.data(),
                       scales.data(), g.data(), 1e-2f, false, host_ptr(hws), hws.size()),
           GRASS_ERROR_INVALID_VALUE, "grass_sparse_adamw_step", "row_steps");
  expect_untouched(cpu, {-1, 4, -1, 2}, "cpu, a negative count");
}

size_t adamw_step_ws(const grass_context* ctx, int64_t numel) {
  size_t bytes = 0;
  OK(grass_adamw_workspace_size(ctx, numel, &bytes));
  return bytes;
}

void adamw_step() {
  tk_rng rng{106};
  for (int64_t numel : {int64_t{1000}, int64_t{1500007}, int64_t{1}}) {
    for (grass_dtype w_dt : kDtypes) {
      for (grass_dtype g_dt : kDtypes) {
        for (grass_dtype s_dt : kStates) {
          for (grass_decay_mode decay : {GRASS_DECAY_OFF, GRASS_DECAY_SELECTED}) {
            if (numel != 1000 && (g_dt != w_dt || decay == GRASS_DECAY_OFF)) {
              continue;  // the other sizes check the grid stride once per pair
            }
            const auto cfg = adamw_config(decay, s_dt, GRASS_REFRESH_RESET);
            const Bytes w0 = random_tensor(&rng, w_dt, sz(numel));
            const size_t state_bytes = sz(numel) * tk_size(s_dt);
            StepBufs cpu(false, w0, zeros(state_bytes), zeros(state_bytes), {0});
            StepBufs dev(true, w0, zeros(state_bytes), zeros(state_bytes), {0});
            Bytes hws(adamw_step_ws(G->cpu, numel));
            const size_t wsb = adamw_step_ws(G->cuda, numel);
            const DevBuf dws = DevBuf::poisoned(wsb);
            for (int t = 0; t < 3; ++t) {
              Bytes grad = random_tensor(&rng, g_dt, sz(numel));
              if (t == 2) tk_store(grad.data(), g_dt, sz(numel) - 1, INFINITY);  // skipped
              const DevBuf dgrad = DevBuf::from(grad);
              OK(grass_adamw_step(G->cpu, &cfg, numel, w_dt, cpu.w(), g_dt, grad.data(), cpu.m(),
                                  cpu.v(), cpu.steps(), 3e-3f, cpu.lr_scale(), cpu.skipped(),
                                  host_ptr(hws), hws.size(), nullptr));
              OK(grass_adamw_step(G->cuda, &cfg, numel, w_dt, dev.w(), g_dt, dgrad.ptr(), dev.m(),
                                  dev.v(), dev.steps(), 3e-3f, dev.lr_scale(), dev.skipped(),
                                  dws.ptr(), wsb, nullptr));
              char what[160];
              std::snprintf(what, sizeof what, "dense step numel %lld W %s grad %s state %s "
                            "decay %d step %d", static_cast<long long>(numel),
                            tk_dtype_name(w_dt), tk_dtype_name(g_dt), tk_dtype_name(s_dt), decay,
                            t);
              compare_steps(what, cpu, dev, w_dt, s_dt);
            }
            same_values("dense counters", dev.counters(),
                        std::vector<int32_t>{GRASS_STEP_SKIPPED_NONFINITE, 2});
          }
        }
      }
    }
  }
}

// ---- state refresh ----------------------------------------------------------------------------

size_t refresh_ws(const grass_context* ctx, const grass_adamw_config& cfg, int64_t r, int64_t k) {
  size_t bytes = 0;
  OK(grass_state_refresh_workspace_size(ctx, cfg.refresh_mode, cfg.state_dtype, r, k, &bytes));
  return bytes;
}

// One refresh on both contexts from the same M, V and step counts: all three must agree.
void check_refresh(const grass_adamw_config& cfg, int64_t r, int64_t k,
                   const std::vector<int32_t>* old_idx, const std::vector<int32_t>& new_idx,
                   const Bytes& m0, const Bytes& v0, const std::string& what) {
  std::vector<int32_t> steps0(sz(r));
  for (size_t j = 0; j < steps0.size(); ++j) steps0[j] = 5 + static_cast<int32_t>(j);
  Bytes hm = m0, hv = v0;
  std::vector<int32_t> hsteps = steps0;
  Bytes hws(refresh_ws(G->cpu, cfg, r, k));
  OK(grass_state_refresh(G->cpu, cfg.refresh_mode, cfg.state_dtype,
                         r, k, old_idx ? old_idx->data() : nullptr, new_idx.data(),
                         hm.data(), hv.data(), hsteps.data(), host_ptr(hws), hws.size(), nullptr));

  const size_t wsb = refresh_ws(G->cuda, cfg, r, k);
  // a one-element placeholder when there is no old selection; NULL is what the op gets then
  const DevBuf dold = DevBuf::of(old_idx ? *old_idx : std::vector<int32_t>{0});
  const DevBuf dnew = DevBuf::of(new_idx), dm = DevBuf::from(m0), dv = DevBuf::from(v0);
  const DevBuf dsteps = DevBuf::of(steps0), dws = DevBuf::poisoned(wsb);
  OK(grass_state_refresh(G->cuda, cfg.refresh_mode, cfg.state_dtype,
                         r, k, old_idx ? dold.ptr<int32_t>() : nullptr,
                         dnew.ptr<int32_t>(), dm.ptr(), dv.ptr(), dsteps.ptr<int32_t>(), dws.ptr(),
                         wsb, nullptr));
  const size_t s = tk_size(cfg.state_dtype);
  same_bits("M, " + what, dm.read(), hm, s);
  same_bits("V, " + what, dv.read(), hv, s);
  same_values("step counts, " + what, dsteps.read_as<int32_t>(), hsteps);
}

void state_refresh() {
  tk_rng rng{107};
  {
    const int64_t r = 12, k = 7;
    const std::vector<int32_t> old_idx = {0, 2, 2, 2, 5, 6, 9, 9, 11, 15, 15, 20};
    const std::vector<int32_t> new_idx = {1, 2, 2, 5, 5, 7, 9, 9, 9, 15, 20, 21};
    for (grass_dtype s_dt : kStates) {
      for (grass_refresh_mode mode : {GRASS_REFRESH_RESET, GRASS_REFRESH_CARRY}) {
        for (bool with_old : {true, false}) {
          const auto cfg = adamw_config(GRASS_DECAY_OFF, s_dt, mode);
          const Bytes m0 = random_tensor(&rng, s_dt, sz(r * k));
          const Bytes v0 = abs_tensor(random_tensor(&rng, s_dt, sz(r * k)), s_dt);
          const std::string what = std::string("refresh state ") + tk_dtype_name(s_dt) +
                                   (mode == GRASS_REFRESH_CARRY ? " carry" : " reset") +
                                   (with_old ? " with old indices" : " without old indices");
          check_refresh(cfg, r, k, with_old ? &old_idx : nullptr, new_idx, m0, v0, what);
        }
      }
    }
  }
  // r = 1, k = 1, rows wider than a block, and random selections (with repeats)
  const int64_t shapes[][3] = {{1, 1, 3}, {1, 300, 1}, {9, 300, 4}, {200, 3, 150}};
  for (const auto& s : shapes) {
    const int64_t r = s[0], k = s[1], d = s[2];
    for (grass_dtype s_dt : kStates) {
      const auto cfg = adamw_config(GRASS_DECAY_OFF, s_dt, GRASS_REFRESH_CARRY);
      const auto old_idx = sorted_indices(&rng, sz(r), d), new_idx = sorted_indices(&rng, sz(r), d);
      const Bytes m0 = random_tensor(&rng, s_dt, sz(r * k));
      const Bytes v0 = random_tensor(&rng, s_dt, sz(r * k));
      check_refresh(cfg, r, k, &old_idx, new_idx, m0, v0,
                    "refresh carry r=" + std::to_string(r) + " k=" + std::to_string(k) +
                        " d=" + std::to_string(d) + " state " + tk_dtype_name(s_dt));
    }
  }
}

// ---- a chain of ops on a non-default stream ---------------------------------------------------

// scores -> select -> sparse_grad (two micro-batches) -> state refresh (carry) -> sparse step ->
// dense step, all enqueued on one non-blocking stream without waiting in between, sharing one
// workspace (stream order makes that safe), then cuStreamSynchronize. The selection reads
// scores the CPU computed (as a data-parallel caller passes all-reduced scores) so that both
// contexts select the same rows, and the sparse step reads the CPU's g, so that its results
// must equal the CPU's bit for bit.
void ops_on_a_stream() {
  tk_rng rng{108};
  const int64_t m = 96, n = 64, b = 24, r = 16;
  const grass_side side = GRASS_SIDE_COLS;
  const grass_dtype dt = GRASS_DTYPE_BF16, w_dt = GRASS_DTYPE_BF16, s_dt = GRASS_DTYPE_F32;
  int64_t d = 0, k = 0;
  resolve(m, n, side, &d, &k);  // d = 64, k = 96
  const uint32_t refresh = 2;
  const auto pcfg =
      projection_config(GRASS_METHOD_MULTINOMIAL_NR, 2, GRASS_SCALING_UNBIASED, r, 77);
  const auto acfg = adamw_config(GRASS_DECAY_SELECTED, s_dt, GRASS_REFRESH_CARRY);
  const auto dcfg = adamw_config(GRASS_DECAY_SELECTED, s_dt, GRASS_REFRESH_RESET);
  const int64_t numel = 333;

  const Bytes x1 = random_tensor(&rng, dt, sz(b * n)), dy1 = random_tensor(&rng, dt, sz(b * m));
  const Bytes x2 = random_tensor(&rng, dt, sz(b * n)), dy2 = random_tensor(&rng, dt, sz(b * m));
  const Bytes w0 = random_tensor(&rng, w_dt, sz(m * n));
  const auto old_idx = sorted_indices(&rng, sz(r), d);
  const Bytes m0 = random_tensor(&rng, s_dt, sz(r * k));
  const Bytes v0 = abs_tensor(random_tensor(&rng, s_dt, sz(r * k)), s_dt);
  std::vector<int32_t> steps0(sz(r));
  for (size_t j = 0; j < steps0.size(); ++j) steps0[j] = 1 + static_cast<int32_t>(j % 3);
  const Bytes wd0 = random_tensor(&rng, GRASS_DTYPE_F32, sz(numel));
  const Bytes grad = random_tensor(&rng, GRASS_DTYPE_F32, sz(numel));
  const float lr_scale = 0.75f;

  // the CPU context, op by op
  const auto scores = cpu_scores(m, n, b, side, dt, x1, dy1, d);
  const auto scores_mag = cpu_scores(m, n, b, side, dt, abs_tensor(x1, dt), abs_tensor(dy1, dt), d);
  std::vector<int32_t> idx;
  std::vector<float> scales;
  cpu_select(pcfg, scores, refresh, &idx, &scales);
  std::vector<float> g(sz(r * k)), g_mag(sz(r * k));
  cpu_grad(m, n, b, side, dt, x1, dy1, idx, scales, &g, false);
  cpu_grad(m, n, b, side, dt, x2, dy2, idx, scales, &g, true);
  cpu_grad(m, n, b, side, dt, abs_tensor(x1, dt), abs_tensor(dy1, dt), idx, scales, &g_mag, false);
  cpu_grad(m, n, b, side, dt, abs_tensor(x2, dt), abs_tensor(dy2, dt), idx, scales, &g_mag, true);
  StepBufs cpu(false, w0, m0, v0, steps0);
  cpu.set_lr_scale(lr_scale);
  {
    Bytes ws(refresh_ws(G->cpu, acfg, r, k));
    OK(grass_state_refresh(G->cpu, acfg.refresh_mode, acfg.state_dtype,
                           r, k, old_idx.data(), idx.data(), cpu.m(), cpu.v(),
                           cpu.steps(), host_ptr(ws), ws.size(), nullptr));
  }
  {
    Bytes ws(sparse_adamw_step_ws(G->cpu, m, n, side, r));
    OK(call_sparse_adamw_step(G->cpu, acfg, m, n, side, r, w_dt, cpu, idx.data(), scales.data(), g.data(),
                   1e-2f, true, host_ptr(ws), ws.size()));
  }
  StepBufs cpu_dense(false, wd0, zeros(sz(numel) * 4), zeros(sz(numel) * 4), {0});
  {
    Bytes ws(adamw_step_ws(G->cpu, numel));
    OK(grass_adamw_step(G->cpu, &dcfg, numel, GRASS_DTYPE_F32, cpu_dense.w(), GRASS_DTYPE_F32,
                        grad.data(), cpu_dense.m(), cpu_dense.v(), cpu_dense.steps(), 3e-3f,
                        nullptr, cpu_dense.skipped(), host_ptr(ws), ws.size(), nullptr));
  }

  // the CUDA context, on the stream
  const size_t wsb = std::max({scores_ws(G->cuda, m, n, b, side, dt), select_ws(G->cuda, d, r),
                               grad_ws(G->cuda, m, n, b, side, r, dt),
                               refresh_ws(G->cuda, acfg, r, k),
                               sparse_adamw_step_ws(G->cuda, m, n, side, r),
                               adamw_step_ws(G->cuda, numel)});
  const DevBuf dws = DevBuf::poisoned(wsb);
  const DevBuf dx1 = DevBuf::from(x1), ddy1 = DevBuf::from(dy1);
  const DevBuf dx2 = DevBuf::from(x2), ddy2 = DevBuf::from(dy2);
  const DevBuf dscores_out = DevBuf::poisoned(sz(d) * 4), dscores_in = DevBuf::of(scores);
  const DevBuf dref = DevBuf::of(std::vector<uint32_t>{refresh});
  const DevBuf didx = DevBuf::poisoned(sz(r) * 4), dsc = DevBuf::poisoned(sz(r) * 4);
  const DevBuf dg_out = DevBuf::poisoned(sz(r * k) * 4), dg_cpu = DevBuf::of(g);
  const DevBuf dold = DevBuf::of(old_idx), dgrad = DevBuf::from(grad);
  StepBufs dev(true, w0, m0, v0, steps0);
  dev.set_lr_scale(lr_scale);
  StepBufs dev_dense(true, wd0, zeros(sz(numel) * 4), zeros(sz(numel) * 4), {0});

  const Stream stream;
  void* s = stream.get();
  OK(grass_row_scores(G->cuda, m, n, b, side, dt, dx1.ptr(), ddy1.ptr(), dscores_out.ptr<float>(),
                      dws.ptr(), wsb, s));
  OK(grass_select(G->cuda, &pcfg, d, refresh + 1000u, dref.ptr<uint32_t>(),
                  dscores_in.ptr<float>(), didx.ptr<int32_t>(), dsc.ptr<float>(), dws.ptr(), wsb,
                  s));
  OK(grass_sparse_grad(G->cuda, m, n, b, side, r, dt, dx1.ptr(), ddy1.ptr(), didx.ptr<int32_t>(),
                       dsc.ptr<float>(), dg_out.ptr<float>(), 0, dws.ptr(), wsb, s));
  OK(grass_sparse_grad(G->cuda, m, n, b, side, r, dt, dx2.ptr(), ddy2.ptr(), didx.ptr<int32_t>(),
                       dsc.ptr<float>(), dg_out.ptr<float>(), 1, dws.ptr(), wsb, s));
  OK(grass_state_refresh(G->cuda, acfg.refresh_mode, acfg.state_dtype,
                         r, k, dold.ptr<int32_t>(), didx.ptr<int32_t>(), dev.m(),
                         dev.v(), dev.steps(), dws.ptr(), wsb, s));
  OK(call_sparse_adamw_step(G->cuda, acfg, m, n, side, r, w_dt, dev, didx.ptr<int32_t>(), dsc.ptr<float>(),
                 dg_cpu.ptr<float>(), 1e-2f, true, dws.ptr(), wsb, s));
  OK(grass_adamw_step(G->cuda, &dcfg, numel, GRASS_DTYPE_F32, dev_dense.w(), GRASS_DTYPE_F32,
                      dgrad.ptr(), dev_dense.m(), dev_dense.v(), dev_dense.steps(), 3e-3f, nullptr,
                      dev_dense.skipped(), dws.ptr(), wsb, s));
  G->mem->stream_sync(s);

  const std::string what = "on a stream, " + dims_text(m, n, b, side, dt);
  close_gemm("scores, " + what, dscores_out.read_as<float>(), scores, scores_mag,
             static_cast<double>(b));
  same_values("indices, " + what, didx.read_as<int32_t>(), idx);
  same_values("scales, " + what, dsc.read_as<float>(), scales);
  close_gemm("g, " + what, dg_out.read_as<float>(), g, g_mag, static_cast<double>(2 * b + 1));
  compare_steps("sparse step after a carry refresh, " + what, cpu, dev, w_dt, s_dt);
  compare_steps("dense step, " + what, cpu_dense, dev_dense, GRASS_DTYPE_F32, GRASS_DTYPE_F32);
  TK_CHECK(dev.counters()[0] == GRASS_STEP_APPLIED);
}

// ---- layer 2: handles -------------------------------------------------------------------------

struct OptimizerDeleter {
  void operator()(grass_optimizer* o) const { grass_optimizer_destroy(o); }
};
using Optimizer = std::unique_ptr<grass_optimizer, OptimizerDeleter>;

Optimizer sparse_optimizer(const grass_context* ctx, const grass_projection_config& pc,
                           const grass_adamw_config& ac, int64_t m, int64_t n, int64_t b) {
  grass_optimizer* o = nullptr;
  OK(grass_optimizer_create_sparse(ctx, &pc, &ac, m, n, b, GRASS_DTYPE_F32, GRASS_DTYPE_F32, &o));
  if (o == nullptr) throw std::runtime_error("grass_optimizer_create_sparse failed");
  return Optimizer(o);
}

grass_projection_config handle_projection_config(grass_method method, int64_t rank,
                                                 int64_t refresh_every) {
  auto c = projection_config(method, 2, GRASS_SCALING_UNBIASED, rank, 1234);
  c.refresh_every = refresh_every;
  c.layer_id = 3;
  return c;
}

// The selection of an optimizer's projection, read from its context's memory.
void selection(grass_optimizer* o, bool cuda, int64_t r, std::vector<int32_t>* idx,
               std::vector<float>* scales) {
  grass_projection* p = nullptr;
  const int32_t* i = nullptr;
  const float* s = nullptr;
  idx->assign(sz(r), -1);
  scales->assign(sz(r), NAN);
  if (!OK(grass_optimizer_projection(o, &p)) || !OK(grass_projection_selection(p, &i, &s))) return;
  if (cuda) {
    *idx = read_device(i, sz(r));
    *scales = read_device(s, sz(r));
  } else {
    idx->assign(i, i + r);
    scales->assign(s, s + r);
  }
}

// One micro-batch on both optimizers with the same data; at a refresh the CPU's exact scores go
// to both (as all-reduced scores would), so that both select the same rows.
void backward_both(grass_optimizer* cpu, grass_optimizer* dev, tk_rng* rng, int64_t m, int64_t n,
                   int64_t b) {
  const auto x = random_floats(rng, sz(b * n)), dy = random_floats(rng, sz(b * m));
  int32_t due = -1, due_dev = -1;
  OK(grass_optimizer_refresh_due(cpu, &due));
  OK(grass_optimizer_refresh_due(dev, &due_dev));
  TK_CHECK(due == due_dev);
  std::vector<float> scores;
  std::unique_ptr<DevBuf> dscores;
  if (due == 1) {
    grass_projection* p = nullptr;
    OK(grass_optimizer_projection(cpu, &p));
    grass_projection_info info;
    std::memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    OK(grass_projection_get_info(p, &info));
    scores.assign(sz(info.d), 0.0f);
    OK(grass_projection_scores(p, b, x.data(), dy.data(), scores.data(), nullptr));
    dscores = std::make_unique<DevBuf>(DevBuf::of(scores));
  }
  OK(grass_optimizer_backward(cpu, b, x.data(), dy.data(), due == 1 ? scores.data() : nullptr,
                              nullptr));
  const DevBuf dx = DevBuf::of(x), ddy = DevBuf::of(dy);
  OK(grass_optimizer_backward(dev, b, dx.ptr(), ddy.ptr(),
                              dscores ? dscores->ptr<float>() : nullptr, nullptr));
}

std::vector<float> minus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> out(a.size());
  for (size_t i = 0; i < a.size(); ++i) out[i] = a[i] - b[i];
  return out;
}

// A GRASS optimizer on CUDA follows the same optimizer on the CPU for 10 steps across three
// refreshes: the same selection bit for bit, W within the tolerance of tests/cuda (the
// compressed gradients differ by summation order).
void sparse_optimizer_follows_the_cpu() {
  tk_rng rng{109};
  const int64_t m = 64, n = 96, b = 20, r = 16;
  for (grass_method method :
       {GRASS_METHOD_MULTINOMIAL_NR, GRASS_METHOD_MULTINOMIAL, GRASS_METHOD_TOP_R}) {
    for (grass_refresh_mode refresh : {GRASS_REFRESH_RESET, GRASS_REFRESH_CARRY}) {
      const auto pc = handle_projection_config(method, r, 3);
      auto ac = adamw_config(GRASS_DECAY_SELECTED, GRASS_DTYPE_F32, refresh);
      ac.weight_decay = 0.01f;
      const Optimizer cpu = sparse_optimizer(G->cpu, pc, ac, m, n, b);
      const Optimizer dev = sparse_optimizer(G->cuda, pc, ac, m, n, b);
      const auto w0 = random_floats(&rng, sz(m * n));
      auto hw = w0;
      const DevBuf dw = DevBuf::of(w0);
      for (int step = 0; step < 10; ++step) {
        for (int micro = 0; micro < 2; ++micro) backward_both(cpu.get(), dev.get(), &rng, m, n, b);
        char what[96];
        std::snprintf(what, sizeof what, "optimizer method %d refresh %d step %d", method, refresh,
                      step);
        std::vector<int32_t> ci, gi;
        std::vector<float> cs, gs;
        selection(cpu.get(), false, r, &ci, &cs);
        selection(dev.get(), true, r, &gi, &gs);
        same_values(std::string("indices, ") + what, gi, ci);
        same_values(std::string("scales, ") + what, gs, cs);
        OK(grass_optimizer_step(cpu.get(), hw.data(), nullptr, 1e-2f, nullptr));
        OK(grass_optimizer_step(dev.get(), dw.ptr(), nullptr, 1e-2f, nullptr));
        close_norm(std::string("W - W0, ") + what, minus(dw.read_as<float>(), w0), minus(hw, w0),
                   1e-4);
      }
      int32_t skipped = -1;
      OK(grass_optimizer_last_step_skipped(dev.get(), &skipped, nullptr));
      TK_CHECK(skipped == GRASS_STEP_APPLIED);
    }
  }
}

Bytes export_state(grass_optimizer* o) {
  size_t bytes = 0;
  OK(grass_optimizer_state_size(o, &bytes));
  Bytes blob(bytes);
  OK(grass_optimizer_export_state(o, blob.data(), blob.size(), nullptr));
  return blob;
}

void import_state(grass_optimizer* o, const Bytes& blob) {
  OK(grass_optimizer_import_state(o, blob.data(), blob.size(), nullptr));
}

// One micro-batch and a step on a device optimizer.
void train_step_dev(grass_optimizer* o, const DevBuf& w, const DevBuf& x, const DevBuf& dy,
                    int64_t b) {
  OK(grass_optimizer_backward(o, b, x.ptr(), dy.ptr(), nullptr, nullptr));
  OK(grass_optimizer_step(o, w.ptr(), nullptr, 1e-2f, nullptr));
}

// A blob exported by a CUDA optimizer imports into a CUDA and a CPU optimizer (the layout is the
// same in device and host memory), and one exported by a CPU optimizer into a CUDA optimizer:
// each exports again the blob it imported, and the next step continues the trajectory (CUDA to
// CUDA bit for bit, CUDA and CPU within tolerance).
void checkpoints_cross_contexts() {
  tk_rng rng{110};
  const int64_t m = 48, n = 32, b = 16, r = 8;
  const auto pc = handle_projection_config(GRASS_METHOD_MULTINOMIAL, r, 2);
  const auto ac = adamw_config(GRASS_DECAY_SELECTED, GRASS_DTYPE_BF16, GRASS_REFRESH_CARRY);
  const Optimizer a = sparse_optimizer(G->cuda, pc, ac, m, n, b);
  const auto w0 = random_floats(&rng, sz(m * n));
  const DevBuf dw = DevBuf::of(w0);
  for (int step = 0; step < 3; ++step) {  // refreshes at steps 0 and 2
    const DevBuf dx = DevBuf::of(random_floats(&rng, sz(b * n)));
    const DevBuf ddy = DevBuf::of(random_floats(&rng, sz(b * m)));
    train_step_dev(a.get(), dw, dx, ddy, b);
  }
  const Bytes blob = export_state(a.get());
  const Optimizer bopt = sparse_optimizer(G->cuda, pc, ac, m, n, b);
  import_state(bopt.get(), blob);
  same_bits("CUDA blob exported again by a CUDA optimizer", export_state(bopt.get()), blob, 1);
  const Optimizer copt = sparse_optimizer(G->cpu, pc, ac, m, n, b);
  import_state(copt.get(), blob);
  same_bits("CUDA blob exported again by a CPU optimizer", export_state(copt.get()), blob, 1);
  for (grass_optimizer* o : {a.get(), bopt.get(), copt.get()}) {
    int32_t due = -1;
    OK(grass_optimizer_refresh_due(o, &due));
    TK_CHECK(due == 0);  // the next step compresses with the imported selection
  }

  const auto w = dw.read_as<float>();
  const auto x = random_floats(&rng, sz(b * n)), dy = random_floats(&rng, sz(b * m));
  const DevBuf dx = DevBuf::of(x), ddy = DevBuf::of(dy);
  const DevBuf wa = DevBuf::of(w), wb = DevBuf::of(w);
  train_step_dev(a.get(), wa, dx, ddy, b);
  train_step_dev(bopt.get(), wb, dx, ddy, b);
  auto wc = w;
  OK(grass_optimizer_backward(copt.get(), b, x.data(), dy.data(), nullptr, nullptr));
  OK(grass_optimizer_step(copt.get(), wc.data(), nullptr, 1e-2f, nullptr));
  same_bits("W after a step from the imported state (CUDA)", wb.read(), wa.read(), 4);
  close_norm("W after a step from the imported state (CPU vs CUDA)", minus(wc, w),
             minus(wa.read_as<float>(), w), 1e-3);

  // and back: the CPU optimizer's blob into a fresh CUDA optimizer. Its next step refreshes;
  // both select from the CPU's scores.
  const Bytes cblob = export_state(copt.get());
  const Optimizer dopt = sparse_optimizer(G->cuda, pc, ac, m, n, b);
  import_state(dopt.get(), cblob);
  same_bits("CPU blob exported again by a CUDA optimizer", export_state(dopt.get()), cblob, 1);
  const DevBuf wd = DevBuf::of(wc);
  const auto wc_before = wc;
  backward_both(copt.get(), dopt.get(), &rng, m, n, b);
  std::vector<int32_t> ci, gi;
  std::vector<float> cs, gs;
  selection(copt.get(), false, r, &ci, &cs);
  selection(dopt.get(), true, r, &gi, &gs);
  same_values("indices after the CPU's state on CUDA", gi, ci);
  same_values("scales after the CPU's state on CUDA", gs, cs);
  OK(grass_optimizer_step(copt.get(), wc.data(), nullptr, 1e-2f, nullptr));
  OK(grass_optimizer_step(dopt.get(), wd.ptr(), nullptr, 1e-2f, nullptr));
  close_norm("W after a step from the CPU's state on CUDA", minus(wd.read_as<float>(), wc_before),
             minus(wc, wc_before), 1e-3);
}

// A dense optimizer on CUDA equals the CPU's bit for bit, step by step and in its state blob.
void dense_optimizer_matches_the_cpu() {
  tk_rng rng{111};
  const int64_t numel = 777;
  const auto ac = adamw_config(GRASS_DECAY_SELECTED, GRASS_DTYPE_F32, GRASS_REFRESH_RESET);
  grass_optimizer *co = nullptr, *go = nullptr;
  OK(grass_optimizer_create_dense(G->cpu, &ac, numel, GRASS_DTYPE_BF16, GRASS_DTYPE_F32, &co));
  OK(grass_optimizer_create_dense(G->cuda, &ac, numel, GRASS_DTYPE_BF16, GRASS_DTYPE_F32, &go));
  const Optimizer cpu(co), dev(go);
  if (!cpu || !dev) return;
  Bytes hw = random_tensor(&rng, GRASS_DTYPE_BF16, sz(numel));
  const DevBuf dw = DevBuf::from(hw);
  for (int step = 0; step < 4; ++step) {
    const auto grad = random_floats(&rng, sz(numel));
    const DevBuf dgrad = DevBuf::of(grad);
    OK(grass_optimizer_step(cpu.get(), hw.data(), grad.data(), 1e-3f, nullptr));
    OK(grass_optimizer_step(dev.get(), dw.ptr(), dgrad.ptr(), 1e-3f, nullptr));
    same_bits("dense optimizer W after step " + std::to_string(step), dw.read(), hw, 2);
  }
  int32_t skipped = -1;
  OK(grass_optimizer_last_step_skipped(dev.get(), &skipped, nullptr));
  TK_CHECK(skipped == GRASS_STEP_APPLIED);
  same_bits("dense optimizer state blob", export_state(dev.get()), export_state(cpu.get()), 1);
}

// Clipping and loss scaling through the handles: the squared norm lands in device memory and
// matches the CPU's (the compressed gradients differ by summation order, the dense one not at
// all), and step_scaled follows the CPU (the dense step bit for bit). A scale that overflows a
// finite gradient skips the step on both.
void clipping_follows_the_cpu() {
  tk_rng rng{113};
  const int64_t m = 48, n = 80, b = 12, r = 16;
  const auto pc = handle_projection_config(GRASS_METHOD_MULTINOMIAL_NR, r, 4);
  const auto ac = adamw_config(GRASS_DECAY_SELECTED, GRASS_DTYPE_F32, GRASS_REFRESH_RESET);
  const Optimizer cpu = sparse_optimizer(G->cpu, pc, ac, m, n, b);
  const Optimizer dev = sparse_optimizer(G->cuda, pc, ac, m, n, b);
  const auto w0 = random_floats(&rng, sz(m * n));
  auto hw = w0;
  const DevBuf dw = DevBuf::of(w0);
  const DevBuf dnorm = DevBuf::of(std::vector<float>{-1.0f});
  for (int step = 0; step < 6; ++step) {
    for (int micro = 0; micro < 2; ++micro) backward_both(cpu.get(), dev.get(), &rng, m, n, b);
    float hnorm = -1.0f;
    OK(grass_optimizer_grad_sq_norm(cpu.get(), nullptr, &hnorm, nullptr));
    OK(grass_optimizer_grad_sq_norm(dev.get(), nullptr, dnorm.ptr<float>(), nullptr));
    const float gnorm = dnorm.read_as<float>()[0];
    char what[64];
    std::snprintf(what, sizeof what, "compressed squared norm, step %d", step);
    close_norm(what, {gnorm}, {hnorm}, 1e-5);
    TK_CHECK(hnorm > 0.0f);
    const float scale = 0.5f / std::sqrt(hnorm);  // clip to a norm of 0.5
    OK(grass_optimizer_step_scaled(cpu.get(), hw.data(), nullptr, 1e-2f, scale, nullptr));
    OK(grass_optimizer_step_scaled(dev.get(), dw.ptr(), nullptr, 1e-2f, scale, nullptr));
    std::snprintf(what, sizeof what, "W - W0 after a scaled step %d", step);
    close_norm(what, minus(dw.read_as<float>(), w0), minus(hw, w0), 1e-4);
  }

  const int64_t numel = 1500;
  grass_optimizer *co = nullptr, *go = nullptr;
  OK(grass_optimizer_create_dense(G->cpu, &ac, numel, GRASS_DTYPE_F32, GRASS_DTYPE_BF16, &co));
  OK(grass_optimizer_create_dense(G->cuda, &ac, numel, GRASS_DTYPE_F32, GRASS_DTYPE_BF16, &go));
  const Optimizer dcpu(co), ddev(go);
  if (!dcpu || !ddev) return;
  auto dhw = random_floats(&rng, sz(numel));
  const DevBuf ddw = DevBuf::of(dhw);
  for (int step = 0; step < 3; ++step) {
    Bytes grad = random_tensor(&rng, GRASS_DTYPE_BF16, sz(numel));
    if (step == 2) {  // g[0] = 4 (bf16 0x4080): finite, but not once scaled by 1e38
      grad[0] = 0x80;
      grad[1] = 0x40;
    }
    const DevBuf dgrad = DevBuf::from(grad);
    float hnorm = -1.0f;
    OK(grass_optimizer_grad_sq_norm(dcpu.get(), grad.data(), &hnorm, nullptr));
    OK(grass_optimizer_grad_sq_norm(ddev.get(), dgrad.ptr(), dnorm.ptr<float>(), nullptr));
    close_norm("dense squared norm", dnorm.read_as<float>(), {hnorm}, 1e-6);
    const float scale = step == 2 ? 1e38f : 0.25f;  // step 2: 1e38 * |g| overflows
    OK(grass_optimizer_step_scaled(dcpu.get(), dhw.data(), grad.data(), 1e-3f, scale, nullptr));
    OK(grass_optimizer_step_scaled(ddev.get(), ddw.ptr(), dgrad.ptr(), 1e-3f, scale, nullptr));
    same_values("dense W after a scaled step " + std::to_string(step), ddw.read_as<float>(), dhw);
    int32_t hs = -1, gs = -1;
    OK(grass_optimizer_last_step_skipped(dcpu.get(), &hs, nullptr));
    OK(grass_optimizer_last_step_skipped(ddev.get(), &gs, nullptr));
    TK_CHECK(hs == gs);
    TK_CHECK(hs == (step == 2 ? GRASS_STEP_SKIPPED_NONFINITE : GRASS_STEP_APPLIED));
  }
}

// ---- setup ------------------------------------------------------------------------------------

bool gpu_required() {
  const char* v = std::getenv("GRASS_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

// The one line a run without a GPU prints: SKIPPED (exit 77), or FAIL when a GPU is required.
int no_gpu(const std::string& why) {
  std::string hint;
#if defined(__SANITIZE_ADDRESS__)
  if (why.find("cuInit") != std::string::npos) {
    hint = " (this test runs under AddressSanitizer, whose protected shadow gap makes cuInit fail "
           "unless ASAN_OPTIONS has protect_shadow_gap=0, as tests/c/CMakeLists.txt sets)";
  }
#endif
  if (gpu_required()) {
    std::printf("FAIL: GRASS_REQUIRE_GPU=1 but %s%s\n", why.c_str(), hint.c_str());
    return 1;
  }
  std::printf("SKIPPED: %s%s\n", why.c_str(), hint.c_str());
  return kSkipped;
}

}  // namespace

int main(int argc, char** argv) {
  Gpu gpu;
  G = &gpu;
  int32_t available = -1;
  char reason[512] = {0};
  if (argc == 2 && std::strcmp(argv[1], "--host") == 0) {
    // The rehearsal: every comparison below with a second CPU context and host memory in place
    // of CUDA, so that the test's own logic and buffer sizes are checked where no GPU is.
    gpu.rehearsal = true;
    gpu.mem = std::make_unique<HostMemory>();
    if (!OK(grass_context_create_cpu(&gpu.cuda))) return 1;
    std::printf("rehearsal: a CPU context and host memory stand in for CUDA\n");
  } else if (argc != 1) {
    std::printf("usage: %s [--host]\n", argv[0]);
    return 2;
  } else {
    if (!OK(grass_cuda_available(&available, reason, sizeof reason))) return 1;
    if (available != 1) return no_gpu(std::string("no usable CUDA device: ") + reason);
    try {
      gpu.mem = std::make_unique<CudaMemory>();
    } catch (const std::exception& e) {
      return no_gpu(std::string("grass sees a GPU (") + reason +
                    ") but the CUDA driver API is not usable: " + e.what());
    }
    if (!OK(grass_context_create_cuda(0, &gpu.cuda))) return 1;
    std::printf("CUDA: %s\n", reason);
  }
  if (!OK(grass_context_create_cpu(&gpu.cpu))) return 1;

  tk_run("row_scores", row_scores);
  tk_run("select_rows", select_rows);
  tk_run("sparse_grad", sparse_grad);
  tk_run("sparse_adamw_step", sparse_adamw_step);
  tk_run("sparse_adamw_step_bad_inputs", sparse_adamw_step_bad_inputs);
  tk_run("adamw_step", adamw_step);
  tk_run("state_refresh", state_refresh);
  tk_run("ops_on_a_stream", ops_on_a_stream);
  tk_run("sparse_optimizer_follows_the_cpu", sparse_optimizer_follows_the_cpu);
  tk_run("checkpoints_cross_contexts", checkpoints_cross_contexts);
  tk_run("dense_optimizer_matches_the_cpu", dense_optimizer_matches_the_cpu);
  tk_run("clipping_follows_the_cpu", clipping_follows_the_cpu);
  return tk_report(gpu.rehearsal ? "test_cuda --host" : "test_cuda");
}
