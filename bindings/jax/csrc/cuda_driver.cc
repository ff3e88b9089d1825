#include "cuda_driver.h"

#include <dlfcn.h>

#include <string>

namespace ffi = xla::ffi;

namespace grass_jax {
namespace {

using CopyFn = int (*)(void* dst, unsigned long long src, size_t bytes, void* stream);
using SyncFn = int (*)(void* stream);

struct Driver {
  CopyFn copy = nullptr;
  SyncFn sync = nullptr;
  std::string error;
};

const Driver& Load() {
  static const Driver driver = [] {
    Driver d;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) {
      const char* e = dlerror();
      d.error = std::string("cannot load libcuda.so.1: ") + (e ? e : "unknown error");
      return d;
    }
    d.copy = reinterpret_cast<CopyFn>(dlsym(lib, "cuMemcpyDtoHAsync_v2"));
    d.sync = reinterpret_cast<SyncFn>(dlsym(lib, "cuStreamSynchronize"));
    if (d.copy == nullptr || d.sync == nullptr) {
      d.error = "libcuda.so.1 lacks cuMemcpyDtoHAsync_v2 or cuStreamSynchronize";
    }
    return d;
  }();
  return driver;
}

}  // namespace

ffi::Error CopyScalarToHost(const uint32_t* device, uint32_t* host, void* stream) {
  const Driver& d = Load();
  if (!d.error.empty()) return ffi::Error(ffi::ErrorCode::kUnavailable, d.error);
  int rc = d.copy(host, reinterpret_cast<unsigned long long>(device), sizeof(uint32_t), stream);
  if (rc == 0) rc = d.sync(stream);
  if (rc != 0) {
    return ffi::Error::Internal("reading the refresh index from the GPU failed with CUresult " +
                                std::to_string(rc));
  }
  return ffi::Error::Success();
}

}  // namespace grass_jax
