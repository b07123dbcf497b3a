/* request.c: being written. */
