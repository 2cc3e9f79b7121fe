"""The filter stage: first-match rules compiled, per table, into the form that suits them
(``plan``): constant branches in the program (``inline``) or a decision tree in BPF arrays
(``tree``).  ``model`` defines what a rule matches, ``gen`` writes the C, ``filter.h`` is the
reviewed C, ``table`` installs compiled rules into a loaded program's maps."""

KINDS = ("filter",)  # the spec keywords this package implements
