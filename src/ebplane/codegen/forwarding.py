"""Moved: the forwarding kinds' generators is :mod:`ebplane.stages.forward.gen` (one package per stage kind).  This name stays
an alias of that module for code written against it."""

import sys

import ebplane.stages.forward.gen

sys.modules[__name__] = ebplane.stages.forward.gen
