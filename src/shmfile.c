/*
 * shmfile.c: a file mapped MAP_SHARED (see shmfile.h).
 */
#include "shmfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void *shmfile_open(const char *path, size_t size, struct lb_error *err)
{
    struct stat st;
    void *map = NULL;
    int fd;

    if (size == 0) {
        lb_fail(err, LB_ERR_INTERNAL, "shmfile: size 0");
        return NULL;
    }
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        lb_fail(err, LB_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    if (flock(fd, LOCK_EX) != 0) {
        lb_fail(err, LB_ERR_IO, "cannot lock %s: %s", path, strerror(errno));
        goto out;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        lb_fail(err, LB_ERR_IO, "%s is not a regular file", path);
        goto out;
    }
    if ((unsigned long long)st.st_size < (unsigned long long)size &&
        ftruncate(fd, (off_t)size) != 0) {
        lb_fail(err, LB_ERR_IO, "cannot size %s: %s", path, strerror(errno));
        goto out;
    }
    map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        lb_fail(err, LB_ERR_IO, "cannot map %s: %s", path, strerror(errno));
        map = NULL;
    }
out:
    /* Unlock explicitly: the mapping keeps the open file alive, and with it a flock. */
    flock(fd, LOCK_UN);
    close(fd);
    return map;
}

void shmfile_close(void *map, size_t size)
{
    if (map != NULL)
        munmap(map, size);
}

void *shmfile_open_tagged(const char *dir, const char *name, size_t size, uint64_t magic,
                          struct lb_error *err)
{
    char path[4096];
    _Atomic uint64_t *tag;
    uint64_t zero = 0;

    if (size < sizeof(*tag)) {
        lb_fail(err, LB_ERR_INTERNAL, "shmfile: too small for a tag");
        return NULL;
    }
    if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path)) {
        lb_fail(err, LB_ERR_IO, "%s: the path is too long", name);
        return NULL;
    }
    tag = shmfile_open(path, size, err);
    if (tag == NULL)
        return NULL;
    if (!atomic_compare_exchange_strong(tag, &zero, magic) && zero != magic) {
        shmfile_close(tag, size);
        lb_fail(err, LB_ERR_IO, "%s has another layout (remove it)", path);
        return NULL;
    }
    return tag;
}
