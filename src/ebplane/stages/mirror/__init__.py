"""The mirror stage kind: a copy of selected packets to another interface while the original
goes on (TC: bpf_clone_redirect; XDP: a devmap broadcast to the copy's and the original's
port; see mirror.h)."""

KINDS = ("mirror",)  # the spec keywords this package implements
