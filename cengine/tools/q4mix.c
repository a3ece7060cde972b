/* q4mix.c - how fast can a core run a Q4_1 block dot at all, with everything in L1?
 *
 * Times four inner loops over the same 4 weight rows x 32 blocks (7.7 KiB, L1-resident), so
 * memory plays no part:
 *   subnormal  the engine's Q4_1 decode loop on the q4_bits path (gemv.c dot_tile_q, P = 4):
 *              nibbles read in place as subnormal floats (4 ANDs, a shift, a 128-bit broadcast per
 *              block row), 4 F32 products against x (the first of each pair an FMA with a zero
 *              addend), d from the f16 table, and the shared (d, m) conversion for the m term;
 *   normal     the same loop on the q4_ints_fx path (simd_load.h): vectors 0 and 2 ORed into the
 *              mantissa of 2^23 (one vpternlogd each) and multiplied with -2^23 x as the addend,
 *              vectors 1 and 3 ANDed and converted (vcvtdq2ps): no subnormal anywhere, same bits;
 *   floor      the same loop without the nibble unpacking (x stands in for the weights): what the
 *              products, the d scaling and the m term cost alone;
 *   int8-x     llama.cpp's AVX2 Q4_1 x Q8_1 loop: x quantized to int8 per block (maddubs, madd,
 *              cvtdq2ps, one FMA by d_w d_x). Not exact: the golden README explains why we do not ship it.
 * and prints core cycles per 32-weight block row and the per-core GB/s of Q4_1 weights (20 bytes
 * per block row) that rate would stream. A GEMV cannot stream faster than that, whatever the
 * memory does. On a CPU that takes a microcode assist for subnormal operands (Intel cores) the
 * subnormal line collapses and the normal line is the one the engine runs (q4path.c's probe).
 * Rounds alternate the loops; the best round of each is shown.
 *
 *   cc -O3 -march=native cengine/tools/q4mix.c -o /tmp/q4mix && /tmp/q4mix
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

enum { NB = 32, P = 4, ROUNDS = 9, ITERS = 400000, NL = 4 };

static float tbl[65536]; /* f16 bits -> F32, as the engine's ce_f16_table */
static _Alignas(64) uint8_t W[P][NB * 20];
static _Alignas(64) float XQ[NB * 32], XN[NB * 48], SQ[NB * 2];
static _Alignas(64) int8_t X8[NB * 32];
static float XD[NB], XS[NB];

static inline int ld_i32(const void *p) {
    int v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint16_t ld_u16(const void *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* UNPACK = 0: floor; 1: subnormal (q4_bits); 2: normal (q4_ints_fx) */
static inline __attribute__((always_inline)) void q4_1_f32(float *res, const int UNPACK) {
    const __m256i m0 = _mm256_setr_epi32(0xF, 0xF, 0xF, 0xF, 0xF0, 0xF0, 0xF0, 0xF0);
    const __m256i m1 = _mm256_slli_epi32(m0, 8), m2 = _mm256_slli_epi32(m0, 16);
    const __m256i m3 = _mm256_setr_epi32(0xF << 16, 0xF << 16, 0xF << 16, 0xF << 16, 0xF << 20, 0xF << 20,
                                         0xF << 20, 0xF << 20);
    const __m256i one = _mm256_set1_epi32(0x4B000000); /* 2^23 */
    const __m256 zero = _mm256_setzero_ps();
    __m256 acc[P], macc = _mm256_setzero_ps();
    for (int p = 0; p < P; p++) acc[p] = _mm256_setzero_ps();
    const int64_t ws = NB * 20;
    for (int b = 0; b < NB; b++) {
        const uint8_t *blk = W[0] + 20 * b;
        __m256 xv[4], cv[2] = {zero, zero};
        for (int i = 0; i < 4; i++) {
            xv[i] = _mm256_loadu_ps(UNPACK == 2 ? XN + 48 * b + 8 * i : XQ + 32 * b + 8 * i);
            __asm__("" : "+x"(xv[i]));
        }
        if (UNPACK == 2)
            for (int i = 0; i < 2; i++) {
                cv[i] = _mm256_loadu_ps(XN + 48 * b + 32 + 8 * i);
                __asm__("" : "+x"(cv[i]));
            }
        __m256 sv = _mm256_castsi256_ps(_mm256_broadcastq_epi64(_mm_loadl_epi64((const __m128i *)(SQ + 2 * b))));
        __m128i dm = _mm_cvtsi32_si128(ld_i32(blk));
        dm = _mm_insert_epi32(dm, ld_i32(blk + ws), 1);
        dm = _mm_insert_epi32(dm, ld_i32(blk + 2 * ws), 2);
        dm = _mm_insert_epi32(dm, ld_i32(blk + 3 * ws), 3);
        macc = _mm256_fmadd_ps(_mm256_cvtph_ps(dm), sv, macc);
        for (int p = 0; p < P; p++) {
            const uint8_t *q = blk + p * ws;
            __m256 v[4];
            const __m256i bq = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(q + 4)));
            if (UNPACK == 1) {
                v[0] = _mm256_castsi256_ps(_mm256_and_si256(bq, m0));
                v[1] = _mm256_castsi256_ps(_mm256_and_si256(bq, m1));
                v[2] = _mm256_castsi256_ps(_mm256_and_si256(bq, m2));
                v[3] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_srli_epi32(bq, 8), m3));
            } else if (UNPACK == 2) {
                const __m256i b8 = _mm256_srli_epi32(bq, 8);
                v[1] = _mm256_cvtepi32_ps(_mm256_and_si256(bq, m1));
                v[3] = _mm256_cvtepi32_ps(_mm256_and_si256(b8, m3));
                v[0] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bq, m0), one));
                v[2] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(b8, m1), one));
            } else {
                for (int i = 0; i < 4; i++) v[i] = xv[(i + 1) & 3];
            }
            /* the first product of each pair an FMA (zero addend, or -2^23 x on the normal path):
             * Zen 4 slows vmulps on subnormal lanes, not FMAs */
            __m256 s = _mm256_add_ps(_mm256_fmadd_ps(v[1], xv[1], _mm256_fmadd_ps(v[0], xv[0], cv[0])),
                                     _mm256_fmadd_ps(v[3], xv[3], _mm256_fmadd_ps(v[2], xv[2], cv[1])));
            acc[p] = _mm256_fmadd_ps(_mm256_broadcast_ss(tbl + ld_u16(q)), s, acc[p]);
        }
    }
    float ml[8];
    _mm256_storeu_ps(ml, macc);
    for (int p = 0; p < P; p++) {
        float a[8];
        _mm256_storeu_ps(a, acc[p]);
        res[p] = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7] + ml[2 * p + 1];
    }
}

static __attribute__((noinline)) void subnormal(float *res) { q4_1_f32(res, 1); }
static __attribute__((noinline)) void normal(float *res) { q4_1_f32(res, 2); }
static __attribute__((noinline)) void floor_(float *res) { q4_1_f32(res, 0); }

static __attribute__((noinline)) void int8x(float *res) {
    const __m256i lowm = _mm256_set1_epi8(0xF), ones = _mm256_set1_epi16(1);
    __m256 acc[P];
    float macc[P] = {0};
    for (int p = 0; p < P; p++) acc[p] = _mm256_setzero_ps();
    const int64_t ws = NB * 20;
    for (int b = 0; b < NB; b++) {
        const uint8_t *blk = W[0] + 20 * b;
        __m256i xq = _mm256_loadu_si256((const __m256i *)(X8 + 32 * b));
        __m256 dx = _mm256_broadcast_ss(XD + b);
        for (int p = 0; p < P; p++) {
            const uint8_t *q = blk + p * ws;
            __m128i t = _mm_loadu_si128((const __m128i *)(q + 4));
            __m256i qb = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1), lowm);
            __m256 xy = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(qb, xq), ones));
            acc[p] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_broadcast_ss(tbl + ld_u16(q)), dx), xy, acc[p]);
            macc[p] += tbl[ld_u16(q + 2)] * XS[b];
        }
    }
    for (int p = 0; p < P; p++) {
        float a[8];
        _mm256_storeu_ps(a, acc[p]);
        res[p] = a[0] + a[1] + a[2] + a[3] + a[4] + a[5] + a[6] + a[7] + macc[p];
    }
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* core clock from a chain of dependent 1-cycle adds */
static double core_ghz(void) {
    double best = 0;
    for (int r = 0; r < 3; r++) {
        long n = 50000000, x = 0;
        double t0 = now();
        for (long i = 0; i < n; i++)
            __asm__ volatile("add $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0\n\tadd $1,%0" : "+r"(x));
        double g = 5.0 * n / (now() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

int main(void) {
    srand(1);
    for (int i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        tbl[i] = _cvtsh_ss(h);
    }
    /* sane f16 d and m (no NaN/Inf), random nibbles; x scaled as build_xq leaves it (products normal) */
    for (int p = 0; p < P; p++)
        for (int b = 0; b < NB; b++) {
            uint16_t d = (uint16_t)(0x2C00 + rand() % 1024), m = (uint16_t)(0xAC00 + rand() % 1024);
            memcpy(&W[p][20 * b], &d, 2);
            memcpy(&W[p][20 * b + 2], &m, 2);
            for (int i = 4; i < 20; i++) W[p][20 * b + i] = (uint8_t)rand();
        }
    for (int i = 0; i < NB * 32; i++) XQ[i] = ((float)rand() / RAND_MAX - 0.5f) * 0x1p100f, X8[i] = (int8_t)rand();
    /* the normal path's x (products n x of n < 2^24 stay far from overflow) and, per block, its
     * 16 first-product addends -2^23 x, as build_xq lays them out */
    for (int b = 0; b < NB; b++)
        for (int i = 0; i < 32; i++) {
            XN[48 * b + i] = ((float)rand() / RAND_MAX - 0.5f) * 0x1p20f;
            if (i < 8 || (i >= 16 && i < 24)) XN[48 * b + 32 + (i < 8 ? i : i - 8)] = -0x1p23f * XN[48 * b + i];
        }
    for (int b = 0; b < NB; b++) SQ[2 * b] = 0.0f, SQ[2 * b + 1] = (float)b, XD[b] = 0.01f, XS[b] = (float)b;

    void (*fn[NL])(float *) = {subnormal, normal, floor_, int8x};
    const char *name[NL] = {"subnormal (q4_bits)", "normal (q4_ints_fx)", "floor (no unpack)", "int8-x (llama.cpp)"};
    double best[NL] = {1e9, 1e9, 1e9, 1e9}, sink = 0;
    for (int r = 0; r < ROUNDS; r++)
        for (int v = 0; v < NL; v++) {
            float res[P];
            double t0 = now();
            for (int i = 0; i < ITERS; i++) {
                fn[v](res);
                sink += res[0] + res[3];
            }
            double t = (now() - t0) / ITERS / (P * NB);
            if (t < best[v]) best[v] = t;
        }
    double ghz = core_ghz();
    printf("core clock %.2f GHz (dependent adds); weights and x in L1\n", ghz);
    printf("%-20s %14s %22s\n", "loop", "cycles/block", "Q4_1 GB/s per core");
    for (int v = 0; v < NL; v++)
        printf("%-20s %14.2f %22.1f\n", name[v], best[v] * ghz * 1e9, 20.0 / best[v] / 1e9);
    return sink == 12345.678; /* keeps the results live */
}
