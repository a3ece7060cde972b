/* q4path.c - which Q4 unpacking the GEMV uses, chosen once per process by measuring.
 *
 * q4_bits (simd_load.h) feeds the Q4 nibbles to the FMAs as subnormal floats: free on AMD Zen,
 * but Intel cores take a microcode assist for every subnormal FMA operand (measured 8.9 ns against
 * 0.35 ns per FMA on a Xeon: decode at 2 tokens/s). q4_ints converts them to normal floats first,
 * one more uop per vector. Both give the same bits (gemv.c, build_xq), so the choice is speed
 * only: at load time a probe times FMA chains on subnormal and on normal operands (~2 us where
 * subnormals are free, ~0.2 ms where they are not) and picks q4_bits only when subnormal
 * operands cost less than SUB_SLOWER times normal ones. Never by vendor name: what matters is how
 * this core treats the operands. TOOLKIT_Q4_PATH=normal|subnormal|auto or ce_set_q4_path() force
 * a path (tests run both). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

int ce_q4_normal = 1;          /* read by the GEMV once per call */
static int forced;             /* CE_Q4_AUTO, or the path a caller forced */
static int probe_pick = 1;     /* the probe's choice */
static double probe_ns[2];     /* [0]: subnormal, [1]: normal operands; ns per 8-lane FMA */

#define SUB_SLOWER 1.5 /* the normal path (q4_ints_fx in decode) costs ~20% more vector uops per block
                          and row than q4_bits, 11-14% of the decode set's speed on Zen 4
                          (docs/architecture.md): below this, q4_bits */

#if CE_HAVE_AVX2
enum { PROBE_ITERS = 512, PROBE_REPS = 5 };

/* ns per FMA of four independent chains whose first operand is a q4_bits-like subnormal lane (or
 * the q4_ints-like normal one) and whose products and sums are normal, as in the GEMV */
__attribute__((noinline)) static double time_fmas(int subnormal) {
    volatile uint32_t abits = subnormal ? 0x00000500u : 0x44A00000u; /* 1280 * 2^-149, or 1280.0f */
    volatile float bv = subnormal ? 0x1p90f : 0x1p-59f;              /* products 1280 * 2^-59 */
    __m256 a = _mm256_castsi256_ps(_mm256_set1_epi32((int)abits)), b = _mm256_set1_ps(bv);
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0;
    double t0 = ce_now();
    for (int i = 0; i < PROBE_ITERS; i++) {
        c0 = _mm256_fmadd_ps(a, b, c0);
        c1 = _mm256_fmadd_ps(a, b, c1);
        c2 = _mm256_fmadd_ps(a, b, c2);
        c3 = _mm256_fmadd_ps(a, b, c3);
    }
    double t = ce_now() - t0;
    volatile float sink = _mm256_cvtss_f32(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
    (void)sink;
    return t * 1e9 / (4.0 * PROBE_ITERS);
}

static void probe(void) {
    /* the GEMV clears denormals-are-zero and flush-to-zero for its duration: so does the probe */
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr & ~0x8040u);
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < PROBE_REPS; r++) /* interleaved, best of each: noise only slows a run */
        for (int s = 0; s < 2; s++) {
            double t = time_fmas(!s);
            if (t < best[s]) best[s] = t;
        }
    _mm_setcsr(csr);
    probe_ns[0] = best[0], probe_ns[1] = best[1];
    probe_pick = best[0] > SUB_SLOWER * best[1];
}
#else
static void probe(void) {}
#endif

static void apply(void) { ce_q4_normal = forced == CE_Q4_AUTO ? probe_pick : forced == CE_Q4_NORMAL; }

ce_status ce_set_q4_path(int path) {
    if (path != CE_Q4_AUTO && path != CE_Q4_NORMAL && path != CE_Q4_SUBNORMAL)
        return ce_fail(CE_ERR_ARG, "set_q4_path: path must be CE_Q4_AUTO (0), CE_Q4_NORMAL (1) or "
                                   "CE_Q4_SUBNORMAL (2), got %d", path);
    forced = path;
    apply();
    return CE_OK;
}

int ce_get_q4_path(void) { return ce_q4_normal ? CE_Q4_NORMAL : CE_Q4_SUBNORMAL; }

int ce_get_q4_path_setting(void) { return forced; }

double ce_q4_probe_ns(int path) {
    return path == CE_Q4_SUBNORMAL ? probe_ns[0] : path == CE_Q4_NORMAL ? probe_ns[1] : -1.0;
}

void ce_q4_describe(char *buf, size_t n) {
#if CE_HAVE_AVX2
    snprintf(buf, n, " q4=%s (%s; probe: FMA with subnormal operand %.2f ns, normal %.2f ns)",
             ce_q4_normal ? "normal" : "subnormal", forced == CE_Q4_AUTO ? "auto" : "forced", probe_ns[0],
             probe_ns[1]);
#else
    snprintf(buf, n, " q4=scalar");
#endif
}

__attribute__((constructor)) static void q4_init(void) {
    probe();
    const char *e = getenv("TOOLKIT_Q4_PATH");
    forced = !e ? CE_Q4_AUTO : !strcmp(e, "normal") ? CE_Q4_NORMAL : !strcmp(e, "subnormal") ? CE_Q4_SUBNORMAL
                                                                                            : CE_Q4_AUTO;
    apply();
}
