"""Which driver feature each building block of a pipeline needs, per interface, and what
ebplane does when an interface lacks it: the one table ``apply``, ``probe --iface`` and the
docs (docs/forwarding.md, "Driver features per interface") use.

A feature is a bit of the kernel's netdev XDP features (:mod:`ebplane.net.netdev`); ``role``
says which interfaces must have it: ``attached`` (the interfaces the XDP program runs on) or
``target`` (devices frames are redirected to: redirect, bridge ports, route egresses,
multicast members, mirror ports).  The metadata area has no feature bit: the programs that
use it test each frame (``bpf_xdp_adjust_meta``) and take the fallback when it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

from ebplane.net.netdev import XdpFeatures


@dataclass(frozen=True)
class Block:
    name: str                 # the building block, as messages name it
    feature: str | None       # netdev XDP feature bit (XDP_FEATURE_BITS), None: not reported
    role: str                 # attached | target
    needed_by: str            # when a pipeline needs it
    fallback: str             # what happens without it
    refused: str = ""         # when apply refuses instead

    def has(self, feats: XdpFeatures) -> bool:
        return self.feature is None or self.feature in feats.names

    def to_dict(self) -> dict:
        return {"block": self.name, "feature": self.feature, "role": self.role,
                "needed_by": self.needed_by, "fallback": self.fallback, "refused": self.refused}


BLOCKS: dict[str, Block] = {b.name: b for b in (
    Block("native XDP", "basic", "attached", "every XDP pipeline",
          "generic XDP (the program runs on the skb, after the driver: much slower)",
          refused="mode: native"),
    Block("redirect from", "redirect", "attached",
          "stages that redirect (route, bridge, redirect, steer, xsk, multicast, mirror)",
          "generic XDP, where every device may redirect", refused="mode: native"),
    Block("redirect target", "ndo_xmit", "target",
          "the devices XDP redirects frames to (redirect to:, bridge ports, route egresses, "
          "multicast members and mirror to:/out: at XDP)",
          "a veth whose peer is in an ebp- namespace gets a pass-through XDP program on the "
          "peer; route leaves that egress to the kernel",
          refused="bridge, redirect, tx, multicast, mirror at XDP (frames would vanish)"),
    Block("multi-buffer receive", "rx_sg", "attached",
          "an interface MTU above 3000 (the program is built as xdp.frags)",
          "generic XDP (jumbo frames at skb speed)", refused="mode: native"),
    Block("multi-buffer redirect target", "ndo_xmit_sg", "target",
          "redirect targets of a pipeline that takes jumbo frames",
          "route leaves that egress to the kernel",
          refused="bridge, redirect, tx, multicast, mirror (a jumbo frame would be dropped)"),
    Block("AF_XDP zero-copy", "xsk_zerocopy", "attached",
          "an xsk stage (sockets bound with mode auto or zerocopy)",
          "sockets bind in copy mode (mode auto); mode zerocopy fails at bind"),
    Block("metadata area", None, "attached",
          "parser: separate and parser: xdp, marks set at XDP",
          "tested per frame: where the driver leaves no room, the TC program parses the frame "
          "itself (counted as parsed_in_tc) and no mark is carried"),
)}


def missing(feats: XdpFeatures, role: str | None = None) -> list[Block]:
    """The blocks (of ``role``) whose feature ``feats`` lacks."""
    return [b for b in BLOCKS.values() if (role is None or b.role == role) and not b.has(feats)]


def report(feats: XdpFeatures) -> list[dict]:
    """Per block: whether the interface serves it, and the fallback when not."""
    return [{**b.to_dict(), "ok": b.has(feats)} for b in BLOCKS.values()]
