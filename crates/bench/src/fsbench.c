/* The workload of `lego bench storage`, compiled by the bench with gcc -O2.
 *
 * usage: fsbench DIR SIZE_MB FILES
 *
 * In DIR (which must exist): writes a SIZE_MB file in 1 MiB writes and
 * fsyncs it, reads it back in 1 MiB reads, then creates FILES files of
 * 4 KiB each (open, write, close), stats them all, and unlinks them.
 * Prints one line per phase:
 *
 *   phase NAME SECONDS UNITS
 *
 * where UNITS is bytes (write, read) or files (create, stat, unlink).
 * Exits 1 with a message on the first failed call.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "fsbench: %s %s: ", what, path);
    perror(NULL);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s DIR SIZE_MB FILES\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long mb = strtol(argv[2], NULL, 10), files = strtol(argv[3], NULL, 10);
    static char buf[1 << 20];
    for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = (char)(i * 2654435761u >> 24);
    char path[4096];
    snprintf(path, sizeof path, "%s/big", dir);

    double t = now();
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0)
        die("open", path);
    for (long i = 0; i < mb; i++)
        if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf)
            die("write", path);
    if (fsync(fd) || close(fd))
        die("fsync", path);
    printf("phase write %.6f %ld\n", now() - t, mb << 20);

    t = now();
    fd = open(path, O_RDONLY);
    if (fd < 0)
        die("open", path);
    long got = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        got += n;
    if (n < 0 || got != mb << 20)
        die("read", path);
    close(fd);
    printf("phase read %.6f %ld\n", now() - t, got);
    unlink(path);

    t = now();
    for (long i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/f%06ld", dir, i);
        fd = open(path, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0)
            die("create", path);
        if (write(fd, buf, 4096) != 4096 || close(fd))
            die("write", path);
    }
    printf("phase create %.6f %ld\n", now() - t, files);

    t = now();
    struct stat st;
    for (long i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/f%06ld", dir, i);
        if (stat(path, &st) || st.st_size != 4096)
            die("stat", path);
    }
    printf("phase stat %.6f %ld\n", now() - t, files);

    t = now();
    for (long i = 0; i < files; i++) {
        snprintf(path, sizeof path, "%s/f%06ld", dir, i);
        if (unlink(path))
            die("unlink", path);
    }
    printf("phase unlink %.6f %ld\n", now() - t, files);
    return 0;
}
