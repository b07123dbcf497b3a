/*
 * shmfile.h: a file mapped MAP_SHARED, for counters that every thread and process of one host
 * share (metrics, rate-limit buckets). The memory is the file's pages: C11 atomics on it are
 * seen by every process that maps the same file.
 */
#ifndef LB_SHMFILE_H
#define LB_SHMFILE_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

/*
 * Maps path read-write and shared, creating it (mode 0600) when missing and growing it with
 * zero bytes to size when shorter; a longer file is mapped to size only. Sizing is done under
 * flock, so processes starting together agree. New memory is all zero: callers must treat zero
 * as a valid initial state. Returns the mapping (unmap with shmfile_close) or NULL with err set.
 */
void *shmfile_open(const char *path, size_t size, struct lb_error *err);
/*
 * shmfile_open() of dir/name whose first 8 bytes hold a layout tag: a new (all-zero) file gets
 * magic, a file with another tag is refused (LB_ERR_IO: "has another layout"). The tag is set
 * with a compare-and-swap, so processes starting together agree.
 */
void *shmfile_open_tagged(const char *dir, const char *name, size_t size, uint64_t magic,
                          struct lb_error *err);
/* Unmaps a mapping of size bytes from shmfile_open; NULL is a no-op. */
void shmfile_close(void *map, size_t size);

#endif
