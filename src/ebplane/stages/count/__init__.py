"""The count stage kind: packets and bytes that reach it, in all and per family."""

KINDS = ("count",)  # the spec keywords this package implements
