/* profile.c - per-op counters and an event log, fed by CE_PROFILE at the top of every public op.
 *
 * Only the thread that called an op records it (pool workers never touch this state), under one
 * mutex: profiling is for looking, and an uncontended lock costs ~20 ns against ops of >= 1 us.
 * Costs are what an op must move and compute, not what its kernel happens to do: each operand
 * is read once, weights at their stored size, so bytes / time is comparable with the machine's
 * read bandwidth (a roofline). */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include "internal.h"

_Thread_local unsigned ce_fail_count;

int64_t ce_profile_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#ifdef CE_NO_PROFILE
int ce_profile_compiled(void) { return 0; }
ce_status ce_profile_enable(int on, int64_t log_capacity) {
    (void)log_capacity;
    return on ? ce_fail(CE_ERR_ARG, "profiler: this engine was built with CE_NO_PROFILE") : CE_OK;
}
int ce_profile_enabled(void) { return 0; }
void ce_profile_reset(void) {}
ce_status ce_profile_read(ce_prof_stats *out, int n) {
    if (!out || n < 0 || n > CE_OP_COUNT) return ce_fail(CE_ERR_ARG, "ce_profile_read: bad arguments");
    memset(out, 0, (size_t)n * sizeof *out);
    return CE_OK;
}
int64_t ce_profile_events(ce_prof_event *out, int64_t first, int64_t max) {
    (void)out; (void)first; (void)max;
    return 0;
}
int64_t ce_profile_event_count(void) { return 0; }
int64_t ce_profile_dropped(void) { return 0; }
void ce_profile_set_region(int32_t region) { (void)region; }
int32_t ce_profile_region(void) { return 0; }
#else

int ce_prof_on;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static ce_prof_stats stats[CE_OP_COUNT];
static ce_prof_event *events;             /* [n_events], allocated [events_alloc] */
static int64_t n_events, events_alloc, events_cap, n_dropped;
static int32_t n_threads;                 /* threads that have recorded an event */
static _Thread_local int32_t my_region, my_thread, depth;

int ce_profile_compiled(void) { return 1; }

ce_status ce_profile_enable(int on, int64_t log_capacity) {
    if (log_capacity < 0)
        return ce_fail(CE_ERR_ARG, "ce_profile_enable: log_capacity must be >= 0, got %lld", (long long)log_capacity);
    pthread_mutex_lock(&lock);
    events_cap = log_capacity;
    ce_prof_on = on ? 1 : 0;
    pthread_mutex_unlock(&lock);
    return CE_OK;
}

int ce_profile_enabled(void) { return ce_prof_on; }

void ce_profile_reset(void) {
    pthread_mutex_lock(&lock);
    memset(stats, 0, sizeof stats);
    free(events);
    events = NULL;
    n_events = events_alloc = n_dropped = 0;
    pthread_mutex_unlock(&lock);
}

ce_status ce_profile_read(ce_prof_stats *out, int n) {
    if (!out) return ce_fail(CE_ERR_ARG, "ce_profile_read: out is NULL");
    if (n < 0 || n > CE_OP_COUNT)
        return ce_fail(CE_ERR_ARG, "ce_profile_read: n must be in 0..%d, got %d", CE_OP_COUNT, n);
    pthread_mutex_lock(&lock);
    memcpy(out, stats, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&lock);
    return CE_OK;
}

int64_t ce_profile_events(ce_prof_event *out, int64_t first, int64_t max) {
    if (!out || first < 0 || max < 0)
        return ce_fail(CE_ERR_ARG, "ce_profile_events: out must not be NULL, first and max >= 0");
    pthread_mutex_lock(&lock);
    int64_t n = first < n_events ? n_events - first : 0;
    if (n > max) n = max;
    if (n) memcpy(out, events + first, (size_t)n * sizeof *out);
    pthread_mutex_unlock(&lock);
    return n;
}

int64_t ce_profile_event_count(void) {
    pthread_mutex_lock(&lock);
    int64_t n = n_events;
    pthread_mutex_unlock(&lock);
    return n;
}

int64_t ce_profile_dropped(void) {
    pthread_mutex_lock(&lock);
    int64_t n = n_dropped;
    pthread_mutex_unlock(&lock);
    return n;
}

void ce_profile_set_region(int32_t region) { my_region = region; }
int32_t ce_profile_region(void) { return my_region; }

void ce_prof_open(ce_prof_scope *s, int op, const ce_prof_args *args) {
    s->op = op;
    s->nested = depth++ > 0;
    s->fails = ce_fail_count;
    s->region = my_region;
    s->args = *args;
    s->t0 = ce_profile_now_ns(); /* last: the op's time starts here */
}

/* ---- costs ---- */
/* Bytes of t's elements as stored (block dtypes by whole blocks). */
static int64_t row_bytes(int dtype, int64_t n) { return n / ce_dtype_block_size(dtype) * ce_dtype_block_bytes(dtype); }
static int64_t tbytes(const ce_tensor *t) { return t ? ce_rows(t) * row_bytes(t->dtype, ce_cols(t)) : 0; }

static int64_t numel(const ce_tensor *t) { return t ? ce_tensor_numel(t) : 0; }

typedef struct { int64_t rd, wr, wb, flops; } cost;

/* out = x @ w^T + bias; x counted by the caller (matmul_n reads it once for all weights). */
static void matmul_cost(cost *c, const ce_tensor *out, const ce_tensor *x, const ce_tensor *w,
                        const ce_tensor *bias) {
    int64_t M = ce_rows(x), K = ce_cols(x), N = w->shape[0];
    int64_t wb = tbytes(w);
    c->rd += wb + tbytes(bias);
    c->wb += wb;
    c->wr += tbytes(out);
    c->flops += 2 * M * N * K + (bias ? M * N : 0);
}

/* Elementwise FLOPs per output element, as usually counted (exp and tanh as one). */
static int64_t ew_flops(int op) {
    switch (op) {
    case CE_OP_SILU: return 4;      /* x / (1 + exp(-x)) */
    case CE_OP_GELU: return 8;
    case CE_OP_SILU_MUL: return 5;
    case CE_OP_SOFTMAX: return 5;   /* scale, subtract max, exp, sum, divide */
    case CE_OP_RMSNORM: return 4;   /* square, sum, scale, weight */
    default: return 1;              /* add, mul, scale */
    }
}

static cost op_cost(int op, const ce_prof_args *a) {
    cost c = {0, 0, 0, 0};
    const ce_tensor *t0 = a->t[0], *t1 = a->t[1], *t2 = a->t[2];
    switch (op) {
    case CE_OP_MATMUL:
        c.rd += tbytes(t1);
        matmul_cost(&c, t0, t1, t2, a->t[3]);
        break;
    case CE_OP_MATMUL_N: {
        ce_tensor *const *out = a->t[0];
        const ce_tensor *const *w = a->t[2], *const *bias = a->t[3];
        c.rd += tbytes(t1);
        for (int64_t i = 0; i < a->n[0]; i++) matmul_cost(&c, out[i], t1, w[i], bias ? bias[i] : NULL);
        break;
    }
    case CE_OP_EMBEDDING: { /* out, w, ids: n rows of w */
        c.wb = numel(t2) * row_bytes(t1->dtype, t1->shape[1]);
        c.rd = c.wb + tbytes(t2);
        c.wr = tbytes(t0);
        break;
    }
    case CE_OP_RMSNORM: /* out, x, w */
        c.wb = tbytes(t2);
        c.rd = tbytes(t1) + c.wb;
        c.wr = tbytes(t0);
        c.flops = ew_flops(op) * numel(t1);
        break;
    case CE_OP_ROPE: { /* x in place, pos; n = {head_dim, n_rot}: 6 flops per rotated pair */
        int64_t rot = numel(t0) / a->n[0] * a->n[1];
        c.rd = 4 * rot + tbytes(t1);
        c.wr = 4 * rot;
        c.flops = 3 * rot;
        break;
    }
    case CE_OP_SOFTMAX: case CE_OP_SILU: case CE_OP_GELU: case CE_OP_SCALE:
    case CE_OP_SILU_MUL: case CE_OP_ADD: case CE_OP_MUL: /* out, x (, y) */
        c.rd = tbytes(t1) + tbytes(t2);
        c.wr = tbytes(t0);
        c.flops = ew_flops(op) * numel(t0);
        break;
    case CE_OP_ATTENTION: { /* out, q, k, v, pos, probs; n = {n_kv} */
        const ce_tensor *k = a->t[2], *pos = a->t[4], *probs = a->t[5];
        int64_t T = t1->shape[0], Hq = t1->shape[1], D = t1->shape[2], Hkv = k->shape[1];
        const int32_t *p = (const int32_t *)pos->data;
        int64_t keys = 0, seen = 0; /* keys attended in all; cache rows read (each once) */
        for (int64_t t = 0; t < T; t++) {
            keys += (int64_t)p[t] + 1;
            if (p[t] + 1 > seen) seen = (int64_t)p[t] + 1;
        }
        const ce_tensor *v = a->t[3];
        int64_t kvb = seen * Hkv * D * (ce_dtype_block_bytes(k->dtype) + ce_dtype_block_bytes(v->dtype));
        c.rd = tbytes(t1) + kvb + tbytes(pos);
        c.wr = tbytes(t0) + tbytes(probs);
        c.flops = 4 * Hq * D * keys;
        break;
    }
    case CE_OP_ATTENTION_SEQS: { /* out, q, pos, k_cache[], v_cache[], rows[]; n = {nseq, appends} */
        ce_tensor *const *kc = a->t[3], *const *vc = a->t[4];
        const int64_t *rows = a->t[5];
        const ce_tensor *pos = a->t[2];
        const int32_t *p = (const int32_t *)pos->data;
        int64_t Hq = t1->shape[1], D = t1->shape[2], keys = 0, kvb = 0, app = 0, app_rd = 0;
        for (int64_t s = 0, r0 = 0; s < a->n[0]; r0 += rows[s], s++) {
            int64_t Hkv = kc[s]->shape[1], seen = (int64_t)p[r0 + rows[s] - 1] + 1;
            int64_t eb = ce_dtype_block_bytes(kc[s]->dtype) + ce_dtype_block_bytes(vc[s]->dtype);
            for (int64_t t = 0; t < rows[s]; t++) keys += (int64_t)p[r0 + t] + 1;
            kvb += seen * Hkv * D * eb;
            if (a->n[1]) app += rows[s] * Hkv * D * eb, app_rd += rows[s] * Hkv * D * 8; /* F32 k_new, v_new */
        }
        c.rd = tbytes(t1) + kvb + tbytes(pos) + app_rd;
        c.wr = tbytes(t0) + app;
        c.flops = 4 * Hq * D * keys;
        break;
    }
    case CE_OP_ARGMAX: /* out, x */
        c.rd = tbytes(t1);
        c.wr = tbytes(t0);
        break;
    case CE_OP_TOPK: /* values, indices, x */
        c.rd = tbytes(t2);
        c.wr = tbytes(t0) + tbytes(t1);
        break;
    case CE_OP_COPY: case CE_OP_COPY_ROWS: /* dst, src: src's rows land in dst's dtype */
        c.rd = tbytes(t1);
        c.wr = ce_rows(t1) * row_bytes(t0->dtype, ce_cols(t1));
        break;
    case CE_OP_CONVERT: { /* n = {count, dst dtype, src dtype} */
        c.rd = row_bytes((int)a->n[2], a->n[0]);
        c.wr = row_bytes((int)a->n[1], a->n[0]);
        break;
    }
    case CE_OP_REPETITION_PENALTY: /* logits, ids: each id reads and writes one logit */
        c.rd = 2 * tbytes(t1);
        c.wr = tbytes(t1);
        c.flops = numel(t1);
        break;
    case CE_OP_SAMPLE: /* logits */
        c.rd = tbytes(t0);
        c.wr = 4;
        break;
    default:
        break;
    }
    return c;
}

void ce_prof_close_slow(ce_prof_scope *s) {
    int64_t t1 = ce_profile_now_ns();
    depth--;
    if (s->nested) return;
    int failed = ce_fail_count != s->fails;
    cost c = {0, 0, 0, 0};
    if (!failed) c = op_cost(s->op, &s->args);
    pthread_mutex_lock(&lock);
    ce_prof_stats *st = &stats[s->op];
    if (failed) {
        st->failed++;
    } else {
        st->calls++;
        st->ns += t1 - s->t0;
        st->bytes_read += c.rd;
        st->bytes_written += c.wr;
        st->weight_bytes += c.wb;
        st->flops += c.flops;
        if (n_events < events_cap) {
            if (n_events == events_alloc) {
                int64_t na = events_alloc ? events_alloc * 2 : 4096;
                if (na > events_cap) na = events_cap;
                ce_prof_event *e = realloc(events, (size_t)na * sizeof *e);
                if (e) { events = e; events_alloc = na; }
            }
            if (n_events < events_alloc) {
                if (!my_thread) my_thread = ++n_threads;
                events[n_events++] = (ce_prof_event){s->op, s->region, my_thread, 0, s->t0, t1 - s->t0,
                                                     c.rd, c.wr, c.wb, c.flops};
            } else {
                n_dropped++;
            }
        } else {
            n_dropped++;
        }
    }
    pthread_mutex_unlock(&lock);
}
#endif
