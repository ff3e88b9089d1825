// Memory of the device a grass::Context runs on, for the examples: the host vectors themselves
// for a CPU context; for a CUDA context, device buffers made through the CUDA driver API, which
// is loaded at run time (libcuda.so.1) so that the examples build without the CUDA toolkit.
#ifndef GRASS_EXAMPLES_DEVICE_MEMORY_HPP
#define GRASS_EXAMPLES_DEVICE_MEMORY_HPP

#include <dlfcn.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace example {

// The few driver entry points the examples need, with the signatures of cuda.h.
class CudaDriver {
 public:
  explicit CudaDriver(int ordinal) {
    lib_ = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib_ == nullptr) throw std::runtime_error("cannot load libcuda.so.1");
    try {
      load(init_, "cuInit");
      load(device_get_, "cuDeviceGet");
      load(retain_, "cuDevicePrimaryCtxRetain");
      load(release_, "cuDevicePrimaryCtxRelease_v2");
      load(set_current_, "cuCtxSetCurrent");
      load(alloc_, "cuMemAlloc_v2");
      load(free_, "cuMemFree_v2");
      load(htod_, "cuMemcpyHtoD_v2");
      load(dtoh_, "cuMemcpyDtoH_v2");
      check(init_(0), "cuInit");
      check(device_get_(&device_, ordinal), "cuDeviceGet");
      // the primary context: the one grass (and PyTorch, XLA) use on this device
      check(retain_(&ctx_, device_), "cuDevicePrimaryCtxRetain");
    } catch (...) {
      dlclose(lib_);
      throw;
    }
    if (set_current_(ctx_) != 0) {
      release_(device_);
      dlclose(lib_);
      throw std::runtime_error("cuCtxSetCurrent failed");
    }
  }
  ~CudaDriver() {
    release_(device_);
    dlclose(lib_);
  }
  CudaDriver(const CudaDriver&) = delete;
  CudaDriver& operator=(const CudaDriver&) = delete;

  void* alloc(size_t bytes) {
    unsigned long long p = 0;
    check(alloc_(&p, bytes), "cuMemAlloc");
    return reinterpret_cast<void*>(static_cast<uintptr_t>(p));
  }
  void free(void* p) noexcept { free_(reinterpret_cast<uintptr_t>(p)); }
  // Synchronous copies on the legacy default stream (the stream the examples pass to grass).
  void upload(void* dst, const void* src, size_t bytes) {
    check(htod_(reinterpret_cast<uintptr_t>(dst), src, bytes), "cuMemcpyHtoD");
  }
  void download(void* dst, const void* src, size_t bytes) {
    check(dtoh_(dst, reinterpret_cast<uintptr_t>(src), bytes), "cuMemcpyDtoH");
  }

 private:
  template <typename F>
  void load(F& f, const char* name) {
    f = reinterpret_cast<F>(dlsym(lib_, name));
    if (f == nullptr) throw std::runtime_error(std::string("libcuda.so.1 has no ") + name);
  }
  static void check(int rc, const char* what) {
    if (rc != 0) throw std::runtime_error(std::string(what) + " failed: CUresult " +
                                          std::to_string(rc));
  }

  void* lib_ = nullptr;
  int device_ = 0;
  void* ctx_ = nullptr;
  int (*init_)(unsigned) = nullptr;
  int (*device_get_)(int*, int) = nullptr;
  int (*retain_)(void**, int) = nullptr;
  int (*release_)(int) = nullptr;
  int (*set_current_)(void*) = nullptr;
  int (*alloc_)(unsigned long long*, size_t) = nullptr;
  int (*free_)(unsigned long long) = nullptr;
  int (*htod_)(unsigned long long, const void*, size_t) = nullptr;
  int (*dtoh_)(void*, unsigned long long, size_t) = nullptr;
};

// A host tensor as the context sees it. For a CPU context that is the host vector itself (no
// copies); for a CUDA context a device buffer of the same size, synchronized explicitly.
class Mirror {
 public:
  Mirror(std::shared_ptr<CudaDriver> cuda, std::vector<float>& host)
      : cuda_(std::move(cuda)), host_(host) {
    if (cuda_) device_ = cuda_->alloc(bytes());
  }
  ~Mirror() {
    if (cuda_) cuda_->free(device_);
  }
  Mirror(const Mirror&) = delete;
  Mirror& operator=(const Mirror&) = delete;

  // The pointer to hand to grass: context memory.
  float* get() { return cuda_ ? static_cast<float*>(device_) : host_.data(); }

  void to_device() {
    if (cuda_) cuda_->upload(device_, host_.data(), bytes());
  }
  void to_host() {
    if (cuda_) cuda_->download(host_.data(), device_, bytes());
  }

 private:
  size_t bytes() const { return host_.size() * sizeof(float); }

  std::shared_ptr<CudaDriver> cuda_;
  std::vector<float>& host_;
  void* device_ = nullptr;
};

}  // namespace example

#endif  // GRASS_EXAMPLES_DEVICE_MEMORY_HPP
