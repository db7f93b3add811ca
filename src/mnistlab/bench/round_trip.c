/* The round trip of one cache line between two CPUs: how far apart the cores under them are.
 *
 * Two threads, each pinned to its CPU, pass a flag back and forth `trips` times after 1,000 untimed trips,
 * for half a second at most (two CPUs that take turns on one core would otherwise spin a time slice per
 * trip); the result is the mean nanoseconds of one timed round trip, or -1 where a thread cannot be pinned.
 * Cores that share a last-level cache answer in about a hundred nanoseconds or less; cores that do not
 * (another chiplet, another socket) take several times longer, and so does every cache line a
 * multi-threaded step hands from one core to the other.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define BUDGET_NS 5e8

typedef struct {
    _Alignas(64) atomic_int flag; /* 1: the ping is out; 0: it came back; 2: the game is over */
    _Alignas(64) int cpu[2];
    long trips;
    pthread_barrier_t ready;
    int pinned[2];
    double ns;
} Game;

static int pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0;
}

static double now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return 1e9 * (double)t.tv_sec + (double)t.tv_nsec;
}

static void *answer(void *arg) {
    Game *g = arg;
    g->pinned[1] = pin(g->cpu[1]);
    pthread_barrier_wait(&g->ready);
    if (!(g->pinned[0] && g->pinned[1])) return NULL;
    for (;;) {
        int f;
        while ((f = atomic_load_explicit(&g->flag, memory_order_acquire)) == 0) {}
        if (f == 2) return NULL;
        atomic_store_explicit(&g->flag, 0, memory_order_release);
    }
}

static void *serve(void *arg) {
    Game *g = arg;
    g->pinned[0] = pin(g->cpu[0]);
    pthread_barrier_wait(&g->ready);
    if (!(g->pinned[0] && g->pinned[1])) return NULL;
    const long warmup = 1000;
    double start = now_ns(), t0 = start;
    long timed = 0;
    for (long i = 0; i < warmup + g->trips; i++) {
        if (i == warmup) t0 = now_ns();
        if ((i & 63) == 0 && now_ns() - start > BUDGET_NS) break;
        atomic_store_explicit(&g->flag, 1, memory_order_release);
        while (atomic_load_explicit(&g->flag, memory_order_acquire) != 0) {}
        if (i >= warmup) timed++;
    }
    g->ns = timed > 0 ? (now_ns() - t0) / (double)timed : -1;
    atomic_store_explicit(&g->flag, 2, memory_order_release);
    return NULL;
}

double mnistlab_round_trip_ns(int cpu_a, int cpu_b, long trips) {
    Game game = {0}, *g = &game; /* the threads are joined before it goes */
    atomic_init(&g->flag, 0);
    g->cpu[0] = cpu_a;
    g->cpu[1] = cpu_b;
    g->trips = trips > 0 ? trips : 1;
    g->ns = -1;
    if (pthread_barrier_init(&g->ready, NULL, 2) != 0) return -1;
    pthread_t a, b;
    if (pthread_create(&a, NULL, serve, g) != 0) {
        pthread_barrier_destroy(&g->ready);
        return -1;
    }
    if (pthread_create(&b, NULL, answer, g) != 0) {
        g->pinned[1] = 0;
        pthread_barrier_wait(&g->ready); /* let the first thread through to its exit */
        pthread_join(a, NULL);
        pthread_barrier_destroy(&g->ready);
        return -1;
    }
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    pthread_barrier_destroy(&g->ready);
    return (g->pinned[0] && g->pinned[1]) ? g->ns : -1;
}
