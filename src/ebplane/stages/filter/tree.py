"""The ``tree`` form: a decision tree over the rule boxes, walked by the BPF program.

Built in the manner of HyperSplit (Qi et al., INFOCOM 2009): every inner node splits the
packet space in two along one dimension at one threshold (``key[dim] <= thresh`` goes left),
chosen so that the larger side holds as few boxes as possible; a box that straddles the
threshold goes to both sides.  A node whose boxes number at most ``binth`` becomes a leaf: a
list of box indices in priority order, so the first box that holds the packet is the match.
Boxes below a box that covers the whole region of a node (and has no ``match:`` condition)
can never win there and are dropped from it.

Per packet the cost is the depth (at most ``MAX_DEPTH`` array reads, each inlined by the
verifier) plus one leaf scan (at most ``MAX_LEAF`` boxes): bounded whatever the number of
rules, prefix lengths or port ranges.  What grows with the rules is memory (boxes copied
into several leaves), which the arrays are sized for, and build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ebplane.codegen.layout import Field, Layout
from ebplane.errors import UsageError
from ebplane.stages.filter.model import ANY, NDIMS, Box

# shared with filter.h: defined here once; gen.py writes them into each program as #defines
# and the node struct from its Layout
MAX_DEPTH = 48          # EBP_FLT_MAX_DEPTH: inner nodes on any path
MAX_LEAF = 32           # EBP_FLT_MAX_LEAF: boxes in one leaf
LEAF_DIM = 0xFF         # EBP_FLT_LEAF: ebp_flt_node.dim of a leaf
TREE_DIM = 0xFE         # EBP_FLT_TREE: ebp_flt_node.dim of a tree header
MAX_TREES = 8           # EBP_FLT_MAX_TREES
EMPTY = 0xFFFFFFFF      # EBP_FLT_EMPTY: root of an empty rule set
NODE_LAYOUT = Layout("ebp_flt_node", [
    Field("thresh", "__u64", comment="inner: key[dim] <= thresh goes left"),
    Field("left", "__u32", comment="inner: child node; leaf: first entry in the leaf array"),
    Field("right", "__u32", comment="inner: child node; leaf: number of entries"),
    Field("dim", "__u32"),
    Field("pad", "__u32")],
    "a tree node: inner (dim < EBP_FLT_DIMS), leaf (dim == EBP_FLT_LEAF) or a tree header\n"
    " * (dim == EBP_FLT_TREE)")
NODE_DTYPE = NODE_LAYOUT.numpy_dtype()  # its codec: node_bytes() packs (m, 4) rows with it

BINTH = 8               # a node with this many boxes or fewer becomes a leaf
# a box is wide in an address when it spans more than a /16 (IPv4) or a /48 (IPv6) (its
# high 64-bit word spans 2^48 resp. 2^16 values or more), in the destination port when it
# spans more than 1024 ports; boxes are partitioned by these three bits (EffiCuts' idea)
_WIDE_V4 = 1 << 48
_WIDE_V6 = 1 << 16
_WIDE_PORTS = 1024
_U64_MAX = np.uint64(ANY[1])


@dataclass
class Tree:
    """A built tree, with indices relative to its own arrays (``offset`` when packing):
    ``nodes`` is an (m, 4) uint64 array of (thresh, left, right, dim), ``leaf`` the box
    indices of the leaves, leaf after leaf (int64)."""

    nodes: np.ndarray
    leaf: np.ndarray
    nboxes: int
    depth: int
    max_leaf: int



def node_bytes(rows: np.ndarray) -> bytes:
    """``struct ebp_flt_node`` records of (thresh, left, right, dim) rows with absolute
    indices: the one place tree nodes become map bytes."""
    out = np.zeros(len(rows), dtype=NODE_DTYPE)
    if len(rows):
        out["thresh"], out["left"], out["right"], out["dim"] = rows.T
    return out.tobytes()


def _unsplittable(n: int, boxes: Sequence[Box], first_index: int) -> UsageError:
    first = boxes[first_index]
    return UsageError(
        f"{n} rule boxes overlap in one region of the packet space that no field can split "
        f"(they differ only in match: fields or are identical); a leaf holds at most "
        f"{MAX_LEAF} (the first is rule {first.prio})",
        hint="remove duplicate rules, or split them over several filter stages")


def box_arrays(boxes: Sequence[Box]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, plain)``: the boxes' bounds as (n, NDIMS) uint64 arrays and whether each
    has no ``match:`` condition."""
    n = len(boxes)
    lo = np.fromiter((v for b in boxes for v in b.lo), dtype=np.uint64, count=n * NDIMS)
    hi = np.fromiter((v for b in boxes for v in b.hi), dtype=np.uint64, count=n * NDIMS)
    plain = np.fromiter((b.user_need == 0 for b in boxes), dtype=bool, count=n)
    return lo.reshape(n, NDIMS), hi.reshape(n, NDIMS), plain


def used_dims(lo: np.ndarray, hi: np.ndarray) -> list[int]:
    """The dimensions in which some box is not the whole range."""
    return _used_dims(lo, hi)


def _used_dims(lo: np.ndarray, hi: np.ndarray) -> list[int]:
    return [d for d in range(NDIMS) if (lo[:, d] != 0).any() or (hi[:, d] != _U64_MAX).any()]


try:  # the compiled builder (setup.py builds it with the package)
    from ebplane.stages.filter import _hsplit
except ImportError:  # pragma: no cover - a source tree without the build step
    _hsplit = None


def builder() -> str:
    """Which builder :func:`build` uses: ``c`` (the extension module) or ``numpy``."""
    return "c" if _hsplit is not None else "numpy"


def build(boxes: Sequence[Box], *, binth: int = BINTH, arrays=None, use: str | None = None) -> Tree:
    """Build the tree of ``boxes`` (given in priority order) with the compiled builder, or
    the numpy one (``use="numpy"``, or when the extension module is not built).  Both build
    the same arrays (tests/test_filter_forms.py compares them).  ``arrays``: the boxes'
    :func:`box_arrays`, when the caller has them."""
    if (use or builder()) == "numpy":
        return build_numpy(boxes, binth=binth, arrays=arrays)
    n = len(boxes)
    if n == 0:
        return Tree(np.zeros((0, 4), np.uint64), np.zeros(0, np.int64), 0, 0, 0)
    lo, hi, plain = arrays if arrays is not None else box_arrays(boxes)
    lo = np.ascontiguousarray(lo, dtype="<u8")
    hi = np.ascontiguousarray(hi, dtype="<u8")
    res = _hsplit.build(lo, hi, np.ascontiguousarray(plain, dtype=np.uint8), n, NDIMS,
                        tuple(_used_dims(lo, hi)), binth, MAX_DEPTH, MAX_LEAF, LEAF_DIM)
    if res[0] == "unsplittable":
        raise _unsplittable(res[2], boxes, res[1])
    nodes, leaf, depth, max_leaf = res
    return Tree(np.frombuffer(nodes, dtype="<u8").reshape(-1, 4).copy(),
                np.frombuffer(leaf, dtype="<u4").astype(np.int64), n, depth, max_leaf)


def build_numpy(boxes: Sequence[Box], *, binth: int = BINTH, arrays=None) -> Tree:
    """The reference builder, in numpy (what the compiled one must equal)."""
    n = len(boxes)
    if n == 0:
        return Tree(np.zeros((0, 4), np.uint64), np.zeros(0, np.int64), 0, 0, 0)
    lo, hi, plain = arrays if arrays is not None else box_arrays(boxes)
    dims = _used_dims(lo, hi)

    nodes: list[list[int]] = []
    leaf: list[int] = []
    depth_max = leaf_max = 0
    # (node slot, box indices in priority order, region lo, region hi, depth)
    root_lo = np.zeros(NDIMS, dtype=np.uint64)
    root_hi = np.full(NDIMS, _U64_MAX, dtype=np.uint64)
    nodes.append([0, 0, 0, LEAF_DIM])
    stack = [(0, np.arange(n), root_lo, root_hi, 0)]
    while stack:
        slot, idx, rlo, rhi, depth = stack.pop()
        if len(idx) > 1:
            # narrow the region to the boxes' bounding box: a packet outside it matches none
            # of them, so neither the pruning below nor the thresholds need the rest
            blo, bhi = lo[idx][:, dims], hi[idx][:, dims]
            rlo, rhi = rlo.copy(), rhi.copy()
            rlo[dims] = np.maximum(rlo[dims], blo.min(axis=0))
            rhi[dims] = np.minimum(rhi[dims], bhi.max(axis=0))
            # boxes after the first that covers the whole region never win in it
            cover = plain[idx] & (blo <= rlo[dims]).all(axis=1) & (bhi >= rhi[dims]).all(axis=1)
            first = np.flatnonzero(cover)
            if len(first):
                idx = idx[:first[0] + 1]
        split = None
        if len(idx) > binth and depth < MAX_DEPTH:
            split = _best_split(lo, hi, idx, rlo, rhi, dims, must=len(idx) > MAX_LEAF)
        if split is None:
            if len(idx) > MAX_LEAF:
                raise _unsplittable(len(idx), boxes, int(idx[0]))
            nodes[slot] = [0, len(leaf), len(idx), LEAF_DIM]
            leaf.extend(int(i) for i in idx)
            depth_max = max(depth_max, depth)
            leaf_max = max(leaf_max, len(idx))
            continue
        d, t, left, right = split
        lslot, rslot = len(nodes), len(nodes) + 1
        nodes.append([0, 0, 0, LEAF_DIM])
        nodes.append([0, 0, 0, LEAF_DIM])
        nodes[slot] = [int(t), lslot, rslot, d]
        llo, lhi = rlo, rhi.copy()
        lhi[d] = t
        rlo2, rhi2 = rlo.copy(), rhi
        rlo2[d] = t + np.uint64(1)
        stack.append((rslot, right, rlo2, rhi2, depth + 1))
        stack.append((lslot, left, llo, lhi, depth + 1))
    return Tree(np.array(nodes, dtype=np.uint64).reshape(-1, 4), np.array(leaf, dtype=np.int64),
                n, depth_max, leaf_max)


def _best_split(lo: np.ndarray, hi: np.ndarray, idx: np.ndarray, rlo: np.ndarray,
                rhi: np.ndarray, dims: list[int], *, must: bool):
    """``(dim, thresh, left idx, right idx)`` minimising the larger side (then the copies),
    or None.  A split that leaves one side with every box is taken only when ``must`` (the
    node holds more than a leaf may): it still shrinks the region, which lets covering
    boxes prune the rest further down."""
    n = len(idx)
    L = np.maximum(lo[idx][:, dims], rlo[dims])
    H = np.minimum(hi[idx][:, dims], rhi[dims])
    Ls = np.sort(L, axis=0)
    Hs = np.sort(H, axis=0)
    best = None
    best_score = (n if must else n - 1, 2 * n + 1)
    for j, d in enumerate(dims):
        ls, hs = Ls[:, j], Hs[:, j]
        if ls[-1] <= rlo[d] and hs[0] >= rhi[d]:
            continue  # every box spans the whole region here
        # thresholds where a box ends (t = h) or starts (t = l - 1)
        cand = np.concatenate((ls[ls > rlo[d]] - np.uint64(1), hs[hs < rhi[d]]))
        nl = np.searchsorted(ls, cand, side="right")        # boxes with l <= t
        nr = n - np.searchsorted(hs, cand, side="right")    # boxes with h > t
        worst = np.maximum(nl, nr)
        k = int(np.argmin(worst * (2 * n + 1) + nl + nr))
        score = (int(worst[k]), int(nl[k] + nr[k]))
        if score < best_score:
            best_score = score
            best = (j, d, cand[k])
    if best is None:
        return None
    j, d, t = best
    return d, t, idx[L[:, j] <= t], idx[H[:, j] > t]


def lookup(tree: Tree, boxes: Sequence[Box], key: Sequence[int], user: Sequence[int],
           user_valid: int) -> Box | None:
    """Walk ``tree`` as the BPF program does (``EBP_FLT_TREE_DEFINE``): for tests."""
    if not len(tree.nodes):
        return None
    idx = 0
    for _ in range(MAX_DEPTH):
        thresh, left, right, dim = (int(x) for x in tree.nodes[idx])
        if dim == LEAF_DIM:
            break
        idx = left if key[dim] <= thresh else right
    thresh, first, count, dim = (int(x) for x in tree.nodes[idx])
    if dim != LEAF_DIM:
        return None
    for i in tree.leaf[first:first + min(count, MAX_LEAF)]:
        i = int(i)
        if boxes[i].holds(key, user, user_valid):
            return boxes[i]
    return None


# -- forests: one tree per partition of the boxes ------------------------------------------------

def _wide(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per box, 4 * (source wide) + 2 * (destination wide) + (destination port wide)."""
    from ebplane.stages.filter.model import D
    v4 = (lo[:, D["family"]] == 4) & (hi[:, D["family"]] == 4)
    wide_addr = np.where(v4, np.uint64(_WIDE_V4), np.uint64(_WIDE_V6))
    src = hi[:, D["src_hi"]] - lo[:, D["src_hi"]] >= wide_addr
    dst = hi[:, D["dst_hi"]] - lo[:, D["dst_hi"]] >= wide_addr
    port = hi[:, D["dport"]] - lo[:, D["dport"]] > np.uint64(_WIDE_PORTS)
    return 4 * src.astype(np.int64) + 2 * dst + port


SMALL_GROUP = 0.01      # a partition with fewer boxes than this share joins the mixed one


def partition(boxes: Sequence[Box], arrays=None) -> list[list[int]]:
    """Box indices grouped by which of source, destination and destination port they leave
    wide, each group in priority order, groups ordered by the best priority they hold.
    Groups of fewer than 1% of the boxes go together into one mixed group: a tree more per
    packet costs more than the few copies of their wide boxes (at most 8 groups)."""
    lo, hi, _ = arrays if arrays is not None else box_arrays(boxes)
    wide = _wide(lo, hi) if len(boxes) else np.zeros(0, np.int64)
    groups = {int(w): np.flatnonzero(wide == w).tolist() for w in np.unique(wide)}
    small = max(32, int(SMALL_GROUP * len(boxes)))
    big = [g for g in groups.values() if len(g) >= small]
    mixed = sorted(i for g in groups.values() if len(g) < small for i in g)
    return sorted(big + ([mixed] if mixed else []), key=lambda g: g[0])


@dataclass
class Forest:
    """The trees of a table (each over the table's box indices) and their best priorities."""

    trees: list[Tree]
    min_prio: list[int]
    nboxes: int
    groups: list[np.ndarray] | None = None  # per tree, the box indices it was built over
    arrays: tuple | None = None             # box_arrays() of the boxes

    @property
    def nodes(self) -> int:
        return sum(len(t.nodes) for t in self.trees) + len(self.trees)

    @property
    def leaf(self) -> int:
        return sum(len(t.leaf) for t in self.trees)

    @property
    def depth(self) -> int:
        return max((t.depth for t in self.trees), default=0)

    @property
    def max_leaf(self) -> int:
        return max((t.max_leaf for t in self.trees), default=0)

    def layout(self, node_base: int, leaf_base: int, box_base: int, prio_scale: int = 1
               ) -> tuple[np.ndarray, np.ndarray, int]:
        """``(nodes, leaf, root)`` with absolute indices: the (m, 4) node rows from
        ``node_base`` (the tree headers first: (best priority, tree root, next header,
        TREE_DIM)), the leaf array's box slots from ``leaf_base``, and the first header.
        Priorities are multiplied by ``prio_scale`` (see ``Box.pack``)."""
        if not self.trees:
            return np.zeros((0, 4), np.uint64), np.zeros(0, np.int64), EMPTY
        k = len(self.trees)
        rows = [np.array([[self.min_prio[i] * prio_scale, 0, node_base + i + 1 if i + 1 < k else EMPTY,
                           TREE_DIM] for i in range(k)], dtype=np.uint64)]
        leaves = []
        nb, lb = node_base + k, leaf_base
        for i, t in enumerate(self.trees):
            rows[0][i, 1] = nb
            nodes = t.nodes.copy()
            leaf = nodes[:, 3] == LEAF_DIM
            nodes[:, 1] += np.where(leaf, lb, nb).astype(np.uint64)
            nodes[:, 2] += np.where(leaf, 0, nb).astype(np.uint64)
            rows.append(nodes)
            leaves.append(t.leaf + box_base)
            nb += len(t.nodes)
            lb += len(t.leaf)
        return np.concatenate(rows), np.concatenate(leaves), node_base

    def pack(self, node_base: int, leaf_base: int, box_base: int, prio_scale: int = 1
             ) -> tuple[bytes, bytes, int]:
        """``(nodes, leaf, root)`` as map bytes (see :meth:`layout`)."""
        nodes, leaf, root = self.layout(node_base, leaf_base, box_base, prio_scale)
        return node_bytes(nodes), leaf.astype("<u4").tobytes(), root


def build_forest(boxes: Sequence[Box], *, binth: int = BINTH, use: str | None = None,
                 arrays=None) -> Forest:
    """One tree per :func:`partition` of ``boxes``; leaf entries index ``boxes``.  ``use``:
    the builder (see :func:`build`); ``arrays``: the boxes' :func:`box_arrays`, if known."""
    trees, prios, groups = [], [], []
    arrays = arrays if arrays is not None else box_arrays(boxes)
    lo, hi, plain = arrays
    for group in partition(boxes, arrays):
        g = np.asarray(group, dtype=np.int64)
        t = build([boxes[i] for i in group], binth=binth, arrays=(lo[g], hi[g], plain[g]),
                  use=use)
        t.leaf = g[t.leaf]
        groups.append(g)
        t.nboxes = len(boxes)
        trees.append(t)
        prios.append(boxes[group[0]].prio)
    return Forest(trees, prios, len(boxes), groups, arrays)


def forest_lookup(forest: Forest, boxes: Sequence[Box], key: Sequence[int],
                  user: Sequence[int], user_valid: int) -> Box | None:
    """Walk a forest as the BPF program does: for tests."""
    best = None
    for t, prio in zip(forest.trees, forest.min_prio):
        if best is not None and prio > best.prio:
            break
        found = lookup(t, boxes, key, user, user_valid)
        if found is not None and (best is None or found.prio < best.prio):
            best = found
    return best
