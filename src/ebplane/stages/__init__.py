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

A kind package's ``__init__.py`` declares the keywords it implements, ``KINDS = ("count",)``;
:data:`KINDS` (keyword -> package) is made from those declarations, so adding a kind touches
its package only.  The spec, codegen and runtime layers each load only their own side of a
kind through :func:`kind_module`.  This module imports nothing of ebplane but the kind
packages' ``__init__`` (docstring and ``KINDS``: it sits at the description layer, below
the modules it names).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

# kind packages whose kinds come first when kinds are listed (errors name them in this
# order); any other package follows in alphabetical order.  A new kind need not be added
# here: its package is found by itself.
FIRST = ("filter", "count", "forward", "conntrack")


def _discover() -> dict[str, str]:
    """spec keyword -> package: every package under ``ebplane/stages/`` whose
    ``__init__.py`` declares ``KINDS = (...)``, the keywords it implements."""
    here = Path(__file__).resolve().parent
    pkgs = sorted((p.name for p in here.iterdir() if (p / "__init__.py").is_file()),
                  key=lambda n: (FIRST.index(n) if n in FIRST else len(FIRST), n))
    kinds: dict[str, str] = {}
    for pkg in pkgs:
        for kind in getattr(importlib.import_module(f"ebplane.stages.{pkg}"), "KINDS", ()):
            if kind in kinds:
                raise ImportError(f"stage kind '{kind}' is declared by ebplane.stages."
                                  f"{kinds[kind]} and by ebplane.stages.{pkg}")
            kinds[kind] = pkg
    return kinds


# spec keyword -> package under ebplane.stages (a package may implement several kinds that
# share C, as ``forward`` does)
KINDS: dict[str, str] = _discover()

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
