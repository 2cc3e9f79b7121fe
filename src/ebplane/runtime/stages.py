"""Moved: the control side of stage kinds is :mod:`ebplane.stages.control` (``StageControl``,
found through the registry ``ebplane.stages.KINDS``).  These names stay for code written
against them: ``StageRuntime`` is ``StageControl``; ``register_runtime`` adds a control
for a kind at run time; ``runtime_for`` is ``control_for``."""

from ebplane.stages.control import StageControl, StageControl as StageRuntime, control_for
from ebplane.stages.control import control_for as runtime_for, register_control as register_runtime

__all__ = ["StageControl", "StageRuntime", "control_for", "register_runtime", "runtime_for"]
