#include "contexts.h"

#include <map>
#include <mutex>
#include <string>

namespace ffi = xla::ffi;

namespace grass_jax {
namespace {

const char* StatusName(grass_status s) {
  switch (s) {
    case GRASS_OK: return "GRASS_OK";
    case GRASS_ERROR_NULL_POINTER: return "GRASS_ERROR_NULL_POINTER";
    case GRASS_ERROR_INVALID_VALUE: return "GRASS_ERROR_INVALID_VALUE";
    case GRASS_ERROR_INVALID_ENUM: return "GRASS_ERROR_INVALID_ENUM";
    case GRASS_ERROR_DTYPE: return "GRASS_ERROR_DTYPE";
    case GRASS_ERROR_STRUCT_SIZE: return "GRASS_ERROR_STRUCT_SIZE";
    case GRASS_ERROR_WORKSPACE_TOO_SMALL: return "GRASS_ERROR_WORKSPACE_TOO_SMALL";
    case GRASS_ERROR_INVALID_STATE: return "GRASS_ERROR_INVALID_STATE";
    case GRASS_ERROR_BAD_CHECKPOINT: return "GRASS_ERROR_BAD_CHECKPOINT";
    case GRASS_ERROR_WRONG_CONTEXT: return "GRASS_ERROR_WRONG_CONTEXT";
    case GRASS_ERROR_MISALIGNED: return "GRASS_ERROR_MISALIGNED";
    case GRASS_ERROR_CUDA_UNAVAILABLE: return "GRASS_ERROR_CUDA_UNAVAILABLE";
    case GRASS_ERROR_CUDA: return "GRASS_ERROR_CUDA";
    case GRASS_ERROR_UNSUPPORTED: return "GRASS_ERROR_UNSUPPORTED";
    case GRASS_ERROR_OUT_OF_MEMORY: return "GRASS_ERROR_OUT_OF_MEMORY";
    case GRASS_ERROR_PANIC: return "GRASS_ERROR_PANIC";
    case GRASS_ERROR_INTERNAL: return "GRASS_ERROR_INTERNAL";
  }
  return "GRASS_ERROR_UNKNOWN";
}

ffi::ErrorCode CodeOf(grass_status s) {
  if (s < 100) return ffi::ErrorCode::kInvalidArgument;
  if (s == GRASS_ERROR_CUDA_UNAVAILABLE || s == GRASS_ERROR_UNSUPPORTED) {
    return ffi::ErrorCode::kUnavailable;
  }
  if (s == GRASS_ERROR_OUT_OF_MEMORY) return ffi::ErrorCode::kResourceExhausted;
  return ffi::ErrorCode::kInternal;
}

}  // namespace

ffi::Error StatusError(grass_status status) {
  if (status == GRASS_OK) return ffi::Error::Success();
  // The Python side parses "[grass status N NAME]" back into a GrassError.
  std::string msg = "[grass status " + std::to_string(static_cast<int>(status)) + " " +
                    StatusName(status) + "] " + grass_last_error_message();
  return ffi::Error(CodeOf(status), std::move(msg));
}

ffi::Error CpuDevice(Device* out) {
  // A failed creation is not cached, so a later call tries again and reports its own error.
  static std::mutex mu;
  static grass_context* ctx = nullptr;
  std::lock_guard<std::mutex> lock(mu);
  if (ctx == nullptr) {
    grass_status s = grass_context_create_cpu(&ctx);
    if (s != GRASS_OK) return StatusError(s);
  }
  *out = Device{ctx, nullptr};
  return ffi::Error::Success();
}

ffi::Error CudaDevice(int32_t ordinal, void* stream, Device* out) {
  static std::mutex mu;
  static std::map<int32_t, grass_context*> contexts;
  const grass_context* ctx = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = contexts.find(ordinal);
    if (it == contexts.end()) {
      grass_context* created = nullptr;
      grass_status s = grass_context_create_cuda(ordinal, &created);
      if (s != GRASS_OK) return StatusError(s);
      it = contexts.emplace(ordinal, created).first;
    }
    ctx = it->second;
  }
  *out = Device{ctx, stream};
  return ffi::Error::Success();
}

}  // namespace grass_jax
