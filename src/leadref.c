/* leadref.c: being written. */
