/* rope.c - rotary position embedding, in place, in both pair layouts.
 *
 * Precision follows Hugging Face transformers (and Meta's reference, which computes the same
 * float32 numbers), because golden tests compare against them:
 *   inv_freq[i] = 1.0f / powf(theta, (float)(2i) / (float)n_rot)     all in float32
 *   angle       = (float)pos * inv_freq[i]                           float32 product
 *   c, s        = cos(angle), sin(angle) evaluated in double on that float angle, rounded to float
 *                 (torch's float cos/sin are within 1 ulp of this correctly rounded value)
 *   x0' = x0 * c - x1 * s,  x1' = x0 * s + x1 * c                   float32, no FMA
 * powf itself is done as pow() in double rounded once to float. The float32 angle is what HF uses,
 * so at long positions we reproduce its rounding rather than a "more exact" angle.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "internal.h"

typedef struct {
    ce_tensor *x;
    const int32_t *pos;
    const float *inv_freq;  /* [n_rot / 2] */
    int64_t T, H, head_dim, n_rot;
    int mode;
    atomic_int nomem;
} rope_ctx;

static char *head_ptr(const rope_ctx *c, int64_t t, int64_t h) {
    const ce_tensor *x = c->x;
    char *p = (char *)x->data + t * x->stride[0];
    return x->ndim == 3 ? p + h * x->stride[1] : p + h * c->head_dim * (int64_t)sizeof(float);
}

static void rope_task(void *p, int ith, int nth) {
    rope_ctx *c = p;
    int64_t half = c->n_rot / 2, lo, hi;
    ce_split(c->T, ith, nth, 1, &lo, &hi);
    if (lo >= hi) return;
    float *cs = malloc(2 * (size_t)half * sizeof(float)); /* cos then sin of one token */
    if (!cs) { atomic_store(&c->nomem, 1); return; }
    float *sn = cs + half;
    for (int64_t t = lo; t < hi; t++) {
        float fp = (float)c->pos[t];
        for (int64_t i = 0; i < half; i++) {
            float a = fp * c->inv_freq[i];
            cs[i] = (float)cos((double)a);
            sn[i] = (float)sin((double)a);
        }
        /* pair i is (x[i*step], x[i*step + off]): adjacent (2i, 2i+1) or half (i, i + half) */
        int64_t step = c->mode == CE_ROPE_ADJACENT ? 2 : 1, off = c->mode == CE_ROPE_ADJACENT ? 1 : half;
        for (int64_t h = 0; h < c->H; h++) {
            float *x = (float *)head_ptr(c, t, h);
            for (int64_t i = 0; i < half; i++) {
                float x0 = x[i * step], x1 = x[i * step + off];
                x[i * step] = x0 * cs[i] - x1 * sn[i];
                x[i * step + off] = x0 * sn[i] + x1 * cs[i];
            }
        }
    }
    free(cs);
}

ce_status ce_rope(ce_tensor *x, const ce_tensor *pos, int64_t head_dim, int64_t n_rot, float theta,
                  int mode) {
    CE_PROFILE(CE_OP_ROPE, .t = {x, pos}, .n = {head_dim, n_rot});
    ce_status st;
    if ((st = ce_check_out(x, "rope", "x", CE_F32))) return st; /* in place */
    if ((st = ce_check(pos, "rope", "pos", CE_I32))) return st;
    if (mode != CE_ROPE_ADJACENT && mode != CE_ROPE_HALF)
        return ce_fail(CE_ERR_ARG, "rope: mode must be CE_ROPE_ADJACENT (0) or CE_ROPE_HALF (1), got %d", mode);
    if (!(theta > 0.0f) || isinf(theta))
        return ce_fail(CE_ERR_ARG, "rope: theta must be finite and > 0, got %g", (double)theta);
    if (head_dim < 1) return ce_fail(CE_ERR_ARG, "rope: head_dim must be >= 1, got %lld", (long long)head_dim);
    if (n_rot < 2 || n_rot > head_dim || n_rot % 2)
        return ce_fail(CE_ERR_ARG, "rope: n_rot must be even and in 2..head_dim (%lld), got %lld",
                       (long long)head_dim, (long long)n_rot);
    int64_t T = x->shape[0], H;
    if (x->ndim == 3) {
        if (x->shape[2] != head_dim)
            return ce_fail(CE_ERR_SHAPE, "rope: x is [T, H, D] with D = %lld but head_dim is %lld",
                           (long long)x->shape[2], (long long)head_dim);
        H = x->shape[1];
    } else if (x->ndim == 2) {
        if (x->shape[1] % head_dim)
            return ce_fail(CE_ERR_SHAPE, "rope: x is [T, %lld], not a whole number of heads of %lld",
                           (long long)x->shape[1], (long long)head_dim);
        H = x->shape[1] / head_dim;
    } else {
        return ce_fail(CE_ERR_SHAPE, "rope: x must be [T, H, D] or [T, H*D], got %d dims", x->ndim);
    }
    if ((st = ce_check_positions(pos, T, -1, "rope"))) return st;
    const int32_t *pp = (const int32_t *)pos->data;
    if (T == 0 || H == 0) return CE_OK;

    int64_t half = n_rot / 2;
    float *inv_freq = malloc((size_t)half * sizeof(float));
    if (!inv_freq) return ce_fail(CE_ERR_NOMEM, "rope: out of memory for %lld frequencies", (long long)half);
    for (int64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)n_rot;
        inv_freq[i] = 1.0f / (float)pow((double)theta, (double)e);
    }
    rope_ctx c = {x, pp, inv_freq, T, H, head_dim, n_rot, mode, 0};
    ce_parallel_n(rope_task, &c, ce_tasks(T * H * n_rot, 8192, T));
    free(inv_freq);
    if (atomic_load(&c.nomem)) return ce_fail(CE_ERR_NOMEM, "rope: out of memory for cos/sin tables");
    return CE_OK;
}
