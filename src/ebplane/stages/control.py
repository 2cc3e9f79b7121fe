"""The control-plane side of a stage kind: :class:`StageControl`.

Each kind package may have a ``control.py`` exporting ``CONTROLS: dict[kind, StageControl]``
(found through :data:`ebplane.stages.KINDS`); a kind without one gets this base, which
does nothing.  ``apply`` calls ``check`` before compiling and ``prepare`` after the program
is loaded and before it is attached, both inside the pipeline's network namespace;
``replay`` calls ``prepare`` with ``replay=True`` (no interfaces are touched then).  ``stats``
reads the stage's counters and ``rows`` says what they are (the shape ``ebplane stats``,
``top``, the chain demo and ``/metrics`` show, so a new kind's counters show there without
changes to them), ``slots`` names the counter slots a trace record points at (replay,
trace), ``map_roles`` names the maps the stage's program has (status).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from ebplane.codegen.pipeline import FRAGS_MTU
from ebplane.kernel.codec import COUNT, U32
from ebplane.kernel.maps import Map
from ebplane.net import iface


# where a control side registers the undo of what it changes outside its program and maps
# (a pass-through program on a veth peer, ...): the commit of the apply that runs it
_UNDO: ContextVar[Callable[[str, Callable[[], None]], None] | None] = ContextVar(
    "ebplane_stage_undo", default=None)


@contextlib.contextmanager
def undo_to(register: Callable[[str, Callable[[], None]], None]) -> Iterator[None]:
    """Run ``prepare`` calls whose side effects ``register`` undoes if the apply fails."""
    token = _UNDO.set(register)
    try:
        yield
    finally:
        _UNDO.reset(token)


def on_undo(what: str, undo: Callable[[], None]) -> None:
    """Register the undo of a change ``prepare`` just made outside the pipeline's own
    objects; outside an apply (replay, a direct call) there is nothing to undo."""
    register = _UNDO.get()
    if register is not None:
        register(what, undo)


@dataclass(frozen=True)
class StatRow:
    """One counter of a stage's stats, as every consumer shows it.

    A plain counter (``action`` None) is an outcome: ``ebplane stats`` lists it by ``key``,
    ``/metrics`` exports it as ``ebplane_stage_packets_total{kind, outcome=key}``.  A row that
    decides (``action``: a rule's, a default's) is shown with its action and, for a rule
    (``index``: its position), its ``match`` text; ``/metrics`` exports it as
    ``ebplane_packets_total{rule=key, verdict=action}`` (and ``ebplane_drops_total`` when the
    action is drop), and the rows with an ``index`` are the stage's rules
    (``ebplane_table_rules``)."""
    key: str                   # an outcome, a rule's position ("0"), "default", "malformed"
    packets: int
    bytes: int
    action: str | None = None  # what the row decides (pass, drop, ...); None: an outcome
    match: str = ""            # a rule's match, as text
    index: int | None = None   # a rule's position

    @property
    def label(self) -> str:
        """The row in one phrase (``ebplane top``): ``#0 src=...``, ``(default)``, an outcome."""
        if self.index is not None:
            return f"#{self.index} {self.match}"
        return f"({self.key})" if self.action is not None else self.key


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

    def rows(self, stats: dict) -> list[StatRow]:
        """What the counters of ``stats`` (as :meth:`stats` made them, maybe read back from
        JSON) are, in order.  The base: one outcome per entry of ``stats["counts"]``
        (``{name: {"packets", "bytes"}}``), which is what a kind that counts per outcome
        returns from ``stats``."""
        return [StatRow(k, c["packets"], c["bytes"])
                for k, c in (stats.get("counts") or {}).items()
                if isinstance(c, dict) and "packets" in c]

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

    def targets(self, spec, stage) -> list[str]:
        """The interfaces, by name, the stage sends packets to, as the spec names them:
        ``status`` warns when one no longer exists (the pipeline still runs, its copies or
        redirects to it fail, and the next apply of the spec is refused)."""
        return []

    def map_roles(self, stage) -> dict[str, str]:
        """C name -> role of every map the stage's program may have (status, without
        generating the program)."""
        return {}


def slot_counts(counters: Map, names: Sequence[str]) -> dict[str, dict[str, int]]:
    """Name -> {packets, bytes} of a stage's per-CPU counters map (``struct ebp_count`` per
    slot, slot ``i`` named ``names[i]``), summed over the CPUs, for ``ebplane stats``."""
    cm = counters.with_codecs(U32, COUNT)
    out = {}
    for i, name in enumerate(names):
        c = cm.lookup_sum(i)
        out[name] = {"packets": c.packets, "bytes": c.bytes}
    return out


class OutcomeSlots:
    """For a kind whose counter slots are its outcomes, the same at every hook (mirror,
    multicast, encap, decap): the slots a trace record names, the maps' roles and the
    per-outcome counts, from the kind's ``gen`` tables.  Put it before the control's base:
    ``class MirrorControl(OutcomeSlots, StageControl)``."""

    def outcomes(self, stage) -> Sequence[str]:
        """The outcome of each counter slot, in slot order."""
        raise NotImplementedError

    def map_names(self, stage) -> dict[str, str]:
        """Role -> C name of the stage's maps (one with the role ``counters``)."""
        raise NotImplementedError

    def slots(self, stage, live: Sequence[dict] = ()) -> dict[int, tuple[int | None, str]]:
        return {i: (None, name) for i, name in enumerate(self.outcomes(stage))}

    def slots_at(self, stage, hook: str, live: Sequence[dict] = ()
                 ) -> dict[int, tuple[int | None, str]]:
        return self.slots(stage, live)  # the same slots at every hook

    def describe_slot(self, stage, slot: int, live: Sequence[dict] = ()) -> tuple[int | None, str]:
        return self.slots(stage).get(slot, (None, f"slot {slot}"))

    def describe_slot_at(self, stage, hook: str, slot: int, live: Sequence[dict] = ()
                         ) -> tuple[int | None, str]:
        return self.describe_slot(stage, slot, live)

    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in self.map_names(stage).items()}

    def counts(self, maps: Callable[[str], Map], stage) -> dict[str, dict[str, int]]:
        """Outcome -> {packets, bytes}, summed over the CPUs, for ``ebplane stats``."""
        return slot_counts(maps(self.map_names(stage)["counters"]), self.outcomes(stage))


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
