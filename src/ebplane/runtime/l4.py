"""Moved: conntrack's control side is :mod:`ebplane.stages.conntrack.control` (one package per stage kind).  This name stays
an alias of that module for code written against it."""

import sys

import ebplane.stages.conntrack.control

sys.modules[__name__] = ebplane.stages.conntrack.control
