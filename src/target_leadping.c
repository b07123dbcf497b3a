/* target_leadping.c: being written. */
