// One libgrass context per platform and device, created on first use and kept for the life of
// the process (XLA may run a handler until exit; tearing a CUDA context down then would race
// with the driver's own shutdown).
#ifndef GRASS_JAX_CONTEXTS_H_
#define GRASS_JAX_CONTEXTS_H_

#include <cstdint>

#include "grass.h"
#include "xla/ffi/api/ffi.h"

namespace grass_jax {

// Where an op runs: the libgrass context and the stream it enqueues on (NULL on CPU).
struct Device {
  const grass_context* ctx;
  void* stream;
};

// Turns a failed libgrass call into an FFI error carrying the status and
// grass_last_error_message(); must run on the thread that made the call.
xla::ffi::Error StatusError(grass_status status);

// The CPU context (host pointers).
xla::ffi::Error CpuDevice(Device* out);

// The CUDA context of device `ordinal`, borrowing `stream`.
xla::ffi::Error CudaDevice(int32_t ordinal, void* stream, Device* out);

}  // namespace grass_jax

#endif  // GRASS_JAX_CONTEXTS_H_
