/* simd_load.h - AVX2 loaders that turn 32 stored weights into four __m256 of F32, shared by the
 * dequantizer (quant.c) and the on-the-fly GEMV (matmul.c) so both read the formats one way.
 *
 * Each loader returns elements [32b, 32b + 32) of a row as v[0..3] (8 lanes each, in order).
 * Q4 dequantization uses fma(q, d, -8d) = (q - 8) * d rounded once, which is exactly the scalar
 * formula; Q4_1 uses fma(q, d, m), one rounding fewer than the scalar d * q + m. */
#ifndef CE_SIMD_LOAD_H
#define CE_SIMD_LOAD_H

#include "internal.h"

/* f16 bits -> f32 for all 65536 patterns (quant.c fills it at load time). A block scale then costs
 * one integer load and one broadcast load, and no vector ALU work (vcvtph2ps + shuffles cost
 * ~3 cycles per block on Zen 3); the entries in use cluster in a few KiB. ggml does the same. */
extern float ce_f16_table[65536];

#if CE_HAVE_AVX2
#define CE_INLINE static inline __attribute__((always_inline))

CE_INLINE void ld32_f32(const void *row, int64_t b, __m256 v[4]) {
    const float *p = (const float *)row + b * 32;
    for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(p + 8 * i);
}

CE_INLINE __m256 ld8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

CE_INLINE void ld32_f16(const void *row, int64_t b, __m256 v[4]) {
    const uint16_t *p = (const uint16_t *)row + b * 32;
    for (int i = 0; i < 4; i++) v[i] = ld8_f16(p + 8 * i);
}

CE_INLINE __m256 ld8_bf16(const uint16_t *p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

CE_INLINE void ld32_bf16(const void *row, int64_t b, __m256 v[4]) {
    const uint16_t *p = (const uint16_t *)row + b * 32;
    for (int i = 0; i < 4; i++) v[i] = ld8_bf16(p + 8 * i);
}

CE_INLINE __m256 bcast_f16(const uint16_t *h) { return _mm256_broadcast_ss(&ce_f16_table[*h]); }

CE_INLINE void ld32_q8_0(const void *row, int64_t b, __m256 v[4]) {
    const ce_block_q8_0 *blk = (const ce_block_q8_0 *)row + b;
    __m256 d = bcast_f16(&blk->d);
    for (int i = 0; i < 4; i++) {
        __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk->qs + 8 * i)));
        v[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
    }
}

/* The four nibble vectors of a Q4 block: bytes 0..7 and 8..15, low nibbles then high nibbles. */
CE_INLINE void q4_nibbles(const uint8_t *qs, __m256 v[4]) {
    __m256i t0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)qs));
    __m256i t1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8)));
    __m256i m15 = _mm256_set1_epi32(15);
    v[0] = _mm256_cvtepi32_ps(_mm256_and_si256(t0, m15));
    v[1] = _mm256_cvtepi32_ps(_mm256_and_si256(t1, m15));
    v[2] = _mm256_cvtepi32_ps(_mm256_srli_epi32(t0, 4));
    v[3] = _mm256_cvtepi32_ps(_mm256_srli_epi32(t1, 4));
}

CE_INLINE void ld32_q4_0(const void *row, int64_t b, __m256 v[4]) {
    const ce_block_q4_0 *blk = (const ce_block_q4_0 *)row + b;
    __m256 d = bcast_f16(&blk->d);
    __m256 off = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
    q4_nibbles(blk->qs, v);
    for (int i = 0; i < 4; i++) v[i] = _mm256_fmadd_ps(v[i], d, off);
}

CE_INLINE void ld32_q4_1(const void *row, int64_t b, __m256 v[4]) {
    const ce_block_q4_1 *blk = (const ce_block_q4_1 *)row + b;
    __m256 d = bcast_f16(&blk->d), m = bcast_f16(&blk->m);
    q4_nibbles(blk->qs, v);
    for (int i = 0; i < 4; i++) v[i] = _mm256_fmadd_ps(v[i], d, m);
}

/* Q4 integers as the bits of tiny floats, with no shuffle and no conversion: the 16 bytes are broadcast to both halves, and vector k keeps, in 32-bit lane i
 * (dword j = i % 4 of the bytes, half h = i / 4), the nibble at position s = 2k + h of that dword
 * in place (vector 3 shifts right by 8 first, so its nibbles sit at bits 16 and 20): one AND per
 * vector. A 32-bit pattern N < 2^24 read as an F32 is exactly N * 2^-149 (a subnormal, or the
 * smallest normal binade), so lane i of vector k holds q * 2^(sh - 149), sh = 8k + 4h (16 + 4h
 * for k = 3), and element 4j + k + 16h of the block (dword j, byte 4j + k, high nibble when h).
 * The caller scales x by 2^(E - sh) and the dot product by 2^(149 - E): powers of two, so every
 * product and sum rounds exactly as q * x would (build_xq picks E to keep them normal). AMD Zen
 * cores take subnormal FMA inputs at full speed; Intel cores take a microcode assist for each
 * (~25x slower), so there q4_ints runs instead (q4path.c picks by measuring). Denormals-are-zero
 * and flush-to-zero modes must be off (the GEMV clears them for its own duration). Q4_0's - 8 is
 * not applied here: subtracting on this grid gives subnormal results, which cost Zen 3 extra
 * cycles; the GEMV adds -8 d * (sum of x over the block) as Q4_1 adds its m term (gemv.c, build_xq). */
CE_INLINE void q4_bits(const uint8_t *qs, __m256 v[4]) {
    const __m256i m0 = _mm256_setr_epi32(0xF, 0xF, 0xF, 0xF, 0xF0, 0xF0, 0xF0, 0xF0);
    const __m256i m3 = _mm256_setr_epi32(0xF << 16, 0xF << 16, 0xF << 16, 0xF << 16, 0xF << 20, 0xF << 20,
                                         0xF << 20, 0xF << 20);
    __m256i bq = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    v[0] = _mm256_castsi256_ps(_mm256_and_si256(bq, m0));
    v[1] = _mm256_castsi256_ps(_mm256_and_si256(bq, _mm256_slli_epi32(m0, 8)));
    v[2] = _mm256_castsi256_ps(_mm256_and_si256(bq, _mm256_slli_epi32(m0, 16)));
    v[3] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_srli_epi32(bq, 8), m3));
}

/* q4_bits' lanes as normal floats: the same AND, then vcvtdq2ps, so lane i of vector k holds
 * q * 2^sh exactly (the masked pattern N < 2^24 is an integer a float holds exactly): 2^149 times
 * what q4_bits gives, with no subnormal anywhere. One more uop per vector; on CPUs that take a
 * microcode assist for every subnormal FMA operand (Intel cores, ~25x per FMA) it is the fast path.
 * The GEMV scales x so that every product, sum and the result are exact power-of-two multiples of
 * the q4_bits path's (gemv.c, build_xq): both give the same bits. */
CE_INLINE void q4_ints(const uint8_t *qs, __m256 v[4]) {
    q4_bits(qs, v);
    for (int i = 0; i < 4; i++) v[i] = _mm256_cvtepi32_ps(_mm256_castps_si256(v[i]));
}

/* (a & m) | o: one vpternlogd where AVX-512VL is there, else an AND and an OR */
CE_INLINE __m256i and_or(__m256i a, __m256i m, __m256i o) {
#ifdef __AVX512VL__
    return _mm256_ternarylogic_epi32(a, m, o, 0xEA);
#else
    return _mm256_or_si256(_mm256_and_si256(a, m), o);
#endif
}

/* q4_bits' lanes as normal floats, with no subnormal anywhere (on CPUs that take a microcode
 * assist for every subnormal FMA operand, Intel cores ~25x per FMA, it is the fast path). Vectors
 * 1 and 3 (the second products of their pairs): q4_bits' AND, then vcvtdq2ps, so lane i holds the
 * masked integer n = q * 2^sh exactly. Vectors 0 and 2 (the first products, fma(v, x, 0) in the
 * other path) skip the conversion: n is ORed into the mantissa of 2^23, f = 2^23 + n exactly
 * (n < 2^23), and the GEMV computes fma(f, x, c) with c = -2^23 x (built per row of x, build_xq):
 * the FMA rounds f x + c = n x once, the bits fma(n, x, 0) gives. Vector 2 is taken from the
 * bytes shifted right by 8 (the shift vector 3 needs anyway), n = q * 2^(sh - 8) < 2^16, its x
 * scaled by 2^8 more to match. One vcvtdq2ps saved per such vector (the AND+OR is one vpternlogd
 * with AVX-512VL, so no op added). On Zen 4 the decode set ran 4-9% faster than with q4_ints, at
 * 0.86-0.89x of q4_bits (from 0.81-0.84x); the two conversions left are the whole gap
 * (docs/architecture.md). The decode stream only: in the blocked loop's 4x4 tiles the addends'
 * loads cost more than the conversions (gemv.c, gemv_tile). The GEMV scales x so that every
 * product, sum and the result are exact power-of-two multiples of the q4_bits path's (gemv.c,
 * build_xq): both give the same bits. */
enum { Q4N_MAGIC = 0x4B000000 }; /* 2^23 */
CE_INLINE void q4_ints_fx(const uint8_t *qs, __m256 v[4]) {
    const __m256i m0 = _mm256_setr_epi32(0xF, 0xF, 0xF, 0xF, 0xF0, 0xF0, 0xF0, 0xF0);
    const __m256i m1 = _mm256_slli_epi32(m0, 8);
    const __m256i m3 = _mm256_setr_epi32(0xF << 16, 0xF << 16, 0xF << 16, 0xF << 16, 0xF << 20, 0xF << 20,
                                         0xF << 20, 0xF << 20);
    const __m256i one = _mm256_set1_epi32(Q4N_MAGIC);
    const __m256i bq = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs)), b8 = _mm256_srli_epi32(bq, 8);
    v[1] = _mm256_cvtepi32_ps(_mm256_and_si256(bq, m1));
    v[3] = _mm256_cvtepi32_ps(_mm256_and_si256(b8, m3));
    v[0] = _mm256_castsi256_ps(and_or(bq, m0, one)); /* last uses: vpternlogd overwrites them, no copy */
    v[2] = _mm256_castsi256_ps(and_or(b8, m1, one));
}

/* The integers of a block as floats, unscaled (Q8_0: q, in element order; Q4_0 and Q4_1: q, 0..15,
 * as q4_bits (q4n = 0), q4_ints (1) or q4_ints_fx (2: vectors 0 and 2 biased by 2^23) leave them), with the block's scale d broadcast: w = d * v (+ m for Q4_1, - 8 d for Q4_0, left to
 * the caller). The GEMV then scales a block's sum once instead of every weight. */
CE_INLINE void ld32_ints(int dtype, int q4n, const void *row, int64_t b, __m256 v[4], __m256 *d) {
    if (dtype == CE_Q8_0) {
        const ce_block_q8_0 *blk = (const ce_block_q8_0 *)row + b;
        *d = bcast_f16(&blk->d);
        for (int i = 0; i < 4; i++)
            v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk->qs + 8 * i))));
    } else if (dtype == CE_Q4_0) {
        const ce_block_q4_0 *blk = (const ce_block_q4_0 *)row + b;
        *d = bcast_f16(&blk->d);
        if (q4n == 2) q4_ints_fx(blk->qs, v); /* q; the GEMV adds the -8 d term per block (gemv.c, build_xq) */
        else if (q4n) q4_ints(blk->qs, v);
        else q4_bits(blk->qs, v);
    } else {
        const ce_block_q4_1 *blk = (const ce_block_q4_1 *)row + b;
        *d = bcast_f16(&blk->d);
        if (q4n == 2) q4_ints_fx(blk->qs, v);
        else if (q4n) q4_ints(blk->qs, v);
        else q4_bits(blk->qs, v);
    }
}

/* Dispatch on a dtype that is a compile-time constant after inlining. */
CE_INLINE void ld32(int dtype, const void *row, int64_t b, __m256 v[4]) {
    switch (dtype) {
    case CE_F32: ld32_f32(row, b, v); break;
    case CE_F16: ld32_f16(row, b, v); break;
    case CE_BF16: ld32_bf16(row, b, v); break;
    case CE_Q8_0: ld32_q8_0(row, b, v); break;
    case CE_Q4_0: ld32_q4_0(row, b, v); break;
    default: ld32_q4_1(row, b, v); break;
    }
}

/* 8 elements starting at element k of a non-block row (the tail of F32/F16/BF16 rows). */
CE_INLINE __m256 ld8(int dtype, const void *row, int64_t k) {
    switch (dtype) {
    case CE_F32: return _mm256_loadu_ps((const float *)row + k);
    case CE_F16: return ld8_f16((const uint16_t *)row + k);
    default: return ld8_bf16((const uint16_t *)row + k);
    }
}

/* Horizontal sum in a fixed order: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)). */
CE_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#endif
