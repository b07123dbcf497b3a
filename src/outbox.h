/* outbox.h: being written (durable outbox, issue 6). */
