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

import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ebplane.errors import UsageError
from ebplane.stages.filter.model import ANY, NDIMS, Box

# shared with filter.h
MAX_DEPTH = 48          # EBP_FLT_MAX_DEPTH: inner nodes on any path
MAX_LEAF = 32           # EBP_FLT_MAX_LEAF: boxes in one leaf
LEAF_DIM = 0xFF         # EBP_FLT_LEAF: ebp_flt_node.dim of a leaf
TREE_DIM = 0xFE         # EBP_FLT_TREE: ebp_flt_node.dim of a tree header
MAX_TREES = 8           # EBP_FLT_MAX_TREES
EMPTY = 0xFFFFFFFF      # EBP_FLT_EMPTY: root of an empty rule set
NODE = struct.Struct("<QIII4x")  # struct ebp_flt_node: thresh, left, right, dim

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
    """A built tree, with indices relative to its own arrays (``offset`` when packing)."""

    nodes: list[tuple[int, int, int, int]]   # (thresh, left, right, dim)
    leaf: list[int]                           # box indices, leaf after leaf
    nboxes: int
    depth: int
    max_leaf: int

    def pack(self, node_base: int, leaf_base: int, box_base: int) -> tuple[bytes, bytes]:
        """The node and leaf arrays as they go into the maps at the given bases."""
        nodes = b"".join(
            NODE.pack(t, leaf_base + a, b, d) if d == LEAF_DIM else
            NODE.pack(t, node_base + a, node_base + b, d)
            for t, a, b, d in self.nodes)
        leaf = struct.pack(f"<{len(self.leaf)}I", *(box_base + i for i in self.leaf))
        return nodes, leaf


def _unsplittable(n: int, boxes: Sequence[Box], idx: np.ndarray) -> UsageError:
    first = boxes[int(idx[0])]
    return UsageError(
        f"{n} rule boxes overlap in one region of the packet space that no field can split "
        f"(they differ only in match: fields or are identical); a leaf holds at most "
        f"{MAX_LEAF} (the first is rule {first.prio})",
        hint="remove duplicate rules, or split them over several filter stages")


def build(boxes: Sequence[Box], *, binth: int = BINTH) -> Tree:
    """Build the tree of ``boxes`` (given in priority order)."""
    n = len(boxes)
    if n == 0:
        return Tree([], [], 0, 0, 0)
    lo = np.array([b.lo for b in boxes], dtype=np.uint64)
    hi = np.array([b.hi for b in boxes], dtype=np.uint64)
    plain = np.array([b.user_need == 0 for b in boxes], dtype=bool)
    dims = [d for d in range(NDIMS) if (lo[:, d] != 0).any() or (hi[:, d] != _U64_MAX).any()]

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
                raise _unsplittable(len(idx), boxes, idx)
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
    return Tree([tuple(x) for x in nodes], leaf, n, depth_max, leaf_max)


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
    if not tree.nodes:
        return None
    idx = 0
    for _ in range(MAX_DEPTH):
        thresh, left, right, dim = tree.nodes[idx]
        if dim == LEAF_DIM:
            break
        idx = left if key[dim] <= thresh else right
    thresh, first, count, dim = tree.nodes[idx]
    if dim != LEAF_DIM:
        return None
    for i in tree.leaf[first:first + min(count, MAX_LEAF)]:
        if boxes[i].holds(key, user, user_valid):
            return boxes[i]
    return None


# -- forests: one tree per partition of the boxes ------------------------------------------------

def _wide(b: Box) -> tuple[bool, bool, bool]:
    from ebplane.stages.filter.model import D
    wide_addr = _WIDE_V4 if b.lo[D["family"]] == 4 and b.hi[D["family"]] == 4 else _WIDE_V6
    return (b.hi[D["src_hi"]] - b.lo[D["src_hi"]] >= wide_addr,
            b.hi[D["dst_hi"]] - b.lo[D["dst_hi"]] >= wide_addr,
            b.hi[D["dport"]] - b.lo[D["dport"]] > _WIDE_PORTS)


SMALL_GROUP = 0.01      # a partition with fewer boxes than this share joins the mixed one


def partition(boxes: Sequence[Box]) -> list[list[int]]:
    """Box indices grouped by which of source, destination and destination port they leave
    wide, each group in priority order, groups ordered by the best priority they hold.
    Groups of fewer than 1% of the boxes go together into one mixed group: a tree more per
    packet costs more than the few copies of their wide boxes (at most 8 groups)."""
    groups: dict[tuple, list[int]] = {}
    for i, b in enumerate(boxes):
        groups.setdefault(_wide(b), []).append(i)
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

    def pack(self, node_base: int, leaf_base: int, box_base: int) -> tuple[bytes, bytes, int]:
        """``(nodes, leaf, root)``: the node array from ``node_base`` (the tree headers
        first), the leaf array from ``leaf_base``, and the index of the first header."""
        if not self.trees:
            return b"", b"", EMPTY
        k = len(self.trees)
        headers, bodies, leaves = [], [], []
        nb, lb = node_base + k, leaf_base
        for i, t in enumerate(self.trees):
            nxt = node_base + i + 1 if i + 1 < k else EMPTY
            headers.append(NODE.pack(self.min_prio[i], nb, nxt, TREE_DIM))
            nodes, leaf = t.pack(nb, lb, box_base)
            bodies.append(nodes)
            leaves.append(leaf)
            nb += len(t.nodes)
            lb += len(t.leaf)
        return b"".join(headers + bodies), b"".join(leaves), node_base


def build_forest(boxes: Sequence[Box], *, binth: int = BINTH) -> Forest:
    """One tree per :func:`partition` of ``boxes``; leaf entries index ``boxes``."""
    trees, prios = [], []
    for group in partition(boxes):
        t = build([boxes[i] for i in group], binth=binth)
        t.leaf = [group[i] for i in t.leaf]
        t.nboxes = len(boxes)
        trees.append(t)
        prios.append(boxes[group[0]].prio)
    return Forest(trees, prios, len(boxes))


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
