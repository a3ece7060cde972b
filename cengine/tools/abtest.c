/* abtest.c - interleaved A/B timing of engine builds, in one process.
 *
 * This machine's memory bandwidth and compute both swing up to 2x between seconds, so two engine
 * builds timed in separate processes cannot be compared. abtest dlopen()s several builds (each a
 * plain .so of cengine/src, see README.md here), gives each its own copy of the weights, and
 * alternates them round by round: per round, per build, one decode set (L layers of 576x576,
 * 1536x576 and 576x1536 GEMVs, cycled from DRAM, as a decode step streams them) and one lm head
 * (49152x576, one call). It prints each build's median GB/s. The first build loaded runs a few
 * percent slow (memory placement): load a throwaway copy first.
 *
 *   usage: abtest DTYPE THREADS ROUNDS lib.so...   (DTYPE: 0 F32 ... 3 Q8_0, 4 Q4_0, 5 Q4_1)
 *   env GAP=us: spin that long between calls, as Python does between ops
 *   env STEADY=1: run the decode set once untimed before the timed pass (consecutive decode steps
 *   instead of a first step after the workers went to sleep)
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "cengine.h"

enum { L = 49, MAX_LIBS = 8 };

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

typedef struct {
    ce_status (*matmul)(ce_tensor *, const ce_tensor *, const ce_tensor *, const ce_tensor *);
    ce_tensor *w[L][3], *head, *x[2], *o[3];
} build;

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: abtest DTYPE THREADS ROUNDS lib.so...\n");
        return 2;
    }
    int dt = atoi(argv[1]), th = atoi(argv[2]), R = atoi(argv[3]), V = argc - 4;
    if (V > MAX_LIBS) V = MAX_LIBS;
    gap_s = getenv("GAP") ? atof(getenv("GAP")) * 1e-6 : 0;
    const int steady = getenv("STEADY") && atoi(getenv("STEADY"));
    const int64_t sh[3][2] = {{576, 576}, {1536, 576}, {576, 1536}}, hs[2] = {49152, 576};
    const int64_t xs[2][2] = {{1, 576}, {1, 1536}}, os[3][2] = {{1, 576}, {1, 1536}, {1, 49152}};
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
        B[v].matmul = dlsym(h, "ce_matmul");
        threads(th);
        for (int i = 0; i < 2; i++) {
            tnew(&B[v].x[i], CE_F32, 2, xs[i]);
            for (int k = 0; k < xs[i][1]; k++) ((float *)B[v].x[i]->data)[k] = (k % 7) - 3.1f;
        }
        for (int i = 0; i < 3; i++) tnew(&B[v].o[i], CE_F32, 2, os[i]);
        for (int l = 0; l < L; l++)
            for (int j = 0; j < 3; j++) {
                tnew(&B[v].w[l][j], dt, 2, sh[j]);
                conv(dt, B[v].w[l][j]->data, CE_F32, f + l * 1000, sh[j][0] * sh[j][1]);
            }
        tnew(&B[v].head, dt, 2, hs);
        conv(dt, B[v].head->data, CE_F32, f, hs[0] * hs[1]);
    }
    free(f);
    double per32 = dt == 5 ? 20 : dt == 4 ? 18 : dt == 3 ? 34 : dt == 0 ? 128 : 64; /* bytes per 32 weights */
    double set_bytes = 0, head_bytes = 49152.0 * 576 / 32 * per32;
    for (int j = 0; j < 3; j++) set_bytes += L * (double)sh[j][0] * sh[j][1] / 32 * per32;
    double *td = calloc((size_t)V * R, sizeof(double)), *tl = calloc((size_t)V * R, sizeof(double));
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) {
            build *b = &B[v];
            usleep(3000); /* the previous build's workers go to sleep */
            for (int l = 0; steady && l < L; l++) {
                b->matmul(b->o[0], b->x[0], b->w[l][0], NULL);
                b->matmul(b->o[1], b->x[0], b->w[l][1], NULL);
                b->matmul(b->o[0], b->x[1], b->w[l][2], NULL);
            }
            double t0 = now();
            for (int l = 0; l < L; l++) {
                gap(), b->matmul(b->o[0], b->x[0], b->w[l][0], NULL);
                gap(), b->matmul(b->o[1], b->x[0], b->w[l][1], NULL);
                gap(), b->matmul(b->o[0], b->x[1], b->w[l][2], NULL);
            }
            double t1 = now();
            b->matmul(b->o[2], b->x[0], b->head, NULL);
            double t2 = now();
            td[v * R + r] = set_bytes / (t1 - t0) / 1e9;
            tl[v * R + r] = head_bytes / (t2 - t1) / 1e9;
        }
    for (int v = 0; v < V; v++) {
        qsort(td + v * R, R, sizeof(double), cmp);
        qsort(tl + v * R, R, sizeof(double), cmp);
        printf("%-24s decode set %6.2f GB/s   lm head %6.2f GB/s\n", argv[4 + v], td[v * R + R / 2], tl[v * R + R / 2]);
    }
    return 0;
}
