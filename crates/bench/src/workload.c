/* The workload of `lego bench excache`, compiled by the bench with gcc -O2.
 *
 * usage: workload SIZE_BYTES FWD_PASSES BWD_PASSES RANDOM_READS
 *
 * Allocates SIZE bytes with malloc, fills them with xorshift64 output
 * (incompressible, so zram cannot shrink it), then runs the phases and prints
 * one line per phase and a final checksum:
 *
 *   phase NAME SECONDS CHECKSUM
 *   checksum CHECKSUM
 *
 * Everything but SECONDS is deterministic: the same arguments print the same
 * checksums on every machine and under every memory configuration.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t xorshift(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* Keeps the compiler from merging or skipping passes over the array. */
#define BARRIER() __asm__ __volatile__("" ::: "memory")

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s SIZE_BYTES FWD_PASSES BWD_PASSES RANDOM_READS\n", argv[0]);
        return 2;
    }
    uint64_t size = strtoull(argv[1], NULL, 10);
    long fwd = strtol(argv[2], NULL, 10);
    long bwd = strtol(argv[3], NULL, 10);
    uint64_t reads = strtoull(argv[4], NULL, 10);
    uint64_t n = size / 8;
    if (n == 0) {
        fprintf(stderr, "workload: SIZE_BYTES must be at least 8\n");
        return 2;
    }
    uint64_t *a = malloc(n * 8);
    if (!a) {
        fprintf(stderr, "workload: cannot allocate %llu bytes\n", (unsigned long long)(n * 8));
        return 3;
    }
    uint64_t total = 0;
    double t;

    /* fill */
    t = now();
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (uint64_t i = 0; i < n; i++)
        a[i] = xorshift(&s);
    BARRIER();
    printf("phase fill %.6f %016llx\n", now() - t, (unsigned long long)s);
    total = mix(total, s);

    /* sequential forward passes */
    t = now();
    uint64_t sum = 0;
    for (long p = 0; p < fwd; p++) {
        uint64_t ps = 0;
        for (uint64_t i = 0; i < n; i++)
            ps += a[i];
        BARRIER();
        sum = mix(sum, ps + (uint64_t)p);
    }
    printf("phase seq_fwd %.6f %016llx\n", now() - t, (unsigned long long)sum);
    total = mix(total, sum);

    /* sequential backward passes */
    t = now();
    sum = 0;
    for (long p = 0; p < bwd; p++) {
        uint64_t ps = 0;
        for (uint64_t i = n; i-- > 0;)
            ps ^= a[i] + i;
        BARRIER();
        sum = mix(sum, ps + (uint64_t)p);
    }
    printf("phase seq_bwd %.6f %016llx\n", now() - t, (unsigned long long)sum);
    total = mix(total, sum);

    /* random 8-byte reads */
    t = now();
    sum = 0;
    uint64_t r = 0x9e3779b97f4a7c15ULL;
    for (uint64_t k = 0; k < reads; k++) {
        uint64_t i = (uint64_t)(((unsigned __int128)xorshift(&r) * n) >> 64);
        sum += a[i] ^ k;
    }
    BARRIER();
    printf("phase random %.6f %016llx\n", now() - t, (unsigned long long)sum);
    total = mix(total, sum);

    printf("checksum %016llx\n", (unsigned long long)total);
    free(a);
    return 0;
}
