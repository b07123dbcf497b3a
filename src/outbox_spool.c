/*
 * outbox_spool.c: the spool store of the outbox (see outbox_store.h for the promises, outbox.h
 * for the layout). Jobs are files in one directory on a local POSIX file system.
 *
 * Four rules keep a lead from being lost, torn or sent twice:
 * - A file appears in queue/, done/, dead/ or keys/ only whole: it is written in tmp/ and then
 *   renamed (replace) or hard-linked (must not replace) into place.
 * - A job moves between queue/, done/ and dead/ only by one rename(2), so it is never in two
 *   places. Before a move its new content is first written over the queue file.
 * - A worker holds flock(LOCK_EX) on a job's current file while it has it claimed. A rewrite
 *   locks the new file before renaming it into place, so the claim moves with it; a claimer that
 *   opened the old file sees the inode change and tries again.
 * - Only regular files are opened, with O_NONBLOCK and O_NOFOLLOW, and fstat'ed before they are
 *   read. Anything else found in a spool folder (FIFO, socket, device, symlink, directory) is
 *   renamed into aside/ without being opened, and listed there.
 *
 * Group commit. A write that must be durable (a new job and the keys reserved for it, a delivery
 * attempt about to start) is appended, whole and checksummed, to this process's journal
 * (journal/<pid>.<random>.wal, flock'ed while the process lives), then the writer waits for the
 * next commit. The first writer to arrive while no commit runs becomes the leader: it fdatasyncs
 * the journal once for everyone appended so far; those arriving during a commit wait for the next
 * one, which covers them all. The files themselves go to disk by the kernel's writeback. (Syncing
 * each new file instead cost the file system one journal commit per file, about a millisecond
 * each, and those did not share.) A move between folders (to dead/, a corrupt file aside) is not
 * journaled: its file is enlisted and synced by the commit with both folders. A journal that
 * fills is checkpointed: syncfs(2), then a new generation number in its header voids the old
 * records. A journal nobody holds belongs to a process that died: spool_recover() replays it
 * (see spool_replay for the rules), syncfs, and removes it. Writes that need not precede an
 * answer (done records, stored answers, the unlinks of finished jobs, released keys) are not
 * journaled. A crash may lose them, and then the job is found as it was: still queued, with its
 * delivery attempt marked started, so the front checks with the API before sending it again
 * (outbox_attempt_unknown).
 *
 * Each file's mtime carries a time on the outbox's clock: a queued job's next attempt, a done or
 * dead record's finish time, a key's expiry. Scans then need only stat(2); the JSON stays
 * authoritative and is checked after claiming.
 */
#include "outbox_store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "crypto.h"
#include "log.h"

#define SPOOL_PATH_MAX 4096
#define SPOOL_CLAIM_TRIES 8   /* inode changes tolerated while claiming */
#define SPOOL_KEY_TRIES 8     /* expired keys replaced while reserving */
#define SPOOL_KEY_HEX (2 * SHA256_DIGEST_SIZE)
#define SPOOL_KEY_GRACE 60    /* seconds a key may point to a job not yet put */

#define SPOOL_N_SUBDIRS 7
#define SPOOL_SUB_JOURNAL 6   /* index of "journal" in spool_subdirs */

/* The journal (see "Group commit" above). */
#define SPOOL_WAL_MAX (16 * 1024 * 1024) /* a journal is checkpointed and reused at this size */
#define SPOOL_WAL_HEAD 4096              /* the header block; records follow */
#define SPOOL_WAL_MAGIC 0x314a424cu      /* "LBJ1", a record */
#define SPOOL_WAL_HMAGIC 0x484a424cu     /* "LBJH", the header */
#define SPOOL_WAL_REC 16                 /* a record's header: magic, gen, len, check */

/* How a write is made durable. */
enum spool_sync {
    SPOOL_NOSYNC = 0,  /* the kernel's writeback: a crash may lose it */
    SPOOL_SYNC_FILE,   /* the file and its folder are synced by the next commit */
    SPOOL_SYNC_JOURNAL /* a record in this process's journal, synced by the next commit */
};

struct outbox_store {
    char *dir;
    int dir_fd;              /* the spool directory */
    int sub_fd[SPOOL_N_SUBDIRS]; /* each folder, for fsync after links and renames */
    int *sync_fds;           /* enlisted for the next commit (owned dups); guarded by mu */
    size_t n_sync, cap_sync;
    unsigned dirty_dirs;     /* bit per folder touched by an enlisted write; guarded by mu */
    bool wal_dirty;          /* records appended since the last commit began; guarded by mu */
    pthread_mutex_t wal_mu;  /* guards the journal's fields below */
    int wal_fd;              /* this process's journal, flock'ed; -1 until the first record */
    char wal_name[96];       /* its name in journal/ */
    uint32_t wal_gen;        /* its generation: records of older ones are void */
    long long wal_off;       /* where the next record goes */
    bool wal_records;        /* records written since the journal was made or checkpointed */
    long long tmp_max_age;
    pthread_mutex_t mu;      /* guards the commit counters */
    pthread_cond_t cv;
    unsigned long long wanted;    /* commits asked for (ticket numbers) */
    unsigned long long committed; /* every ticket <= this is durable */
    bool committing;
    enum lb_err last_commit;
};

struct outbox_hold {
    int fd;                  /* holds the flock on the job's current file */
    char id[OUTBOX_ID_SIZE];
    enum outbox_state state;
};

static const char *const spool_subdirs[SPOOL_N_SUBDIRS] = {"tmp",  "queue", "done",   "dead",
                                                            "keys", "aside", "journal"};

/* The folder of each state that lives in a folder. */
static const char *spool_sub(enum outbox_state s)
{
    switch (s) {
    case OUTBOX_QUEUED: return "queue";
    case OUTBOX_DONE: return "done";
    case OUTBOX_DEAD: return "dead";
    default: return NULL;
    }
}

/* ---- small helpers ---- */

/*
 * Whether name is <32 hex><suffix>; copies the id into id when it is. Directory entries are
 * checked with this before anything else is done with them.
 */
static bool spool_name_id(const char *name, const char *suffix, char id[OUTBOX_ID_SIZE])
{
    if (strlen(name) < OUTBOX_ID_LEN || strcmp(name + OUTBOX_ID_LEN, suffix) != 0)
        return false;
    memcpy(id, name, OUTBOX_ID_LEN);
    id[OUTBOX_ID_LEN] = '\0';
    return outbox_id_valid(id);
}

/* Writes dir/sub[/name[suffix]] into out. Returns LB_OK or LB_ERR_INTERNAL when it does not fit. */
static enum lb_err spool_path(const struct outbox_store *st, char *out, size_t size,
                              const char *sub, const char *name, const char *suffix)
{
    int n;

    if (name == NULL)
        n = snprintf(out, size, "%s/%s", st->dir, sub);
    else
        n = snprintf(out, size, "%s/%s/%s%s", st->dir, sub, name, suffix ? suffix : "");
    if (n < 0 || (size_t)n >= size)
        return LB_ERR_INTERNAL;
    return LB_OK;
}

/* flock that retries on EINTR. Returns 0 or -1 with errno. */
static int spool_flock(int fd, int op)
{
    int r;

    do {
        r = flock(fd, op);
    } while (r != 0 && errno == EINTR);
    return r;
}

/*
 * Opens path for reading only if it is a regular file: O_NONBLOCK (a FIFO never blocks the
 * open), O_NOFOLLOW (a symlink fails), then fstat. Returns the fd, or -1 with errno (ENOENT when
 * missing; EFTYPE-like ENXIO/ELOOP/EINVAL when it is not a regular file, *not_regular set).
 */
static int spool_open_regular(const char *path, bool *not_regular)
{
    struct stat st;
    int fd;

    *not_regular = false;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        if (errno == ELOOP || errno == ENXIO || errno == ENODEV || errno == EISDIR ||
            errno == ENOTDIR)
            *not_regular = true;
        return -1;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        *not_regular = true;
        (void)close(fd);
        errno = EINVAL;
        return -1;
    }
    return fd;
}

/* Reads all of fd from its start into b (capped at OUTBOX_FILE_MAX). */
static enum lb_err spool_read_fd(int fd, struct buf *b)
{
    char chunk[8192];
    enum lb_err e;

    if (lseek(fd, 0, SEEK_SET) < 0)
        return LB_ERR_IO;
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return LB_ERR_IO;
        }
        if (n == 0)
            break;
        e = buf_append(b, chunk, (size_t)n);
        if (e != LB_OK)
            return e;
    }
    return LB_OK;
}

/* Parses JSON from b (which may be empty). Returns a new reference or NULL with why set. */
static json_t *spool_parse(const struct buf *b, char *why, size_t why_size)
{
    json_error_t jerr;
    json_t *j;

    if (b->len == 0) {
        snprintf(why, why_size, "empty file");
        return NULL;
    }
    j = json_loadb(b->data, b->len, JSON_REJECT_DUPLICATES, &jerr);
    if (j == NULL)
        snprintf(why, why_size, "not JSON: %s at line %d column %d", jerr.text, jerr.line,
                 jerr.column);
    return j;
}

static void spool_set_aside(struct outbox_store *st, const char *sub, const char *name);

/*
 * Reads and parses sub/name. Returns a new reference, or NULL with *e set: LB_ERR_NOT_FOUND when
 * the file does not exist (or was not a regular file: it is moved aside), LB_ERR_GONE when it is
 * unreadable JSON (why says how), LB_ERR_TOO_LARGE, LB_ERR_IO.
 */
static json_t *spool_load_file(struct outbox_store *st, const char *sub, const char *name,
                               enum lb_err *e, char *why, size_t why_size)
{
    char path[SPOOL_PATH_MAX];
    struct buf b;
    json_t *j = NULL;
    bool odd;
    int fd;

    buf_init(&b, OUTBOX_FILE_MAX);
    *e = spool_path(st, path, sizeof(path), sub, name, NULL);
    if (*e != LB_OK)
        goto out;
    fd = spool_open_regular(path, &odd);
    if (fd < 0) {
        if (odd)
            spool_set_aside(st, sub, name);
        *e = errno == ENOENT || odd ? LB_ERR_NOT_FOUND : LB_ERR_IO;
        goto out;
    }
    *e = spool_read_fd(fd, &b);
    if (close(fd) != 0 && *e == LB_OK)
        *e = LB_ERR_IO;
    if (*e != LB_OK)
        goto out;
    j = spool_parse(&b, why, why_size);
    if (j == NULL)
        *e = LB_ERR_GONE;
out:
    buf_free(&b);
    return j;
}

/* Writes all of data to fd. */
static enum lb_err spool_write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return LB_ERR_IO;
        }
        data += n;
        len -= (size_t)n;
    }
    return LB_OK;
}

/* ---- group commit ---- */

/* Asks for a commit covering every write so far; returns the ticket to wait for. */
static unsigned long long spool_ticket(struct outbox_store *st)
{
    unsigned long long t;

    pthread_mutex_lock(&st->mu);
    t = ++st->wanted;
    pthread_mutex_unlock(&st->mu);
    return t;
}

/* The index of folder sub in spool_subdirs. */
static unsigned spool_sub_index(const char *sub)
{
    for (unsigned i = 0; i < SPOOL_N_SUBDIRS; i++)
        if (strcmp(spool_subdirs[i], sub) == 0)
            return i;
    return 0;
}

/* Enlists fd (a dup is kept) and folder sub for the next commit. */
static enum lb_err spool_enlist(struct outbox_store *st, int fd, const char *sub)
{
    enum lb_err e = LB_OK;
    int d = fcntl(fd, F_DUPFD_CLOEXEC, 0);

    if (d < 0)
        return LB_ERR_IO;
    pthread_mutex_lock(&st->mu);
    if (st->n_sync == st->cap_sync) {
        size_t cap = st->cap_sync ? st->cap_sync * 2 : 64;
        int *grown = realloc(st->sync_fds, cap * sizeof(*grown));

        if (grown == NULL) {
            e = LB_ERR_NOMEM;
        } else {
            st->sync_fds = grown;
            st->cap_sync = cap;
        }
    }
    if (e == LB_OK) {
        st->sync_fds[st->n_sync++] = d;
        st->dirty_dirs |= 1u << spool_sub_index(sub);
    }
    pthread_mutex_unlock(&st->mu);
    if (e != LB_OK)
        (void)close(d);
    return e;
}

/* Marks folder sub touched (a rename in it) for the next commit. */
static void spool_mark_dir(struct outbox_store *st, const char *sub)
{
    pthread_mutex_lock(&st->mu);
    st->dirty_dirs |= 1u << spool_sub_index(sub);
    pthread_mutex_unlock(&st->mu);
}

/* Makes the journal, the enlisted files and folders durable (the leader, outside the lock). */
static enum lb_err spool_sync(struct outbox_store *st, int *fds, size_t n, unsigned dirs, bool wal)
{
    enum lb_err e = LB_OK;

    /* wal_fd is set once, before the first record that marks the journal dirty. */
    if (wal && fdatasync(st->wal_fd) != 0)
        e = LB_ERR_IO;
    for (size_t i = 0; i < n; i++) {
        if (fdatasync(fds[i]) != 0)
            e = LB_ERR_IO;
        (void)close(fds[i]);
    }
    for (unsigned i = 0; i < SPOOL_N_SUBDIRS; i++)
        if ((dirs & (1u << i)) && st->sub_fd[i] >= 0 && fsync(st->sub_fd[i]) != 0 &&
            errno != EINVAL)
            e = LB_ERR_IO;
    return e;
}

/*
 * Returns once ticket is durable: leads a commit (see group commit above) when none is running,
 * else waits for the one that covers it. LB_ERR_IO when that commit failed.
 */
static enum lb_err spool_commit(struct outbox_store *st, unsigned long long ticket)
{
    enum lb_err e = LB_OK;

    pthread_mutex_lock(&st->mu);
    while (st->committed < ticket) {
        if (!st->committing) {
            unsigned long long upto = st->wanted;
            int *fds = st->sync_fds;
            size_t n = st->n_sync;
            unsigned dirs = st->dirty_dirs;
            bool wal = st->wal_dirty;
            enum lb_err ce;

            st->sync_fds = NULL;
            st->n_sync = st->cap_sync = 0;
            st->dirty_dirs = 0;
            st->wal_dirty = false;
            st->committing = true;
            pthread_mutex_unlock(&st->mu);
            ce = spool_sync(st, fds, n, dirs, wal);
            free(fds);
            pthread_mutex_lock(&st->mu);
            st->committing = false;
            st->committed = upto;
            st->last_commit = ce;
            if (ce != LB_OK)
                e = ce;
            pthread_cond_broadcast(&st->cv);
        } else {
            pthread_cond_wait(&st->cv, &st->mu);
            if (st->committed >= ticket && st->last_commit != LB_OK)
                e = st->last_commit;
        }
    }
    pthread_mutex_unlock(&st->mu);
    return e;
}

static enum lb_err spool_flush(struct outbox_store *st)
{
    return spool_commit(st, spool_ticket(st));
}

/* ---- the journal ---- */

/* Writes all of data to fd at off. */
static enum lb_err spool_pwrite_all(int fd, const void *data, size_t len, long long off)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return LB_ERR_IO;
        }
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return LB_OK;
}

/* The header block of generation gen. */
static void spool_wal_header(uint32_t gen, unsigned char head[SPOOL_WAL_HEAD])
{
    uint32_t w[2] = {SPOOL_WAL_HMAGIC, gen};

    memset(head, 0, SPOOL_WAL_HEAD);
    memcpy(head, w, sizeof(w));
}

/* A record's check: the first 4 bytes of SHA-256 over its header (check zeroed) and payload. */
static uint32_t spool_wal_check(unsigned char *rec, size_t len)
{
    uint8_t digest[SHA256_DIGEST_SIZE];
    uint32_t c;

    memset(rec + 12, 0, 4);
    sha256(rec, len, digest);
    memcpy(&c, digest, sizeof(c));
    return c;
}

/* Makes this process's journal (under wal_mu): written whole in tmp/, then renamed into place. */
static enum lb_err spool_wal_create(struct outbox_store *st)
{
    char tmp[SPOOL_PATH_MAX], dest[SPOOL_PATH_MAX];
    unsigned char head[SPOOL_WAL_HEAD];
    uint8_t rnd[8];
    char rhex[2 * sizeof(rnd) + 1];
    int fd;

    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return LB_ERR_INTERNAL;
    hex_encode(rnd, sizeof(rnd), rhex);
    snprintf(st->wal_name, sizeof(st->wal_name), "%ld.%s.wal", (long)getpid(), rhex);
    if (spool_path(st, tmp, sizeof(tmp), "tmp", st->wal_name, NULL) != LB_OK ||
        spool_path(st, dest, sizeof(dest), "journal", st->wal_name, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return LB_ERR_IO;
    /* Locked before anyone can see it: an unlocked journal is one whose process died. */
    st->wal_gen = 1;
    spool_wal_header(st->wal_gen, head);
    if (spool_flock(fd, LOCK_EX | LOCK_NB) != 0 ||
        spool_pwrite_all(fd, head, sizeof(head), 0) != LB_OK || fdatasync(fd) != 0 ||
        rename(tmp, dest) != 0 || fsync(st->sub_fd[SPOOL_SUB_JOURNAL]) != 0) {
        (void)unlink(tmp);
        (void)close(fd);
        return LB_ERR_IO;
    }
    st->wal_fd = fd;
    st->wal_off = SPOOL_WAL_HEAD;
    st->wal_records = false;
    return LB_OK;
}

/*
 * Empties a full journal (under wal_mu): once syncfs has made every spool file durable, no
 * record is needed any more; the next generation starts at the top and voids the old records.
 */
static enum lb_err spool_wal_checkpoint(struct outbox_store *st)
{
    unsigned char head[SPOOL_WAL_HEAD];

    if (syncfs(st->dir_fd) != 0)
        return LB_ERR_IO;
    spool_wal_header(st->wal_gen + 1, head);
    if (spool_pwrite_all(st->wal_fd, head, sizeof(head), 0) != LB_OK ||
        fdatasync(st->wal_fd) != 0)
        return LB_ERR_IO;
    st->wal_gen++;
    st->wal_off = SPOOL_WAL_HEAD;
    st->wal_records = false;
    return LB_OK;
}

/*
 * Appends "sub/name\nmtime\n" + data to this process's journal; the next commit makes it
 * durable (see Group commit). The file itself is left to the kernel's writeback.
 */
static enum lb_err spool_journal(struct outbox_store *st, const char *sub, const char *name,
                                 const char *data, size_t len, long long mtime)
{
    struct buf b;
    uint32_t w[4] = {SPOOL_WAL_MAGIC, 0, 0, 0};
    enum lb_err e = LB_OK;
    size_t total;

    buf_init(&b, len + 512);
    e = buf_append(&b, w, sizeof(w));
    if (e == LB_OK)
        e = buf_printf(&b, "%s/%s\n%lld\n", sub, name, mtime);
    if (e == LB_OK)
        e = buf_append(&b, data, len);
    while (e == LB_OK && b.len % 8 != 0)
        e = buf_putc(&b, '\0');
    if (e == LB_OK && b.len > (size_t)(SPOOL_WAL_MAX - SPOOL_WAL_HEAD))
        e = LB_ERR_TOO_LARGE;
    if (e != LB_OK) {
        buf_free(&b);
        return e;
    }
    total = b.len;
    pthread_mutex_lock(&st->wal_mu);
    if (st->wal_fd < 0)
        e = spool_wal_create(st);
    if (e == LB_OK && st->wal_off + (long long)total > SPOOL_WAL_MAX)
        e = spool_wal_checkpoint(st);
    if (e == LB_OK) {
        w[1] = st->wal_gen;
        w[2] = (uint32_t)(total - SPOOL_WAL_REC);
        memcpy(b.data, w, sizeof(w));
        w[3] = spool_wal_check((unsigned char *)b.data, total);
        memcpy(b.data + 12, &w[3], 4);
        e = spool_pwrite_all(st->wal_fd, b.data, total, st->wal_off);
    }
    if (e == LB_OK) {
        st->wal_off += (long long)total;
        st->wal_records = true;
    }
    pthread_mutex_unlock(&st->wal_mu);
    buf_free(&b);
    if (e == LB_OK) {
        pthread_mutex_lock(&st->mu);
        st->wal_dirty = true;
        pthread_mutex_unlock(&st->mu);
    }
    return e;
}

/* ---- writing files ---- */

enum spool_place { SPOOL_REPLACE, SPOOL_NOREPLACE };

/*
 * Writes data as sub/name: tmp/<hint>.<pid>.<random> → write → set mtime → rename
 * (SPOOL_REPLACE) or link (SPOOL_NOREPLACE: LB_ERR_CONFLICT when sub/name exists). Not durable
 * by itself: with enlist it is enlisted for the next commit (see group commit). With locked_fd the new file is flock'ed before it becomes visible
 * and its fd returned in *locked_fd (caller closes). On any error no file is left in tmp/.
 */
static enum lb_err spool_write_file(struct outbox_store *st, const char *sub, const char *name,
                                    const char *hint, const char *data, size_t len,
                                    enum spool_place place, long long mtime, int *locked_fd,
                                    enum spool_sync sync)
{
    char tmp[SPOOL_PATH_MAX], dest[SPOOL_PATH_MAX], suffix[64];
    struct timespec times[2];
    uint8_t rnd[8];
    char rhex[2 * sizeof(rnd) + 1];
    enum lb_err e;
    int fd = -1, n;

    if (len > OUTBOX_FILE_MAX)
        return LB_ERR_TOO_LARGE;
    if (crypto_random(rnd, sizeof(rnd)) != 0)
        return LB_ERR_INTERNAL;
    hex_encode(rnd, sizeof(rnd), rhex);
    n = snprintf(suffix, sizeof(suffix), ".%ld.%s", (long)getpid(), rhex);
    if (n < 0 || (size_t)n >= sizeof(suffix))
        return LB_ERR_INTERNAL;
    e = spool_path(st, tmp, sizeof(tmp), "tmp", hint, suffix);
    if (e == LB_OK)
        e = spool_path(st, dest, sizeof(dest), sub, name, NULL);
    if (e != LB_OK)
        return e;

    fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return LB_ERR_IO;
    e = spool_write_all(fd, data, len);
    if (e != LB_OK)
        goto fail;
    times[0].tv_sec = (time_t)mtime;
    times[0].tv_nsec = 0;
    times[1] = times[0];
    if (futimens(fd, times) != 0) {
        e = LB_ERR_IO;
        goto fail;
    }
    if (locked_fd != NULL && spool_flock(fd, LOCK_EX | LOCK_NB) != 0) {
        e = LB_ERR_IO;
        goto fail;
    }
    if (place == SPOOL_REPLACE) {
        if (rename(tmp, dest) != 0) {
            e = LB_ERR_IO;
            goto fail;
        }
    } else {
        if (link(tmp, dest) != 0) {
            e = errno == EEXIST ? LB_ERR_CONFLICT : LB_ERR_IO;
            goto fail;
        }
        (void)unlink(tmp);
    }
    if ((sync == SPOOL_SYNC_FILE && spool_enlist(st, fd, sub) != LB_OK) ||
        (sync == SPOOL_SYNC_JOURNAL &&
         spool_journal(st, sub, name, data, len, mtime) != LB_OK)) {
        if (place == SPOOL_NOREPLACE)
            (void)unlink(dest); /* ours alone a moment ago: not accepted after all */
        (void)close(fd);
        return LB_ERR_IO;
    }
    if (locked_fd != NULL)
        *locked_fd = fd;
    else if (close(fd) != 0)
        return LB_ERR_IO;
    return LB_OK;

fail:
    (void)unlink(tmp);
    (void)close(fd);
    return e;
}

/* Dumps j compactly and writes it with spool_write_file. */
static enum lb_err spool_write_json(struct outbox_store *st, const char *sub, const char *name,
                                    const char *hint, const json_t *j, enum spool_place place,
                                    long long mtime, int *locked_fd, enum spool_sync sync)
{
    char *s = json_dumps(j, JSON_COMPACT);
    enum lb_err e;

    if (s == NULL)
        return LB_ERR_NOMEM;
    e = spool_write_file(st, sub, name, hint, s, strlen(s), place, mtime, locked_fd, sync);
    free(s);
    return e;
}

static long long spool_int(const json_t *obj, const char *key, long long dflt)
{
    json_t *v = json_object_get(obj, key);

    return json_is_integer(v) ? json_integer_value(v) : dflt;
}

/* ---- things that are not regular files ---- */

/*
 * Renames sub/name (not a regular file: FIFO, socket, device, symlink, directory) to
 * aside/<sub>.<name>.<random>, without opening it. Never waits on it. Logged for the operator.
 */
static void spool_set_aside(struct outbox_store *st, const char *sub, const char *name)
{
    char from[SPOOL_PATH_MAX], to[SPOOL_PATH_MAX], leaf[400];
    uint8_t rnd[4];
    char rhex[9];

    if (crypto_random(rnd, sizeof(rnd)) != 0)
        memset(rnd, 0, sizeof(rnd));
    hex_encode(rnd, sizeof(rnd), rhex);
    snprintf(leaf, sizeof(leaf), "%s.%.300s.%s", sub, name, rhex);
    if (spool_path(st, from, sizeof(from), sub, name, NULL) != LB_OK ||
        spool_path(st, to, sizeof(to), "aside", leaf, NULL) != LB_OK)
        return;
    if (rename(from, to) == 0)
        log_msg(LOG_WARN, "outbox: %s/%.300s is not a regular file; moved to aside/%s", sub,
                name, leaf);
}

/* Whether the directory entry at dfd/name is a regular file (lstat: symlinks are not). */
static bool spool_is_regular(int dfd, const char *name, struct stat *st)
{
    return fstatat(dfd, name, st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st->st_mode);
}

/* ---- open and close ---- */

/*
 * Removes tmp/ files older than tmp_max_age on the wall clock: they are crash garbage. The age is
 * the ctime, since the mtime of a file being written is set to a time on the outbox's clock.
 */
static void spool_clean_tmp(struct outbox_store *st)
{
    char p[SPOOL_PATH_MAX];
    struct dirent *de;
    struct stat sb;
    time_t limit = time(NULL) - (time_t)st->tmp_max_age;
    DIR *d;

    if (spool_path(st, p, sizeof(p), "tmp", NULL, NULL) != LB_OK)
        return;
    d = opendir(p);
    if (d == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (fstatat(dirfd(d), de->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (sb.st_ctime < limit)
            (void)unlinkat(dirfd(d), de->d_name, S_ISDIR(sb.st_mode) ? AT_REMOVEDIR : 0);
    }
    (void)closedir(d);
}

/* Creates path as a 0700 directory unless it exists as one. */
static enum lb_err spool_mkdir(const char *path, struct lb_error *err)
{
    struct stat sb;

    if (mkdir(path, 0700) != 0 && errno != EEXIST)
        return lb_fail(err, LB_ERR_IO, "cannot create spool directory %s: %s", path,
                       strerror(errno));
    if (lstat(path, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return lb_fail(err, LB_ERR_IO, "spool path %s is not a directory", path);
    return LB_OK;
}

static void spool_close(struct outbox_store *st)
{
    if (st == NULL)
        return;
    if (st->dir_fd >= 0)
        (void)spool_flush(st);
    if (st->wal_fd >= 0) {
        char p[SPOOL_PATH_MAX];

        /* Records not yet checkpointed keep it for the next opener's recovery (no syncfs here:
         * it would make a stop wait on every dirty file of the file system). */
        if (!st->wal_records &&
            spool_path(st, p, sizeof(p), "journal", st->wal_name, NULL) == LB_OK)
            (void)unlink(p);
        (void)close(st->wal_fd);
    }
    if (st->dir_fd >= 0)
        (void)close(st->dir_fd);
    for (size_t i = 0; i < SPOOL_N_SUBDIRS; i++)
        if (st->sub_fd[i] >= 0)
            (void)close(st->sub_fd[i]);
    free(st->sync_fds);
    pthread_mutex_destroy(&st->mu);
    pthread_mutex_destroy(&st->wal_mu);
    pthread_cond_destroy(&st->cv);
    free(st->dir);
    free(st);
}

/* ---- jobs ---- */

/* Whether sub/<id><suffix> exists (as anything). */
static bool spool_exists(const struct outbox_store *st, const char *sub, const char *id,
                         const char *suffix)
{
    char p[SPOOL_PATH_MAX];
    struct stat sb;

    if (spool_path(st, p, sizeof(p), sub, id, suffix) != LB_OK)
        return false;
    return lstat(p, &sb) == 0;
}

static enum lb_err spool_put_in(struct outbox_store *st, const char *id, const json_t *job,
                                long long due, struct outbox_hold **hold, struct lb_error *err)
{
    char name[OUTBOX_ID_SIZE + 8];
    unsigned long long ticket;
    struct outbox_hold *h = NULL;
    enum lb_err e;
    int fd = -1;

    if (spool_exists(st, "done", id, ".json") || spool_exists(st, "dead", id, ".json"))
        return lb_fail(err, LB_ERR_CONFLICT, "job %s exists already", id);
    snprintf(name, sizeof(name), "%s.json", id);
    errno = 0;
    if (hold != NULL && (h = calloc(1, sizeof(*h))) == NULL)
        return lb_fail(err, LB_ERR_NOMEM, "out of memory");
    /* With a hold the file is locked before it appears: nobody else can claim it first. */
    e = spool_write_json(st, "queue", name, id, job, SPOOL_NOREPLACE, due, h != NULL ? &fd : NULL,
                         SPOOL_SYNC_JOURNAL);
    if (e != LB_OK)
        free(h);
    if (e == LB_ERR_CONFLICT)
        return lb_fail(err, e, "job %s exists already", id);
    if (e != LB_OK)
        return lb_fail(err, e, "cannot write job %s to the spool %s: %s", id, st->dir,
                       errno != 0 ? strerror(errno) : lb_strerror(e));
    ticket = spool_ticket(st);
    e = spool_commit(st, ticket);
    if (e != LB_OK) {
        if (h != NULL) {
            (void)close(fd);
            free(h);
        }
        return lb_fail(err, e, "cannot make job %s durable in the spool %s", id, st->dir);
    }
    if (h != NULL) {
        h->fd = fd;
        memcpy(h->id, id, OUTBOX_ID_SIZE);
        h->state = OUTBOX_QUEUED;
        *hold = h;
    }
    return LB_OK;
}

static enum lb_err spool_put(struct outbox_store *st, const char *id, const json_t *job,
                             long long due, struct lb_error *err)
{
    return spool_put_in(st, id, job, due, NULL, err);
}

static enum lb_err spool_put_claim(struct outbox_store *st, const char *id, const json_t *job,
                                   long long due, struct outbox_hold **hold, struct lb_error *err)
{
    return spool_put_in(st, id, job, due, hold, err);
}

/*
 * Moves an unreadable queue file (whose lock the caller holds) to dead/<id>.corrupt, after writing
 * dead/<id>.json saying why. Returns LB_ERR_GONE when done.
 */
static enum lb_err spool_quarantine(struct outbox_store *st, const char *sub, const char *id,
                                    const char *why)
{
    char from[SPOOL_PATH_MAX], to[SPOOL_PATH_MAX], name[OUTBOX_ID_SIZE + 8];
    long long now = (long long)time(NULL);
    json_t *rec;
    enum lb_err e;

    rec = json_pack("{s:s, s:s, s:b, s:I, s:I, s:i, s:I, s:{}}", "id", id, "dead_reason", why,
                    "corrupt", 1, "created", (json_int_t)now, "finished", (json_int_t)now,
                    "attempts", 0, "next_attempt", (json_int_t)now, "targets");
    if (rec == NULL)
        return LB_ERR_NOMEM;
    snprintf(name, sizeof(name), "%s.json", id);
    e = spool_write_json(st, "dead", name, id, rec, SPOOL_REPLACE, now, NULL, SPOOL_SYNC_FILE);
    json_decref(rec);
    if (e != LB_OK)
        return e;
    if (strcmp(sub, "dead") == 0)
        return LB_ERR_GONE; /* the record replaced the unreadable dead letter itself */
    if (spool_path(st, from, sizeof(from), sub, id, ".json") != LB_OK ||
        spool_path(st, to, sizeof(to), "dead", id, ".corrupt") != LB_OK)
        return LB_ERR_INTERNAL;
    if (rename(from, to) != 0)
        return LB_ERR_IO;
    spool_mark_dir(st, sub);
    spool_mark_dir(st, "dead");
    (void)spool_flush(st);
    return LB_ERR_GONE;
}

/* Claims sub/<id>.json: open (regular files only), lock, check the inode, read, parse. */
static enum lb_err spool_claim_in(struct outbox_store *st, const char *id, enum outbox_state state,
                                  struct outbox_hold **hold, json_t **out, struct lb_error *err)
{
    const char *sub = spool_sub(state);
    char path[SPOOL_PATH_MAX], why[200];
    struct outbox_hold *h = NULL;
    struct stat fst, pst;
    struct buf b;
    json_t *job = NULL;
    enum lb_err e = LB_ERR_CONFLICT;
    int fd = -1, tries;
    bool odd;

    buf_init(&b, OUTBOX_FILE_MAX);
    if (spool_path(st, path, sizeof(path), sub, id, ".json") != LB_OK)
        return LB_ERR_INTERNAL;
    for (tries = 0; tries < SPOOL_CLAIM_TRIES; tries++) {
        fd = spool_open_regular(path, &odd);
        if (fd < 0) {
            if (odd) {
                char name[OUTBOX_ID_SIZE + 8];

                snprintf(name, sizeof(name), "%s.json", id);
                spool_set_aside(st, sub, name);
            }
            e = errno == ENOENT || odd ? LB_ERR_NOT_FOUND : LB_ERR_IO;
            goto out;
        }
        if (spool_flock(fd, LOCK_EX | LOCK_NB) != 0) {
            e = errno == EWOULDBLOCK ? LB_ERR_CONFLICT : LB_ERR_IO;
            goto out;
        }
        /* The holder may have replaced or moved the file between our open and our lock. */
        if (fstat(fd, &fst) != 0) {
            e = LB_ERR_IO;
            goto out;
        }
        if (lstat(path, &pst) != 0) {
            e = errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
            goto out;
        }
        if (fst.st_ino == pst.st_ino && fst.st_dev == pst.st_dev)
            break;
        (void)close(fd);
        fd = -1;
        e = LB_ERR_CONFLICT;
    }
    if (fd < 0)
        goto out;

    e = spool_read_fd(fd, &b);
    if (e == LB_ERR_TOO_LARGE) {
        lb_fail(err, LB_ERR_GONE, "job file is larger than 1 MiB");
        e = spool_quarantine(st, sub, id, err->message);
        goto out;
    }
    if (e != LB_OK)
        goto out;
    job = spool_parse(&b, why, sizeof(why));
    if (job == NULL || (!json_is_true(json_object_get(job, "corrupt")) &&
                        !outbox_job_check(job, id, why, sizeof(why)))) {
        lb_fail(err, LB_ERR_GONE, "corrupt job file: %s", why);
        e = spool_quarantine(st, sub, id, err->message);
        goto out;
    }
    h = calloc(1, sizeof(*h));
    if (h == NULL) {
        e = LB_ERR_NOMEM;
        goto out;
    }
    h->fd = fd;
    memcpy(h->id, id, OUTBOX_ID_SIZE);
    h->state = state;
    *hold = h;
    *out = job;
    fd = -1;
    job = NULL;
    e = LB_OK;
out:
    if (fd >= 0)
        (void)close(fd);
    json_decref(job);
    buf_free(&b);
    return e;
}

static enum lb_err spool_claim(struct outbox_store *st, const char *id, unsigned mask,
                               struct outbox_hold **hold, json_t **job, enum outbox_state *state,
                               struct lb_error *err)
{
    static const enum outbox_state order[] = {OUTBOX_QUEUED, OUTBOX_DONE, OUTBOX_DEAD,
                                              OUTBOX_QUEUED};
    enum lb_err e = LB_ERR_NOT_FOUND;
    size_t i;

    *hold = NULL;
    *job = NULL;
    if (!outbox_id_valid(id))
        return LB_ERR_NOT_FOUND;
    /* queue/ is looked at again last, in case the job moved back meanwhile (a retry). */
    for (i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        if (!(mask & OUTBOX_IN(order[i])))
            continue;
        e = spool_claim_in(st, id, order[i], hold, job, err);
        if (e != LB_ERR_NOT_FOUND) {
            if (e == LB_OK && state != NULL)
                *state = order[i];
            return e;
        }
    }
    return e;
}

static void spool_release(struct outbox_store *st, struct outbox_hold *h)
{
    (void)st;
    if (h == NULL)
        return;
    if (h->fd >= 0)
        (void)close(h->fd);
    free(h);
}

static enum lb_err spool_write(struct outbox_store *st, struct outbox_hold *h, const json_t *job,
                               enum outbox_state where, long long due, bool durable)
{
    char name[OUTBOX_ID_SIZE + 8], from[SPOOL_PATH_MAX], to[SPOOL_PATH_MAX];
    const char *sub = spool_sub(h->state), *to_sub = spool_sub(where);
    int fd = -1;
    enum lb_err e;

    if (sub == NULL || to_sub == NULL)
        return LB_ERR_INTERNAL;
    snprintf(name, sizeof(name), "%s.json", h->id);
    /* Rewritten in place first, then one rename: the job is never in two places. */
    /* A rewrite in place is journaled; a move needs the file and both folders synced. */
    e = spool_write_json(st, sub, name, h->id, job, SPOOL_REPLACE, due, &fd,
                         !durable ? SPOOL_NOSYNC
                         : where == h->state ? SPOOL_SYNC_JOURNAL : SPOOL_SYNC_FILE);
    if (e != LB_OK)
        return e;
    (void)close(h->fd);
    h->fd = fd;
    if (where != h->state) {
        if (spool_path(st, from, sizeof(from), sub, h->id, ".json") != LB_OK ||
            spool_path(st, to, sizeof(to), to_sub, h->id, ".json") != LB_OK)
            return LB_ERR_INTERNAL;
        if (rename(from, to) != 0)
            return errno == ENOENT ? LB_ERR_NOT_FOUND : LB_ERR_IO;
        h->state = where;
        if (durable) {
            spool_mark_dir(st, sub);
            spool_mark_dir(st, to_sub);
        }
    }
    return durable ? spool_flush(st) : LB_OK;
}

/* ---- scans ---- */

/*
 * Calls fn for each <id>.json in state's folder (names first, then work: fn may rename or remove
 * files). Entries that are not regular files are moved aside.
 */
static enum lb_err spool_each(struct outbox_store *st, enum outbox_state state, outbox_each_fn fn,
                              void *arg)
{
    const char *sub = spool_sub(state);
    char p[SPOOL_PATH_MAX], id[OUTBOX_ID_SIZE], why[200];
    char (*ids)[OUTBOX_ID_SIZE] = NULL, (*grown)[OUTBOX_ID_SIZE];
    size_t n = 0, cap = 0, i;
    struct dirent *de;
    struct stat sb;
    enum lb_err e = LB_OK;
    DIR *d;

    if (state == OUTBOX_ASIDE) {
        /* What was set aside: reported by name, never opened. */
        if (spool_path(st, p, sizeof(p), "aside", NULL, NULL) != LB_OK)
            return LB_ERR_INTERNAL;
        d = opendir(p);
        if (d == NULL)
            return LB_ERR_IO;
        while (e == LB_OK && (de = readdir(d)) != NULL) {
            json_t *j;

            if (de->d_name[0] == '.')
                continue;
            j = json_pack("{s:s}", "aside", de->d_name);
            e = j != NULL ? fn(arg, de->d_name, OUTBOX_ASIDE, j) : LB_ERR_NOMEM;
            json_decref(j);
        }
        (void)closedir(d);
        return e;
    }
    if (sub == NULL)
        return LB_ERR_INTERNAL;
    if (spool_path(st, p, sizeof(p), sub, NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    d = opendir(p);
    if (d == NULL)
        return LB_ERR_IO;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.')
            continue;
        if (!spool_is_regular(dirfd(d), de->d_name, &sb)) {
            spool_set_aside(st, sub, de->d_name);
            continue;
        }
        if (!spool_name_id(de->d_name, ".json", id))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            grown = realloc(ids, cap * sizeof(*ids));
            if (grown == NULL) {
                e = LB_ERR_NOMEM;
                break;
            }
            ids = grown;
        }
        memcpy(ids[n++], id, OUTBOX_ID_SIZE);
    }
    (void)closedir(d);
    for (i = 0; e == LB_OK && i < n; i++) {
        char name[OUTBOX_ID_SIZE + 8];
        enum lb_err le;
        json_t *j;

        snprintf(name, sizeof(name), "%s.json", ids[i]);
        j = spool_load_file(st, sub, name, &le, why, sizeof(why));
        if (le == LB_ERR_NOT_FOUND)
            continue;
        e = fn(arg, ids[i], state, j);
        json_decref(j);
    }
    free(ids);
    return e;
}

static int spool_due_cmp(const void *a, const void *b)
{
    const struct outbox_due *x = a, *y = b;

    if (x->created != y->created)
        return x->created < y->created ? -1 : 1;
    return strcmp(x->id, y->id);
}

static enum lb_err spool_due(struct outbox_store *st, long long now, size_t limit,
                             struct outbox_due **due, size_t *n_due, long long *next_due)
{
    char p[SPOOL_PATH_MAX], id[OUTBOX_ID_SIZE], why[200];
    struct outbox_due *list = NULL, *grown;
    size_t n = 0, cap = 0;
    struct dirent *de;
    struct stat sb;
    enum lb_err e = LB_OK;
    DIR *d;

    *next_due = -1;
    *due = NULL;
    *n_due = 0;
    if (spool_path(st, p, sizeof(p), "queue", NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    d = opendir(p);
    if (d == NULL)
        return LB_ERR_IO;
    while ((de = readdir(d)) != NULL) {
        enum lb_err le;
        json_t *j;

        if (de->d_name[0] == '.')
            continue;
        if (!spool_is_regular(dirfd(d), de->d_name, &sb)) {
            if (errno != ENOENT)
                spool_set_aside(st, "queue", de->d_name);
            continue;
        }
        if (!spool_name_id(de->d_name, ".json", id))
            continue;
        if ((long long)sb.st_mtime > now) {
            if (*next_due < 0 || (long long)sb.st_mtime < *next_due)
                *next_due = (long long)sb.st_mtime;
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            grown = realloc(list, cap * sizeof(*list));
            if (grown == NULL) {
                e = LB_ERR_NOMEM;
                break;
            }
            list = grown;
        }
        memcpy(list[n].id, id, OUTBOX_ID_SIZE);
        /* 0 when unreadable, so broken files are dealt with first. */
        j = spool_load_file(st, "queue", de->d_name, &le, why, sizeof(why));
        list[n].created = spool_int(j, "created", 0);
        json_decref(j);
        n++;
    }
    (void)closedir(d);
    if (e != LB_OK) {
        free(list);
        return e;
    }
    if (n > 1)
        qsort(list, n, sizeof(*list), spool_due_cmp);
    if (limit > 0 && n > limit) {
        if (*next_due < 0 || now < *next_due)
            *next_due = now;
        n = limit;
    }
    *due = list;
    *n_due = n;
    return LB_OK;
}

static json_t *spool_load(struct outbox_store *st, const char *id, enum outbox_state *state)
{
    static const enum outbox_state order[] = {OUTBOX_QUEUED, OUTBOX_DONE, OUTBOX_DEAD,
                                              OUTBOX_QUEUED};
    char name[OUTBOX_ID_SIZE + 8], why[200];
    enum lb_err e;
    size_t i;
    json_t *j;

    *state = OUTBOX_UNKNOWN;
    if (!outbox_id_valid(id))
        return NULL;
    snprintf(name, sizeof(name), "%s.json", id);
    for (i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        j = spool_load_file(st, spool_sub(order[i]), name, &e, why, sizeof(why));
        if (e != LB_ERR_NOT_FOUND) {
            *state = order[i];
            return j;
        }
    }
    return NULL;
}

/* ---- duplicate keys ---- */

/* The key's file name: sha256 hex of key + ".json". */
static void spool_key_name(const char *key, char name[SPOOL_KEY_HEX + 8])
{
    uint8_t h[SHA256_DIGEST_SIZE];

    sha256(key, strlen(key), h);
    hex_encode(h, sizeof(h), name);
    memcpy(name + SPOOL_KEY_HEX, ".json", 6);
}

/* Takes the keys/ lock (held only while expired or released keys are removed). Returns its fd. */
static int spool_keys_lock(struct outbox_store *st)
{
    char p[SPOOL_PATH_MAX];
    int fd;

    if (spool_path(st, p, sizeof(p), "keys", ".lock", NULL) != LB_OK)
        return -1;
    fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0)
        return -1;
    if (spool_flock(fd, LOCK_EX) != 0) {
        (void)close(fd);
        return -1;
    }
    return fd;
}

/*
 * Removes keys/<name> if it is expired at now (or unreadable), or, with job_id, if it maps to
 * job_id. Runs under the keys/ lock so that a fresh key is never removed by mistake: a key is only
 * ever created where none exists, and only removed under the lock after this check.
 */
static enum lb_err spool_key_remove(struct outbox_store *st, const char *name, long long now,
                                    const char *job_id)
{
    char p[SPOOL_PATH_MAX], why[200];
    enum lb_err e = LB_OK, le;
    json_t *k;
    bool remove;
    int lock;

    if (spool_path(st, p, sizeof(p), "keys", name, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    lock = spool_keys_lock(st);
    if (lock < 0)
        return LB_ERR_IO;
    k = spool_load_file(st, "keys", name, &le, why, sizeof(why));
    if (le == LB_ERR_NOT_FOUND)
        goto out;
    if (job_id != NULL) {
        const char *jid = json_string_value(json_object_get(k, "job"));

        remove = jid != NULL && strcmp(jid, job_id) == 0;
    } else
        remove = k == NULL || !json_is_integer(json_object_get(k, "expires")) ||
                 spool_int(k, "expires", 0) <= now;
    if (remove && unlink(p) != 0 && errno != ENOENT)
        e = LB_ERR_IO;
out:
    json_decref(k);
    (void)close(lock);
    return e;
}

static enum lb_err spool_reserve_key(struct outbox_store *st, const char *key,
                                     const char *body_hash, const char *job_id, long long now,
                                     long long expires, bool *duplicate,
                                     char existing_id[OUTBOX_ID_SIZE])
{
    char name[SPOOL_KEY_HEX + 8], why[200];
    json_t *rec = NULL, *k = NULL;
    enum lb_err e = LB_ERR_IO;
    int tries;

    spool_key_name(key, name);
    rec = json_pack("{s:s, s:s?, s:I, s:I}", "job", job_id, "body", body_hash, "created",
                    (json_int_t)now, "expires", (json_int_t)expires);
    if (rec == NULL)
        return LB_ERR_NOMEM;
    for (tries = 0; tries < SPOOL_KEY_TRIES; tries++) {
        const char *jid, *body;

        /* Durable with the job's commit: a key matters only once its job is accepted. */
        e = spool_write_json(st, "keys", name, job_id, rec, SPOOL_NOREPLACE, expires, NULL,
                             SPOOL_SYNC_JOURNAL);
        if (e != LB_ERR_CONFLICT)
            goto out;
        /* Taken: a key file is complete the moment it exists (it was linked in whole). */
        json_decref(k);
        k = spool_load_file(st, "keys", name, &e, why, sizeof(why));
        if (e == LB_ERR_NOT_FOUND)
            continue;
        if (e != LB_OK && e != LB_ERR_GONE)
            goto out;
        jid = json_string_value(json_object_get(k, "job"));
        if (k == NULL || !outbox_id_valid(jid) || spool_int(k, "expires", 0) <= now) {
            e = spool_key_remove(st, name, now, NULL);
            if (e != LB_OK)
                goto out;
            continue;
        }
        if (now - spool_int(k, "created", now) >= SPOOL_KEY_GRACE) {
            enum outbox_state where;
            json_t *job = spool_load(st, jid, &where);

            json_decref(job);
            if (where == OUTBOX_UNKNOWN) {
                /* Its job was never accepted (a crash between reserve and put) or was purged. */
                e = spool_key_remove(st, name, now, jid);
                if (e != LB_OK)
                    goto out;
                continue;
            }
        }
        memcpy(existing_id, jid, OUTBOX_ID_SIZE);
        body = json_string_value(json_object_get(k, "body"));
        if (body_hash != NULL && body != NULL && strcmp(body, body_hash) != 0) {
            e = LB_ERR_CONFLICT;
            goto out;
        }
        *duplicate = true;
        e = LB_OK;
        goto out;
    }
    e = LB_ERR_UNAVAILABLE;
out:
    json_decref(k);
    json_decref(rec);
    return e;
}

static enum lb_err spool_release_key(struct outbox_store *st, const char *key, const char *job_id)
{
    char name[SPOOL_KEY_HEX + 8];

    spool_key_name(key, name);
    return spool_key_remove(st, name, 0, job_id);
}

/* ---- retention ---- */

/*
 * Removes files in sub whose mtime (their finish time, or a key's expiry) is <= cutoff. Keys go
 * through spool_key_remove; in dead/ the .corrupt companions go too. Counts .json files removed.
 */
static enum lb_err spool_remove_in(struct outbox_store *st, const char *sub, long long cutoff,
                                   long long now, size_t *count)
{
    char p[SPOOL_PATH_MAX], id[OUTBOX_ID_SIZE];
    bool keys = strcmp(sub, "keys") == 0;
    struct dirent *de;
    struct stat sb;
    enum lb_err e = LB_OK;
    DIR *d;

    if (spool_path(st, p, sizeof(p), sub, NULL, NULL) != LB_OK)
        return LB_ERR_INTERNAL;
    d = opendir(p);
    if (d == NULL)
        return LB_ERR_IO;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        bool json;

        if (de->d_name[0] == '.')
            continue;
        if (!spool_is_regular(dirfd(d), de->d_name, &sb)) {
            spool_set_aside(st, sub, de->d_name);
            continue;
        }
        if (keys) {
            if (len != SPOOL_KEY_HEX + 5 || strcmp(de->d_name + SPOOL_KEY_HEX, ".json") != 0)
                continue;
        } else if (!spool_name_id(de->d_name, ".json", id) &&
                   !spool_name_id(de->d_name, ".corrupt", id)) {
            continue;
        }
        if ((long long)sb.st_mtime > cutoff)
            continue;
        json = len > 5 && strcmp(de->d_name + len - 5, ".json") == 0;
        if (keys) {
            if (spool_key_remove(st, de->d_name, now, NULL) != LB_OK)
                e = LB_ERR_IO;
            continue;
        }
        if (unlinkat(dirfd(d), de->d_name, 0) != 0) {
            e = LB_ERR_IO;
            continue;
        }
        if (json && count != NULL)
            (*count)++;
    }
    (void)closedir(d);
    return e;
}

static enum lb_err spool_remove_older(struct outbox_store *st, enum outbox_state state,
                                      long long cutoff, size_t *count)
{
    const char *sub = spool_sub(state);

    if (sub == NULL || state == OUTBOX_QUEUED)
        return LB_ERR_INTERNAL;
    return spool_remove_in(st, sub, cutoff, cutoff, count);
}

/* ---- recovery of journals whose process died ---- */

/* How far a job has got: attempts begun and ended, targets settled (for replaying rewrites). */
static long long spool_progress(const json_t *job)
{
    const char *name;
    json_t *t;
    long long n = 0;

    json_object_foreach(json_object_get(job, "targets"), name, t) {
        const char *status = json_string_value(json_object_get(t, "status"));

        n += spool_int(t, "started", 0) + spool_int(t, "attempts", 0);
        if (status != NULL && strcmp(status, "pending") != 0)
            n += 1000000;
    }
    return n;
}

/*
 * Replays one record: puts the file back when a crash lost it. A key comes back when missing
 * and unexpired. A job comes back into queue/ unless it is done or dead; a queue file already
 * there is replaced only when the record is further along (more attempts begun) and nobody holds
 * it. The record's "started" marks make the next attempt ask the API before creating again.
 */
static void spool_replay(struct outbox_store *st, const char *sub, const char *name,
                         long long mtime, const char *data, size_t len, long long now)
{
    char id[OUTBOX_ID_SIZE], path[SPOOL_PATH_MAX], why[200];
    bool odd;
    int fd;

    if (strcmp(sub, "keys") == 0) {
        if (strlen(name) == SPOOL_KEY_HEX + 5 && strcmp(name + SPOOL_KEY_HEX, ".json") == 0 &&
            mtime > now)
            (void)spool_write_file(st, "keys", name, "key", data, len, SPOOL_NOREPLACE, mtime,
                                   NULL, SPOOL_NOSYNC);
        return;
    }
    if (strcmp(sub, "queue") != 0 || !spool_name_id(name, ".json", id) ||
        spool_exists(st, "done", id, ".json") || spool_exists(st, "dead", id, ".json") ||
        spool_path(st, path, sizeof(path), "queue", name, NULL) != LB_OK)
        return;
    fd = spool_open_regular(path, &odd);
    if (fd < 0) {
        if (errno == ENOENT)
            (void)spool_write_file(st, "queue", name, id, data, len, SPOOL_NOREPLACE, mtime,
                                   NULL, SPOOL_NOSYNC);
        return;
    }
    if (spool_flock(fd, LOCK_EX | LOCK_NB) == 0) {
        struct buf b, r;
        enum lb_err e;
        json_t *have, *want;

        buf_init(&b, OUTBOX_FILE_MAX);
        e = spool_read_fd(fd, &b);
        have = e == LB_OK ? spool_parse(&b, why, sizeof(why)) : NULL;
        buf_init(&r, OUTBOX_FILE_MAX);
        want = buf_append(&r, data, len) == LB_OK ? spool_parse(&r, why, sizeof(why)) : NULL;
        if (want != NULL && (have == NULL || spool_progress(want) > spool_progress(have)))
            (void)spool_write_file(st, "queue", name, id, data, len, SPOOL_REPLACE, mtime, NULL,
                                   SPOOL_NOSYNC);
        json_decref(have);
        json_decref(want);
        buf_free(&b);
        buf_free(&r);
    }
    (void)close(fd);
}

/* Replays the records of the current generation in journal fd (read whole into b). */
static void spool_replay_journal(struct outbox_store *st, const struct buf *b, long long now)
{
    const unsigned char *p = (const unsigned char *)b->data;
    uint32_t head[2];
    size_t off = SPOOL_WAL_HEAD;

    if (b->len < SPOOL_WAL_HEAD)
        return;
    memcpy(head, p, sizeof(head));
    if (head[0] != SPOOL_WAL_HMAGIC)
        return;
    while (off + SPOOL_WAL_REC <= b->len) {
        uint32_t w[4];
        unsigned char rec[SPOOL_WAL_REC];
        const char *payload, *nl1, *nl2, *end;
        char path[SPOOL_PATH_MAX], *slash;
        uint8_t digest[SHA256_DIGEST_SIZE];
        uint32_t check;
        size_t total;
        long long mtime;
        struct buf whole;

        memcpy(w, p + off, sizeof(w));
        if (w[0] != SPOOL_WAL_MAGIC || w[1] != head[1] || w[2] > b->len - off - SPOOL_WAL_REC)
            break;
        total = SPOOL_WAL_REC + w[2];
        memcpy(rec, p + off, sizeof(rec));
        memset(rec + 12, 0, 4);
        buf_init(&whole, total);
        if (buf_append(&whole, rec, sizeof(rec)) != LB_OK ||
            buf_append(&whole, p + off + SPOOL_WAL_REC, w[2]) != LB_OK) {
            buf_free(&whole);
            break;
        }
        sha256(whole.data, whole.len, digest);
        buf_free(&whole);
        memcpy(&check, digest, sizeof(check));
        if (check != w[3])
            break; /* torn: the write the crash interrupted, never acknowledged */
        payload = (const char *)p + off + SPOOL_WAL_REC;
        end = payload + w[2];
        nl1 = memchr(payload, '\n', (size_t)(end - payload));
        nl2 = nl1 != NULL ? memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1)) : NULL;
        if (nl2 != NULL && (size_t)(nl1 - payload) < sizeof(path)) {
            size_t dlen = (size_t)(end - nl2 - 1);

            memcpy(path, payload, (size_t)(nl1 - payload));
            path[nl1 - payload] = '\0';
            mtime = strtoll(nl1 + 1, NULL, 10);
            while (dlen > 0 && nl2[dlen] == '\0')
                dlen--; /* the padding */
            slash = strchr(path, '/');
            if (slash != NULL && strchr(slash + 1, '/') == NULL) {
                *slash = '\0';
                spool_replay(st, path, slash + 1, mtime, nl2 + 1, dlen, now);
            }
        }
        off += total;
    }
}

/*
 * Replays every journal in journal/ whose process is gone (nobody holds its lock), then makes
 * the spool durable (syncfs) and removes the journal. Called when the spool is opened and from
 * the retry pass; a live process's journal is never touched (its owner holds the lock).
 */
static void spool_recover(struct outbox_store *st, long long now)
{
    char p[SPOOL_PATH_MAX];
    struct dirent *de;
    DIR *d;

    if (spool_path(st, p, sizeof(p), "journal", NULL, NULL) != LB_OK || (d = opendir(p)) == NULL)
        return;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        struct buf b;
        bool odd;
        int fd;

        if (len < 5 || strcmp(de->d_name + len - 4, ".wal") != 0 ||
            spool_path(st, p, sizeof(p), "journal", de->d_name, NULL) != LB_OK)
            continue;
        fd = spool_open_regular(p, &odd);
        if (fd < 0) {
            if (odd)
                spool_set_aside(st, "journal", de->d_name);
            continue;
        }
        if (spool_flock(fd, LOCK_EX | LOCK_NB) != 0) {
            (void)close(fd); /* its process is alive */
            continue;
        }
        buf_init(&b, SPOOL_WAL_MAX + SPOOL_WAL_HEAD);
        if (spool_read_fd(fd, &b) != LB_OK) {
            log_msg(LOG_WARN, "outbox: journal/%s cannot be read; it is kept for a person",
                    de->d_name);
        } else {
            spool_replay_journal(st, &b, now);
            if (syncfs(st->dir_fd) == 0 && unlinkat(dirfd(d), de->d_name, 0) == 0)
                (void)fsync(st->sub_fd[SPOOL_SUB_JOURNAL]);
        }
        buf_free(&b);
        (void)close(fd);
    }
    (void)closedir(d);
}

static enum lb_err spool_expire(struct outbox_store *st, long long now)
{
    enum lb_err e = spool_remove_in(st, "keys", now, now, NULL);

    spool_clean_tmp(st);
    spool_recover(st, now);
    return e;
}

static const struct outbox_store_ops spool_ops = {
    .name = "spool",
    .close = spool_close,
    .put = spool_put,
    .claim = spool_claim,
    .write = spool_write,
    .release = spool_release,
    .due = spool_due,
    .load = spool_load,
    .each = spool_each,
    .remove_older = spool_remove_older,
    .reserve_key = spool_reserve_key,
    .release_key = spool_release_key,
    .expire = spool_expire,
    .flush = spool_flush,
    .put_claim = spool_put_claim,
};

struct outbox_store *outbox_spool_open(const char *dir, long long tmp_max_age,
                                       const struct outbox_store_ops **ops,
                                       struct lb_error *err)
{
    struct outbox_store *st = NULL;
    char p[SPOOL_PATH_MAX];
    size_t i;

    if (dir == NULL || dir[0] == '\0') {
        lb_fail(err, LB_ERR_CONFIG, "no spool directory configured");
        return NULL;
    }
    if (strlen(dir) > SPOOL_PATH_MAX - 512) {
        lb_fail(err, LB_ERR_CONFIG, "spool directory path is too long");
        return NULL;
    }
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        goto nomem;
    st->dir_fd = -1;
    st->wal_fd = -1;
    for (i = 0; i < SPOOL_N_SUBDIRS; i++)
        st->sub_fd[i] = -1;
    pthread_mutex_init(&st->mu, NULL);
    pthread_mutex_init(&st->wal_mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    st->tmp_max_age = tmp_max_age;
    st->dir = strdup(dir);
    if (st->dir == NULL)
        goto nomem;
    if (spool_mkdir(dir, err) != LB_OK)
        goto fail;
    for (i = 0; i < SPOOL_N_SUBDIRS; i++) {
        if (spool_path(st, p, sizeof(p), spool_subdirs[i], NULL, NULL) != LB_OK ||
            spool_mkdir(p, err) != LB_OK)
            goto fail;
        st->sub_fd[i] = open(p, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (st->sub_fd[i] < 0) {
            lb_fail(err, LB_ERR_IO, "cannot open spool directory %s", p);
            goto fail;
        }
    }
    st->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (st->dir_fd < 0 || fsync(st->dir_fd) != 0) {
        lb_fail(err, LB_ERR_IO, "cannot sync spool directory %s", dir);
        goto fail;
    }
    spool_clean_tmp(st);
    spool_recover(st, (long long)time(NULL));
    *ops = &spool_ops;
    return st;

nomem:
    lb_fail(err, LB_ERR_NOMEM, "out of memory");
fail:
    spool_close(st);
    return NULL;
}
