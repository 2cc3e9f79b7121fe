"""The rule-set compiler: look at a table's rules, choose the compiled form, size it.

- ``inline`` for at most ``INLINE_MAX`` rules: the rules become constant branches in the
  program, as a hand-written filter would be; any change regenerates the program.
- ``tree`` beyond that: a decision tree in BPF arrays (:mod:`.tree`); a change whose tree
  fits the arrays and compares no new dimension is a map update (an atomic root flip),
  anything else regenerates the program with arrays sized for the new rules.

The threshold comes from measurement (``docs/pipelines.md``: program cost of both forms
against the number of rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ebplane.codegen.p4c import UserLayout
from ebplane.errors import UsageError
from ebplane.spec import Rule
from ebplane.stages.filter.model import DIMS, Box, compile_boxes
from ebplane.stages.filter.tree import Forest, box_arrays, build_forest, used_dims

INLINE_MAX = 32
MIN_SLOTS = 64  # smallest array half (entries per generation)


def _room(n: int) -> int:
    """Array entries per generation for ``n`` entries: a power of two with at least half
    again as much room, so that edits fit without regenerating."""
    want = max(MIN_SLOTS, n + n // 2)
    return 1 << (want - 1).bit_length()


@dataclass(frozen=True)
class FilterPlan:
    """How one filter table is compiled into the program (what the generated C depends on)."""

    form: str                         # inline | tree
    why: str
    dims: tuple[str, ...] = ()        # tree: dimensions the box test compares
    user: bool = False                # tree: the box test checks match: fields
    nodes: int = 0                    # tree: array entries per generation
    leaf: int = 0
    boxes: int = 0
    # inline: the rules compiled in, with their ids, in priority order
    inline: tuple[tuple[Rule, int], ...] = field(default=(), compare=True)

    def to_dict(self) -> dict:
        d = {"form": self.form, "why": self.why}
        if self.form == "tree":
            d.update(dims=list(self.dims), user=self.user, nodes=self.nodes, leaf=self.leaf,
                     boxes=self.boxes)
        else:
            d["rules"] = len(self.inline)
        return d

    @classmethod
    def from_dict(cls, d: dict, inline: tuple[tuple[Rule, int], ...] = ()) -> FilterPlan:
        if d.get("form") == "tree":
            return cls("tree", d.get("why", ""), tuple(d["dims"]), bool(d["user"]),
                       int(d["nodes"]), int(d["leaf"]), int(d["boxes"]))
        return cls("inline", d.get("why", ""), inline=inline)

    def same_code(self, other: FilterPlan | None) -> bool:
        """Whether a program built for ``self`` serves ``other`` unchanged (maps included)."""
        if other is None or self.form != other.form:
            return False
        if self.form == "inline":
            return self.inline == other.inline
        return (self.dims, self.user, self.nodes, self.leaf, self.boxes) == \
            (other.dims, other.user, other.nodes, other.leaf, other.boxes)


@dataclass
class CompiledTable:
    """A table's rules compiled: its plan, its boxes and (tree form) the forest of trees."""

    plan: FilterPlan
    boxes: list[Box]
    tree: Forest | None = None


def compile_table(rules: Sequence[Rule], ids: Sequence[int], *, name: str,
                  layout: UserLayout = UserLayout(), running: FilterPlan | None = None,
                  choice: str = "auto", inline_max: int = INLINE_MAX) -> CompiledTable:
    """Compile a table's rules; ``running`` is the plan of the program in force, whose
    arrays are kept when the new tree fits them (then the change is a map update).
    ``choice``: the spec's ``classifier:`` (auto, inline, tree)."""
    boxes = compile_boxes(rules, ids, layout)
    if choice == "inline" or (choice == "auto" and len(rules) <= inline_max):
        why = (f"{len(rules)} rules <= {inline_max}" if choice == "auto" else "classifier: inline") \
            + ": compiled into the program"
        return CompiledTable(FilterPlan("inline", why, inline=tuple(zip(rules, ids))), boxes)
    arrays = box_arrays(boxes)
    tree = build_forest(boxes, arrays=arrays)
    dims = tuple(DIMS[d] for d in used_dims(arrays[0], arrays[1]))
    user = any(b.user_need for b in boxes)
    why = ("classifier: tree" if choice == "tree" else f"{len(rules)} rules > {inline_max}") + \
        (f": {len(tree.trees)} decision tree(s), depth {tree.depth}, "
           f"largest leaf {tree.max_leaf}, {tree.nodes} nodes, {len(boxes)} boxes")
    if running is not None and running.form == "tree" and set(dims) <= set(running.dims) \
            and (running.user or not user) and tree.nodes <= running.nodes \
            and tree.leaf <= running.leaf and len(boxes) <= running.boxes:
        plan = FilterPlan("tree", why, running.dims, running.user, running.nodes,
                          running.leaf, running.boxes)
    else:
        plan = FilterPlan("tree", why, dims, user, _room(tree.nodes), _room(tree.leaf),
                          _room(len(boxes)))
    return CompiledTable(plan, boxes, tree)


def check_capacity(n: int, capacity: int, name: str) -> None:
    if n > capacity:
        raise UsageError(f"filter '{name}' is full: {n} rules, capacity {capacity}",
                         hint="raise `capacity:` of the filter stage and re-apply")
