/* internal.h - what the engine's source files share and the public header does not show:
 * error reporting, the thread pool, half-precision conversions, GGUF block layouts, checks. */
#ifndef CE_INTERNAL_H
#define CE_INTERNAL_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include "cengine.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CE_HAVE_AVX2 1
#include <immintrin.h>
#else
#define CE_HAVE_AVX2 0
#endif

/* ---- errors ---- */
/* Records a printf-style message for ce_last_error() and returns status, so a check reads
 * `if (bad) return ce_fail(CE_ERR_SHAPE, "...", ...);` */
ce_status ce_fail(ce_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Internal invariants (never user input) go through one replaceable handler, as in ggml. */
void ce_internal_error(const char *file, int line, const char *what);
#define CE_ASSERT(x) do { if (!(x)) ce_internal_error(__FILE__, __LINE__, #x); } while (0)

/* ---- thread pool ---- */
/* fn(ctx, ith, nth) runs once on every pool thread (the caller is thread 0) and returns when all
 * are done. Kernels split work by (ith, nth) only, never by timing, so output is deterministic. */
typedef void (*ce_task_fn)(void *ctx, int ith, int nth);
void ce_parallel(ce_task_fn fn, void *ctx);
/* Same, but with at most max_threads threads (small ops are not worth waking the pool for). */
void ce_parallel_n(ce_task_fn fn, void *ctx, int max_threads);
/* For tasks that hand out their work through atomics in ctx, so that any subset of the threads
 * (the caller alone included) finishes all of it: workers that have not started by the time the
 * caller runs out of work are left out, instead of waited for. A worker kept off its core (more
 * threads than cores, another busy program) then costs nothing. fn must still give the same
 * bits whichever thread takes which piece. */
void ce_parallel_dyn(ce_task_fn fn, void *ctx, int max_threads);

/* ---- range stealing (steal.c) ----
 * Rows [lo, hi) per thread, taken a piece at a time by their owner and stolen from by threads
 * that run out, on any subset of the threads (for ce_parallel_dyn jobs). Piece bounds are
 * multiples of `align`; rows must fit in 32 bits. */
typedef struct {
    _Alignas(64) _Atomic uint64_t v; /* a cache line each: owners never share theirs until the end */
} ce_steal_range;
void ce_steal_init(ce_steal_range *r, int64_t lo, int64_t hi);
/* fn(ctx, lo, hi, ahead, first): compute rows [lo, hi); the thread's own rows run on to `ahead`
 * (worth prefetching), and `first` is set for the first piece of a stretch (nothing prefetched it). */
typedef void (*ce_steal_fn)(void *ctx, int64_t lo, int64_t hi, int64_t ahead, int first);
/* Thread ith's part of a job over ranges[0..nranges): its own range, then the others' rests. */
void ce_steal_run(ce_steal_range *ranges, int nranges, int ith, int64_t align, int64_t min_piece,
                  ce_steal_fn fn, void *ctx);

/* Tasks for an op over `units` independent rows costing `work` element-steps: one per `grain` of
 * work, at least 1, at most one per row and at most 256 (small ops are not worth waking the pool). */
static inline int ce_tasks(int64_t work, int64_t grain, int64_t units) {
    int64_t nt = work / grain + 1;
    if (nt > units) nt = units;
    return (int)(nt < 256 ? nt : 256);
}

/* [lo, hi) share of n items for thread ith of nth, in chunks of `align` items. */
static inline void ce_split(int64_t n, int ith, int nth, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t chunks = (n + align - 1) / align;
    int64_t per = chunks / nth, rem = chunks % nth;
    int64_t c0 = ith * per + (ith < rem ? ith : rem);
    int64_t c1 = c0 + per + (ith < rem ? 1 : 0);
    *lo = c0 * align < n ? c0 * align : n;
    *hi = c1 * align < n ? c1 * align : n;
}

/* 1 when SIMD kernels should run (compiled in, supported by the CPU, not disabled for tests). */
extern int ce_simd_on;
/* 512 when the 512-bit kernels run (compiled in, CPU support, the probe's or a caller's choice:
 * vecwidth.c), else 256: ce_vec_bits per kernel family (CE_VK_*, cengine.h), ce_vector_bits for
 * the families that follow the probe (attention). */
extern int ce_vector_bits;
extern int ce_vec_bits[CE_VK_COUNT];
void ce_vector_describe(char *buf, size_t n); /* " vec=... (probe timings)" for ce_build_info */

/* Q4 GEMV unpacking (q4path.c): 1 for normal floats (q4_ints), 0 for subnormal (q4_bits). */
extern int ce_q4_normal;
void ce_q4_describe(char *buf, size_t n); /* " q4=... (probe timings)" for ce_build_info */

/* ---- half precision ---- */
static inline float ce_fp32_from_bits(uint32_t w) { float f; memcpy(&f, &w, 4); return f; }
static inline uint32_t ce_fp32_to_bits(float f) { uint32_t w; memcpy(&w, &f, 4); return w; }

/* IEEE half -> float, exact for every input including subnormals, inf and nan. */
static inline float ce_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return ce_fp32_from_bits(sign);
        float f = (float)man * (1.0f / 16777216.0f); /* man * 2^-24 */
        return sign ? -f : f;
    }
    if (exp == 31) return ce_fp32_from_bits(sign | 0x7f800000u | (man << 13));
    return ce_fp32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}

/* float -> IEEE half, round to nearest even, as F16C's vcvtps2ph does. */
static inline uint16_t ce_f32_to_f16(float f) {
    uint32_t x = ce_fp32_to_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65536: inf */
    if (ax < 0x38800000u) { /* subnormal half or zero */
        float a = ce_fp32_from_bits(ax);
        /* adding 0.5 shifts the value so that the FPU's own rounding does round-to-nearest-even */
        uint32_t r = ce_fp32_to_bits(a + 0.5f) - ce_fp32_to_bits(0.5f);
        return (uint16_t)(sign | r);
    }
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xc8000fffu + mant_odd; /* rebias exponent (-112 << 23) and round */
    return (uint16_t)(sign | (ax >> 13));
}

static inline float ce_bf16_to_f32(uint16_t h) { return ce_fp32_from_bits((uint32_t)h << 16); }
static inline uint16_t ce_f32_to_bf16(float f) {
    uint32_t x = ce_fp32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40); /* quiet nan */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);               /* nearest even */
}

/* ---- GGUF block layouts (bit-exact; a GGUF tensor is used in place) ---- */
typedef struct { uint16_t d; int8_t qs[32]; } ce_block_q8_0;             /* x = d * q */
typedef struct { uint16_t d; uint8_t qs[16]; } ce_block_q4_0;            /* x = d * (q - 8) */
typedef struct { uint16_t d; uint16_t m; uint8_t qs[16]; } ce_block_q4_1; /* x = d * q + m */
/* In Q4 blocks byte j holds element j in its low nibble and element j + 16 in its high nibble. */
_Static_assert(sizeof(ce_block_q8_0) == 34, "q8_0 block is 34 bytes");
_Static_assert(sizeof(ce_block_q4_0) == 18, "q4_0 block is 18 bytes");
_Static_assert(sizeof(ce_block_q4_1) == 20, "q4_1 block is 20 bytes");

/* ---- shared checks ---- */
/* Pointer to item i of t when dims 0..last are flattened in row-major order, any strides. */
static inline char *ce_flat_ptr(const ce_tensor *t, int64_t i, int last) {
    char *p = (char *)t->data;
    for (int d = last; d >= 0; d--) {
        int64_t n = t->shape[d];
        p += (i % n) * t->stride[d];
        i /= n;
    }
    return p;
}
/* Row r of the 2-D view of t (all dims but the last flattened). */
static inline char *ce_row_ptr(const ce_tensor *t, int64_t r) { return ce_flat_ptr(t, r, t->ndim - 2); }
int64_t ce_rows(const ce_tensor *t);  /* product of all dims but the last */
int64_t ce_cols(const ce_tensor *t);  /* the last dim */
/* CE_OK when t is non-null, has dtype `dtype` (or any if < 0) and a contiguous last dim. */
ce_status ce_check(const ce_tensor *t, const char *op, const char *name, int dtype);
/* ce_check of a tensor the op writes: also refuses CE_TENSOR_READ_ONLY */
ce_status ce_check_out(const ce_tensor *t, const char *op, const char *name, int dtype);
ce_status ce_check_writable(const ce_tensor *t, const char *op, const char *name);
/* CE_OK when a and b have the same numel and the same last dim. */
ce_status ce_check_same(const ce_tensor *a, const ce_tensor *b, const char *op, const char *na,
                        const char *nb);
/* CE_OK when pos (already ce_check'ed as I32) is contiguous, holds T positions, and each is in
 * 0..limit - 1 (limit < 0: any position >= 0). */
ce_status ce_check_positions(const ce_tensor *pos, int64_t T, int64_t limit, const char *op);

/* y = exp(x) over n floats (AVX2 polynomial, scalar expf twin); defined in elementwise.c. */
void ce_vexp(float *y, const float *x, int64_t n);

/* Row conversions used by matmul/embedding/copy; defined in quant.c. */
void ce_dequantize_row(int dtype, const void *src, float *dst, int64_t n);
void ce_quantize_row(int dtype, const float *src, void *dst, int64_t n);

#include "profile.h" /* CE_PROFILE: the line that opens every public op */

#endif
