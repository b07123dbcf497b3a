/* attribution.c: being written. */
