/* target_lofty.c: being written. */
