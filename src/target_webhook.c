/* target_webhook.c: being written. */
