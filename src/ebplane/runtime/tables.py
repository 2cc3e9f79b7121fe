"""Rules as the control plane keeps them: each with a stable id, the index of its counters.

How a table's rules are compiled and installed is the filter stage's business
(:mod:`ebplane.stages.filter`); this module only keeps ids stable across changes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

from ebplane.errors import UsageError
from ebplane.spec import Rule


@dataclass
class RuleEntry:
    """A rule as the control plane keeps it: the rule and its stable counter id."""
    id: int
    rule: Rule

    def to_state(self) -> dict:
        return {"id": self.id, "rule": self.rule.to_dict()}


def assign_ids(rules: Sequence[Rule], previous: Sequence[RuleEntry], capacity: int) -> list[RuleEntry]:
    """Stable ids: a rule identical to one already installed keeps its id (and so its
    counters); the others take the lowest ids that no previous rule had, so their counters
    can start from zero before the program that counts them is in place (only a full table
    reuses a previous rule's id)."""
    if len(rules) > capacity:
        raise UsageError(f"filter table is full: {len(rules)} rules, capacity {capacity}",
                         hint="raise `capacity:` of the filter stage and re-apply")
    by_rule: dict[Rule, list[int]] = {}
    for e in previous:
        by_rule.setdefault(e.rule, []).append(e.id)
    out: list[RuleEntry | None] = []
    used: set[int] = set()
    for r in rules:
        ids = by_rule.get(r)
        if ids:
            i = ids.pop(0)
            used.add(i)
            out.append(RuleEntry(i, r))
        else:
            out.append(None)
    had = {e.id for e in previous}
    free = itertools.chain((i for i in range(capacity) if i not in used and i not in had),
                           (i for i in sorted(had) if i not in used))
    result = []
    for r, e in zip(rules, out):
        if e is None:
            e = RuleEntry(next(free), r)
        result.append(e)
    return result


def kept_ids(new: Sequence[RuleEntry], previous: Sequence[RuleEntry]) -> set[int]:
    """Ids whose rule is installed already and stays (their counters carry on); by hashing,
    so a change to a 100k-rule table stays linear."""
    before = {(e.id, e.rule) for e in previous}
    return {e.id for e in new if (e.id, e.rule) in before}


def fresh_ids(new: Sequence[RuleEntry], previous: Sequence[RuleEntry]) -> list[int]:
    """Ids of ``new`` whose counters start from zero."""
    kept = kept_ids(new, previous)
    return [e.id for e in new if e.id not in kept]
