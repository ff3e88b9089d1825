// libcuda.so.1 of the host stand-in: the CUDA driver API calls grass and its tests make, on
// the host. One device ("grass host stand-in", compute capability 9.0). Work enqueued on a
// stream waits in the stream's queue until something waits for it; then the streams' ready
// work runs one operation at a time, the streams taking turns, as far as stream order,
// cuStreamWaitEvent and the legacy stream's implicit synchronization allow, so work of two
// streams that nothing orders overlaps (GRASS_HOST_CUDA_ORDER=lazy: only the awaited work
// runs, so unawaited work has not happened yet). A stream being captured records its work
// into the graph instead.
//
// Memcheck: device memory lives in a reserved address range, one allocation per run of pages
// with an inaccessible page after it, its end placed as close to that page as 256-byte
// alignment allows (the few bytes between hold a canary). All of it is inaccessible to the
// host except while a copy, fill, GEMM or kernel that was given it runs, so a kernel reaching
// outside the allocations it was passed, a use after free, or host code reading device memory
// faults, and the fault is reported with the operation's name. Copies and fills are checked
// against the live allocations before they run, kernel arguments at launch.
#include <dlfcn.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "host_cuda.hpp"
#include "kernels.hpp"

#define API extern "C" __attribute__((visibility("default")))

extern "C" __attribute__((visibility("default"))) const char grass_host_cuda_stand_in[] =
    "grass host stand-in";

namespace host_cuda {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kArena = size_t(1) << 40;      // reserved address space
constexpr size_t kTotalMem = size_t(16) << 30;  // the device's memory
constexpr uint8_t kPoison = 0xFF;               // fresh allocations (NaN, -1)
constexpr uint8_t kCanary = 0xA5;               // between an allocation's end and its guard

std::recursive_mutex g_lock;
std::atomic<int> g_errors{0};

struct Alloc {
    uint64_t id;
    uintptr_t base;    // what cuMemAlloc returned
    size_t size;
    uintptr_t region;  // its pages: [region, region + region_len), then a guard page
    size_t region_len;
    bool live;
    void* ctx;
    const char* freed_by;
};

struct Ctx {
    bool primary;
    int refs;  // primary: retain count
    bool live;
};

struct Graph;

struct Stream;

// All work of `stream` enqueued up to its `seq`-th operation.
struct Ticket {
    Stream* stream = nullptr;
    uint64_t seq = 0;
};

struct Pending {
    uint64_t seq;
    std::string name;
    std::vector<Ticket> after;  // work of other streams this operation waits for
    std::function<int()> run;   // empty: a wait only
};

struct Stream {
    bool live = true;
    bool nonblocking = false;  // CU_STREAM_NON_BLOCKING: no implicit sync with the legacy stream
    Graph* capture = nullptr;  // the graph being captured into
    int mode = 0;
    std::thread::id capture_thread;
    bool invalidated = false;
    std::deque<Pending> queue;
    uint64_t enqueued = 0, done = 0;
    int error = 0;  // the first failure of its work, returned by its next synchronization
};

struct Event {
    bool live = true;
    unsigned flags = 0;
    bool recorded = false;
    double time_ms = 0;
    Ticket last;  // the work its latest cuEventRecord marks
};

struct Op {
    std::string name;
    std::function<int()> run;
};

struct Graph {
    std::vector<Op> ops;
    bool live = true;
};

struct Module {
    std::set<std::string> names;
    bool live = true;
};

struct Function {
    const KernelInfo* kernel;
    Module* module;
};

char* g_arena = nullptr;
size_t g_next = 0;  // bump offset into the arena (addresses are never reused)
size_t g_live_bytes = 0;
uint64_t g_ids = 0;
std::map<uintptr_t, Alloc> g_allocs;  // by region start, freed ones kept for the reports
Ctx g_primary = {true, 0, false};
std::set<Ctx*> g_contexts = {&g_primary};
std::set<Stream*> g_streams;
std::set<Event*> g_events;
std::set<Module*> g_modules;
std::set<Function*> g_functions;
std::set<Graph*> g_graphs;
Stream g_default_stream;
bool g_initialized = false;
thread_local Ctx* t_current = nullptr;
const char* volatile g_op = nullptr;  // the operation running on device memory, for faults
struct sigaction g_prev_segv;

void say(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > 0) {
        size_t len = std::min<size_t>((size_t)n, sizeof buf - 1);
        ssize_t w = write(2, buf, len);
        (void)w;
    }
}

// A memcheck error: counted and printed.
void report(const char* fmt, ...) {
    char buf[900];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_errors++;
    say("grass host CUDA memcheck: %s\n", buf);
}

bool in_arena(uintptr_t a) {
    return g_arena != nullptr && a >= (uintptr_t)g_arena && a < (uintptr_t)g_arena + kArena;
}

// The allocation whose region or following guard page holds `a`, live or freed.
const Alloc* near_alloc(uintptr_t a) {
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    const Alloc& al = it->second;
    return a < al.region + al.region_len + kPage ? &al : nullptr;
}

// Says what device address `a` is, for a report.
std::string describe(uintptr_t a, bool in_op = true) {
    char buf[300];
    const Alloc* al = near_alloc(a);
    if (al == nullptr) {
        std::snprintf(buf, sizeof buf, "%#lx is not in any allocation", (unsigned long)a);
    } else if (!al->live) {
        std::snprintf(buf, sizeof buf, "%#lx is in allocation #%lu (%zu bytes at %#lx), freed by %s",
                      (unsigned long)a, (unsigned long)al->id, al->size, (unsigned long)al->base,
                      al->freed_by);
    } else if (a >= al->base + al->size) {
        std::snprintf(buf, sizeof buf, "%#lx is %zu bytes past the end of allocation #%lu (%zu bytes at %#lx)",
                      (unsigned long)a, (size_t)(a - al->base - al->size), (unsigned long)al->id,
                      al->size, (unsigned long)al->base);
    } else if (a < al->base) {
        std::snprintf(buf, sizeof buf, "%#lx is %zu bytes before allocation #%lu (%zu bytes at %#lx)",
                      (unsigned long)a, (size_t)(al->base - a), (unsigned long)al->id, al->size,
                      (unsigned long)al->base);
    } else {
        std::snprintf(buf, sizeof buf, "%#lx is at byte %zu of allocation #%lu (%zu bytes at %#lx), %s",
                      (unsigned long)a, (size_t)(a - al->base), (unsigned long)al->id, al->size,
                      (unsigned long)al->base,
                      in_op ? "which this operation was not given" : "device memory, which the host cannot read");
    }
    return buf;
}

void on_segv(int sig, siginfo_t* si, void* uc) {
    uintptr_t a = (uintptr_t)si->si_addr;
    if (in_arena(a)) {
        const char* op = g_op;
        char thread[96];
        where(thread, sizeof thread);
        say("grass host CUDA memcheck: %s%s accessed device memory it may not: %s\n",
            op != nullptr ? op : "host code (outside any CUDA call)", thread,
            describe(a, op != nullptr).c_str());
        std::abort();
    }
    // Not device memory: whoever handled SIGSEGV before (the Rust runtime, a sanitizer).
    if (g_prev_segv.sa_flags & SA_SIGINFO) {
        if (g_prev_segv.sa_sigaction != nullptr) {
            g_prev_segv.sa_sigaction(sig, si, uc);
            return;
        }
    } else if (g_prev_segv.sa_handler != SIG_DFL && g_prev_segv.sa_handler != SIG_IGN) {
        g_prev_segv.sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);  // the access faults again, now fatally
}

void init_once() {
    if (g_arena != nullptr) return;
    void* p = mmap(nullptr, kArena, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        say("grass host CUDA: cannot reserve the device address range\n");
        std::abort();
    }
    g_arena = static_cast<char*>(p);
    g_next = kPage;  // never hand out the arena's first page
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_prev_segv);
}

Alloc* live_alloc(uintptr_t addr, size_t bytes) {
    auto it = g_allocs.upper_bound(addr);
    if (it == g_allocs.begin()) return nullptr;
    --it;
    Alloc& al = it->second;
    if (!al.live || addr < al.base || addr - al.base > al.size || bytes > al.size - (addr - al.base))
        return nullptr;
    return &al;
}

bool current_ok() { return t_current != nullptr && t_current->live; }

void set_access(const Alloc& a, bool open) {
    if (mprotect((void*)a.region, a.region_len, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0) {
        say("grass host CUDA: mprotect failed\n");
        std::abort();
    }
}

// Whether the bytes between the allocation's end and its guard page are intact (else reports
// and restores them).
bool check_canary(const char* op, const Alloc& a) {
    uint8_t* p = (uint8_t*)(a.base + a.size);
    uint8_t* end = (uint8_t*)(a.region + a.region_len);
    size_t first = 0, changed = 0;
    for (uint8_t* q = p; q < end; ++q) {
        if (*q != kCanary) {
            if (changed++ == 0) first = (size_t)(q - p);
            *q = kCanary;
        }
    }
    if (changed > 0)
        report("%s wrote past the end of allocation #%lu (%zu bytes at %#lx): %zu byte(s) from byte %zu after its end",
               op, (unsigned long)a.id, a.size, (unsigned long)a.base, changed, first);
    return changed == 0;
}

bool capturing_here(const Stream* s) {
    (void)s;
    for (Stream* o : g_streams) {
        if (o->capture == nullptr) continue;
        if (o->mode == 0 || o->capture_thread == std::this_thread::get_id()) return true;
    }
    return false;
}

// An operation that waits or allocates while a capture forbids it: the capture is invalidated.
int refuse_during_capture(const char* what) {
    for (Stream* o : g_streams) {
        if (o->capture == nullptr) continue;
        if (o->mode == 0 || o->capture_thread == std::this_thread::get_id()) {
            o->invalidated = true;
            say("grass host CUDA: %s during a stream capture (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)\n", what);
            return STREAM_CAPTURE_UNSUPPORTED;
        }
    }
    return SUCCESS;
}

Stream* stream_of(void* h) {
    if (h == nullptr || h == (void*)1 || h == (void*)2) return &g_default_stream;
    Stream* s = static_cast<Stream*>(h);
    return g_streams.count(s) && s->live ? s : nullptr;
}

double now_ms() {
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

struct Lock {
    Lock() { g_lock.lock(); }
    ~Lock() { g_lock.unlock(); }
};

}  // namespace

void lock() { g_lock.lock(); }
void unlock() { g_lock.unlock(); }
int errors() { return g_errors; }
bool has_context() { return current_ok(); }

bool check_range(const char* op, const Range& r) {
    if (r.bytes == 0) return true;
    if (live_alloc(r.addr, r.bytes) != nullptr) return true;
    if (!in_arena(r.addr)) {
        report("%s: %s = %#lx (%zu bytes) is not device memory (a host pointer?)", op, r.what,
               (unsigned long)r.addr, r.bytes);
    } else {
        const Alloc* al = near_alloc(r.addr);
        if (al != nullptr && al->live && r.addr >= al->base && r.addr <= al->base + al->size) {
            report("%s: %s = %#lx (%zu bytes) runs %zu bytes past the end of allocation #%lu (%zu bytes at %#lx)",
                   op, r.what, (unsigned long)r.addr, r.bytes,
                   (size_t)(r.addr + r.bytes - al->base - al->size), (unsigned long)al->id,
                   al->size, (unsigned long)al->base);
        } else {
            report("%s: %s (%zu bytes): %s", op, r.what, r.bytes, describe(r.addr).c_str());
        }
    }
    return false;
}

int with_access(const char* op, const std::vector<Range>& ranges, const std::function<void()>& fn) {
    std::vector<const Alloc*> open;
    for (const Range& r : ranges) {
        const Alloc* a = live_alloc(r.addr, r.bytes);
        if (a == nullptr) {
            if (r.bytes > 0)
                check_range(op, r);
            else
                report("%s: %s %#lx: %s", op, r.what, (unsigned long)r.addr, describe(r.addr).c_str());
            return ILLEGAL_ADDRESS;
        }
        bool seen = false;
        for (const Alloc* o : open) seen |= o == a;
        if (!seen) open.push_back(a);
    }
    for (const Alloc* a : open) set_access(*a, true);
    g_op = op;
    fn();
    g_op = nullptr;
    bool intact = true;
    for (const Alloc* a : open) {
        intact &= check_canary(op, *a);
        set_access(*a, false);
    }
    return intact ? SUCCESS : ILLEGAL_ADDRESS;
}

bool stream_ok(void* stream) { return stream_of(stream) != nullptr; }

namespace {

bool reached(const Ticket& t) { return t.stream == nullptr || t.stream->done >= t.seq; }

std::vector<Stream*> all_streams() {
    std::vector<Stream*> v = {&g_default_stream};
    v.insert(v.end(), g_streams.begin(), g_streams.end());
    return v;
}

size_t g_turn = 0;  // which stream goes first at the next step

}  // namespace

// Runs one queued operation whose stream order and waits allow it, taking the streams in
// turn; false when none can run.
bool step() {
    std::vector<Stream*> v = all_streams();
    for (size_t i = 0; i < v.size(); ++i) {
        Stream* s = v[(g_turn + i) % v.size()];
        if (s->queue.empty()) continue;
        Pending& p = s->queue.front();
        bool ready = true;
        for (const Ticket& t : p.after) ready &= reached(t);
        if (!ready) continue;
        Pending op = std::move(p);
        s->queue.pop_front();
        int rc = op.run ? op.run() : (int)SUCCESS;
        if (rc != SUCCESS && s->error == SUCCESS) s->error = rc;
        s->done = op.seq;
        g_turn = (g_turn + i + 1) % v.size();
        return true;
    }
    return false;
}

namespace {

template <class Done>
void run_until(Done done) {
    while (!done()) {
        if (!step()) {
            say("grass host CUDA: queued work cannot make progress (a wait that never completes)\n");
            std::abort();
        }
    }
}

}  // namespace

namespace {

// Runs the next operation of `s`, first (recursively) what it waits for on other streams:
// the least work that lets `s` move on, so that another stream's unawaited work stays queued.
void advance(Stream* s) {
    Pending& p = s->queue.front();
    for (const Ticket& t : p.after) {
        if (!reached(t)) {
            advance(t.stream);
            return;
        }
    }
    Pending op = std::move(p);
    s->queue.pop_front();
    int rc = op.run ? op.run() : (int)SUCCESS;
    if (rc != SUCCESS && s->error == SUCCESS) s->error = rc;
    s->done = op.seq;
}

}  // namespace

// How waiting for one stream's work runs the queues: "interleave" (the default) runs every
// stream's ready work, the streams taking turns operation by operation, until that work is
// done, so that work of two streams not ordered by a wait overlaps; "lazy"
// (GRASS_HOST_CUDA_ORDER=lazy) runs only that work and what it waits for, so that another
// stream's work not waited for has not happened yet.
bool lazy() {
    static const bool v = [] {
        const char* e = std::getenv("GRASS_HOST_CUDA_ORDER");
        return e != nullptr && std::strcmp(e, "lazy") == 0;
    }();
    return v;
}

// Runs the work of `s` queued so far.
void drain(Stream* s) {
    if (!lazy()) return run_until([s] { return s->queue.empty(); });
    while (!s->queue.empty()) advance(s);
}

// Runs everything queued, the streams taking turns operation by operation.
void drain_all() {
    run_until([] {
        for (Stream* s : all_streams())
            if (!s->queue.empty()) return false;
        return true;
    });
}

// Runs the work `t` marks.
void drain_to(const Ticket& t) {
    if (!lazy()) return run_until([&t] { return reached(t); });
    while (!reached(t)) advance(t.stream);
}

// The work that an operation enqueued on `s` now must follow besides its own stream's: the
// legacy stream waits for every blocking stream, and a blocking stream for the legacy one.
std::vector<Ticket> implicit_after(Stream* s) {
    std::vector<Ticket> after;
    if (s == &g_default_stream) {
        for (Stream* o : g_streams)
            if (o->live && !o->nonblocking && o->enqueued > o->done) after.push_back({o, o->enqueued});
    } else if (!s->nonblocking && g_default_stream.enqueued > g_default_stream.done) {
        after.push_back({&g_default_stream, g_default_stream.enqueued});
    }
    return after;
}

// Queues `op` on `s` after `after`; returns its ticket.
Ticket push(Stream* s, const char* name, std::vector<Ticket> after, std::function<int()> op) {
    std::vector<Ticket> all = implicit_after(s);
    all.insert(all.end(), after.begin(), after.end());
    uint64_t seq = ++s->enqueued;
    s->queue.push_back({seq, name, std::move(all), std::move(op)});
    return {s, seq};
}

int enqueue_after(void* stream, const char* name, std::vector<Ticket> after, std::function<int()> op,
                  Ticket* ticket) {
    Stream* s = stream_of(stream);
    if (s == nullptr) {
        report("%s on stream %p, which is not a live stream (destroyed?)", name, stream);
        return INVALID_HANDLE;
    }
    if (s->capture != nullptr) {
        if (s->mode == 1 && s->capture_thread != std::this_thread::get_id()) {
            s->invalidated = true;
            return STREAM_CAPTURE_WRONG_THREAD;
        }
        s->capture->ops.push_back({name, std::move(op)});
        if (ticket != nullptr) *ticket = {};
        return SUCCESS;
    }
    if (s == &g_default_stream && capturing_here(s)) {
        say("grass host CUDA: %s on the legacy default stream during a capture (CUDA_ERROR_STREAM_CAPTURE_IMPLICIT)\n", name);
        for (Stream* o : g_streams)
            if (o->capture != nullptr) o->invalidated = true;
        return STREAM_CAPTURE_IMPLICIT;
    }
    Ticket t = push(s, name, std::move(after), std::move(op));
    if (ticket != nullptr) *ticket = t;
    return SUCCESS;
}

int enqueue(void* stream, const char* name, std::function<int()> op) {
    return enqueue_after(stream, name, {}, std::move(op), nullptr);
}

// The first failure of queued work on `s` (then cleared), as its synchronization returns it.
int take_error(Stream* s) {
    int e = s->error;
    s->error = SUCCESS;
    return e;
}

}  // namespace host_cuda

using namespace host_cuda;

#define NEED_CONTEXT()                            \
    do {                                          \
        if (!g_initialized) return NOT_INITIALIZED; \
        if (!current_ok()) return INVALID_CONTEXT; \
    } while (0)

// ---- errors ---------------------------------------------------------------------------------

namespace {
struct ErrText {
    int code;
    const char* name;
    const char* text;
};
const ErrText kErrors[] = {
    {SUCCESS, "CUDA_SUCCESS", "no error"},
    {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {LAUNCH_OUT_OF_RESOURCES, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", "too many resources requested for launch"},
    {NOT_SUPPORTED, "CUDA_ERROR_NOT_SUPPORTED", "operation not supported"},
    {STREAM_CAPTURE_UNSUPPORTED, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED", "operation not permitted when stream is capturing"},
    {STREAM_CAPTURE_INVALIDATED, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", "operation failed due to a previous error during capture"},
    {STREAM_CAPTURE_UNMATCHED, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED", "capture was not initiated in this stream"},
    {STREAM_CAPTURE_IMPLICIT, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT", "operation would make the legacy stream depend on a capturing blocking stream"},
    {STREAM_CAPTURE_WRONG_THREAD, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD", "attempt to terminate a thread-local capture sequence from another thread"},
    {UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};
}  // namespace

API int cuGetErrorName(int e, const char** s) {
    for (const auto& t : kErrors)
        if (t.code == e) return *s = t.name, SUCCESS;
    *s = nullptr;
    return INVALID_VALUE;
}

API int cuGetErrorString(int e, const char** s) {
    for (const auto& t : kErrors)
        if (t.code == e) return *s = t.text, SUCCESS;
    *s = nullptr;
    return INVALID_VALUE;
}

// The driver's private tables (NVRTC asks for one when it finds a driver): none here.
API int cuGetExportTable(const void** table, const void* id) {
    (void)id;
    if (table != nullptr) *table = nullptr;
    return NOT_SUPPORTED;
}

// ---- device and contexts --------------------------------------------------------------------

API int cuInit(unsigned flags) {
    if (flags != 0) return INVALID_VALUE;
    Lock l;
    init_once();
    g_initialized = true;
    return SUCCESS;
}

API int cuDriverGetVersion(int* v) {
    if (v == nullptr) return INVALID_VALUE;
    *v = 13000;
    return SUCCESS;
}

API int cuDeviceGetCount(int* n) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (n == nullptr) return INVALID_VALUE;
    *n = 1;
    return SUCCESS;
}

API int cuDeviceGet(int* dev, int ordinal) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev == nullptr) return INVALID_VALUE;
    if (ordinal != 0) return INVALID_DEVICE;
    *dev = 0;
    return SUCCESS;
}

API int cuDeviceGetName(char* name, int len, int dev) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    if (name == nullptr || len <= 0) return INVALID_VALUE;
    std::snprintf(name, (size_t)len, "%s", grass_host_cuda_stand_in);
    return SUCCESS;
}

API int cuDeviceTotalMem_v2(size_t* bytes, int dev) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    *bytes = kTotalMem;
    return SUCCESS;
}

API int cuDeviceGetAttribute(int* v, int attr, int dev) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    if (v == nullptr) return INVALID_VALUE;
    switch (attr) {
        case 1: *v = 1024; break;            // MAX_THREADS_PER_BLOCK
        case 2: *v = 1024; break;            // MAX_BLOCK_DIM_X
        case 3: *v = 1024; break;            // MAX_BLOCK_DIM_Y
        case 4: *v = 64; break;              // MAX_BLOCK_DIM_Z
        case 5: *v = 2147483647; break;      // MAX_GRID_DIM_X
        case 6: *v = 65535; break;           // MAX_GRID_DIM_Y
        case 7: *v = 65535; break;           // MAX_GRID_DIM_Z
        case 8: *v = 49152; break;           // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: *v = 32; break;             // WARP_SIZE
        case 12: *v = 65536; break;          // MAX_REGISTERS_PER_BLOCK
        case 16: *v = 132; break;            // MULTIPROCESSOR_COUNT
        case 39: *v = 2048; break;           // MAX_THREADS_PER_MULTIPROCESSOR
        case 41: *v = 1; break;              // UNIFIED_ADDRESSING
        case 75: *v = 9; break;              // COMPUTE_CAPABILITY_MAJOR
        case 76: *v = 0; break;              // COMPUTE_CAPABILITY_MINOR
        case 97: *v = 232448; break;         // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: *v = 0; break;             // MEMORY_POOLS_SUPPORTED: cuMemAlloc only
        default:
            say("grass host CUDA: cuDeviceGetAttribute(%d) is not provided by the stand-in\n", attr);
            return INVALID_VALUE;
    }
    return SUCCESS;
}

API int cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    if (ctx == nullptr) return INVALID_VALUE;
    Lock l;
    g_primary.refs++;
    g_primary.live = true;
    *ctx = &g_primary;
    return SUCCESS;
}

namespace {
// A context goes: every allocation it owns is freed.
void context_gone(Ctx* c, const char* by) {
    drain_all();
    for (auto& [_, a] : g_allocs) {
        if (a.live && a.ctx == c) {
            a.live = false;
            a.freed_by = by;
            g_live_bytes -= a.size;
            set_access(a, false);
            madvise((void*)a.region, a.region_len, MADV_DONTNEED);
        }
    }
}
}  // namespace

API int cuDevicePrimaryCtxRelease_v2(int dev) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    Lock l;
    if (g_primary.refs <= 0) {
        report("cuDevicePrimaryCtxRelease without a matching retain");
        return INVALID_CONTEXT;
    }
    if (--g_primary.refs == 0) {
        g_primary.live = false;
        context_gone(&g_primary, "the release of the primary context");
    }
    return SUCCESS;
}

API int cuDevicePrimaryCtxGetState(int dev, unsigned* flags, int* active) {
    if (dev != 0) return INVALID_DEVICE;
    if (flags) *flags = 0;
    if (active) *active = g_primary.live ? 1 : 0;
    return SUCCESS;
}

API int cuCtxCreate_v4(void** ctx, void* params, unsigned flags, int dev) {
    (void)params;
    (void)flags;
    if (!g_initialized) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_DEVICE;
    Lock l;
    Ctx* c = new Ctx{false, 1, true};
    g_contexts.insert(c);
    *ctx = c;
    t_current = c;
    return SUCCESS;
}

API int cuCtxDestroy_v2(void* h) {
    Lock l;
    Ctx* c = static_cast<Ctx*>(h);
    if (!g_contexts.count(c) || c->primary || !c->live) return INVALID_CONTEXT;
    c->live = false;
    context_gone(c, "cuCtxDestroy");
    if (t_current == c) t_current = nullptr;
    return SUCCESS;
}

API int cuCtxGetCurrent(void** ctx) {
    if (!g_initialized) return NOT_INITIALIZED;
    if (ctx == nullptr) return INVALID_VALUE;
    *ctx = t_current;
    return SUCCESS;
}

API int cuCtxSetCurrent(void* h) {
    if (!g_initialized) return NOT_INITIALIZED;
    Lock l;
    Ctx* c = static_cast<Ctx*>(h);
    if (c != nullptr && (!g_contexts.count(c) || !c->live)) return INVALID_CONTEXT;
    t_current = c;
    return SUCCESS;
}

API int cuCtxGetDevice(int* dev) {
    NEED_CONTEXT();
    *dev = 0;
    return SUCCESS;
}

API int cuCtxSynchronize() {
    NEED_CONTEXT();
    Lock l;
    if (int rc = refuse_during_capture("cuCtxSynchronize")) return rc;
    drain_all();
    int first = SUCCESS;
    for (Stream* st : all_streams()) {
        int e = take_error(st);
        if (first == SUCCESS) first = e;
    }
    return first;
}

// ---- memory ---------------------------------------------------------------------------------

API int cuMemAlloc_v2(unsigned long long* out, size_t bytes) {
    NEED_CONTEXT();
    if (out == nullptr || bytes == 0) return INVALID_VALUE;
    Lock l;
    if (int rc = refuse_during_capture("cuMemAlloc")) return rc;
    size_t region_len = (bytes + kPage - 1) / kPage * kPage;
    if (bytes > kTotalMem - g_live_bytes || g_next + region_len + kPage > kArena) return OUT_OF_MEMORY;
    Alloc a;
    a.id = ++g_ids;
    a.region = (uintptr_t)g_arena + g_next;
    a.region_len = region_len;
    a.base = a.region + ((region_len - bytes) & ~size_t(255));
    a.size = bytes;
    a.live = true;
    a.ctx = t_current;
    a.freed_by = nullptr;
    g_next += region_len + kPage;
    set_access(a, true);
    std::memset((void*)a.region, kPoison, a.base + a.size - a.region);
    std::memset((void*)(a.base + a.size), kCanary, a.region + a.region_len - a.base - a.size);
    set_access(a, false);
    g_allocs[a.region] = a;
    g_live_bytes += bytes;
    *out = a.base;
    return SUCCESS;
}

API int cuMemFree_v2(unsigned long long p) {
    NEED_CONTEXT();
    if (p == 0) return SUCCESS;
    Lock l;
    if (int rc = refuse_during_capture("cuMemFree")) return rc;
    drain_all();  // cuMemFree waits for the device's work
    Alloc* a = live_alloc(p, 0);
    if (a == nullptr || a->base != p) {
        report("cuMemFree(%#llx): %s", p,
               a != nullptr ? "not the start of an allocation" : describe(p).c_str());
        return INVALID_VALUE;
    }
    a->live = false;
    a->freed_by = "cuMemFree";
    g_live_bytes -= a->size;
    madvise((void*)a->region, a->region_len, MADV_DONTNEED);
    return SUCCESS;
}

API int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    NEED_CONTEXT();
    Lock l;
    if (free_bytes) *free_bytes = kTotalMem - g_live_bytes;
    if (total) *total = kTotalMem;
    return SUCCESS;
}

namespace {

bool host_range_ok(const char* op, const char* what, const void* p, size_t bytes) {
    uintptr_t a = (uintptr_t)p;
    if (bytes > 0 && (in_arena(a) || in_arena(a + bytes - 1))) {
        report("%s: %s = %p is device memory where host memory is expected", op, what, p);
        return false;
    }
    if (bytes > 0 && p == nullptr) {
        report("%s: %s is NULL", op, what);
        return false;
    }
    return true;
}

// Queues a copy or fill on `stream`; `wait`: returns once it ran (the synchronous calls, which
// run on the legacy stream, and copies to pageable host memory).
int queue_copy(void* stream, const char* op, bool wait, std::function<int()> fn) {
    Ticket t;
    int rc = enqueue_after(stream, op, {}, std::move(fn), &t);
    if (rc != SUCCESS || !wait || t.stream == nullptr) return rc;
    drain_to(t);
    return take_error(t.stream);
}

int memset_on(void* stream, unsigned long long dst, uint8_t v, size_t n, const char* op, bool wait) {
    NEED_CONTEXT();
    if (n == 0) return SUCCESS;
    Lock l;
    if (!check_range(op, {dst, n, true, "dstDevice"})) return INVALID_VALUE;
    return queue_copy(stream, op, wait, [=] {
        return with_access(op, {{dst, n, true, "dstDevice"}}, [=] { std::memset((void*)dst, v, n); });
    });
}

int htod_on(void* stream, unsigned long long dst, const void* src, size_t n, const char* op, bool wait) {
    NEED_CONTEXT();
    if (n == 0) return SUCCESS;
    Lock l;
    if (!check_range(op, {dst, n, true, "dstDevice"}) || !host_range_ok(op, "srcHost", src, n))
        return INVALID_VALUE;
    // From pageable memory the driver stages the source before returning: it may change after.
    Stream* s = stream_of(stream);
    if (s != nullptr && s->capture == nullptr) {
        auto copy = std::make_shared<std::vector<uint8_t>>((const uint8_t*)src, (const uint8_t*)src + n);
        return queue_copy(stream, op, wait, [=] {
            return with_access(op, {{dst, n, true, "dstDevice"}},
                               [=] { std::memcpy((void*)dst, copy->data(), n); });
        });
    }
    return queue_copy(stream, op, wait, [=] {
        return with_access(op, {{dst, n, true, "dstDevice"}}, [=] { std::memcpy((void*)dst, src, n); });
    });
}

int dtoh_on(void* stream, void* dst, unsigned long long src, size_t n, const char* op) {
    NEED_CONTEXT();
    if (n == 0) return SUCCESS;
    Lock l;
    if (!check_range(op, {src, n, false, "srcDevice"}) || !host_range_ok(op, "dstHost", dst, n))
        return INVALID_VALUE;
    // To pageable memory the copy is complete when the call returns.
    return queue_copy(stream, op, true, [=] {
        return with_access(op, {{src, n, false, "srcDevice"}}, [=] { std::memcpy(dst, (void*)src, n); });
    });
}

int dtod_on(void* stream, unsigned long long dst, unsigned long long src, size_t n, const char* op, bool wait) {
    NEED_CONTEXT();
    if (n == 0) return SUCCESS;
    Lock l;
    if (!check_range(op, {dst, n, true, "dstDevice"}) || !check_range(op, {src, n, false, "srcDevice"}))
        return INVALID_VALUE;
    return queue_copy(stream, op, wait, [=] {
        return with_access(op, {{dst, n, true, "dstDevice"}, {src, n, false, "srcDevice"}},
                           [=] { std::memmove((void*)dst, (void*)src, n); });
    });
}

int sync_copy_allowed(const char* op) {
    Lock l;
    return refuse_during_capture(op);
}

}  // namespace

API int cuMemsetD8_v2(unsigned long long dst, unsigned char v, size_t n) {
    if (int rc = sync_copy_allowed("cuMemsetD8")) return rc;
    return memset_on(nullptr, dst, v, n, "cuMemsetD8", true);
}
API int cuMemsetD8Async(unsigned long long dst, unsigned char v, size_t n, void* s) {
    return memset_on(s, dst, v, n, "cuMemsetD8Async", false);
}
API int cuMemcpyHtoD_v2(unsigned long long dst, const void* src, size_t n) {
    if (int rc = sync_copy_allowed("cuMemcpyHtoD")) return rc;
    return htod_on(nullptr, dst, src, n, "cuMemcpyHtoD", true);
}
API int cuMemcpyHtoDAsync_v2(unsigned long long dst, const void* src, size_t n, void* s) {
    return htod_on(s, dst, src, n, "cuMemcpyHtoDAsync", false);
}
API int cuMemcpyDtoH_v2(void* dst, unsigned long long src, size_t n) {
    if (int rc = sync_copy_allowed("cuMemcpyDtoH")) return rc;
    return dtoh_on(nullptr, dst, src, n, "cuMemcpyDtoH");
}
API int cuMemcpyDtoHAsync_v2(void* dst, unsigned long long src, size_t n, void* s) {
    return dtoh_on(s, dst, src, n, "cuMemcpyDtoHAsync");
}
API int cuMemcpyDtoD_v2(unsigned long long dst, unsigned long long src, size_t n) {
    if (int rc = sync_copy_allowed("cuMemcpyDtoD")) return rc;
    return dtod_on(nullptr, dst, src, n, "cuMemcpyDtoD", true);
}
API int cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t n, void* s) {
    return dtod_on(s, dst, src, n, "cuMemcpyDtoDAsync", false);
}

// ---- streams and events ---------------------------------------------------------------------

API int cuStreamCreate(void** out, unsigned flags) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = new Stream();
    s->nonblocking = (flags & 1) != 0;  // CU_STREAM_NON_BLOCKING
    g_streams.insert(s);
    *out = s;
    return SUCCESS;
}

API int cuStreamCreateWithPriority(void** out, unsigned flags, int priority) {
    (void)priority;
    return cuStreamCreate(out, flags);
}

API int cuStreamDestroy_v2(void* h) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = static_cast<Stream*>(h);
    if (!g_streams.count(s) || !s->live) {
        report("cuStreamDestroy(%p): not a live stream", h);
        return INVALID_HANDLE;
    }
    drain(s);  // its queued work still runs
    s->live = false;  // kept, so that a later use of the handle is reported
    return SUCCESS;
}

API int cuStreamSynchronize(void* h) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = stream_of(h);
    if (s == nullptr) {
        report("cuStreamSynchronize(%p): not a live stream", h);
        return INVALID_HANDLE;
    }
    if (s->capture != nullptr) {
        s->invalidated = true;
        return STREAM_CAPTURE_UNSUPPORTED;
    }
    if (int rc = refuse_during_capture("cuStreamSynchronize")) return rc;
    drain(s);
    return take_error(s);
}

API int cuStreamQuery(void* h) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = stream_of(h);
    if (s == nullptr) return INVALID_HANDLE;
    step();  // a caller polling makes progress
    return s->queue.empty() ? SUCCESS : NOT_READY;
}

API int cuStreamWaitEvent(void* h, void* e, unsigned flags) {
    (void)flags;
    NEED_CONTEXT();
    Lock l;
    Stream* s = stream_of(h);
    Event* ev = static_cast<Event*>(e);
    if (s == nullptr) {
        report("cuStreamWaitEvent: stream %p is not a live stream", h);
        return INVALID_HANDLE;
    }
    if (!g_events.count(ev) || !ev->live) {
        report("cuStreamWaitEvent: event %p is not a live event", e);
        return INVALID_HANDLE;
    }
    if (s->capture != nullptr) {
        // Waiting inside a capture on an event recorded outside it joins work the graph does not hold.
        s->invalidated = true;
        say("grass host CUDA: cuStreamWaitEvent on a capturing stream for an event recorded outside the capture\n");
        return STREAM_CAPTURE_INVALIDATED;
    }
    if (reached(ev->last)) return SUCCESS;  // nothing recorded, or already done
    push(s, "cuStreamWaitEvent", {ev->last}, {});
    return SUCCESS;
}

API int cuEventCreate(void** out, unsigned flags) {
    NEED_CONTEXT();
    Lock l;
    Event* e = new Event();
    e->flags = flags;
    g_events.insert(e);
    *out = e;
    return SUCCESS;
}

API int cuEventDestroy_v2(void* h) {
    Lock l;
    Event* e = static_cast<Event*>(h);
    if (!g_events.count(e) || !e->live) {
        report("cuEventDestroy(%p): not a live event", h);
        return INVALID_HANDLE;
    }
    e->live = false;
    return SUCCESS;
}

API int cuEventRecord(void* h, void* stream) {
    NEED_CONTEXT();
    Lock l;
    Event* e = static_cast<Event*>(h);
    if (!g_events.count(e) || !e->live) {
        report("cuEventRecord(%p): not a live event", h);
        return INVALID_HANDLE;
    }
    Ticket t;
    int rc = enqueue_after(stream, "cuEventRecord", {}, [e] {
        e->recorded = true;
        e->time_ms = now_ms();
        return (int)SUCCESS;
    }, &t);
    if (rc == SUCCESS) e->last = t;
    return rc;
}

API int cuEventSynchronize(void* h) {
    NEED_CONTEXT();
    Lock l;
    Event* e = static_cast<Event*>(h);
    if (!g_events.count(e) || !e->live) {
        report("cuEventSynchronize(%p): not a live event", h);
        return INVALID_HANDLE;
    }
    if (int rc = refuse_during_capture("cuEventSynchronize")) return rc;
    drain_to(e->last);
    return e->last.stream != nullptr ? take_error(e->last.stream) : SUCCESS;
}

API int cuEventQuery(void* h) {
    Lock l;
    Event* e = static_cast<Event*>(h);
    if (!g_events.count(e) || !e->live) return INVALID_HANDLE;
    step();  // a caller polling makes progress
    return reached(e->last) ? SUCCESS : NOT_READY;
}

API int cuEventElapsedTime(float* ms, void* a, void* b) {
    Lock l;
    Event* s = static_cast<Event*>(a);
    Event* e = static_cast<Event*>(b);
    if (!g_events.count(s) || !g_events.count(e) || !s->live || !e->live) return INVALID_HANDLE;
    if ((s->flags | e->flags) & 2) return INVALID_HANDLE;  // CU_EVENT_DISABLE_TIMING
    if (!s->recorded || !e->recorded) return NOT_READY;
    *ms = (float)(e->time_ms - s->time_ms);
    return SUCCESS;
}

API int cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

// ---- graphs ---------------------------------------------------------------------------------

API int cuStreamBeginCapture_v2(void* h, int mode) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = stream_of(h);
    if (s == nullptr) return INVALID_HANDLE;
    if (s == &g_default_stream) return STREAM_CAPTURE_UNSUPPORTED;
    if (s->capture != nullptr) return INVALID_VALUE;
    s->capture = new Graph();
    s->mode = mode;
    s->capture_thread = std::this_thread::get_id();
    s->invalidated = false;
    return SUCCESS;
}

API int cuStreamEndCapture(void* h, void** graph) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = stream_of(h);
    if (s == nullptr) return INVALID_HANDLE;
    if (s->capture == nullptr) return STREAM_CAPTURE_UNMATCHED;
    if (s->mode == 1 && s->capture_thread != std::this_thread::get_id()) return STREAM_CAPTURE_WRONG_THREAD;
    Graph* g = s->capture;
    s->capture = nullptr;
    if (s->invalidated) {
        delete g;
        *graph = nullptr;
        return STREAM_CAPTURE_INVALIDATED;
    }
    g_graphs.insert(g);
    *graph = g;
    return SUCCESS;
}

API int cuStreamIsCapturing(void* h, int* status) {
    NEED_CONTEXT();
    Lock l;
    Stream* s = stream_of(h);
    if (s == nullptr) {
        report("cuStreamIsCapturing(%p): not a live stream", h);
        return INVALID_HANDLE;
    }
    *status = s->capture == nullptr ? 0 : (s->invalidated ? 2 : 1);
    return SUCCESS;
}

API int cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long flags) {
    (void)flags;
    NEED_CONTEXT();
    Lock l;
    Graph* g = static_cast<Graph*>(graph);
    if (!g_graphs.count(g) || !g->live) return INVALID_VALUE;
    Graph* e = new Graph(*g);
    g_graphs.insert(e);
    *exec = e;
    return SUCCESS;
}

API int cuGraphLaunch(void* exec, void* stream) {
    NEED_CONTEXT();
    Lock l;
    Graph* g = static_cast<Graph*>(exec);
    if (!g_graphs.count(g) || !g->live) return INVALID_HANDLE;
    return enqueue(stream, "cuGraphLaunch", [g] {
        for (auto& op : g->ops)
            if (int rc = op.run()) return rc;
        return (int)SUCCESS;
    });
}

API int cuGraphDestroy(void* graph) {
    Lock l;
    Graph* g = static_cast<Graph*>(graph);
    if (!g_graphs.count(g) || !g->live) return INVALID_VALUE;
    g->live = false;
    return SUCCESS;
}

API int cuGraphExecDestroy(void* exec) { return cuGraphDestroy(exec); }

// ---- modules and launches -------------------------------------------------------------------

namespace {

// The global function symbols of an ELF64 image (a CUBIN): the kernels it defines.
bool elf_functions(const uint8_t* img, std::set<std::string>& out) {
    if (std::memcmp(img, "\x7f" "ELF", 4) != 0 || img[4] != 2 || img[5] != 1) return false;
    auto u16 = [&](size_t o) { uint16_t v; std::memcpy(&v, img + o, 2); return v; };
    auto u32 = [&](size_t o) { uint32_t v; std::memcpy(&v, img + o, 4); return v; };
    auto u64 = [&](size_t o) { uint64_t v; std::memcpy(&v, img + o, 8); return v; };
    uint64_t shoff = u64(0x28);
    uint16_t shentsize = u16(0x3A), shnum = u16(0x3C);
    for (uint16_t i = 0; i < shnum; ++i) {
        size_t sh = shoff + (size_t)i * shentsize;
        if (u32(sh + 4) != 2) continue;  // SHT_SYMTAB
        uint64_t off = u64(sh + 0x18), size = u64(sh + 0x20), entsize = u64(sh + 0x38);
        uint32_t link = u32(sh + 0x28);
        size_t strsh = shoff + (size_t)link * shentsize;
        uint64_t stroff = u64(strsh + 0x18);
        for (uint64_t s = 0; entsize != 0 && s + entsize <= size; s += entsize) {
            size_t sym = off + s;
            uint8_t info = img[sym + 4];
            if ((info & 0xF) == 2 && (info >> 4) == 1)  // STT_FUNC, STB_GLOBAL
                out.insert(reinterpret_cast<const char*>(img + stroff + u32(sym)));
        }
    }
    return true;
}

}  // namespace

API int cuModuleLoadData(void** out, const void* image) {
    NEED_CONTEXT();
    if (out == nullptr || image == nullptr) return INVALID_VALUE;
    Lock l;
    auto m = std::make_unique<Module>();
    if (!elf_functions(static_cast<const uint8_t*>(image), m->names)) return INVALID_IMAGE;
    *out = m.get();
    g_modules.insert(m.release());
    return SUCCESS;
}

API int cuModuleUnload(void* h) {
    Lock l;
    Module* m = static_cast<Module*>(h);
    if (!g_modules.count(m) || !m->live) return INVALID_HANDLE;
    drain_all();  // launches of its kernels still queued
    m->live = false;
    return SUCCESS;
}

API int cuModuleGetFunction(void** out, void* h, const char* name) {
    NEED_CONTEXT();
    Lock l;
    Module* m = static_cast<Module*>(h);
    if (!g_modules.count(m) || !m->live) return INVALID_HANDLE;
    if (!m->names.count(name)) return NOT_FOUND;
    const KernelInfo* k = find_kernel(name);
    if (k == nullptr) {
        say("grass host CUDA: the module defines kernel %s, which the stand-in has not built for the host\n", name);
        return NOT_FOUND;
    }
    auto* f = new Function{k, m};
    g_functions.insert(f);
    *out = f;
    return SUCCESS;
}

API int cuLaunchKernel(void* fh, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                       unsigned bz, unsigned shmem, void* stream, void** params, void** extra) {
    NEED_CONTEXT();
    Lock l;
    Function* f = static_cast<Function*>(fh);
    if (!g_functions.count(f) || !f->module->live) return INVALID_HANDLE;
    const KernelInfo& k = *f->kernel;
    const unsigned threads = bx * by * bz;
    if (gx == 0 || gy == 0 || gz == 0 || bx == 0 || by == 0 || bz == 0 || gy > 65535 ||
        gz > 65535 || gx > 2147483647u || bx > 1024 || by > 1024 || bz > 64 || threads > kMaxThreads) {
        say("grass host CUDA: %s launched with grid (%u, %u, %u), block (%u, %u, %u): outside the device's limits\n",
            k.name, gx, gy, gz, bx, by, bz);
        return INVALID_VALUE;
    }
    if (threads > k.max_threads) {
        say("grass host CUDA: %s launched with %u threads per block, above its __launch_bounds__ (%u)\n",
            k.name, threads, k.max_threads);
        return LAUNCH_OUT_OF_RESOURCES;
    }
    if (shmem != 0 || extra != nullptr || (params == nullptr && k.nparams > 0)) {
        say("grass host CUDA: %s launched with dynamic shared memory or `extra`, which the stand-in does not provide\n", k.name);
        return INVALID_VALUE;
    }
    // The parameters are copied now, as the driver does; the addresses among them must be
    // device memory (or NULL).
    auto blob = std::make_shared<std::vector<uint64_t>>(k.nparams);
    std::vector<Range> ranges;
    for (size_t i = 0; i < k.nparams; ++i) {
        std::memcpy(&(*blob)[i], params[i], k.sizes[i]);
        if (!k.pointers[i]) continue;
        uintptr_t p = (uintptr_t)(*blob)[i];
        if (p == 0) continue;
        if (live_alloc(p, 0) == nullptr) {
            report("%s: parameter %zu = %#lx: %s", k.name, i, (unsigned long)p,
                   in_arena(p) ? describe(p).c_str() : "not device memory (a host pointer?)");
            return ILLEGAL_ADDRESS;
        }
        ranges.push_back({p, 0, true, "parameter"});
    }
    std::array<unsigned, 6> shape = {gx, gy, gz, bx, by, bz};
    return enqueue(stream, k.name, [&k, blob, ranges, shape] {
        std::vector<void*> ptrs(k.nparams);
        for (size_t i = 0; i < k.nparams; ++i) ptrs[i] = &(*blob)[i];
        const unsigned g3[3] = {shape[0], shape[1], shape[2]}, b3[3] = {shape[3], shape[4], shape[5]};
        return with_access(k.name, ranges, [&] { run_grid(k, g3, b3, ptrs.data()); });
    });
}

// ---- the stand-in's own ---------------------------------------------------------------------

// Memcheck errors so far (tests read it to assert a clean run).
API int grass_host_cuda_errors() { return host_cuda::errors(); }
