"""A filter table in the kernel: install a whole rule set atomically, read its counters.

The protocol (filter.h): write the new rule set under the inactive generation, flip the
active generation with one write, wait for an RCU grace period (every packet that read the
old generation has finished), then delete the old generation.  A packet therefore sees the
old or the new rule set, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ebplane.codegen.p4c import UserLayout
from ebplane.errors import UsageError
from ebplane.kernel.codec import Struct, U32
from ebplane.kernel.maps import Map, rcu_barrier
from ebplane.runtime.classifier import CONFIG, MAX_SHAPES, SHAPE, Classifier, compile_rules
from ebplane.spec import Rule

COUNT = Struct("ebp_count", [("packets", "Q"), ("bytes", "Q")])


@dataclass
class RuleEntry:
    """A rule as the control plane keeps it: the rule and its stable counter id."""
    id: int
    rule: Rule

    def to_state(self) -> dict:
        return {"id": self.id, "rule": self.rule.to_dict()}


def assign_ids(rules: Sequence[Rule], previous: Sequence[RuleEntry], capacity: int) -> list[RuleEntry]:
    """Stable ids: a rule identical to one already installed keeps its id (and so its
    counters); the others take the lowest free ids."""
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
    free = (i for i in range(capacity) if i not in used)
    result = []
    for r, e in zip(rules, out):
        if e is None:
            try:
                e = RuleEntry(next(free), r)
            except StopIteration:
                raise UsageError(f"filter table is full: {len(rules)} rules, capacity {capacity}",
                                 hint="raise `capacity:` of the filter stage and re-apply") from None
        result.append(e)
    return result


def kept_ids(new: Sequence[RuleEntry], previous: Sequence[RuleEntry]) -> set[int]:
    """Ids whose rule is installed already and stays (their counters carry on); by hashing,
    so a change to a 100k-rule table stays linear."""
    before = {(e.id, e.rule) for e in previous}
    return {e.id for e in new if (e.id, e.rule) in before}


def classify(entries: Sequence[RuleEntry], capacity: int, name: str,
             user_layout: UserLayout) -> Classifier:
    """Compile a rule set for a table of ``capacity`` rules; refuses what the table cannot hold."""
    cls = compile_rules([e.rule for e in entries], [e.id for e in entries], max_shapes=MAX_SHAPES,
                        user_layout=user_layout)
    if cls.n > 2 * capacity:
        raise UsageError(f"filter '{name}': the rules expand to {cls.n} table entries, more "
                         f"than this table holds ({2 * capacity})",
                         hint="raise `capacity:` of the filter stage, or use fewer port ranges")
    return cls


class FilterTable:
    """The four maps of one filter stage."""

    def __init__(self, name: str, capacity: int, rules: Map, shapes: Map, config: Map, counters: Map,
                 user_layout: UserLayout = UserLayout()):
        self.name = name
        self.user_layout = user_layout  # where the program's parser puts match: fields
        self.capacity = capacity
        self.rules = rules
        self.shapes = shapes
        self.config = config
        self.counters = counters.with_codecs(U32, COUNT)

    def _config(self) -> tuple[int, list[int]]:
        gen, n0, n1, _ = CONFIG.unpack(self.config.lookup(U32.encode(0)))
        return gen & 1, [n0, n1]

    def install(self, entries: Sequence[RuleEntry], *, previous_ids: set[int] | None = None,
                classifier: Classifier | None = None) -> dict:
        """Replace the whole rule set atomically.  Returns figures for the caller's report.

        ``previous_ids``: the ids whose rule is installed already and stays the same; their
        counters carry on.  Every other id starts from zero, also an id a deleted rule had.
        ``classifier``: ``entries`` already compiled by :func:`classify` (used when its user
        layout is this table's), so a caller that validated first does not compile twice.
        """
        cls = classifier if classifier is not None and classifier.user_layout == self.user_layout \
            else classify(entries, self.capacity, self.name, self.user_layout)
        gen, nshapes = self._config()
        new = 1 - gen
        # leftovers of an interrupted update under the inactive generation go first
        self._delete_generation(new)
        fresh = [e.id for e in entries if previous_ids is None or e.id not in previous_ids]
        if fresh:
            zero = COUNT.type(0, 0)
            self.counters.update_batch([i for i in fresh], [zero] * len(fresh))
        if cls.n:
            self.rules.update_batch(cls.key_bytes(new), cls.values)
        shapes = cls.shape_bytes()
        for i in range(len(cls.shapes)):
            self.shapes.update_raw(U32.encode(new * MAX_SHAPES + i),
                                   shapes[i * SHAPE.size:(i + 1) * SHAPE.size])
        nshapes[new] = len(cls.shapes)
        self.config.update_raw(U32.encode(0), CONFIG.pack(new, nshapes[0], nshapes[1], 0))
        rcu_barrier()  # no packet still classifies with the old generation after this
        deleted = self._delete_generation(gen)
        nshapes[gen] = 0
        self.config.update_raw(U32.encode(0), CONFIG.pack(new, nshapes[0], nshapes[1], 0))
        return {"entries": cls.n, "shapes": len(cls.shapes), "deleted": deleted, "generation": new}

    def _delete_generation(self, gen: int) -> int:
        # the generation is the top bit of the little-endian u32 shape field: byte 3, bit 7
        keys = [k for k in self.rules.raw_keys_batch() if k[3] >> 7 == gen]
        if keys:
            self.rules.delete_batch(b"".join(keys))
        return len(keys)

    def generation(self) -> int:
        return self._config()[0]

    def counter(self, slot: int):
        return self.counters.lookup_sum(slot)
