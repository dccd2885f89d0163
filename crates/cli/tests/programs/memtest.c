#define _GNU_SOURCE
/* Exercises what the ExCache runtime takes over, with more data than the
 * ExCache holds: threads writing and verifying disjoint and shared data
 * (sequentially, then at random, missing at once), fork
 * (the child reads what the parent wrote, then both write), a large realloc
 * (mremap underneath), munmap and reuse of the address. Prints a line per
 * check; the output must be the same with and without lego. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MB (1024UL * 1024UL)
static uint64_t *shared;
static const size_t SHARED_WORDS = 8 * MB / 8;

static uint64_t mix(uint64_t x) { x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; return x; }

static void *worker(void *arg) {
    long t = (long)arg;
    size_t n = 12 * MB / 8;                      /* 12 MiB of its own */
    uint64_t *mine = malloc(n * 8);
    for (size_t i = 0; i < n; i++) mine[i] = mix(i * 4 + t);
    for (size_t i = t; i < SHARED_WORDS; i += 4) shared[i] = mix(i);   /* interleaved in shared pages */
    uint64_t bad = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < n; i++) bad += mine[i] != mix(i * 4 + t);
    /* random reads: the four threads miss at once (fetched together) */
    uint64_t s = 0x9e3779b97f4a7c15ULL * (uint64_t)(t + 1);
    for (int k = 0; k < 20000; k++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        size_t i = s % n;
        bad += mine[i] != mix(i * 4 + t);
    }
    free(mine);
    return (void *)bad;
}

int main(void) {
    shared = calloc(SHARED_WORDS, 8);
    pthread_t th[4];
    for (long t = 0; t < 4; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    uint64_t bad = 0;
    for (int t = 0; t < 4; t++) { void *r; pthread_join(th[t], &r); bad += (uint64_t)r; }
    for (size_t i = 0; i < SHARED_WORDS; i++) bad += shared[i] != mix(i);
    printf("threads: %s\n", bad ? "MISMATCH" : "ok");

    /* 40 MiB written before fork: the child must see it, never zeros. */
    size_t fn = 40 * MB / 8;
    uint64_t *before = malloc(fn * 8);
    for (size_t i = 0; i < fn; i++) before[i] = mix(i + 7);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        uint64_t cbad = 0;
        for (size_t i = 0; i < fn; i++) cbad += before[i] != mix(i + 7);
        for (size_t i = 0; i < fn; i++) before[i] = mix(i + 99);   /* diverge */
        for (size_t i = 0; i < fn; i++) cbad += before[i] != mix(i + 99);
        printf("child: %s\n", cbad ? "MISMATCH" : "ok");
        fflush(stdout);
        _exit(cbad ? 1 : 0);
    }
    for (size_t i = 0; i < fn; i += 2) before[i] = mix(i + 1000);
    int status = 0;
    waitpid(pid, &status, 0);
    uint64_t pbad = 0;
    for (size_t i = 0; i < fn; i++) pbad += before[i] != (i % 2 ? mix(i + 7) : mix(i + 1000));
    printf("parent after fork: %s, child exit %d\n", pbad ? "MISMATCH" : "ok", WEXITSTATUS(status));
    free(before);

    /* A large realloc: grows 8 MiB to 48 MiB, contents kept. */
    size_t rn = 8 * MB / 8;
    uint64_t *r = malloc(rn * 8);
    for (size_t i = 0; i < rn; i++) r[i] = mix(i + 5);
    r = realloc(r, 48 * MB);
    uint64_t rbad = 0;
    for (size_t i = 0; i < rn; i++) rbad += r[i] != mix(i + 5);
    memset(r + rn, 0xab, 40 * MB);
    printf("realloc: %s\n", rbad ? "MISMATCH" : "ok");
    free(r);

    /* mmap, write, munmap, mmap again: fresh zeros, wherever it lands. */
    size_t mlen = 24 * MB;
    unsigned char *m = mmap(NULL, mlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(m, 0x5a, mlen);
    munmap(m, mlen);
    unsigned char *m2 = mmap(NULL, mlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t nonzero = 0;
    for (size_t i = 0; i < mlen; i++) nonzero += m2[i] != 0;
    printf("munmap and reuse: %s\n", nonzero ? "NOT ZERO" : "ok");
    m2 = mremap(m2, mlen, 2 * mlen, MREMAP_MAYMOVE);
    memset(m2 + mlen, 1, mlen);
    printf("mremap: %s\n", m2[2 * mlen - 1] == 1 && m2[0] == 0 ? "ok" : "MISMATCH");
    return 0;
}
