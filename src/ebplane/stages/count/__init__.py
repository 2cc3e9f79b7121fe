"""The count stage kind: packets and bytes that reach it, in all and per family."""
