/* abtest.c - interleaved A/B timing of engine builds, in one process.
 *
 * This machine's memory bandwidth and compute both swing up to 2x between seconds, so two engine
 * builds timed in separate processes cannot be compared. abtest dlopen()s several builds (each a
 * plain .so of cengine/src, see README.md here), gives each its own copy of the weights, and
 * alternates them round by round: per round, per build, one decode set (L layers of the default
 * model's matrices, called as its decode step calls them: q, k and v in one ce_matmul_n; o; gate
 * and up in one ce_matmul_n; down) and one lm head (49152x576, one call). The decode set is
 * ~70 MB in Q4_1, twice the L3, so it streams from DRAM. It prints each build's median GB/s.
 * The first build loaded runs a few percent slow (memory placement): load a throwaway copy first.
 *
 *   usage: abtest DTYPE THREADS ROUNDS lib.so...   (DTYPE: 0 F32 ... 3 Q8_0, 4 Q4_0, 5 Q4_1)
 *   env GAP=us: spin that long between calls, as Python does between ops
 *   env STEADY=1: run the decode set once untimed before the timed pass (consecutive decode steps
 *   instead of a first step after the workers went to sleep)
 *   env ROWS=n: n rows of x instead of 1 (prefill: the blocked GEMV loop); prints GFLOP/s of the
 *   set, and skips the lm head
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "cengine.h"

enum { L = 32, MAX_LIBS = 8, NW = 7 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double gap_s;
static void gap(void) {
    for (double t = now() + gap_s; gap_s > 0 && now() < t;) {}
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef ce_status (*matmul_fn)(ce_tensor *, const ce_tensor *, const ce_tensor *, const ce_tensor *);
typedef ce_status (*matmul_n_fn)(int, ce_tensor *const *, const ce_tensor *, const ce_tensor *const *,
                                 const ce_tensor *const *);

typedef struct {
    matmul_fn matmul;
    matmul_n_fn matmul_n;
    ce_tensor *w[L][NW], *head;    /* per layer: q, k, v, o, gate, up, down */
    ce_tensor *x, *x_ff, *q, *k, *v, *gate, *up, *o, *logits;
} build;

/* one decode step's matmuls; nonzero on an engine error */
static int decode_set(build *b) {
    int e = 0;
    for (int l = 0; l < L && !e; l++) {
        ce_tensor *qkv[3] = {b->q, b->k, b->v}, *gu[2] = {b->gate, b->up};
        const ce_tensor *wqkv[3] = {b->w[l][0], b->w[l][1], b->w[l][2]}, *wgu[2] = {b->w[l][4], b->w[l][5]};
        gap(), e |= b->matmul_n(3, qkv, b->x, wqkv, NULL);
        gap(), e |= b->matmul(b->o, b->x, b->w[l][3], NULL);
        gap(), e |= b->matmul_n(2, gu, b->x, wgu, NULL);
        gap(), e |= b->matmul(b->o, b->x_ff, b->w[l][6], NULL);
    }
    return e;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: abtest DTYPE THREADS ROUNDS lib.so...\n");
        return 2;
    }
    int dt = atoi(argv[1]), th = atoi(argv[2]), R = atoi(argv[3]), V = argc - 4;
    if (V > MAX_LIBS) V = MAX_LIBS;
    gap_s = getenv("GAP") ? atof(getenv("GAP")) * 1e-6 : 0;
    const int steady = getenv("STEADY") && atoi(getenv("STEADY"));
    const int64_t rows = getenv("ROWS") && atoi(getenv("ROWS")) > 0 ? atoi(getenv("ROWS")) : 1;
    const int64_t sh[NW][2] = {{576, 576}, {192, 576}, {192, 576}, {576, 576}, {1536, 576}, {1536, 576}, {576, 1536}};
    const int64_t hs[2] = {49152, 576};
    float *f = malloc(sizeof(float) * 49152 * 576);
    for (int i = 0; i < 49152 * 576; i++) f[i] = (rand() / (float)RAND_MAX) * 2 - 1;
    static build B[MAX_LIBS];
    for (int v = 0; v < V; v++) {
        void *h = dlopen(argv[4 + v], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "%s\n", dlerror());
            return 1;
        }
        ce_status (*tnew)(ce_tensor **, int, int, const int64_t *) = dlsym(h, "ce_tensor_new");
        ce_status (*conv)(int, void *, int, const void *, int64_t) = dlsym(h, "ce_convert");
        ce_status (*threads)(int) = dlsym(h, "ce_set_threads");
        build *b = &B[v];
        b->matmul = dlsym(h, "ce_matmul");
        b->matmul_n = dlsym(h, "ce_matmul_n");
        if (!tnew || !conv || !threads || !b->matmul || !b->matmul_n) {
            fprintf(stderr, "%s: not an engine build (missing symbols)\n", argv[4 + v]);
            return 1;
        }
        threads(th);
        const int64_t s576[2] = {rows, 576}, s1536[2] = {rows, 1536}, s192[2] = {rows, 192}, sv[2] = {rows, 49152};
        tnew(&b->x, CE_F32, 2, s576), tnew(&b->x_ff, CE_F32, 2, s1536), tnew(&b->q, CE_F32, 2, s576);
        tnew(&b->k, CE_F32, 2, s192), tnew(&b->v, CE_F32, 2, s192), tnew(&b->gate, CE_F32, 2, s1536);
        tnew(&b->up, CE_F32, 2, s1536), tnew(&b->o, CE_F32, 2, s576), tnew(&b->logits, CE_F32, 2, sv);
        for (int k = 0; k < 576 * rows; k++) ((float *)b->x->data)[k] = (k % 7) - 3.1f;
        for (int k = 0; k < 1536 * rows; k++) ((float *)b->x_ff->data)[k] = (k % 5) - 2.1f;
        for (int l = 0; l < L; l++)
            for (int j = 0; j < NW; j++) {
                tnew(&b->w[l][j], dt, 2, sh[j]);
                conv(dt, b->w[l][j]->data, CE_F32, f + l * 1000, sh[j][0] * sh[j][1]);
            }
        tnew(&b->head, dt, 2, hs);
        conv(dt, b->head->data, CE_F32, f, hs[0] * hs[1]);
    }
    free(f);
    double per32 = dt == 5 ? 20 : dt == 4 ? 18 : dt == 3 ? 34 : dt == 0 ? 128 : 64; /* bytes per 32 weights */
    double set_bytes = 0, head_bytes = 49152.0 * 576 / 32 * per32;
    for (int j = 0; j < NW; j++) set_bytes += L * (double)sh[j][0] * sh[j][1] / 32 * per32;
    double *td = calloc((size_t)V * R, sizeof(double)), *tl = calloc((size_t)V * R, sizeof(double));
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            build *b = &B[v];
            usleep(3000); /* the previous build's workers go to sleep */
            if (steady && decode_set(b)) goto fail;
            double t0 = now();
            if (decode_set(b)) goto fail;
            double t1 = now();
            if (rows == 1 && b->matmul(b->logits, b->x, b->head, NULL)) goto fail;
            double t2 = now();
            /* ROWS > 1: GFLOP/s of the set (2 flops per weight and row of x) */
            td[v * R + r] = (rows > 1 ? set_bytes / per32 * 32 * 2 * rows : set_bytes) / (t1 - t0) / 1e9;
            tl[v * R + r] = head_bytes / (t2 - t1) / 1e9;
        }
    for (int v = 0; v < V; v++) {
        qsort(td + v * R, R, sizeof(double), cmp);
        qsort(tl + v * R, R, sizeof(double), cmp);
        if (rows > 1)
            printf("%-24s set, %lld rows %6.2f GFLOP/s\n", argv[4 + v], (long long)rows, td[v * R + R / 2]);
        else
            printf("%-24s decode set %6.2f GB/s   lm head %6.2f GB/s\n", argv[4 + v], td[v * R + R / 2], tl[v * R + R / 2]);
    }
    return 0;
fail:
    fprintf(stderr, "an engine call failed (a build older than ce_matmul_n?)\n");
    return 1;
}
