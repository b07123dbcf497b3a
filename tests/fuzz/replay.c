/*
 * replay.c: main() for a harness built without libFuzzer (make check).
 *
 * Feeds every regular file of the corpus directory (FUZZ_CORPUS, compiled in; or the directories
 * and files given as arguments) to LLVMFuzzerTestOneInput, in name order, and prints how many it
 * ran. A crash, a sanitizer report or a fuzz_fail() ends the test with a failure; an empty or
 * missing corpus is a failure too (a corpus that is not found proves nothing).
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_MAX_INPUT (4 * 1024 * 1024)

/* Runs one file (read into a buffer of exactly its size, so ASan sees a read past its end).
 * Returns 0, or -1 when it cannot be read. */
static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    uint8_t *data;
    size_t n;

    if (f == NULL || fstat(fileno(f), &st) != 0 || st.st_size > REPLAY_MAX_INPUT) {
        fprintf(stderr, "replay: %s: %s\n", path, f == NULL ? strerror(errno) : "unreadable");
        if (f != NULL)
            fclose(f);
        return -1;
    }
    data = malloc(st.st_size > 0 ? (size_t)st.st_size : 1);
    if (data == NULL) {
        fclose(f);
        return -1;
    }
    n = fread(data, 1, (size_t)st.st_size, f);
    fclose(f);
    (void)LLVMFuzzerTestOneInput(data, n);
    free(data);
    return 0;
}

static int replay_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file in dir (not recursing). Returns the number run, or -1. */
static long replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0, i;
    long ran = 0;

    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            char **more = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof(*names));

            if (more == NULL)
                break;
            names = more;
        }
        names[n] = strdup(e->d_name);
        if (names[n] != NULL)
            n++;
    }
    closedir(d);
    if (n > 0)
        qsort(names, n, sizeof(*names), replay_cmp);
    for (i = 0; i < n; i++) {
        char path[4096];
        struct stat st;

        if (snprintf(path, sizeof(path), "%s/%s", dir, names[i]) < (int)sizeof(path) &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_file(path) != 0)
                ran = -1;
            else if (ran >= 0)
                ran++;
        }
        free(names[i]);
    }
    free(names);
    return ran;
}

int main(int argc, char **argv)
{
    long total = 0, ran;
    int i;

    if (argc < 2) {
#ifdef FUZZ_CORPUS
        ran = replay_dir(FUZZ_CORPUS);
        if (ran <= 0) {
            fprintf(stderr, "replay: no inputs in %s\n", FUZZ_CORPUS);
            return 1;
        }
        printf("replay: %ld inputs from %s: ok\n", ran, FUZZ_CORPUS);
        return 0;
#else
        fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
#endif
    }
    for (i = 1; i < argc; i++) {
        struct stat st;

        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode))
            ran = replay_dir(argv[i]);
        else
            ran = replay_file(argv[i]) == 0 ? 1 : -1;
        if (ran < 0)
            return 1;
        total += ran;
    }
    printf("replay: %ld inputs: ok\n", total);
    return 0;
}
