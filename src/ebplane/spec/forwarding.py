"""Moved: the forwarding kinds' spec is :mod:`ebplane.stages.forward.spec` (one package per stage kind).  This name stays
an alias of that module for code written against it."""

import sys

import ebplane.stages.forward.spec

sys.modules[__name__] = ebplane.stages.forward.spec
