"""A filter table in a loaded program: install a compiled rule set, read its counters.

Tree form: the new tree goes into the inactive half of each array, then its root is written
into the config entry (one 32-bit store that every packet reads once), then an RCU grace
period passes, after which no packet walks the old half any more and the next change may
overwrite it.  Inline form: the rules are in the program; installing only starts the
counters of new rule ids from zero (the program itself is swapped by the caller).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ebplane.kernel.codec import COUNT
from ebplane.kernel.codec import U32
from ebplane.kernel.maps import Map, prepare_rcu_barrier, rcu_barrier
from ebplane.stages.filter.gen import map_names
from ebplane.stages.filter.plan import CompiledTable
from ebplane.stages.filter.edit import PRIO_GAP, Mirror, NeedRebuild  # noqa: F401
from ebplane.errors import NotFound
from ebplane.stages.filter.tree import EMPTY, node_bytes


def _indices(start: int, n: int) -> bytes:
    return np.arange(start, start + n, dtype="<u4").tobytes()


class FilterTable:
    """The maps of one filter stage (``maps(cname)`` opens one by its C name)."""

    def __init__(self, name: str, capacity: int, maps: Callable[[str], Map]):
        self.name = name
        self.capacity = capacity
        self._maps = maps
        self.names = map_names(name)

    def counters(self) -> Map:
        return self._maps(self.names["counters"]).with_codecs(U32, COUNT)

    def root(self) -> int:
        """The root of the tree in force (EMPTY for none); every install changes it."""
        return U32.decode(self._maps(self.names["config"]).lookup(U32.encode(0)))

    def generation(self) -> int | None:
        """What changes with every committed install: the tree's root; None for a table in
        the inline form (its rules change with the program)."""
        try:
            return self.root()
        except NotFound:
            return None

    mirror: Mirror | None = None  # the arrays in force, after an install with keep_mirror

    def install(self, compiled: CompiledTable, fresh_ids: Sequence[int], *,
                keep_mirror: bool = False) -> dict:
        """Make ``compiled`` the table's rule set; ``fresh_ids`` are rule ids whose counters
        start from zero (new rules, and ids a deleted rule had).  ``keep_mirror``: keep what
        the arrays hold (``self.mirror``) for :meth:`install_edit`."""
        prepare_rcu_barrier()  # without the privilege to make it, fail before the first write
        if fresh_ids:
            zero = COUNT.type(0, 0)
            self.counters().update_batch(list(fresh_ids), [zero] * len(fresh_ids))
        plan = compiled.plan
        if plan.form != "tree":
            return {"form": plan.form, "boxes": len(compiled.boxes)}
        cfg = self._maps(self.names["config"])
        root = U32.decode(cfg.lookup(U32.encode(0)))
        gen = 1 if root != EMPTY and root < plan.nodes else 0  # the half not in force
        forest = compiled.tree
        nb, lb, bb = gen * plan.nodes, gen * plan.leaf, gen * plan.boxes
        nodes, leaf, new_root = forest.pack(nb, lb, bb, PRIO_GAP)
        if compiled.boxes:
            boxes = b"".join(b.pack(PRIO_GAP) for b in compiled.boxes)
            self._maps(self.names["boxes"]).update_batch(_indices(bb, len(compiled.boxes)), boxes)
            self._maps(self.names["leaf"]).update_batch(_indices(lb, forest.leaf), leaf)
            self._maps(self.names["nodes"]).update_batch(_indices(nb, forest.nodes), nodes)
        cfg.update_raw(U32.encode(0), U32.encode(new_root))
        rcu_barrier()  # no packet walks the previous tree after this
        self.mirror = None
        if keep_mirror:
            from ebplane.stages.filter.model import D
            self.mirror = Mirror(plan.nodes, plan.leaf, plan.boxes, gen,
                                 [D[d] for d in plan.dims], plan.user, forest, compiled.boxes,
                                 prio_scale=PRIO_GAP)
        return {"form": "tree", "boxes": len(compiled.boxes), "trees": len(forest.trees),
                "nodes": forest.nodes, "depth": forest.depth, "generation": gen}

    def install_edit(self, mirror: Mirror, remove: Sequence[int], add, layout,
                     fresh_ids: Sequence[int]) -> dict:
        """Delete and add rules in the tree in force without rebuilding it (see
        :mod:`.edit`): the changed paths go into free slots, then the root flips (one 32-bit
        store) and an RCU grace period passes.  Raises :class:`NeedRebuild` before any write
        that a packet could see when the change does not fit; ``mirror`` is then stale (the
        caller drops it and installs in full)."""
        w = mirror.change(remove, add, layout)
        prepare_rcu_barrier()  # without the privilege to make it, fail before the first write
        if fresh_ids:
            zero = COUNT.type(0, 0)
            self.counters().update_batch(list(fresh_ids), [zero] * len(fresh_ids))
        if w.boxes:
            self._maps(self.names["boxes"]).update_batch(
                np.array([i for i, _ in w.boxes], dtype="<u4").tobytes(),
                b"".join(b.pack() for _, b in w.boxes))
        if w.leaf:
            idx = np.concatenate([np.arange(f, f + len(v), dtype="<u4") for f, v in w.leaf])
            vals = np.concatenate([np.asarray(v, dtype="<u4") for _, v in w.leaf])
            self._maps(self.names["leaf"]).update_batch(idx.tobytes(), vals.tobytes())
        slots = sorted(w.nodes)
        self._maps(self.names["nodes"]).update_batch(
            np.array(slots, dtype="<u4").tobytes(),
            node_bytes(np.array([w.nodes[i] for i in slots], dtype=np.uint64)))
        self._maps(self.names["config"]).update_raw(U32.encode(0), U32.encode(w.root))
        rcu_barrier()  # no packet walks the previous paths after this
        return {"form": "tree", "incremental": True, "nodes_written": len(w.nodes),
                "leaves_touched": w.leaves_touched, "generation": mirror.gen}
