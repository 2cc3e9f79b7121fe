"""The spec of ``filter``: an ordered rule list, first match decides (the rules themselves
are :mod:`ebplane.spec.rules`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.rules import Rule, parse_rule
from ebplane.spec.stages import Stage, stage_name

FILTER_DEFAULTS: tuple[str, ...] = ("pass", "drop", "next")
FILTER_MALFORMED: tuple[str, ...] = ("drop", "pass")
FILTER_CLASSIFIERS: tuple[str, ...] = ("auto", "inline", "tree")
FILTER_FRAGMENTS: tuple[str, ...] = ("track", "drop", "pass", "stack")
FILTER_UNSEEN_FRAGMENTS: tuple[str, ...] = ("drop", "stack", "pass")
FILTER_CAPACITY_DEFAULT = 65536
FILTER_CAPACITY_MAX = 4194304


@dataclass(frozen=True)
class FilterStage(Stage):
    """An ordered rule list; the first matching rule decides pass or drop.

    ``default`` applies when no rule matches (``next``: go on to the next stage);
    ``malformed`` applies to packets whose headers cannot be parsed.
    ``capacity`` bounds the number of rules (also at run time).
    ``classifier`` chooses the compiled form: ``auto`` (by the number of rules), ``inline``
    (rules compiled into the program) or ``tree`` (a decision tree in maps).
    ``fragments`` says what later IP fragments (no ports) get: ``track`` the decision of
    their first fragment, ``drop`` (every fragment), ``pass`` (on to the next stage) or
    ``stack`` (to the kernel); ``unseen_fragments`` what a tracked later fragment gets when
    its first fragment has not been seen (``drop``, ``stack``, ``pass``).
    """

    kind: ClassVar[str] = "filter"
    has_rules: ClassVar[bool] = True
    default: str = "next"
    malformed: str = "drop"
    capacity: int = FILTER_CAPACITY_DEFAULT
    rules: tuple[Rule, ...] = ()
    classifier: str = "auto"
    fragments: str = "track"
    unseen_fragments: str = "drop"

    def body(self) -> dict[str, Any]:
        d = {"name": self.name, "default": self.default, "malformed": self.malformed,
             "capacity": self.capacity, "rules": [r.to_dict() for r in self.rules]}
        if self.classifier != "auto":
            d["classifier"] = self.classifier
        if self.fragments != "track":
            d["fragments"] = self.fragments
        if self.unseen_fragments != "drop":
            d["unseen_fragments"] = self.unseen_fragments
        return d



def parse_filter(obj: Any, where: Where, protocols: tuple[str, ...]) -> FilterStage:
    body = check.mapping({} if obj is None else obj, where,
                         allowed=("name", "default", "malformed", "capacity", "classifier",
                                  "fragments", "unseen_fragments", "rules"))
    name = stage_name(body, where, "filter")
    default = check.choice(body.get("default", "next"), where / "default", FILTER_DEFAULTS)
    malformed = check.choice(body.get("malformed", "drop"), where / "malformed",
                             FILTER_MALFORMED)
    capacity = check.integer(body.get("capacity", FILTER_CAPACITY_DEFAULT), where / "capacity",
                             1, FILTER_CAPACITY_MAX, what="capacity")
    classifier = check.choice(body.get("classifier", "auto"), where / "classifier",
                              FILTER_CLASSIFIERS)
    fragments = check.choice(body.get("fragments", "track"), where / "fragments",
                             FILTER_FRAGMENTS)
    unseen = check.choice(body.get("unseen_fragments", "drop"), where / "unseen_fragments",
                          FILTER_UNSEEN_FRAGMENTS)
    if "unseen_fragments" in body and fragments != "track":
        raise (where / "unseen_fragments").error(
            f"unseen_fragments applies to fragments: track, not fragments: {fragments}",
            hint="remove unseen_fragments: or set fragments: track")
    raw_rules = check.sequence(body.get("rules", []), where / "rules", what="a list of rules")
    if len(raw_rules) > capacity:
        raise (where / "rules").error(f"{len(raw_rules)} rules exceed the capacity {capacity}",
                                      hint="raise capacity: or remove rules")
    rules = tuple(parse_rule(r, protocols=protocols, where=where / "rules" / i)
                  for i, r in enumerate(raw_rules))
    return FilterStage(name=name, default=default, malformed=malformed, capacity=capacity,
                       rules=rules, classifier=classifier, fragments=fragments,
                       unseen_fragments=unseen)


PARSERS = {"filter": parse_filter}
