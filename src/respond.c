/* respond.c: being written. */
