"""Incremental edits of a table in the tree form: one rule added or deleted without
rebuilding the forest.

The control plane keeps a :class:`Mirror` of what the arrays hold for the tree in force (the
half of each array the last full install wrote, see :mod:`.table`).  An edit walks each of the
rule's boxes down its tree and touches only the leaves the box overlaps:

- add: the box goes into each such leaf at its priority (unless a box of better priority
  covers the leaf's whole region); a leaf that grows beyond ``BINTH`` is rebuilt as a subtree
  (the compiled builder over the leaf's boxes);
- delete: the box leaves each leaf it is in; where it was the last entry and had no
  ``match:`` condition it may have hidden later boxes (the builder drops what a covering box
  hides), so that leaf is recomputed from every box of the tree that overlaps its region.

Copy-on-write: every changed leaf and every node on the path to it is written into free
slots after the ones in use (the nodes, leaf entries and boxes of the tree in force stay as
they are), then new tree headers, then the caller flips the root in the config entry (one
32-bit store) and waits for an RCU grace period: a packet walks the old forest or the new one,
never a mix.  The old path's slots are not reused before the next full install, which writes
the other half and so reclaims them; when the free slots run out, or a change does not fit
(a new dimension, a rule inserted where priorities have no gap, too many leaves touched, a
tree too deep), :class:`NeedRebuild` says so and the caller installs in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ebplane.stages.filter.model import NDIMS, Box, rule_boxes
from ebplane.stages.filter.tree import (BINTH, EMPTY, LEAF_DIM, MAX_DEPTH, MAX_LEAF, MAX_TREES,
                                        TREE_DIM,
                                        Forest, _wide, box_arrays, build)

PRIO_GAP = 16  # a full install spaces the priorities so: 15 insertions fit between two rules
MAX_TOUCHED_LEAVES = 256  # beyond this many leaves changed by one edit, a full install is cheaper
_FULL = (1 << 64) - 1


class NeedRebuild(Exception):
    """An edit that the incremental path does not take (the message says why)."""


@dataclass
class Writes:
    """What one edit writes into free slots before the root flip (absolute indices)."""

    nodes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    leaf: list[tuple[int, list[int]]] = field(default_factory=list)   # (first slot, box slots)
    boxes: list[tuple[int, Box]] = field(default_factory=list)
    root: int = EMPTY
    leaves_touched: int = 0


class Mirror:
    """The arrays of a tree-form table as the last install left them (half ``gen``).

    ``prios`` maps each installed rule id to the priority its boxes carry (a position in the
    rule list at the last full install; edits keep the order with values in between)."""

    def __init__(self, nodes_cap: int, leaf_cap: int, boxes_cap: int, gen: int, dims: Sequence[int],
                 user: bool, forest: Forest, boxes: Sequence[Box], *, prio_scale: int = 1):
        self.gen = gen
        self.nbase, self.lbase, self.bbase = gen * nodes_cap, gen * leaf_cap, gen * boxes_cap
        self.ncap, self.lcap, self.bcap = nodes_cap, leaf_cap, boxes_cap
        self.dims = set(dims)
        self.user = user
        rows, leaf, self.root = forest.layout(self.nbase, self.lbase, self.bbase, prio_scale)
        self.nodes = np.zeros((nodes_cap, 4), np.uint64)
        self.nodes[:len(rows)] = rows
        self.leaf = np.zeros(leaf_cap, np.int64)
        self.leaf[:len(leaf)] = leaf
        self.node_end, self.leaf_end, self.box_end = len(rows), len(leaf), len(boxes)
        n = len(boxes)
        self.lo = np.full((boxes_cap, NDIMS), _FULL, np.uint64)   # a free slot holds nothing
        self.hi = np.zeros((boxes_cap, NDIMS), np.uint64)
        self.prio = np.full(boxes_cap, np.iinfo(np.int64).max, np.int64)
        self.plain = np.zeros(boxes_cap, bool)
        self.tree = np.full(boxes_cap, -1, np.int64)
        if n:
            lo, hi, plain = forest.arrays if forest.arrays is not None else box_arrays(boxes)
            self.lo[:n], self.hi[:n], self.plain[:n] = lo, hi, plain
            self.prio[:n] = np.fromiter((b.prio for b in boxes), np.int64, count=n) * prio_scale
            for t, g in enumerate(forest.groups or ()):
                self.tree[g] = t
        self.box: list[Box | None] = list(boxes) + [None] * (boxes_cap - n)
        self.slots: dict[int, list[int]] = {}
        for i, b in enumerate(boxes):
            self.slots.setdefault(b.rule_id, []).append(i)
        self.prios: dict[int, int] = {b.rule_id: b.prio * prio_scale for b in boxes}
        self.headers = [[int(forest.min_prio[i]) * prio_scale, int(rows[i][1])]
                        for i in range(len(forest.trees))]
        # the tree a new box of each partition class goes into (the mixed tree: the rest)
        self.class_tree: dict[int, int] = {}
        if n:
            classes = _wide(self.lo[:n], self.hi[:n])
            for t in range(len(forest.trees)):
                for c in np.unique(classes[self.tree[:n] == t]):
                    self.class_tree.setdefault(int(c), t)

    # -- slots --------------------------------------------------------------------------------
    def _node(self, i: int) -> tuple[int, int, int, int]:
        return tuple(int(x) for x in self.nodes[i - self.nbase])  # type: ignore[return-value]

    def _new_nodes(self, w: Writes, rows: list[tuple[int, int, int, int]]) -> int:
        if self.node_end + len(rows) > self.ncap:
            raise NeedRebuild("no free node slots left in the half in force")
        first = self.nbase + self.node_end
        for k, r in enumerate(rows):
            self.nodes[self.node_end + k] = r
            w.nodes[first + k] = r
        self.node_end += len(rows)
        return first

    def _new_leaf(self, w: Writes, entries: list[int]) -> int:
        if self.leaf_end + len(entries) > self.lcap:
            raise NeedRebuild("no free leaf slots left in the half in force")
        first = self.lbase + self.leaf_end
        absolute = [self.bbase + e for e in entries]  # entries: box slots in this half
        self.leaf[self.leaf_end:self.leaf_end + len(entries)] = absolute
        self.leaf_end += len(entries)
        w.leaf.append((first, absolute))
        return first

    # -- regions ------------------------------------------------------------------------------
    def _covers(self, s: int, rlo: list[int], rhi: list[int]) -> bool:
        b = self.box[s]
        return bool(self.plain[s]) and all(b.lo[d] <= rlo[d] and b.hi[d] >= rhi[d]
                                           for d in range(NDIMS))

    def _query(self, t: int, rlo: list[int], rhi: list[int], drop: int) -> list[int]:
        """The boxes of tree ``t`` overlapping a region, in priority order, without ``drop``
        and without those a covering box hides (what the builder would put in a leaf)."""
        cand = np.flatnonzero(self.tree[:self.box_end] == t)
        cand = cand[cand != drop]
        for d in self.dims:  # the other dimensions are the whole range in every box
            cand = cand[(self.lo[cand, d] <= np.uint64(rhi[d])) &
                        (self.hi[cand, d] >= np.uint64(rlo[d]))]
        out = []
        for s in cand[np.argsort(self.prio[cand], kind="stable")]:
            out.append(int(s))
            if self._covers(int(s), rlo, rhi):
                break
        return out

    # -- the walk -----------------------------------------------------------------------------
    def _place(self, w: Writes, entries: list[int], depth: int) -> int:
        """A leaf (or a subtree, when it holds more than ``BINTH`` boxes) for ``entries``."""
        w.leaves_touched += 1
        if w.leaves_touched > MAX_TOUCHED_LEAVES:
            raise NeedRebuild(f"the change touches more than {MAX_TOUCHED_LEAVES} leaves")
        if len(entries) <= BINTH or depth >= MAX_DEPTH:
            if len(entries) > MAX_LEAF:
                raise NeedRebuild("a leaf would hold more than the program scans")
            first = self._new_leaf(w, entries)
            return self._new_nodes(w, [(0, first, len(entries), LEAF_DIM)])
        try:
            sub = build([self.box[e] for e in entries])
        except Exception as e:  # noqa: BLE001 - unsplittable: the full install says why
            raise NeedRebuild(str(e)) from None
        if depth + sub.depth > MAX_DEPTH:
            raise NeedRebuild("a rebuilt leaf would make its tree too deep")
        lfirst = self._new_leaf(w, [entries[int(i)] for i in sub.leaf])
        nfirst = self.nbase + self.node_end
        rows = []
        for th, a, b, d in sub.nodes.tolist():
            rows.append((th, lfirst + a, b, d) if d == LEAF_DIM else (th, nfirst + a, nfirst + b, d))
        return self._new_nodes(w, rows)

    def _walk(self, w: Writes, idx: int, s: int, add: bool, rlo: list[int], rhi: list[int],
              depth: int) -> int:
        th, left, right, d = self._node(idx)
        box = self.box[s]
        if d != LEAF_DIM:
            nl, nr = left, right
            if box.lo[d] <= th:
                h = list(rhi)
                h[d] = th
                nl = self._walk(w, left, s, add, rlo, h, depth + 1)
            if box.hi[d] > th:
                lo_ = list(rlo)
                lo_[d] = th + 1
                nr = self._walk(w, right, s, add, lo_, rhi, depth + 1)
            if (nl, nr) == (left, right):
                return idx
            return self._new_nodes(w, [(th, nl, nr, d)])
        first = left - self.lbase
        entries = [int(x) - self.bbase for x in self.leaf[first:first + right]]
        if add:
            p = int(self.prio[s])
            if any(self.prio[e] < p and self._covers(e, rlo, rhi) for e in entries):
                return idx  # a better box covers the region: this one never wins here
            entries = [e for e in entries if self.prio[e] < p] + [s] + \
                [e for e in entries if self.prio[e] > p]
            if self._covers(s, rlo, rhi):
                entries = entries[:entries.index(s) + 1]
        else:
            if s not in entries:
                return idx
            if entries[-1] == s and self.plain[s]:
                entries = self._query(int(self.tree[s]), rlo, rhi, s)
            else:
                entries.remove(s)
        return self._place(w, entries, depth)

    # -- edits --------------------------------------------------------------------------------
    def prio_between(self, before: int | None, after: int | None) -> int:
        """A priority between the rules with ids ``before`` and ``after`` (None: the ends)."""
        lo = self.prios[before] if before is not None else -1
        if after is None:
            return lo + 1  # after the last rule
        hi = self.prios[after]
        if hi - lo < 2:
            raise NeedRebuild("no priority left between the neighbouring rules")
        return (lo + hi) // 2

    def edit(self, remove: Sequence[int], add: Sequence[Box]) -> Writes:
        """Remove the boxes of rule ids ``remove``, add ``add`` (boxes whose ``prio`` came
        from :meth:`prio_between`); the mirror is updated as if the writes were installed
        (on any failure, the caller drops the mirror)."""
        if not self.headers:
            raise NeedRebuild("the table holds no tree")
        w = Writes()
        roots = [h[1] for h in self.headers]
        mins = [h[0] for h in self.headers]
        full_lo, full_hi = [0] * NDIMS, [_FULL] * NDIMS
        for rid in remove:
            for s in self.slots.pop(rid, []):
                t = int(self.tree[s])
                roots[t] = self._walk(w, roots[t], s, False, full_lo, full_hi, 0)
                self.tree[s] = -1
                self.prio[s] = np.iinfo(np.int64).max
                self.lo[s], self.hi[s] = _FULL, 0
            self.prios.pop(rid, None)
        for b in add:
            if any((b.lo[d], b.hi[d]) != (0, _FULL) for d in range(NDIMS) if d not in self.dims) \
                    or (b.user_need and not self.user):
                raise NeedRebuild("the rule compares a field the program's box test does not")
            if self.box_end >= self.bcap:
                raise NeedRebuild("no free box slots left in the half in force")
            s = self.box_end
            self.box_end += 1
            self.box[s] = b
            self.lo[s], self.hi[s] = b.lo, b.hi
            self.prio[s] = b.prio
            self.plain[s] = b.user_need == 0
            cls = int(_wide(self.lo[s:s + 1], self.hi[s:s + 1])[0])
            t = self.class_tree.get(cls, len(roots) - 1)
            self.tree[s] = t
            w.boxes.append((self.bbase + s, b))
            self.slots.setdefault(b.rule_id, []).append(s)
            self.prios[b.rule_id] = b.prio
            roots[t] = self._walk(w, roots[t], s, True, full_lo, full_hi, 0)
            mins[t] = min(mins[t], b.prio)
        # new headers, in order of their best priority (the walk stops at the first tree
        # that cannot beat the match found)
        order = sorted(range(len(roots)), key=lambda t: mins[t])
        k = len(order)
        first = self.nbase + self.node_end
        rows = [(mins[t], roots[t], first + j + 1 if j + 1 < k else EMPTY, TREE_DIM)
                for j, t in enumerate(order)]
        w.root = self._new_nodes(w, rows)
        # the mirror's trees keep their numbers: headers stay indexed by tree
        self.headers = [[mins[t], roots[t]] for t in range(k)]
        self.root = w.root
        return w

    def change(self, remove: Sequence[int], add: Sequence[tuple[int, object, int | None, int | None]],
               layout) -> Writes:
        """Delete the rules with ids ``remove``, then add each ``(rule id, rule, id of the
        rule before it or None, id of the rule after it or None)`` in turn (a neighbour may
        be a rule added before it in the same change)."""
        for rid in remove:
            if rid not in self.prios:
                raise NeedRebuild(f"rule id {rid} is not in the installed tree")
        for rid in remove:  # removed first: a neighbour of an added rule is one that stays
            self.prios.pop(rid)
        boxes: list[Box] = []
        for rid, rule, before, after in add:
            prio = self.prio_between(before, after)
            self.prios[rid] = prio
            boxes += rule_boxes(rule, prio, rid, layout)
        return self.edit(remove, boxes)

    def lookup(self, key: Sequence[int], user: Sequence[int], user_valid: int) -> Box | None:
        """Walk the mirror's arrays from its root as the BPF program does: for tests."""
        best, best_prio = None, 0
        idx = self.root
        for _ in range(MAX_TREES):
            if idx == EMPTY:
                break
            th, left, right, d = self._node(idx)
            if d != TREE_DIM or (best is not None and th > best_prio):
                break
            idx = right
            n = left
            for _ in range(MAX_DEPTH):
                t2, l2, r2, d2 = self._node(n)
                if d2 == LEAF_DIM:
                    break
                n = l2 if key[d2] <= t2 else r2
            else:
                continue
            _, first, count, _ = self._node(n)
            for j in range(min(count, MAX_LEAF)):
                slot = int(self.leaf[first - self.lbase + j]) - self.bbase
                b = self.box[slot]
                if b.holds(key, user, user_valid):
                    if best is None or self.prio[slot] < best_prio:
                        best, best_prio = b, int(self.prio[slot])
                    break
        return best
