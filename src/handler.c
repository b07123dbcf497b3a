/* handler.c: being written. */
