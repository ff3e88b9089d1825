// The few CUDA driver calls the handlers need, loaded at run time from libcuda.so.1 so that
// the binding builds on machines without CUDA.
#ifndef GRASS_JAX_CUDA_DRIVER_H_
#define GRASS_JAX_CUDA_DRIVER_H_

#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace grass_jax {

// Copies a 4-byte scalar from device memory to `host` on `stream` and waits for that stream.
xla::ffi::Error CopyScalarToHost(const uint32_t* device, uint32_t* host, void* stream);

}  // namespace grass_jax

#endif  // GRASS_JAX_CUDA_DRIVER_H_
