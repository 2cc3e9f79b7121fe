"""The conntrack stage kind: connection tracking for stateful filters (see conntrack.h)."""
