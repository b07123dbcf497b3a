/* target.c: being written. */
