/* target_leadpro.c: being written. */
