"""The nat stage kind: masquerade and port forwards at TC (see nat.h)."""
