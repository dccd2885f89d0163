/* The kernel's floor for paging 4 KiB pages through userfaultfd, measured by
 * `lego bench excache` in the same run as the workload it explains.
 *
 * usage: floor
 *
 * In one thread, with no network and no fault: UFFDIO_COPY pages into a
 * registered range 256 at a time (as lego's read-ahead installs them), read
 * each page once, and drop pages 64 MiB behind with MADV_DONTNEED (as its
 * eviction does). Prints
 *
 *   floor_us_per_page INSTALL_READ_DROP  local_us_per_page READ
 *
 * where READ is the cost of reading a resident page the same way. Exits 2
 * (with a message) when userfaultfd is not available.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL
#define BATCH 256UL
#define LEN (256UL << 20)
#define BEHIND (64UL << 20)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t touch(const char *p, size_t len) {
    uint64_t s = 0;
    for (size_t k = 0; k < len; k += 64)
        s += (unsigned char)p[k];
    return s;
}

int main(void) {
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        perror("floor: userfaultfd");
        return 2;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP};
    if (ioctl(fd, UFFDIO_API, &api)) {
        perror("floor: UFFDIO_API");
        return 2;
    }
    char *a = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    char *src = mmap(NULL, BATCH * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED || src == MAP_FAILED) {
        perror("floor: mmap");
        return 2;
    }
    madvise(a, LEN, MADV_NOHUGEPAGE);
    memset(src, 0x5a, BATCH * PAGE);
    struct uffdio_register reg = {
        .range = {.start = (uintptr_t)a, .len = LEN},
        .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
    };
    if (ioctl(fd, UFFDIO_REGISTER, &reg)) {
        perror("floor: UFFDIO_REGISTER");
        return 2;
    }
    volatile uint64_t sink = 0;
    size_t pages = 0;
    double t = now();
    for (int pass = 0; pass < 4; pass++) {
        for (size_t off = 0; off < LEN; off += BATCH * PAGE) {
            struct uffdio_copy c = {
                .dst = (uintptr_t)(a + off), .src = (uintptr_t)src, .len = BATCH * PAGE,
                .mode = UFFDIO_COPY_MODE_WP,
            };
            if (ioctl(fd, UFFDIO_COPY, &c)) {
                perror("floor: UFFDIO_COPY");
                return 2;
            }
            sink += touch(a + off, BATCH * PAGE);
            if (off >= BEHIND)
                madvise(a + off - BEHIND, BATCH * PAGE, MADV_DONTNEED);
            pages += BATCH;
        }
        madvise(a + LEN - BEHIND, BEHIND, MADV_DONTNEED);
    }
    double floor_us = (now() - t) / (double)pages * 1e6;
    /* Local: the same reads of resident pages. */
    char *b = malloc(LEN);
    if (!b)
        return 2;
    memset(b, 1, LEN);
    t = now();
    for (int pass = 0; pass < 4; pass++)
        sink += touch(b, LEN);
    double local_us = (now() - t) / (double)(4 * LEN / PAGE) * 1e6;
    printf("floor_us_per_page %.3f local_us_per_page %.3f\n", floor_us, local_us);
    return sink == 42 ? 1 : 0;
}
