// The kernels the stand-in driver can launch (kernels.cpp), by name.
#pragma once
#include <cstddef>
#include <string>

namespace host_cuda {

constexpr unsigned kMaxThreads = 1024;  // threads per block of the device

struct KernelInfo {
    const char* name;
    size_t nparams;
    const size_t* sizes;    // bytes of each parameter
    const bool* pointers;   // which parameters are addresses
    unsigned max_threads;   // __launch_bounds__, else kMaxThreads
    void* fn;
    void (*call)(void* fn, void** params);
};

// The kernel `name` of kernels/*.cu, or null.
const KernelInfo* find_kernel(const std::string& name);

// Writes " (block (x, y, z), thread (x, y, z))" of the running kernel thread to buf, or "".
void where(char* buf, size_t len);

// Runs every block of the grid, one after another, each as fibers on this thread.
void run_grid(const KernelInfo& k, const unsigned grid[3], const unsigned block[3], void** params);

}  // namespace host_cuda
