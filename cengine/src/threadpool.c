/* threadpool.c - one persistent pool of worker threads.
 *
 * A decode step is ~420 back-to-back ops of a few microseconds each, so workers must not sleep
 * between them: after a job a worker spins on the job counter for a short while (CE_SPIN_SECONDS)
 * and only then blocks on a condition variable. The caller is thread 0 and works too.
 * Dekker-style seq_cst ordering on (gen, sleepers) makes the spin/sleep hand-off race free.
 * Every spin (a worker waiting for a job, the caller waiting for the workers) yields the core
 * after CE_SPIN_YIELD pauses (~6 us, longer than the gap between two ops of a step): when there
 * are more runnable threads than cores (more threads than cores were asked for, or another
 * program is busy) the thread we wait for may be the one we are keeping off the core. Measured
 * on 2 cores with 3 threads: decode-sized GEMVs 0.2 -> 9.5 GB/s; no change with 2.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>
#include "internal.h"

#define CE_SPIN_SECONDS 0.002
#define CE_SPIN_YIELD 200 /* pauses (~30 ns each on Zen 3) before a spin starts yielding */

int ce_simd_on = CE_HAVE_AVX2;

static struct {
    int n;                      /* threads including the caller */
    pthread_t *workers;         /* [n - 1] */
    atomic_ulong gen;           /* bumped once per job */
    atomic_int pending;         /* workers still running the current job */
    atomic_int sleepers;        /* workers blocked on cv */
    atomic_int stop;
    unsigned long start_gen;    /* gen when the workers were created: their first "seen" value */
    ce_task_fn fn;
    void *ctx;
    int active;                 /* threads taking part in the current job */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t config_mu = PTHREAD_MUTEX_INITIALIZER;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *arg) {
    int ith = (int)(intptr_t)arg;
    /* Not a fresh load of gen: a job dispatched before this thread first ran must not be missed. */
    unsigned long seen = pool.start_gen;
    for (;;) {
        /* spin, then sleep, until a new job (or stop) arrives */
        double t0 = ce_now();
        int spins = 0;
        while (atomic_load(&pool.gen) == seen && !atomic_load(&pool.stop)) {
            cpu_relax();
            if (++spins > CE_SPIN_YIELD) sched_yield();
            if (spins % 1024 == 0 && ce_now() - t0 > CE_SPIN_SECONDS) {
                pthread_mutex_lock(&pool.mu);
                atomic_fetch_add(&pool.sleepers, 1);
                while (atomic_load(&pool.gen) == seen && !atomic_load(&pool.stop))
                    pthread_cond_wait(&pool.cv, &pool.mu);
                atomic_fetch_sub(&pool.sleepers, 1);
                pthread_mutex_unlock(&pool.mu);
            }
        }
        if (atomic_load(&pool.stop)) return NULL;
        seen = atomic_load(&pool.gen);
        if (ith < pool.active) pool.fn(pool.ctx, ith, pool.active);
        atomic_fetch_sub(&pool.pending, 1);
    }
}

static void pool_stop(void) {
    if (!pool.workers) return;
    pthread_mutex_lock(&pool.mu);
    atomic_store(&pool.stop, 1);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    for (int i = 0; i < pool.n - 1; i++) pthread_join(pool.workers[i], NULL);
    free(pool.workers);
    pool.workers = NULL;
    atomic_store(&pool.stop, 0);
    pool.n = 1;
}

static ce_status pool_start(int n) {
    pool.n = 1;
    if (n <= 1) return CE_OK;
    pool.start_gen = atomic_load(&pool.gen);
    pool.workers = calloc((size_t)n - 1, sizeof(pthread_t));
    if (!pool.workers) return ce_fail(CE_ERR_NOMEM, "out of memory for %d threads", n);
    for (int i = 1; i < n; i++) {
        if (pthread_create(&pool.workers[i - 1], NULL, worker_main, (void *)(intptr_t)i)) {
            pool.n = i; /* stop the ones that started */
            pool_stop();
            return ce_fail(CE_ERR_NOMEM, "could not start worker thread %d of %d", i, n);
        }
        pool.n = i + 1;
    }
    return CE_OK;
}

int ce_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (n > 256 ? 256 : (int)n);
}

static int configured = 0;

ce_status ce_set_threads(int n) {
    if (n < 1 || n > 256) return ce_fail(CE_ERR_ARG, "thread count must be 1..256, got %d", n);
    pthread_mutex_lock(&config_mu);
    ce_status st = CE_OK;
    if (!configured || n != pool.n) {
        pool_stop();
        st = pool_start(n);
        configured = 1;
    }
    pthread_mutex_unlock(&config_mu);
    return st;
}

int ce_get_threads(void) {
    if (!configured) ce_set_threads(ce_default_threads());
    return pool.n;
}

void ce_parallel_n(ce_task_fn fn, void *ctx, int max_threads) {
    int n = ce_get_threads();
    if (max_threads < n) n = max_threads < 1 ? 1 : max_threads;
    if (n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    /* Ops are issued from one Python thread at a time (the GIL is released inside calls, so
     * guard against two Python threads sharing the pool). */
    pthread_mutex_lock(&config_mu);
    pool.fn = fn;
    pool.ctx = ctx;
    pool.active = n;
    atomic_store(&pool.pending, pool.n - 1);
    atomic_fetch_add(&pool.gen, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    fn(ctx, 0, n);
    for (int spins = 0; atomic_load(&pool.pending) > 0;) {
        cpu_relax();
        if (spins < CE_SPIN_YIELD) spins++;
        else sched_yield();
    }
    pthread_mutex_unlock(&config_mu);
}

void ce_parallel(ce_task_fn fn, void *ctx) { ce_parallel_n(fn, ctx, 1 << 30); }

void ce_set_simd(int enabled) {
#if CE_HAVE_AVX2
    ce_simd_on = enabled && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    (void)enabled;
    ce_simd_on = 0;
#endif
}

int ce_get_simd(void) { return ce_simd_on; }

__attribute__((constructor)) static void detect_simd(void) { ce_set_simd(1); }
