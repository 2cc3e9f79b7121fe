"""Pipeline stages: the base of every stage model and the spec's view of the stage kinds.

A stage is written in the spec as a one-key mapping, ``- <kind>: {...}``.  Each kind is a
package of :mod:`ebplane.stages` (its model and parser in ``<package>/spec.py``), listed
in the one registry :data:`ebplane.stages.KINDS`.  :data:`STAGE_KINDS` maps each keyword
to the parser of its body; it loads a kind's ``spec`` module on first use.
``register_stage`` is kept for code that adds a parser at run time (tests, plug-ins); a
stage kind of ebplane itself is a package listed in ``KINDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.stages import KINDS, kind_part

STAGE_NAME_PATTERN = r"[a-z0-9_]{1,15}"
STAGE_NAME_ALLOWED = "1-15 characters from a-z, 0-9, _"


@dataclass(frozen=True)
class Stage:
    """Base of all stages: each has a kind (its spec keyword) and a unique name."""

    kind: ClassVar[str]
    hooks: ClassVar[tuple[str, ...] | None] = None  # the hooks it works at; None: all
    # whether the stage has a rule table edited at run time (ebplane rules, RuleTable), kept
    # in the state file per stage name (filter)
    has_rules: ClassVar[bool] = False
    # what the stage gives the stages after it (conntrack: "ct_state", which state: rules read)
    provides: ClassVar[tuple[str, ...]] = ()
    name: str

    def body(self) -> dict[str, Any]:
        """The stage's mapping in YAML form, without the kind keyword."""
        return {"name": self.name}

    def to_dict(self) -> dict[str, Any]:
        return {self.kind: self.body()}

    def check_hook(self, hook: str, where: Where) -> None:
        """Refuse settings this stage cannot serve at ``hook`` (located error)."""


StageParser = Callable[[Any, Where, tuple[str, ...]], Stage]


def _registered(kind: str) -> StageParser:
    """The parser of ``kind``, loaded from its package on first call."""
    def parse(obj: Any, where: Where, protocols: tuple[str, ...]) -> Stage:
        return kind_part(kind, "spec")(obj, where, protocols)
    parse.__name__ = f"parse_{kind}"
    return parse


# stage keyword -> parser(body, where, protocols), in the order of ebplane.stages.KINDS
STAGE_KINDS: dict[str, StageParser] = {kind: _registered(kind) for kind in KINDS}


def register_stage(kind: str) -> Callable[[StageParser], StageParser]:
    """Register a parser under a spec keyword at run time (a kind of ebplane is listed in
    :data:`ebplane.stages.KINDS` instead)."""
    def add(parser: StageParser) -> StageParser:
        STAGE_KINDS[kind] = parser
        return parser
    return add


def stage_name(body: dict[str, Any], where: Where, default: str) -> str:
    """The ``name:`` of a stage's body (``default``: the kind), validated."""
    if "name" not in body:
        return default
    return check.name(body["name"], where / "name", pattern=STAGE_NAME_PATTERN,
                      allowed=STAGE_NAME_ALLOWED)


_stage_name = stage_name  # the name stage kinds written before the registry import
