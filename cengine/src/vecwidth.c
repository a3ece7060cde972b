/* vecwidth.c - which vector width the GEMV, packed-GEMM and attention kernels use
 * (ce_vec_bits, per kernel family: the table `families`), chosen once per process by measuring.
 *
 * The 512-bit kernels (gemv.c dot_tile_z/dot_tile_qz, gemm.c micro_z, attention.c's _z tiles) give
 * the same bits as the 256-bit ones, so the choice is speed only, and what decides it is how many
 * flops a 512-bit FMA gives per unit of time against a 256-bit one: Intel server cores with two
 * 512-bit FMA units do twice the work per instruction; AMD Zen 4 (and Zen 5 parts with a 256-bit
 * datapath), which issue 512-bit ops as two halves, and Intel cores with one 512-bit unit do the
 * same work either way, where the 512-bit kernels measured mostly slower (docs/architecture.md).
 * At load a probe times chains of independent FMAs of each width (~0.1 ms in all, 110 us measured
 * on Zen 4, half of it warming the 512-bit units up: Intel cores run them at reduced throughput for
 * the first ~10-20 us) and picks 512 only when it gives at least WIDE_FASTER times the flops. Intel
 * cores that lower their clock under sustained 512-bit work (Skylake-SP) do so over ~0.5 ms, longer
 * than the probe runs: there it overstates 512's gain, one reason the bar is 1.3x and not 1x.
 * Never by vendor name. TOOLKIT_VECTOR_BITS=256|512|auto or ce_set_vector_bits() force a width
 * (tests run both). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

int ce_vector_bits = 256;     /* the width of the kernels that follow the probe (attention.c reads it) */
int ce_vec_bits[CE_VK_COUNT] = {256, 256, 256, 256, 256}; /* per kernel family, read once per call */
static int forced;            /* CE_VECTOR_AUTO, or the width a caller forced */
static int probe_pick = 256;  /* the probe's choice */
static double probe_ns[2];    /* ns per FMA instruction: [0] 256-bit, [1] 512-bit; 0 if not measured */
static int env_512_ignored;   /* TOOLKIT_VECTOR_BITS=512 asked for what this build or CPU lacks */

#define WIDE_FASTER 1.3 /* 512-bit FMAs must give this many times the flops of 256-bit ones */

/* The one place that says which width each kernel family runs at under CE_VECTOR_AUTO (a forced
 * width applies to all): 512 wherever the 512-bit kernels can run (VW_512), or the probe's choice
 * (VW_PROBE). The GEMV's F32/F16/BF16 tiles over many rows of x (prefill) gain from the 512-bit
 * register file, not from wider FMAs: two zmm accumulators per output let a tile take four rows of
 * x where ymm spills past two, measured 1.17-1.31x even on AMD Zen 4, whose 512-bit FMAs give no
 * more flops (docs/architecture.md). Everything else was measured at 0.8-1.0x on Zen 4, where
 * 512-bit ops are two halves, so it follows the probe, which picks 512 where a zmm FMA is one op. */
enum { VW_PROBE, VW_512 };
static const struct {
    const char *name;
    int pref;
} families[CE_VK_COUNT] = {
    [CE_VK_GEMV_FLOAT_DECODE] = {"gemv_float_decode", VW_PROBE}, /* F32/F16/BF16, M <= 2: 0.97-1.02x */
    [CE_VK_GEMV_FLOAT_TILES] = {"gemv_float_tiles", VW_512},     /* F32/F16/BF16, M > 2: 1.17-1.31x */
    [CE_VK_GEMV_QUANT] = {"gemv_quant", VW_PROBE},               /* Q8_0/Q4_0/Q4_1, any M: 0.78-0.97x */
    [CE_VK_GEMM] = {"gemm", VW_PROBE},                           /* packed GEMM: 1.00-1.02x */
    [CE_VK_ATTENTION] = {"attention", VW_PROBE},
};

#if CE_HAVE_AVX2 && defined(__AVX512F__) && defined(__AVX512VL__)
#define VEC_HAVE_512 1
#else
#define VEC_HAVE_512 0
#endif

/* why the 512-bit kernels cannot run, or NULL */
static const char *why_not_512(void) {
#if VEC_HAVE_512
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512vl")) return "this CPU lacks AVX-512F/VL";
    return NULL;
#else
    /* no parentheses: tools strip build_info's parenthesised remarks (toolkit/experiments.py) */
    return "not compiled in: built without AVX-512F/VL, by -march=native on a CPU without them or TOOLKIT_PORTABLE=1";
#endif
}

#if VEC_HAVE_512
enum { PROBE_ITERS = 256, PROBE_REPS = 7, PROBE_WARM_US = 50 };

/* 12 independent chains: enough to keep two FMA units of latency 4 (Intel) or 4 pipes (Zen 4) busy */
#define FMA12(fma)                                                                 \
    for (int i = 0; i < PROBE_ITERS; i++)                                             \
        for (int j = 0; j < 12; j++) c[j] = fma(c[j], a, b);

/* ns per FMA instruction of 12 independent chains of that width */
__attribute__((noinline)) static double time_fmas(int wide) {
    volatile float av = 0.999f, bv = 1e-3f;
    double t0, t;
    float sink = 0.0f;
    if (wide) {
        __m512 a = _mm512_set1_ps(av), b = _mm512_set1_ps(bv), c[12];
        for (int j = 0; j < 12; j++) c[j] = _mm512_set1_ps((float)j);
        t0 = ce_now();
        FMA12(_mm512_fmadd_ps)
        t = ce_now() - t0;
        for (int j = 0; j < 12; j++) sink += _mm512_cvtss_f32(c[j]);
    } else {
        __m256 a = _mm256_set1_ps(av), b = _mm256_set1_ps(bv), c[12];
        for (int j = 0; j < 12; j++) c[j] = _mm256_set1_ps((float)j);
        t0 = ce_now();
        FMA12(_mm256_fmadd_ps)
        t = ce_now() - t0;
        for (int j = 0; j < 12; j++) sink += _mm256_cvtss_f32(c[j]);
    }
    volatile float keep = sink;
    (void)keep;
    return t * 1e9 / (12.0 * PROBE_ITERS);
}

static void probe(void) {
    if (why_not_512()) return;
    /* Intel cores power their 512-bit units up on first use and run them slowly meanwhile */
    for (double t0 = ce_now(); ce_now() - t0 < PROBE_WARM_US * 1e-6;) time_fmas(1);
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < PROBE_REPS; r++) /* interleaved, best of each: noise only slows a run */
        for (int w = 0; w < 2; w++) {
            double t = time_fmas(w);
            if (t < best[w]) best[w] = t;
        }
    probe_ns[0] = best[0], probe_ns[1] = best[1];
    /* flops per ns: 16 / ns512 against 8 / ns256 */
    probe_pick = 2.0 * best[0] >= WIDE_FASTER * best[1] ? 512 : 256;
}
#else
static void probe(void) {}
#endif

static void apply(void) {
    ce_vector_bits = forced == CE_VECTOR_AUTO ? probe_pick : forced;
    for (int k = 0; k < CE_VK_COUNT; k++)
        ce_vec_bits[k] = forced == CE_VECTOR_AUTO && families[k].pref == VW_512 && !why_not_512() ? 512 : ce_vector_bits;
}

ce_status ce_set_vector_bits(int bits) {
    if (bits != CE_VECTOR_AUTO && bits != 256 && bits != 512)
        return ce_fail(CE_ERR_ARG, "set_vector_bits: bits must be 256, 512 or CE_VECTOR_AUTO (0), got %d", bits);
    if (bits == 512 && why_not_512())
        return ce_fail(CE_ERR_ARG, "set_vector_bits: 512-bit kernels are not available (%s)", why_not_512());
    forced = bits;
    env_512_ignored = 0;
    apply();
    return CE_OK;
}

int ce_get_vector_bits(void) { return ce_vector_bits; }

int ce_get_vector_bits_setting(void) { return forced; }

int ce_get_kernel_vector_bits(int kernel) { return kernel >= 0 && kernel < CE_VK_COUNT ? ce_vec_bits[kernel] : -1; }

const char *ce_vector_kernel_name(int kernel) { return kernel >= 0 && kernel < CE_VK_COUNT ? families[kernel].name : NULL; }

const char *ce_vector_512_unavailable(void) {
    const char *why = why_not_512();
    return why ? why : "";
}

double ce_vector_probe_ns(int bits) { return bits == 256 ? probe_ns[0] : bits == 512 ? probe_ns[1] : -1.0; }

void ce_vector_describe(char *buf, size_t n) {
    const char *why = why_not_512();
    if (why)
        snprintf(buf, n, " vec=256 (512-bit kernels unavailable: %s%s)", why,
                 env_512_ignored ? "; TOOLKIT_VECTOR_BITS=512 ignored" : "");
    else {
        int k = snprintf(buf, n, " vec=%d (%s; probe: FMA 256-bit %.3f ns, 512-bit %.3f ns: 512-bit gives %.2fx the flops",
                         ce_vector_bits, forced == CE_VECTOR_AUTO ? "auto" : "forced", probe_ns[0], probe_ns[1],
                         probe_ns[1] > 0 ? 2.0 * probe_ns[0] / probe_ns[1] : 0.0);
        /* the families that run at another width than vec= says */
        for (int f = 0; f < CE_VK_COUNT; f++)
            if (k >= 0 && (size_t)k < n && ce_vec_bits[f] != ce_vector_bits)
                k += snprintf(buf + k, n - (size_t)k, "; %s %d", families[f].name, ce_vec_bits[f]);
        if (k >= 0 && (size_t)k < n) snprintf(buf + k, n - (size_t)k, ")");
    }
}

__attribute__((constructor)) static void vector_bits_init(void) {
    probe();
    const char *e = getenv("TOOLKIT_VECTOR_BITS");
    forced = !e ? CE_VECTOR_AUTO : !strcmp(e, "256") ? 256 : !strcmp(e, "512") ? 512 : CE_VECTOR_AUTO;
    if (forced == 512 && why_not_512()) forced = CE_VECTOR_AUTO, env_512_ignored = 1;
    apply();
}
