/* rules.c: being written. */
