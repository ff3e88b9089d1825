/* Shared helpers of the C and C++ tests: checks that count failures, a seeded generator, exact
 * dtype conversions, poisoned buffers, and the comparison against a double-precision reference.
 *
 * Tolerance (one formula for every dtype, used by every comparison):
 *
 *     |got - ref| <= tol(D, K) * mag,    tol(D, K) = eps(D) + 8 * eps(f32) * sqrt(K)
 *
 * where ref is the exact result computed in double from the same (exactly representable)
 * inputs, D is the dtype the library stores the result in, K is the number of terms or
 * operations the library accumulates in f32 for that element, and mag is the magnitude the
 * rounding errors scale with: the sum of the absolute values of the terms (for a plain value
 * that is |ref|). eps(D) covers the final rounding into D (twice the half-ulp bound); the
 * second term covers f32 accumulation. eps(f32) = 2^-23, eps(bf16) = 2^-7, eps(f16) = 2^-10. */
#ifndef GRASS_TESTKIT_H
#define GRASS_TESTKIT_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grass.h"

#ifdef __cplusplus
extern "C" {
#endif

static int tk_failures = 0;

static inline void tk_fail_at(const char* file, int line, const char* what) {
  ++tk_failures;
  printf("FAIL %s:%d: %s\n", file, line, what);
}

#define TK_CHECK(cond)                              \
  do {                                              \
    if (!(cond)) tk_fail_at(__FILE__, __LINE__, #cond); \
  } while (0)

/* A call that must succeed; prints the status and the library's message otherwise. */
#define TK_OK(call)                                                                      \
  do {                                                                                   \
    grass_status tk_s_ = (call);                                                         \
    if (tk_s_ != GRASS_OK) {                                                             \
      tk_fail_at(__FILE__, __LINE__, #call);                                             \
      printf("     status %d (%s): %s\n", (int)tk_s_, grass_status_string((int32_t)tk_s_), \
             grass_last_error_message());                                                \
    }                                                                                    \
  } while (0)

/* A call that must fail with `status` and a message naming `func` and `arg`. */
#define TK_FAILS(call, status, func, arg) \
  tk_expect_failure((call), (status), (func), (arg), __FILE__, __LINE__, #call)

static inline int tk_expect_failure(grass_status got, grass_status want, const char* func,
                                    const char* arg, const char* file, int line,
                                    const char* call) {
  const char* msg = grass_last_error_message();
  int ok = 1;
  if (got != want) {
    tk_fail_at(file, line, call);
    printf("     expected status %d (%s), got %d (%s): %s\n", (int)want,
           grass_status_string((int32_t)want), (int)got, grass_status_string((int32_t)got),
           got == GRASS_OK ? "" : msg);
    return 0;
  }
  if (func != NULL && strstr(msg, func) == NULL) {
    tk_fail_at(file, line, call);
    printf("     message does not name the function %s: \"%s\"\n", func, msg);
    ok = 0;
  }
  if (arg != NULL && strstr(msg, arg) == NULL) {
    tk_fail_at(file, line, call);
    printf("     message does not name the argument %s: \"%s\"\n", arg, msg);
    ok = 0;
  }
  return ok;
}

static inline int tk_report(const char* name) {
  if (tk_failures == 0) {
    printf("%s: all checks passed\n", name);
    return 0;
  }
  printf("%s: %d check(s) failed\n", name, tk_failures);
  return 1;
}

/* ---- random numbers (splitmix64) ---------------------------------------------------------- */

typedef struct tk_rng {
  uint64_t s;
} tk_rng;

static inline uint64_t tk_next(tk_rng* r) {
  uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static inline double tk_uniform(tk_rng* r) { return (double)(tk_next(r) >> 11) * 0x1.0p-53; }

/* Uniform in [-1, -0.05] u [0.05, 1]: random and never zero, so no product vanishes. */
static inline float tk_nonzero(tk_rng* r) {
  double u = 0.05 + 0.95 * tk_uniform(r);
  return (float)((tk_next(r) & 1) ? u : -u);
}

/* ---- dtypes ------------------------------------------------------------------------------- */

static inline float tk_bits_to_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint32_t tk_f32_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static inline float tk_bf16_to_f32(uint16_t h) { return tk_bits_to_f32((uint32_t)h << 16); }

/* Round to nearest even (finite inputs; NaN stays NaN). */
static inline uint16_t tk_f32_to_bf16(float f) {
  uint32_t u = tk_f32_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float tk_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  if (exp == 0x1f) return tk_bits_to_f32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {
    float v = (float)man * 0x1.0p-24f;
    return sign ? -v : v;
  }
  return tk_bits_to_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

/* Round to nearest even; the tests only feed values well inside the f16 range. */
static inline uint16_t tk_f32_to_f16(float f) {
  uint32_t u = tk_f32_to_bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  float a = fabsf(f);
  if (a != a) return (uint16_t)(sign | 0x7e00u);
  if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);
  if (a < 0x1.0p-14f) { /* subnormal: multiples of 2^-24, rint rounds to nearest even */
    return (uint16_t)(sign | (uint16_t)rintf(a * 0x1.0p24f));
  }
  uint32_t e = ((tk_f32_to_bits(a) >> 23) & 0xffu) - 127u + 15u;
  uint32_t man = tk_f32_to_bits(a) & 0x7fffffu;
  uint32_t h = (e << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h; /* carries into the exponent */
  return (uint16_t)(sign | h);
}

static inline const char* tk_dtype_name(grass_dtype d) {
  switch (d) {
    case GRASS_DTYPE_F32: return "f32";
    case GRASS_DTYPE_BF16: return "bf16";
    case GRASS_DTYPE_F16: return "f16";
    default: return "?";
  }
}

static inline double tk_eps(grass_dtype d) {
  switch (d) {
    case GRASS_DTYPE_BF16: return 0x1.0p-7;
    case GRASS_DTYPE_F16: return 0x1.0p-10;
    default: return 0x1.0p-23;
  }
}

/* The tolerance formula stated at the top of this file. */
static inline double tk_tol(grass_dtype d, double k) {
  return tk_eps(d) + 8.0 * 0x1.0p-23 * sqrt(k);
}

static inline size_t tk_size(grass_dtype d) { return d == GRASS_DTYPE_F32 ? 4 : 2; }

static inline double tk_load(const void* buf, grass_dtype d, size_t i) {
  switch (d) {
    case GRASS_DTYPE_BF16: return tk_bf16_to_f32(((const uint16_t*)buf)[i]);
    case GRASS_DTYPE_F16: return tk_f16_to_f32(((const uint16_t*)buf)[i]);
    default: return ((const float*)buf)[i];
  }
}

/* Stores `v` rounded to `d`; returns the value actually stored. */
static inline double tk_store(void* buf, grass_dtype d, size_t i, float v) {
  switch (d) {
    case GRASS_DTYPE_BF16: ((uint16_t*)buf)[i] = tk_f32_to_bf16(v); break;
    case GRASS_DTYPE_F16: ((uint16_t*)buf)[i] = tk_f32_to_f16(v); break;
    default: ((float*)buf)[i] = v; break;
  }
  return tk_load(buf, d, i);
}

/* A buffer of n elements of dtype d filled with tk_nonzero() * scale (rounded to d); `exact`
 * (may be NULL) receives the stored values. */
static inline void* tk_random_tensor(tk_rng* r, grass_dtype d, size_t n, float scale,
                                     double* exact) {
  void* buf = malloc(n * tk_size(d));
  for (size_t i = 0; i < n; ++i) {
    double v = tk_store(buf, d, i, tk_nonzero(r) * scale);
    if (exact) exact[i] = v;
  }
  return buf;
}

static inline double* tk_doubles(size_t n) { return (double*)calloc(n ? n : 1, sizeof(double)); }

/* ---- poison ------------------------------------------------------------------------------- */

#define TK_POISON_BYTE 0xA5

static inline void tk_poison(void* p, size_t bytes) { memset(p, TK_POISON_BYTE, bytes); }

static inline int tk_is_poisoned(const void* p, size_t bytes) {
  const unsigned char* c = (const unsigned char*)p;
  for (size_t i = 0; i < bytes; ++i) {
    if (c[i] != TK_POISON_BYTE) return 0;
  }
  return 1;
}

/* ---- comparison against the reference ----------------------------------------------------- */

/* Compares n results of dtype d with ref[] using tol(d, k) * mag[] (mag NULL: |ref|); prints
 * the first mismatches with index, expected and got. Returns the number of mismatches. */
static inline int tk_compare(const char* what, const void* got, grass_dtype d, const double* ref,
                             const double* mag, size_t n, double k) {
  double tol = tk_tol(d, k);
  int bad = 0;
  for (size_t i = 0; i < n; ++i) {
    double g = tk_load(got, d, i);
    double m = mag ? mag[i] : fabs(ref[i]);
    double err = fabs(g - ref[i]);
    if (!(err <= tol * m)) {
      if (bad < 5) {
        printf("     %s[%zu]: expected %.9g, got %.9g (|err| %.3g > tol %.3g)\n", what, i,
               ref[i], g, err, tol * m);
      }
      ++bad;
    }
  }
  if (bad) {
    ++tk_failures;
    printf("FAIL %s: %d of %zu elements (%s) outside the tolerance\n", what, bad, n,
           tk_dtype_name(d));
  }
  return bad;
}

/* Index of the first difference of two byte ranges, or -1. */
static inline long tk_first_diff(const void* a, const void* b, size_t bytes) {
  const unsigned char* x = (const unsigned char*)a;
  const unsigned char* y = (const unsigned char*)b;
  for (size_t i = 0; i < bytes; ++i) {
    if (x[i] != y[i]) return (long)i;
  }
  return -1;
}

/* Checks two byte ranges are identical; prints the first differing byte otherwise. */
#define TK_SAME_BYTES(a, b, bytes) \
  tk_same_bytes((a), (b), (bytes), __FILE__, __LINE__, #a " == " #b)

static inline int tk_same_bytes(const void* a, const void* b, size_t bytes, const char* file,
                                int line, const char* what) {
  long at = tk_first_diff(a, b, bytes);
  if (at < 0) return 1;
  tk_fail_at(file, line, what);
  printf("     first difference at byte %ld of %zu: 0x%02x vs 0x%02x\n", at, bytes,
         ((const unsigned char*)a)[at], ((const unsigned char*)b)[at]);
  return 0;
}

/* Scratch of exactly `bytes` bytes (so that AddressSanitizer sees any overrun); NULL for 0. */
static inline void* tk_workspace(size_t bytes) { return bytes ? malloc(bytes) : NULL; }

static inline grass_context* tk_cpu(void) {
  grass_context* ctx = NULL;
  TK_OK(grass_context_create_cpu(&ctx));
  return ctx;
}

#ifdef __cplusplus
}
#endif

#endif /* GRASS_TESTKIT_H */
