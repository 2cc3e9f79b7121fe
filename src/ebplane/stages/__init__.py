"""Stage kinds, one package each, and THE registry of them.

A stage kind is one package ``ebplane/stages/<package>/`` holding, one module per side
(docs/architecture.md, "Adding a stage kind"; tests/test_architecture.py checks each
module's layer):

``spec.py`` (description layer)
    the frozen dataclass of the stage (a subclass of :class:`ebplane.spec.stages.Stage`) and
    its parser; exports ``PARSERS: dict[kind, parser(body, where, protocols) -> Stage]``.
``gen.py`` (code-generation layer)
    its :class:`ebplane.codegen.pipeline.StageGen`: maps (declared with ``Emit.map``, so they
    land in the generation manifest), the stage function and the features it reads;
    exports ``GENERATORS: dict[kind, StageGen]``.  Names of maps and counter slots are made
    here, once.
``<kind>.h``
    the reviewed C (the package directory is on the compiler's include path).
``control.py`` (stage-kinds layer, optional)
    its :class:`ebplane.stages.control.StageControl`: check before compiling, prepare a
    loaded program, stats, replay/trace slot names, the map roles of status;
    exports ``CONTROLS: dict[kind, StageControl]``.

:data:`KINDS` lists every kind (its spec keyword) and the package that implements it; the
spec, codegen and runtime layers each load only their own side of a kind through
:func:`kind_module`.  This module imports nothing of ebplane (it sits at the description
layer, below the modules it names).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# spec keyword -> package under ebplane.stages.  The order is the order in which errors
# list the kinds.  A package may implement several kinds that share C (``forward``).
KINDS: dict[str, str] = {
    "filter": "filter",
    "count": "count",
    "route": "forward",
    "bridge": "forward",
    "redirect": "forward",
    "tx": "forward",
    "steer": "forward",
    "xsk": "forward",
    "conntrack": "conntrack",
}

# module of a kind package -> the name of the table it exports, keyed by kind
ROLES: dict[str, str] = {"spec": "PARSERS", "gen": "GENERATORS", "control": "CONTROLS"}


def packages() -> list[str]:
    """The kind packages, in the order of :data:`KINDS`."""
    return list(dict.fromkeys(KINDS.values()))


def kind_module(kind: str, role: str) -> ModuleType | None:
    """The ``role`` module (``spec``, ``gen``, ``control``) of ``kind``'s package; None
    for an unknown kind or a package without that module (``control`` is optional)."""
    pkg = KINDS.get(kind)
    if pkg is None:
        return None
    name = f"ebplane.stages.{pkg}.{role}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:
            return None
        raise


def kind_part(kind: str, role: str):
    """What ``kind``'s package exports for ``role``: its parser, generator or control
    (None when it has none)."""
    mod = kind_module(kind, role)
    return None if mod is None else getattr(mod, ROLES[role]).get(kind)
