/* crypto.c: being written. */
