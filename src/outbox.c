/* outbox.c: being written. */
