"""The nat stage kind: masquerade and port forwards at TC, IPv4 and IPv6 (see nat.h)."""

KINDS = ("nat",)  # the spec keywords this package implements
