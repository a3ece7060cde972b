/* quant.c - conversions between every dtype: cast, quantize, dequantize.
 *
 * Quantizers are bit-exact ports of ggml's reference ones (quantize_row_q8_0_ref, _q4_0_ref,
 * _q4_1_ref), so a tensor quantized here matches one quantized by llama.cpp byte for byte. They
 * stay scalar: they run once, at load time. Dequantizers run inside matmul's GEMM packing and
 * embedding lookups, so they have AVX2 versions; the scalar ones are their reference twins.
 * Everything meets in F32: a conversion between two other dtypes goes through an F32 chunk.
 */
#include <float.h>
#include <math.h>
#include "internal.h"
#include "simd_load.h"

float ce_f16_table[65536];

__attribute__((constructor)) static void fill_f16_table(void) {
    for (uint32_t h = 0; h < 65536; h++) ce_f16_table[h] = ce_f16_to_f32((uint16_t)h);
}

/* ---- dequantize: one row of n elements to F32 ---- */

static void dequant_scalar(int dtype, const void *src, float *dst, int64_t n) {
    switch (dtype) {
    case CE_F32:
        memcpy(dst, src, (size_t)n * 4);
        break;
    case CE_I32: {
        const int32_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
        break;
    }
    case CE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ce_f16_to_f32(s[i]);
        break;
    }
    case CE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = ce_bf16_to_f32(s[i]);
        break;
    }
    case CE_Q8_0: {
        const ce_block_q8_0 *b = src;
        for (int64_t i = 0; i < n / 32; i++, dst += 32) {
            float d = ce_f16_to_f32(b[i].d);
            for (int j = 0; j < 32; j++) dst[j] = (float)b[i].qs[j] * d;
        }
        break;
    }
    case CE_Q4_0: {
        const ce_block_q4_0 *b = src;
        for (int64_t i = 0; i < n / 32; i++, dst += 32) {
            float d = ce_f16_to_f32(b[i].d);
            for (int j = 0; j < 16; j++) {
                dst[j] = (float)((b[i].qs[j] & 15) - 8) * d;
                dst[j + 16] = (float)((b[i].qs[j] >> 4) - 8) * d;
            }
        }
        break;
    }
    case CE_Q4_1: {
        const ce_block_q4_1 *b = src;
        for (int64_t i = 0; i < n / 32; i++, dst += 32) {
            float d = ce_f16_to_f32(b[i].d), m = ce_f16_to_f32(b[i].m);
            for (int j = 0; j < 16; j++) {
                dst[j] = (float)(b[i].qs[j] & 15) * d + m;
                dst[j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
            }
        }
        break;
    }
    default:
        break;
    }
}

#if CE_HAVE_AVX2
static inline __attribute__((always_inline)) void dequant_blocks_avx2(int dtype, const void *src,
                                                                       float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++) {
        __m256 v[4];
        ld32(dtype, src, b, v);
        for (int i = 0; i < 4; i++) _mm256_storeu_ps(dst + 32 * b + 8 * i, v[i]);
    }
}

static void dequant_avx2(int dtype, const void *src, float *dst, int64_t n) {
    switch (dtype) {
    case CE_Q8_0: dequant_blocks_avx2(CE_Q8_0, src, dst, n / 32); return;
    case CE_Q4_0: dequant_blocks_avx2(CE_Q4_0, src, dst, n / 32); return;
    case CE_Q4_1: dequant_blocks_avx2(CE_Q4_1, src, dst, n / 32); return;
    case CE_F16:
    case CE_BF16: {
        const uint16_t *s = src;
        int64_t i = 0;
        if (dtype == CE_F16)
            for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8_f16(s + i));
        else
            for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, ld8_bf16(s + i));
        dequant_scalar(dtype, s + i, dst + i, n - i);
        return;
    }
    default:
        dequant_scalar(dtype, src, dst, n);
    }
}
#endif

void ce_dequantize_row(int dtype, const void *src, float *dst, int64_t n) {
#if CE_HAVE_AVX2
    if (ce_simd_on) {
        dequant_avx2(dtype, src, dst, n);
        return;
    }
#endif
    dequant_scalar(dtype, src, dst, n);
}

/* ---- quantize: one row of n F32 elements to dtype (ggml's reference quantizers) ---- */

static void quantize_q8_0(const float *x, ce_block_q8_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ce_f32_to_f16(d);
        for (int j = 0; j < 32; j++) y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* (int8_t)(float) as ggml writes it; the float is always in [0, 17) here, so it is defined. */
static inline uint8_t nib(float v) {
    int8_t q = (int8_t)v;
    return (uint8_t)(q < 15 ? q : 15);
}

static void quantize_q4_0(const float *x, ce_block_q4_0 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float amax = 0.0f, max = 0.0f; /* max: the value of largest magnitude, sign kept */
        for (int j = 0; j < 32; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ce_f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            const float x0 = x[j] * id, x1 = x[j + 16] * id;
            y[i].qs[j] = (uint8_t)(nib(x0 + 8.5f) | (nib(x1 + 8.5f) << 4));
        }
    }
}

static void quantize_q4_1(const float *x, ce_block_q4_1 *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = ce_f32_to_f16(d);
        y[i].m = ce_f32_to_f16(min);
        for (int j = 0; j < 16; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[j + 16] - min) * id;
            y[i].qs[j] = (uint8_t)(nib(x0 + 0.5f) | (nib(x1 + 0.5f) << 4));
        }
    }
}

/* F32 -> I32 truncates toward zero like a C cast, saturating; nan becomes 0. */
static int32_t f32_to_i32(float v) {
    if (!(v == v)) return 0;
    if (v >= 2147483647.0f) return INT32_MAX;
    if (v <= -2147483648.0f) return INT32_MIN;
    return (int32_t)v;
}

void ce_quantize_row(int dtype, const float *src, void *dst, int64_t n) {
    switch (dtype) {
    case CE_F32:
        memmove(dst, src, (size_t)n * 4);
        break;
    case CE_I32: {
        int32_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = f32_to_i32(src[i]);
        break;
    }
    case CE_F16: {
        uint16_t *d = dst;
        int64_t i = 0;
#if CE_HAVE_AVX2
        if (ce_simd_on) /* vcvtps2ph rounds to nearest even, as ce_f32_to_f16 does */
            for (; i + 8 <= n; i += 8)
                _mm_storeu_si128((__m128i *)(d + i),
                                 _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#endif
        for (; i < n; i++) d[i] = ce_f32_to_f16(src[i]);
        break;
    }
    case CE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = ce_f32_to_bf16(src[i]);
        break;
    }
    case CE_Q8_0: quantize_q8_0(src, dst, n / 32); break;
    case CE_Q4_0: quantize_q4_0(src, dst, n / 32); break;
    case CE_Q4_1: quantize_q4_1(src, dst, n / 32); break;
    default: break;
    }
}

/* ---- ce_convert ---- */

ce_status ce_convert(int dst_dtype, void *dst, int src_dtype, const void *src, int64_t n) {
    CE_PROFILE(CE_OP_CONVERT, .n = {n, dst_dtype, src_dtype});
    if (src_dtype < 0 || src_dtype >= CE_DTYPE_COUNT)
        return ce_fail(CE_ERR_DTYPE, "ce_convert: unknown source dtype %d", src_dtype);
    if (dst_dtype < 0 || dst_dtype >= CE_DTYPE_COUNT)
        return ce_fail(CE_ERR_DTYPE, "ce_convert: unknown destination dtype %d", dst_dtype);
    if (!dst || !src)
        return ce_fail(CE_ERR_ARG, "ce_convert: %s pointer is NULL", !dst ? "destination" : "source");
    if (n < 0) return ce_fail(CE_ERR_ARG, "ce_convert: negative element count %lld", (long long)n);
    int64_t sbytes, dbytes;
    ce_status st = ce_row_bytes(src_dtype, n, &sbytes);
    if (!st) st = ce_row_bytes(dst_dtype, n, &dbytes);
    if (st)
        return ce_fail(st, "ce_convert: %s -> %s needs a multiple of 32 elements, got %lld",
                       ce_dtype_name(src_dtype), ce_dtype_name(dst_dtype), (long long)n);
    if (src_dtype == dst_dtype) {
        memmove(dst, src, (size_t)sbytes);
        return CE_OK;
    }
    if (dst_dtype == CE_F32) {
        ce_dequantize_row(src_dtype, src, dst, n);
        return CE_OK;
    }
    if (src_dtype == CE_F32) {
        ce_quantize_row(dst_dtype, src, dst, n);
        return CE_OK;
    }
    /* Neither side is F32: go through F32 chunks (a whole number of blocks each). */
    enum { CHUNK = 1024 };
    float buf[CHUNK];
    int64_t sb = ce_dtype_block_bytes(src_dtype), db = ce_dtype_block_bytes(dst_dtype);
    int64_t sbs = ce_dtype_block_size(src_dtype), dbs = ce_dtype_block_size(dst_dtype);
    for (int64_t i = 0; i < n; i += CHUNK) {
        int64_t len = n - i < CHUNK ? n - i : CHUNK;
        ce_dequantize_row(src_dtype, (const char *)src + i / sbs * sb, buf, len);
        ce_quantize_row(dst_dtype, buf, (char *)dst + i / dbs * db, len);
    }
    return CE_OK;
}
