"""``apply``'s check of the driver features of every interface a pipeline runs on, against
the building blocks it needs (the table in :mod:`ebplane.net.blocks`).

An interface that lacks a feature gets the block's fallback, said in a note, or, when the
spec allows none (``mode: native``), the apply is refused before anything changes
(``NotSupported``, exit code 4) with the fallback as the hint.  Redirect targets (the
``target`` blocks) are checked by the forwarding stages' control plane, which also makes
veths capable (:mod:`ebplane.runtime.forwarding`).
"""

from __future__ import annotations

from ebplane.errors import NotSupported
from ebplane.net import iface, netdev
from ebplane.net.blocks import BLOCKS, Block

# stage kinds whose XDP program returns XDP_REDIRECT
REDIRECTING = ("route", "bridge", "redirect", "steer", "xsk", "multicast", "mirror")


def needed(spec, ifname: str, jumbo: set[str]) -> list[Block]:
    """The attached-side blocks ``spec`` needs on ``ifname``."""
    if spec.hook != "xdp" and spec.parser_mode != "xdp":
        return []
    out = [BLOCKS["native XDP"]]
    kinds = {s.kind for s in spec.stages}
    if spec.hook == "xdp" and kinds & set(REDIRECTING):
        out.append(BLOCKS["redirect from"])
    if ifname in jumbo:
        out.append(BLOCKS["multi-buffer receive"])
    if spec.hook == "xdp" and "xsk" in kinds:
        out.append(BLOCKS["AF_XDP zero-copy"])
    return out


def check(spec, jumbo: list[tuple[str, int]]) -> list[str]:
    """Notes for the fallbacks ``apply`` takes; raises when ``mode: native`` forbids one.
    Runs inside the pipeline's namespace."""
    notes = []
    big = {n for n, _ in jumbo}
    for name in spec.interfaces:
        blocks = needed(spec, name, big)
        if not blocks:
            continue
        feats = netdev.xdp_features(iface.ifindex(name))
        lacking = [b for b in blocks if not b.has(feats)]
        native = (spec.mode or "auto") == "native"
        refused = [b for b in lacking if native and "mode: native" in b.refused]
        if refused:
            what = "; ".join(f"{b.feature} ({b.name}), which {b.needed_by} needs"
                             for b in refused)
            raise NotSupported(f"{name} lacks the XDP feature {what}; mode: native allows "
                               f"no fallback",
                               hint=f"use mode: auto ({refused[0].fallback}), or an interface "
                                    f"whose driver offers "
                                    f"{', '.join(b.feature for b in refused)} (see `ebplane "
                                    f"probe --iface {name}`)")
        for b in lacking:
            notes.append(f"driver features: {name} lacks the XDP feature {b.feature} "
                         f"({b.name}), which {b.needed_by} needs: {b.fallback}")
    return notes
