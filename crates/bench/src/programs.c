/* The program rows of `lego bench excache`, compiled by the bench with
 * gcc -O2 -pthread. Three unmodified programs in one binary:
 *
 *   programs wordcount CORPUS_BYTES
 *       map-reduce word count (as Phoenix's): generates a corpus of words
 *       with a skewed (Zipf-like) vocabulary in memory, maps it into 64
 *       partitions of word hashes, then reduces each partition (sort, count).
 *   programs randwrite SIZE_BYTES UPDATES
 *       a random, write-heavy working set: fills an array, then makes
 *       UPDATES read-modify-writes of random 8-byte words, then sums it.
 *   programs threads SIZE_BYTES READS THREADS
 *       fills an array, then THREADS threads make READS random 8-byte reads
 *       between them.
 *
 * Each prints result lines (deterministic: the same on every machine and
 * under every memory configuration), then `elapsed SECONDS` and
 * `peak_rss_kb KB` (the bench's working set), which vary.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

static uint64_t below(uint64_t *s, uint64_t n) {
    return (uint64_t)(((unsigned __int128)xorshift(s) * n) >> 64);
}

static void *must_malloc(size_t n) {
    void *p = malloc(n);
    if (!p) {
        fprintf(stderr, "programs: cannot allocate %zu bytes\n", n);
        exit(3);
    }
    return p;
}

static void peak_rss(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            printf("peak_rss_kb %lld\n", atoll(line + 6));
    if (f)
        fclose(f);
}

/* ---- word count ---- */

#define PARTS 64
#define VOCAB 500000

struct part {
    uint64_t *h;
    size_t n, cap;
};

static uint64_t fnv(const char *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ULL;
    return h;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int wordcount(uint64_t bytes) {
    char *c = must_malloc(bytes + 16);
    uint64_t s = 0x2545f4914f6cdd1dULL;
    size_t len = 0;
    /* generate: word k of the vocabulary is spelled from k's own hash */
    while (len + 16 < bytes) {
        uint64_t a = below(&s, VOCAB), b = below(&s, VOCAB);
        uint64_t k = a * b / VOCAB; /* skewed toward small k */
        uint64_t w = k * 0x9e3779b97f4a7c15ULL + 1;
        int wl = 2 + (int)(k % 9);
        for (int i = 0; i < wl; i++) {
            c[len++] = (char)('a' + (w % 26));
            w /= 26;
        }
        c[len++] = (xorshift(&s) & 15) ? ' ' : '\n';
    }
    c[len] = 0;
    /* map */
    struct part p[PARTS];
    for (int i = 0; i < PARTS; i++) {
        p[i].cap = 1024;
        p[i].n = 0;
        p[i].h = must_malloc(p[i].cap * 8);
    }
    uint64_t words = 0;
    for (size_t i = 0; i < len;) {
        while (i < len && (c[i] == ' ' || c[i] == '\n'))
            i++;
        size_t j = i;
        while (j < len && c[j] != ' ' && c[j] != '\n')
            j++;
        if (j > i) {
            uint64_t h = fnv(c + i, j - i);
            struct part *q = &p[h % PARTS];
            if (q->n == q->cap) {
                q->cap *= 2;
                q->h = realloc(q->h, q->cap * 8);
                if (!q->h) {
                    fprintf(stderr, "programs: cannot grow a partition\n");
                    return 3;
                }
            }
            q->h[q->n++] = h;
            words++;
        }
        i = j;
    }
    /* reduce */
    uint64_t distinct = 0, sum = 0, top = 0, top_h = 0;
    for (int i = 0; i < PARTS; i++) {
        qsort(p[i].h, p[i].n, 8, cmp_u64);
        for (size_t a = 0; a < p[i].n;) {
            size_t b = a;
            while (b < p[i].n && p[i].h[b] == p[i].h[a])
                b++;
            distinct++;
            sum = mix(sum, p[i].h[a] ^ (uint64_t)(b - a));
            if (b - a > top || (b - a == top && p[i].h[a] < top_h)) {
                top = b - a;
                top_h = p[i].h[a];
            }
            a = b;
        }
        free(p[i].h);
    }
    printf("corpus %llu bytes, %llu words, %llu distinct\n", (unsigned long long)len,
           (unsigned long long)words, (unsigned long long)distinct);
    printf("most frequent word: hash %016llx, %llu times\n", (unsigned long long)top_h,
           (unsigned long long)top);
    printf("checksum %016llx\n", (unsigned long long)sum);
    free(c);
    return 0;
}

/* ---- random writes ---- */

static int randwrite(uint64_t size, uint64_t updates) {
    uint64_t n = size / 8;
    uint64_t *a = must_malloc(n * 8);
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (uint64_t i = 0; i < n; i++)
        a[i] = xorshift(&s);
    uint64_t r = 0x9e3779b97f4a7c15ULL;
    for (uint64_t k = 0; k < updates; k++) {
        uint64_t i = below(&r, n);
        a[i] = a[i] * 6364136223846793005ULL + k;
    }
    uint64_t sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum = mix(sum, a[i]);
    printf("checksum %016llx\n", (unsigned long long)sum);
    free(a);
    return 0;
}

/* ---- threads ---- */

struct reader {
    const uint64_t *a;
    uint64_t n, reads, seed, sum;
};

static void *read_randomly(void *arg) {
    struct reader *r = arg;
    uint64_t s = r->seed, sum = 0;
    for (uint64_t k = 0; k < r->reads; k++)
        sum += r->a[below(&s, r->n)] ^ k;
    r->sum = sum;
    return NULL;
}

static int threads(uint64_t size, uint64_t reads, int nt) {
    if (nt < 1 || nt > 64) {
        fprintf(stderr, "programs: THREADS must be 1 to 64\n");
        return 2;
    }
    uint64_t n = size / 8;
    uint64_t *a = must_malloc(n * 8);
    uint64_t s = 0x2545f4914f6cdd1dULL;
    for (uint64_t i = 0; i < n; i++)
        a[i] = xorshift(&s);
    struct reader r[64];
    pthread_t t[64];
    for (int i = 0; i < nt; i++) {
        r[i] = (struct reader){a, n, reads / (uint64_t)nt, 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1), 0};
        if (pthread_create(&t[i], NULL, read_randomly, &r[i]) != 0) {
            fprintf(stderr, "programs: cannot start a thread\n");
            return 3;
        }
    }
    uint64_t sum = 0;
    for (int i = 0; i < nt; i++) {
        pthread_join(t[i], NULL);
        sum = mix(sum, r[i].sum);
    }
    printf("checksum %016llx\n", (unsigned long long)sum);
    free(a);
    return 0;
}

int main(int argc, char **argv) {
    double t = now();
    int rc = 2;
    if (argc == 3 && strcmp(argv[1], "wordcount") == 0)
        rc = wordcount(strtoull(argv[2], NULL, 10));
    else if (argc == 4 && strcmp(argv[1], "randwrite") == 0)
        rc = randwrite(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10));
    else if (argc == 5 && strcmp(argv[1], "threads") == 0)
        rc = threads(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10), atoi(argv[4]));
    else
        fprintf(stderr, "usage: %s wordcount CORPUS_BYTES | randwrite SIZE_BYTES UPDATES | "
                        "threads SIZE_BYTES READS THREADS\n", argv[0]);
    if (rc == 0) {
        printf("elapsed %.6f\n", now() - t);
        peak_rss();
    }
    return rc;
}
