"""Moved: conntrack's spec is :mod:`ebplane.stages.conntrack.spec` (one package per stage kind).  This name stays
an alias of that module for code written against it."""

import sys

import ebplane.stages.conntrack.spec

sys.modules[__name__] = ebplane.stages.conntrack.spec
