// libcublas.so.13 of the host stand-in: handles, their stream and workspace, and cublasGemmEx
// (f32, bf16 or f16 inputs, f32 output, f32 compute) on the stand-in's device memory, each
// operand's exact extent checked against the live allocations before it runs.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <algorithm>
#include <set>
#include <vector>

#include "host_cuda.hpp"

#define API extern "C" __attribute__((visibility("default")))

extern "C" __attribute__((visibility("default"))) const char grass_host_cuda_stand_in[] =
    "grass host stand-in";

namespace {

enum Status : int {
    OK = 0,
    NOT_INITIALIZED = 1,
    INVALID_VALUE = 7,
    EXECUTION_FAILED = 13,
    NOT_SUPPORTED = 15,
};

// cudaDataType
constexpr int R_32F = 0, R_16F = 2, R_16BF = 14;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_PEDANTIC = 69;

struct Handle {
    void* stream = nullptr;
    uintptr_t ws = 0;
    size_t ws_bytes = 0;
};

std::mutex g_handles_lock;
std::set<Handle*> g_handles;

bool live(Handle* h) {
    std::lock_guard<std::mutex> l(g_handles_lock);
    return g_handles.count(h) != 0;
}

float load(const void* p, int type, size_t i) {
    if (type == R_32F) return static_cast<const float*>(p)[i];
    uint16_t h = static_cast<const uint16_t*>(p)[i];
    uint32_t bits;
    if (type == R_16BF) {
        bits = (uint32_t)h << 16;
    } else {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
        if (exp == 0x1F) {
            bits = sign | 0x7F800000u | (man << 13);
        } else if (exp == 0) {
            float f = (float)man * 5.9604644775390625e-8f;
            return sign ? -f : f;
        } else {
            bits = sign | ((exp + 112u) << 23) | (man << 13);
        }
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

size_t type_size(int t) { return t == R_32F ? 4 : 2; }

// C = a op(A) op(B) + b C. The operands are unpacked to f32 (column-major A' m x k, B' k x n);
// each element of C sums its k products in order, in f32, in blocks that keep a block of A'
// and of C in cache while every column of B' passes.
void gemm(int transa, int transb, int m, int n, int k, float a, const void* A, int atype,
          int lda, const void* B, int btype, int ldb, float b, float* C, int ldc) {
    std::vector<float> ap((size_t)m * k), bp((size_t)k * n), acc((size_t)m * n, 0.0f);
    for (int p = 0; p < k; ++p)
        for (int i = 0; i < m; ++i)
            ap[(size_t)p * m + i] = load(A, atype, transa ? (size_t)i * lda + p : (size_t)p * lda + i);
    for (int j = 0; j < n; ++j)
        for (int p = 0; p < k; ++p)
            bp[(size_t)j * k + p] = load(B, btype, transb ? (size_t)p * ldb + j : (size_t)j * ldb + p);
    constexpr int kRows = 512, kInner = 128;
    for (int p0 = 0; p0 < k; p0 += kInner) {
        const int p1 = std::min(k, p0 + kInner);
        for (int i0 = 0; i0 < m; i0 += kRows) {
            const int rows = std::min(m, i0 + kRows) - i0;
            for (int j = 0; j < n; ++j) {
                float* __restrict c = acc.data() + (size_t)j * m + i0;
                for (int p = p0; p < p1; ++p) {
                    const float bv = bp[(size_t)j * k + p];
                    const float* __restrict col = ap.data() + (size_t)p * m + i0;
                    for (int i = 0; i < rows; ++i) c[i] += col[i] * bv;
                }
            }
        }
    }
    for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) {
            float& out = C[(size_t)j * ldc + i];
            const float v = acc[(size_t)j * m + i];
            out = b == 0.0f ? a * v : a * v + b * out;
        }
}

}  // namespace

API int cublasCreate_v2(Handle** out) {
    if (out == nullptr) return INVALID_VALUE;
    host_cuda::lock();
    bool ctx = host_cuda::has_context();
    host_cuda::unlock();
    if (!ctx) {
        std::fprintf(stderr, "grass host CUDA: cublasCreate without a current context\n");
        return NOT_INITIALIZED;
    }
    auto* h = new Handle();
    std::lock_guard<std::mutex> l(g_handles_lock);
    g_handles.insert(h);
    *out = h;
    return OK;
}

API int cublasDestroy_v2(Handle* h) {
    std::lock_guard<std::mutex> l(g_handles_lock);
    if (!g_handles.erase(h)) return NOT_INITIALIZED;
    delete h;
    return OK;
}

API int cublasSetStream_v2(Handle* h, void* stream) {
    if (!live(h)) return NOT_INITIALIZED;
    host_cuda::lock();
    bool ok = host_cuda::stream_ok(stream);
    host_cuda::unlock();
    if (!ok) {
        std::fprintf(stderr, "grass host CUDA: cublasSetStream(%p): not a live stream\n", stream);
        return INVALID_VALUE;
    }
    h->stream = stream;
    return OK;
}

API int cublasGetStream_v2(Handle* h, void** stream) {
    if (!live(h)) return NOT_INITIALIZED;
    *stream = h->stream;
    return OK;
}

API int cublasSetWorkspace_v2(Handle* h, void* ws, size_t bytes) {
    if (!live(h)) return NOT_INITIALIZED;
    host_cuda::lock();
    bool ok = host_cuda::check_range("cublasSetWorkspace", {(uintptr_t)ws, bytes, true, "workspace"});
    host_cuda::unlock();
    if (!ok) return INVALID_VALUE;
    h->ws = (uintptr_t)ws;
    h->ws_bytes = bytes;
    return OK;
}

API const char* cublasGetStatusString(int s) {
    switch (s) {
        case OK: return "the operation completed successfully";
        case NOT_INITIALIZED: return "the library was not initialized";
        case INVALID_VALUE: return "an invalid numeric value was used as an argument";
        case EXECUTION_FAILED: return "the GPU program failed to execute";
        case NOT_SUPPORTED: return "the functionality requested is not supported";
        default: return "unknown cuBLAS status";
    }
}

// C = alpha op(A) op(B) + beta C, column-major, m x n, inner dimension k.
API int cublasGemmEx(Handle* h, int transa, int transb, int m, int n, int k, const void* alpha,
                     const void* A, int atype, int lda, const void* B, int btype, int ldb,
                     const void* beta, void* C, int ctype, int ldc, int compute, int algo) {
    (void)algo;
    if (!live(h)) return NOT_INITIALIZED;
    if (m < 0 || n < 0 || k < 0 || transa < 0 || transa > 1 || transb < 0 || transb > 1) return INVALID_VALUE;
    const int arows = transa ? k : m, brows = transb ? n : k;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
        return INVALID_VALUE;
    auto in_type = [](int t) { return t == R_32F || t == R_16F || t == R_16BF; };
    if (!in_type(atype) || atype != btype || ctype != R_32F ||
        (compute != COMPUTE_32F && compute != COMPUTE_32F_PEDANTIC)) {
        std::fprintf(stderr, "grass host CUDA: cublasGemmEx with types A %d, B %d, C %d, compute %d is not provided\n",
                     atype, btype, ctype, compute);
        return NOT_SUPPORTED;
    }
    if (m == 0 || n == 0) return OK;
    const float a = *static_cast<const float*>(alpha), b = *static_cast<const float*>(beta);
    const int acols = transa ? m : k, bcols = transb ? k : n;
    // Each operand's extent: (columns - 1) * leading dimension + rows elements.
    auto extent = [](int rows, int cols, int ld, size_t size) {
        return rows == 0 || cols == 0 ? 0 : ((size_t)(cols - 1) * (size_t)ld + (size_t)rows) * size;
    };
    std::vector<host_cuda::Range> ranges = {
        {(uintptr_t)A, extent(arows, acols, lda, type_size(atype)), false, "A"},
        {(uintptr_t)B, extent(brows, bcols, ldb, type_size(btype)), false, "B"},
        {(uintptr_t)C, extent(m, n, ldc, 4), true, "C"},
    };
    if (h->ws_bytes > 0) ranges.push_back({h->ws, h->ws_bytes, true, "workspace"});
    host_cuda::lock();
    int rc = 0;
    for (const auto& r : ranges)
        if (!host_cuda::check_range("cublasGemmEx", r)) rc = 1;
    if (rc == 0) {
        rc = host_cuda::enqueue(h->stream, "cublasGemmEx", [=] {
            return host_cuda::with_access("cublasGemmEx", ranges, [=] {
                gemm(transa, transb, m, n, k, a, A, atype, lda, B, btype, ldb, b,
                     static_cast<float*>(C), ldc);
            });
        });
    }
    host_cuda::unlock();
    return rc == 0 ? OK : EXECUTION_FAILED;
}
