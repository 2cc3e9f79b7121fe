"""The control-plane side of a stage kind: :class:`StageControl`.

Each kind package may have a ``control.py`` exporting ``CONTROLS: dict[kind, StageControl]``
(found through :data:`ebplane.stages.KINDS`); a kind without one gets this base, which
does nothing.  ``apply`` calls ``check`` before compiling and ``prepare`` after the program
is loaded and before it is attached, both inside the pipeline's network namespace;
``replay`` calls ``prepare`` with ``replay=True`` (no interfaces are touched then).  ``stats``
reads the stage's counters, ``slots`` names the counter slots a trace record points at
(replay, trace), ``map_roles`` names the maps the stage's program has (status).
"""

from __future__ import annotations

from typing import Callable, Sequence

from ebplane.codegen.pipeline import FRAGS_MTU
from ebplane.kernel.maps import Map
from ebplane.net import iface


class StageControl:
    kind = ""

    def check(self, spec, stage) -> list[str]:
        """Validate against the running system; raise with a hint, or return notes."""
        return []

    def prepare(self, built, spec, stage, *, replay: bool = False) -> list[str]:
        """Fill the stage's maps of a freshly loaded program; return notes."""
        return []

    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        """The stage's counters for ``ebplane stats`` (``maps(cname)`` opens a map).  A stage
        with rules (``stage.has_rules``) is also given ``live=``: its rules as the state file
        keeps them (``{"id", "rule"}``)."""
        return {}

    def slots(self, stage, live: Sequence[dict] = ()) -> dict[int, tuple[int | None, str]]:
        """Counter slot -> (rule index or None, reason) of the slots a trace record may name
        (``EBP_TRACE_SET(stage, slot)`` in the stage's C); ``live`` as for ``stats``."""
        return {}

    def describe_slot(self, stage, slot: int, live: Sequence[dict] = ()) -> tuple[int | None, str]:
        """(rule index or None, text) of a counter slot a trace record names (``ebplane
        trace``)."""
        return None, f"slot {slot}"

    def slots_at(self, stage, hook: str, live: Sequence[dict] = ()
                 ) -> dict[int, tuple[int | None, str]]:
        """:meth:`slots` of the stage in a program for ``hook`` (a kind whose counter slots
        differ by hook overrides this; the others' are the same at every hook)."""
        return self.slots(stage, live)

    def describe_slot_at(self, stage, hook: str, slot: int, live: Sequence[dict] = ()
                         ) -> tuple[int | None, str]:
        """:meth:`describe_slot` of the stage in a program for ``hook``."""
        return self.describe_slot(stage, slot, live)

    def map_roles(self, stage) -> dict[str, str]:
        """C name -> role of every map the stage's program may have (status, without
        generating the program)."""
        return {}


_EXTRA: dict[str, StageControl] = {}  # controls added at run time (register_control)
_DEFAULT = StageControl()


def register_control(ctl: StageControl) -> StageControl:
    """Add the control of a kind at run time (a kind of ebplane exports ``CONTROLS`` from
    its package's ``control.py`` instead)."""
    _EXTRA[ctl.kind] = ctl
    return ctl


def control_for(kind: str) -> StageControl:
    """The control side of ``kind`` (the base, which does nothing, when it has none)."""
    from ebplane.stages import kind_part
    if kind in _EXTRA:
        return _EXTRA[kind]
    return kind_part(kind, "control") or _DEFAULT


def jumbo_interfaces(spec) -> list[tuple[str, int]]:
    """(name, MTU) of the pipeline's interfaces (calling thread's namespace) whose MTU needs
    multi-buffer XDP (``xdp.frags``); none for a TC pipeline without an XDP parser."""
    if spec.hook != "xdp" and spec.parser_mode != "xdp":
        return []
    out = []
    for name in spec.interfaces:
        mtu = iface.info(name).mtu
        if mtu > FRAGS_MTU:
            out.append((name, mtu))
    return out
