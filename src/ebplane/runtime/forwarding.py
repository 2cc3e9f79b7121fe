"""Moved: the forwarding kinds' control side is :mod:`ebplane.stages.forward.control` (one package per stage kind).  This name stays
an alias of that module for code written against it."""

import sys

import ebplane.stages.forward.control

sys.modules[__name__] = ebplane.stages.forward.control
