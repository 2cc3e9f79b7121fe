"""The conntrack stage kind: connection tracking for stateful filters (see conntrack.h)."""

KINDS = ("conntrack",)  # the spec keywords this package implements
