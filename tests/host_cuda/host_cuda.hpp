// What the parts of the host stand-in share: libcuda.so.1 (driver.cpp, kernels.cpp) owns the
// device memory, the streams and the memcheck; libcublas.so.13 (cublas.cpp) enqueues its work
// and checks its ranges through these.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace host_cuda {

// CUresult values the stand-in returns (cuda.h).
enum Result : int {
    SUCCESS = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    NO_DEVICE = 100,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_CONTEXT = 201,
    CONTEXT_ALREADY_CURRENT = 202,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    NOT_READY = 600,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_OUT_OF_RESOURCES = 701,
    NOT_SUPPORTED = 801,
    STREAM_CAPTURE_UNSUPPORTED = 900,
    STREAM_CAPTURE_INVALIDATED = 901,
    STREAM_CAPTURE_UNMATCHED = 903,
    STREAM_CAPTURE_IMPLICIT = 906,
    STREAM_CAPTURE_WRONG_THREAD = 908,
    UNKNOWN = 999,
};

// A region of device memory an operation touches: [addr, addr + bytes).
struct Range {
    uintptr_t addr;
    size_t bytes;
    bool write;
    const char* what;  // the argument's name, for messages
};

// Serializes all device work and bookkeeping of the process (one "device").
void lock();
void unlock();

// Checks that `r` lies inside one live allocation; otherwise reports (stderr, naming `op`) and
// returns false.
bool check_range(const char* op, const Range& r);

// Runs `fn` with the allocations that hold `ranges` accessible (device memory is otherwise
// inaccessible to the host), then checks their guard bytes. Returns ILLEGAL_ADDRESS when a
// range is not device memory.
int with_access(const char* op, const std::vector<Range>& ranges, const std::function<void()>& fn);

// Whether `stream` is a live stream (or the legacy/per-thread default stream).
bool stream_ok(void* stream);

// Queues `op` on `stream` (it runs when something waits for it, in stream order) or, while the
// stream is being captured, appends it to the capture. `op` returns a CUresult, which the
// stream's next synchronization returns when it is an error.
int enqueue(void* stream, const char* name, std::function<int()> op);

// Whether a context is current on the calling thread.
bool has_context();

// Memcheck errors reported so far.
int errors();

}  // namespace host_cuda
