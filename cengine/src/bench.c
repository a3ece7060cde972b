/* bench.c - the machine's streaming read bandwidth, the yardstick for the GEMV benchmarks.
 *
 * Every pool thread sums its share of one big buffer with wide loads; the sums are stored so the
 * compiler cannot drop the loads. The best of `reps` passes is returned: noise only ever slows a
 * pass down. */
#include <stdlib.h>
#include <sys/mman.h>
#include "internal.h"

typedef struct {
    const char *buf;
    int64_t n;
    uint64_t sink[256 * 8]; /* one cache line per thread */
} bw_ctx;

static void read_task(void *p, int ith, int nth) {
    bw_ctx *c = p;
    int64_t lo, hi;
    ce_split(c->n, ith, nth, 4096, &lo, &hi);
    uint64_t s = 0;
#if CE_HAVE_AVX2
    if (ce_simd_on) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        int64_t i = lo;
        for (; i + 256 <= hi; i += 256) {
            const __m256i *v = (const __m256i *)(c->buf + i);
            a0 = _mm256_add_epi64(a0, _mm256_add_epi64(_mm256_load_si256(v + 0), _mm256_load_si256(v + 1)));
            a1 = _mm256_add_epi64(a1, _mm256_add_epi64(_mm256_load_si256(v + 2), _mm256_load_si256(v + 3)));
            a2 = _mm256_add_epi64(a2, _mm256_add_epi64(_mm256_load_si256(v + 4), _mm256_load_si256(v + 5)));
            a3 = _mm256_add_epi64(a3, _mm256_add_epi64(_mm256_load_si256(v + 6), _mm256_load_si256(v + 7)));
        }
        uint64_t t[4];
        _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
        s = t[0] + t[1] + t[2] + t[3];
        lo = i;
    }
#endif
    for (int64_t i = lo; i + 8 <= hi; i += 8) {
        uint64_t v;
        memcpy(&v, c->buf + i, 8);
        s += v;
    }
    c->sink[ith * 8] = s;
}

static void touch_task(void *p, int ith, int nth) {
    bw_ctx *c = p;
    int64_t lo, hi;
    ce_split(c->n, ith, nth, 4096, &lo, &hi);
    memset((char *)c->buf + lo, 1, (size_t)(hi - lo));
}

double ce_bench_read_bandwidth(int64_t nbytes, int reps) {
    if (nbytes < 4096 || reps < 1) {
        ce_fail(CE_ERR_ARG, "ce_bench_read_bandwidth: need nbytes >= 4096 and reps >= 1, got %lld, %d",
                (long long)nbytes, reps);
        return -1.0;
    }
    nbytes = nbytes / 4096 * 4096;
    void *buf = mmap(NULL, (size_t)nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        ce_fail(CE_ERR_NOMEM, "ce_bench_read_bandwidth: cannot map %lld bytes", (long long)nbytes);
        return -1.0;
    }
    /* Plain 4 KiB pages, as weights mapped from a file get: transparent huge pages would stream
     * ~20% faster here than the kernels ever can on a file mapping. */
    bw_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        munmap(buf, (size_t)nbytes);
        ce_fail(CE_ERR_NOMEM, "ce_bench_read_bandwidth: out of memory");
        return -1.0;
    }
    c->buf = buf;
    c->n = nbytes;
    ce_parallel(touch_task, c); /* fault every page in before timing */
    double best = -1.0;
    for (int r = 0; r < reps; r++) {
        double t0 = ce_now();
        ce_parallel(read_task, c);
        double t = ce_now() - t0;
        if (best < 0 || t < best) best = t;
    }
    free(c);
    munmap(buf, (size_t)nbytes);
    return best;
}
