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
 * Dynamic jobs (ce_parallel_dyn: GEMV, attention) go further: a worker joins a job through a
 * state word tagged with the job's generation, the caller closes the job when it runs out of
 * work and then waits only for the workers that joined, so a late worker is skipped, not waited
 * for.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "internal.h"

#define CE_SPIN_SECONDS 0.002
#define CE_SPIN_YIELD 200 /* pauses (~30 ns each on Zen 3) before a spin starts yielding */

int ce_simd_on = CE_HAVE_AVX2;

static struct {
    int n;                      /* threads including the caller */
    pthread_t *workers;         /* [n - 1] */
    atomic_ulong gen;           /* +2 per job; odd while the caller is writing the next one */
    /* state and done on lines of their own: the caller spins on done while the workers spin on
     * gen, and every write to a shared line costs both a transfer (measured +2% on 768-row GEMVs) */
    _Alignas(64) _Atomic uint64_t state; /* dynamic jobs: (gen & 0xffffffff) << 32 | CLOSED | workers joined */
    _Alignas(64) atomic_int done; /* workers that have finished the current job (dynamic: of those joined) */
    _Alignas(64) atomic_int dynamic; /* the current job is dynamic */
    atomic_int sleepers;        /* workers blocked on cv */
    atomic_int stop;
    unsigned long start_gen;    /* gen when the workers were created: their first "seen" value */
    /* the current job; atomics (relaxed) because a late worker may read them while the caller
     * posts the next dynamic job: it then drops what it read (the generation check below) */
    _Atomic(ce_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_int active;          /* threads taking part in the current job */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t config_mu = PTHREAD_MUTEX_INITIALIZER;

#define JOB_CLOSED 0x80000000u

static inline uint64_t job_tag(unsigned long gen) { return (uint64_t)(uint32_t)gen << 32; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* one step of a spin: a pause, or after CE_SPIN_YIELD of them, giving up the core */
static inline void spin_step(unsigned *spins) {
    cpu_relax();
    if (*spins > CE_SPIN_YIELD) sched_yield();
    ++*spins;
}

static void *worker_main(void *arg) {
    int ith = (int)(intptr_t)arg;
    /* Not a fresh load of gen: a job dispatched before this thread first ran must not be missed. */
    unsigned long seen = pool.start_gen;
    for (;;) {
        /* spin, then sleep, until a new job (or stop) arrives */
        double t0 = ce_now();
        unsigned spins = 0;
        unsigned long g;
        /* gen is odd while the caller writes a job: wait for a new, even one */
        while (((g = atomic_load(&pool.gen)) == seen || (g & 1)) && !atomic_load(&pool.stop)) {
            spin_step(&spins);
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
        ce_task_fn fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&pool.ctx, memory_order_relaxed);
        int active = atomic_load_explicit(&pool.active, memory_order_relaxed);
        int dynamic = atomic_load_explicit(&pool.dynamic, memory_order_relaxed);
        /* Seqlock: a worker late for a dynamic job can find the caller already writing the next
         * one; what it read is job g's only if gen did not move meanwhile. Else look again. */
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load(&pool.gen) != g) continue;
        seen = g;
        if (!dynamic) {
            if (ith < active) fn(ctx, ith, active);
            atomic_fetch_add(&pool.done, 1);
            continue;
        }
        /* join job g unless it is closed (its caller ran out of work) or already replaced; a
         * successful join means the job is still open, so the fields read above are its own */
        uint64_t st = atomic_load(&pool.state);
        int joined = 0;
        while ((st & ~(uint64_t)0xffffffffu) == job_tag(g) && !(st & JOB_CLOSED))
            if (atomic_compare_exchange_weak(&pool.state, &st, st + 1)) {
                joined = 1;
                break;
            }
        if (!joined) continue;
        if (ith < active) fn(ctx, ith, active);
        atomic_fetch_add(&pool.done, 1);
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

/* spin (then yield) until *v >= want */
static void wait_at_least(atomic_int *v, int want) {
    for (unsigned spins = 0; atomic_load(v) < want;) spin_step(&spins);
}

static void run_job(ce_task_fn fn, void *ctx, int max_threads, int dynamic) {
    int n = ce_get_threads();
    if (max_threads < n) n = max_threads < 1 ? 1 : max_threads;
    if (n == 1) {
        fn(ctx, 0, 1);
        return;
    }
    /* Ops are issued from one Python thread at a time (the GIL is released inside calls, so
     * guard against two Python threads sharing the pool). */
    pthread_mutex_lock(&config_mu);
    /* only this (locked) caller changes gen: odd while the job is written, even once posted */
    unsigned long g = atomic_load(&pool.gen) + 2;
    atomic_store(&pool.gen, g - 1);
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&pool.active, n, memory_order_relaxed);
    atomic_store_explicit(&pool.dynamic, dynamic, memory_order_relaxed);
    atomic_store(&pool.done, 0);
    if (dynamic) atomic_store(&pool.state, job_tag(g));
    atomic_store(&pool.gen, g);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
    fn(ctx, 0, n);
    /* a static job waits for every worker; a dynamic one, closed now, for those that joined */
    int workers = dynamic ? (int)(atomic_fetch_or(&pool.state, JOB_CLOSED) & 0x7fffffffu) : pool.n - 1;
    wait_at_least(&pool.done, workers);
    pthread_mutex_unlock(&config_mu);
}

void ce_parallel_n(ce_task_fn fn, void *ctx, int max_threads) { run_job(fn, ctx, max_threads, 0); }

void ce_parallel_dyn(ce_task_fn fn, void *ctx, int max_threads) { run_job(fn, ctx, max_threads, 1); }

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
