"""Probing attach methods (by attaching for real in a throw-away namespace) and
describing one interface: XDP features, MTU, queues and what is attached to it now."""

from __future__ import annotations

import contextlib
import subprocess

from ebplane.kernel.probe import load_trivial
from ebplane.net import blocks, attach, iface, netdev, netns


def probe_attach() -> dict:
    """Try each attach method on the loopback of a temporary network namespace."""
    result = {"xdp_link_native": None, "xdp_link_generic": None, "xdp_netlink_generic": None,
              "tcx_ingress": None, "tcx_egress": None, "clsact": None}
    with load_trivial("xdp", 2) as xdp_fd, load_trivial("sched_cls", 0) as tc_fd:
        with netns.temporary("ebp-probe") as ns, netns.enter(ns.name):
            subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
            for key, kw in (("xdp_link_generic", dict(mode="generic", use_link=True)),
                            ("xdp_netlink_generic", dict(mode="generic", use_link=False))):
                try:
                    a = attach.attach_xdp(xdp_fd, "lo", **kw)
                    result[key] = True
                    if a.link:
                        a.link.close()
                    else:
                        attach.detach_xdp("lo", "generic")
                except Exception:
                    result[key] = False
            # native XDP needs a driver that has it: a veth pair does
            subprocess.run(["ip", "link", "add", "ebp0", "type", "veth", "peer", "name", "ebp1"],
                           check=False, capture_output=True)
            subprocess.run(["ip", "link", "set", "ebp0", "up"], check=False)
            try:
                a = attach.attach_xdp(xdp_fd, "ebp0", mode="native")
                result["xdp_link_native"] = True
                a.link.close()
            except Exception:
                result["xdp_link_native"] = False
            for direction in ("ingress", "egress"):
                try:
                    a = attach.attach_tc(tc_fd, "lo", direction, method="tcx")
                    a.link.close()
                    result[f"tcx_{direction}"] = True
                except Exception:
                    result[f"tcx_{direction}"] = False
            try:
                attach.attach_tc(tc_fd, "lo", "ingress", method="clsact")
                attach.detach_clsact("lo", "ingress", 1, 1)
                result["clsact"] = True
            except Exception:
                result["clsact"] = False
    return result


def probe_iface(name: str, netns_name: str | None = None, *, netns: str | None = None) -> dict:
    """Facts about one interface (in ``netns`` when given)."""
    ns = netns or netns_name
    ctx = netns_enter(ns)
    with ctx:
        info = iface.info(name)
        feats = netdev.xdp_features(info.ifindex)
        xdp = attach.query_xdp(name)
        tc = []
        for direction in ("ingress", "egress"):
            tc += [f"tcx {direction} prog {pid}" for pid in attach.query_tcx(name, direction)]
            pid = attach.query_clsact(name, direction)
            if pid:
                tc.append(f"clsact {direction} prog {pid}")
    d = info.to_dict()
    d.update({"netns": ns, "xdp_features": feats.to_dict(), "xdp": xdp, "tc": tc,
              "blocks": blocks.report(feats)})
    return d


def netns_enter(name: str | None):
    """``netns.enter(name)``, or nothing when ``name`` is None (the current namespace)."""
    return netns.enter(name) if name else contextlib.nullcontext()
