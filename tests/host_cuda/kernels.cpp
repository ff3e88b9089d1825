// grass's kernels (kernels/*.cu, the same sources NVRTC compiles) built into the stand-in
// driver, each under its own name with its parameter list taken from its declaration, and
// the fibers that run a launch's blocks (fibers.h).
#include <sys/mman.h>

#include <cstdio>
#include <functional>
#include <cstdlib>
#include <tuple>
#include <type_traits>
#include <utility>

#define CUDA_HOST_THREADS "../host_cuda/fibers.h"
#include "../host_kernels/cuda_host.h"

#include "../../kernels/adamw.cu"
#include "../../kernels/row_scores.cu"
#include "../../kernels/select.cu"
#include "../../kernels/sparse_grad.cu"
#include "../../kernels/state_refresh.cu"

#include "kernels.hpp"

// ---- fibers --------------------------------------------------------------------------------

namespace host_fiber {

double* lanes = nullptr;

namespace {

constexpr size_t kStack = 64 << 10;  // bytes of stack per fiber, below a guard page

struct Fiber {
    void* sp = nullptr;
    bool done = false;
    HostDim tid;
};

void* sched_sp = nullptr;
Fiber* fibers = nullptr;
Fiber* current = nullptr;
char* stacks = nullptr;  // kMaxThreads stacks, each after a guard page
const std::function<void()>* body = nullptr;

char* stack_top(unsigned i) { return stacks + (size_t)(i + 1) * (kStack + 4096); }

}  // namespace
}  // namespace host_fiber

// Saves the callee-saved registers and the stack pointer of the running code in *from and
// resumes the code whose stack pointer is `to` (System V x86-64).
extern "C" void host_fiber_switch(void** from, void* to);
#if defined(__x86_64__)
asm(R"(
    .pushsection .text
    .globl host_fiber_switch
    .type host_fiber_switch, @function
host_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size host_fiber_switch, .-host_fiber_switch
    .popsection
)");
#else
#error "tests/host_cuda switches fibers with x86-64 assembly only"
#endif

namespace host_fiber {
namespace {

unsigned count = 0;  // threads of the running block

// Passes control from the current fiber to the next unfinished one of this pass, or back to the
// scheduler after the last: one switch per thread and barrier.
void pass_on() {
    Fiber* me = current;
    Fiber* next = nullptr;
    for (Fiber* f = me + 1; f < fibers + count; ++f)
        if (!f->done) {
            next = f;
            break;
        }
    if (next != nullptr) {
        current = next;
        threadIdx = next->tid;
        host_fiber_switch(&me->sp, next->sp);
    } else {
        host_fiber_switch(&me->sp, sched_sp);
    }
    current = me;
    threadIdx = me->tid;
}

[[noreturn]] void start() {
    (*body)();
    current->done = true;
    pass_on();
    std::abort();  // a finished fiber is never resumed
}

}  // namespace

void barrier() {
    if (current == nullptr) {
        std::fprintf(stderr, "grass host CUDA: __syncthreads outside a kernel\n");
        std::abort();
    }
    pass_on();
}

// Runs one block of `n` threads of `blockDim` shape: each fiber to its next barrier or end, in
// thread order, until all have ended.
void run_block(unsigned n, const std::function<void()>& fn) {
    if (stacks == nullptr) {
        size_t bytes = (size_t)(host_cuda::kMaxThreads + 1) * (kStack + 4096);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::perror("grass host CUDA: fiber stacks");
            std::abort();
        }
        stacks = static_cast<char*>(p);
        for (unsigned i = 0; i <= host_cuda::kMaxThreads; ++i) mprotect(stacks + (size_t)i * (kStack + 4096), 4096, PROT_NONE);
        fibers = new Fiber[host_cuda::kMaxThreads];
        lanes = new double[host_cuda::kMaxThreads];
    }
    body = &fn;
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = fibers[t];
        f.done = false;
        f.tid = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
        auto* sp = reinterpret_cast<uintptr_t*>(stack_top(t));
        *--sp = 0;                                     // start's (absent) return address
        *--sp = reinterpret_cast<uintptr_t>(&start);  // where the first switch returns to
        for (int r = 0; r < 6; ++r) *--sp = 0;         // rbp, rbx, r12-r15
        f.sp = sp;
    }
    count = n;
    // Each pass runs every unfinished fiber, in thread order, to its next barrier or its end.
    for (;;) {
        Fiber* first = nullptr;
        for (unsigned t = 0; t < n && first == nullptr; ++t)
            if (!fibers[t].done) first = &fibers[t];
        if (first == nullptr) break;
        current = first;
        threadIdx = first->tid;
        host_fiber_switch(&sched_sp, first->sp);
        current = nullptr;
    }
    body = nullptr;
}

}  // namespace host_fiber

// ---- the kernel table ----------------------------------------------------------------------

namespace {

template <class... A>
struct Params {
    static constexpr size_t count = sizeof...(A);
    static constexpr size_t sizes[sizeof...(A)] = {sizeof(A)...};
    static constexpr bool pointers[sizeof...(A)] = {std::is_pointer_v<A>...};
    template <size_t... I>
    static void call(void (*k)(A...), void** p, std::index_sequence<I...>) {
        k(*static_cast<std::remove_cv_t<A>*>(p[I])...);
    }
};

template <class... A>
constexpr host_cuda::KernelInfo info(const char* name, void (*k)(A...), unsigned max_threads) {
    return host_cuda::KernelInfo{name, Params<A...>::count, Params<A...>::sizes,
                                 Params<A...>::pointers, max_threads, reinterpret_cast<void*>(k),
                                 [](void* f, void** p) {
                                     Params<A...>::call(reinterpret_cast<void (*)(A...)>(f), p,
                                                        std::index_sequence_for<A...>{});
                                 }};
}

// Threads per block each kernel may be launched with: its __launch_bounds__, else the device's
// limit.
const host_cuda::KernelInfo kKernels[] = {
    info("row_norms", &row_norms, NORM_THREADS),
    info("select_rows", &select_rows, SEL_THREADS),
    info("gather_cols", &gather_cols, host_cuda::kMaxThreads),
    info("scale_rows", &scale_rows, host_cuda::kMaxThreads),
    info("step_check", &step_check, host_cuda::kMaxThreads),
    info("step_prepare", &step_prepare, host_cuda::kMaxThreads),
    info("decay_all", &decay_all, host_cuda::kMaxThreads),
    info("sparse_adamw_step", &sparse_adamw_step, host_cuda::kMaxThreads),
    info("adamw_step", &adamw_step, host_cuda::kMaxThreads),
    info("sq_norm", &sq_norm, host_cuda::kMaxThreads),
    info("residual_check", &residual_check, host_cuda::kMaxThreads),
    info("residual_prepare", &residual_prepare, host_cuda::kMaxThreads),
    info("residual_apply", &residual_apply, host_cuda::kMaxThreads),
    info("carry_rows", &carry_rows, CARRY_THREADS),
};

}  // namespace

namespace host_cuda {

const KernelInfo* find_kernel(const std::string& name) {
    for (const auto& k : kKernels)
        if (name == k.name) return &k;
    return nullptr;
}

bool g_in_kernel = false;

void where(char* buf, size_t len) {
    if (!g_in_kernel) {
        buf[0] = 0;
        return;
    }
    std::snprintf(buf, len, " (block (%u, %u, %u), thread (%u, %u, %u))", blockIdx.x, blockIdx.y,
                  blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
}

void run_grid(const KernelInfo& k, const unsigned grid[3], const unsigned block[3], void** params) {
    g_in_kernel = true;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    const unsigned n = block[0] * block[1] * block[2];
    const std::function<void()> body = [&] { k.call(k.fn, params); };
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = {x, y, z};
                host_fiber::run_block(n, body);
            }
    g_in_kernel = false;
}

}  // namespace host_cuda
