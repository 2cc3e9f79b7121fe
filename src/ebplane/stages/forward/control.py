"""Control plane of the forwarding stages: fill their redirect maps, make sure redirected
frames can leave, and report their per-outcome counters.

Redirect needs a capable egress: a veth can transmit redirected frames only while its peer
runs an XDP program (or has GRO on); otherwise the kernel drops them without a counter.
So before anything is loaded, ``check`` looks at each egress device's XDP features (netdev
netlink).  An egress that lacks ``ndo_xmit`` is made capable when its veth peer sits in a
namespace ebplane owns (``ebp-...``, a lab): ``prepare`` attaches a pass-through XDP
program there.  Otherwise a stage that must redirect there (bridge, redirect, tx) is
refused with what to do; a route stage leaves that egress to the kernel (its ports map
holds capable devices only, and a route to any other device is passed to the stack).

All of this runs inside the pipeline's namespace: ``apply`` enters it, and DEVMAP entries
are ifindexes resolved in the namespace of the updating thread.

At the tc hooks none of that applies: the packet stays an skb (its checksum state and GSO
with it) and any device can be a bpf_redirect target.  There the control plane only tells
the program which interfaces are veths whose peer is in another namespace (targets of
bpf_redirect_peer, see forward_tc.h), and a redirect stage its target's ifindex.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Callable

from ebplane.errors import EbplaneError, NotSupported, UsageError
from ebplane.kernel.codec import Packed, Struct, U32
from ebplane.kernel.libbpf import num_possible_cpus
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import BpfObject, Program
from ebplane.net import attach, iface, netdev, netns
from ebplane.net.blocks import BLOCKS
from ebplane.kernel.codec import COUNT
from ebplane.stages.control import StageControl, jumbo_interfaces, on_undo, slot_counts
from ebplane.stages.forward import gen
from ebplane.stages.forward.gen import map_name, map_names, outcomes
from ebplane.stages.forward.spec import (BridgeStage, RedirectStage, RouteStage, SteerStage,
                                     TxStage, XskStage)
from ebplane.toolchain.clang import compile_c

# the driver features of redirect targets (the table of ebplane.net.blocks)
TARGET, SG_TARGET = BLOCKS["redirect target"], BLOCKS["multi-buffer redirect target"]

FDB_KEY, FDB_ENTRY, MACS = Packed(gen.FDB_KEY), Packed(gen.FDB_ENTRY), Packed(gen.MACS)
TC_PORT, TC_REDIRECT = Packed(gen.TC_PORT), Packed(gen.TC_REDIRECT)
TC_PORT_PEER = gen.TC_PORT_PEER
# the kernel's struct bpf_cpumap_val (linux/bpf.h), not one of ebplane's
CPUMAP_VAL = Struct("bpf_cpumap_val", [("qsize", "I"), ("prog_fd", "i")])

PASS_THROUGH_NAME = "ebp_passthru"
PASS_THROUGH_C = """// SPDX-License-Identifier: GPL-2.0
/* ebplane: lets this veth's peer transmit redirected frames (NAPI runs while XDP is on).
 * xdp.frags: it touches no byte, so it takes multi-buffer frames and any MTU. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp.frags")
int ebp_passthru(struct xdp_md *ctx)
{
	return XDP_PASS;
}
char LICENSE[] SEC("license") = "GPL";
"""


@dataclass(frozen=True)
class Egress:
    """Whether ``ifname`` (in the current namespace) can transmit redirected frames.

    ``peer``: (namespace, ifname) of a veth peer in an ``ebp-`` namespace on which a
    pass-through program would make it capable; ``why`` explains an incapable device.
    """

    ifname: str
    ifindex: int
    capable: bool
    peer: tuple[str, str] | None = None
    why: str = ""

    @property
    def fixable(self) -> bool:
        return not self.capable and self.peer is not None


def egress(ifname: str, spec) -> Egress:
    """The redirect capability of ``ifname``; a veth whose peer the pipeline itself will be
    attached to counts as capable (the pipeline's program runs NAPI there)."""
    info = iface.info(ifname)
    if TARGET.has(netdev.xdp_features(info.ifindex)):
        return Egress(ifname, info.ifindex, True)
    if info.kind != "veth" or info.peer_ifindex is None:
        return Egress(ifname, info.ifindex, False,
                      why=f"{ifname} ({info.kind or info.driver or 'device'}) does not offer "
                          f"{TARGET.feature} ({TARGET.name})")
    if info.peer_netns is None:
        return Egress(ifname, info.ifindex, False,
                      why=f"{ifname} is a veth whose peer (ifindex {info.peer_ifindex}) runs "
                          "no XDP program and has GRO off, in a namespace without a name")
    with netns.enter(info.peer_netns):
        peer_name = socket.if_indextoname(info.peer_ifindex)
    here = netns.current_name()
    if info.peer_netns == here and peer_name in spec.interfaces:
        return Egress(ifname, info.ifindex, True)
    if info.peer_netns.startswith(netns.PREFIX):
        return Egress(ifname, info.ifindex, False, peer=(info.peer_netns, peer_name))
    return Egress(ifname, info.ifindex, False,
                  why=f"{ifname} is a veth whose peer {peer_name} (namespace "
                      f"{info.peer_netns}) runs no XDP program and has GRO off")


def _refuse(stage, e: Egress) -> NotSupported:
    """The device cannot transmit redirected frames: the platform lacks it (exit 4)."""
    if "veth" in e.why:
        hint = ("attach an XDP program to the veth peer (any, e.g. an ebplane pipeline) or run "
                "`ethtool -K PEER gro on` in the peer's namespace, then apply again")
    else:
        hint = (f"redirect to a device whose driver offers {TARGET.feature}, or run the stage at "
                "a tc hook, which can send to any device")
    return NotSupported(
        f"{stage.kind} '{stage.name}': {e.why}; frames redirected to it would vanish",
        hint=hint)


def require_capable(stage, ifnames, spec) -> list[str]:
    """Refuse when one of ``ifnames`` cannot take redirected frames and cannot be fixed."""
    notes = []
    for name in ifnames:
        e = egress(name, spec)
        if not e.capable and not e.fixable:
            raise _refuse(stage, e)
        if e.fixable:
            notes.append(f"{stage.kind} '{stage.name}': {name}'s veth peer {e.peer[1]} "
                         f"({e.peer[0]}) gets a pass-through XDP program so that {name} "
                         "can transmit redirected frames")
    return notes


def make_capable(ifnames, spec, *, replay: bool, stage=None,
                 notes: list[str] | None = None) -> list[Egress]:
    """The devices of ``ifnames`` that are (now) redirect targets.  Fixable ones get a
    pass-through program on their peer, attached by netlink so that it stays (it goes with
    the peer's namespace, or ``ip link set PEER xdp off``); replay only pretends.

    When the pipeline takes jumbo frames (multi-buffer XDP), a target must also transmit
    multi-buffer frames (``ndo_xmit_sg``): without, ``stage`` (bridge, redirect, tx) is
    refused, or, with ``notes`` given (route), the device is left to the kernel."""
    ready = []
    jumbo = [] if replay else jumbo_interfaces(spec)
    for name in ifnames:
        e = egress(name, spec)
        if e.fixable and not replay:
            _attach_pass_through(*e.peer)
            if not TARGET.has(netdev.xdp_features(e.ifindex)):
                raise NotSupported(f"{name} is still no redirect target after attaching XDP "
                                   f"to its peer {e.peer[1]} ({e.peer[0]})",
                                   hint="enable GRO on the peer: ethtool -K PEER gro on")
        if not (e.capable or e.fixable):
            continue
        if jumbo and not SG_TARGET.has(netdev.xdp_features(e.ifindex)):
            why = (f"{name} lacks the XDP feature {SG_TARGET.feature} ({SG_TARGET.name}), "
                   f"and {', '.join(n for n, _ in jumbo)} take jumbo frames")
            if notes is None:
                raise NotSupported(f"{stage.kind} '{stage.name}': {why}",
                                   hint="lower the MTU to 3000 or less, or redirect to a "
                                        "device whose driver transmits multi-buffer frames")
            notes.append(f"{stage.kind} '{stage.name}': {why}; routes out of {name} are left "
                         "to the kernel")
            continue
        ready.append(e)
    return ready


def _attach_pass_through(ns: str, ifname: str) -> None:
    res = compile_c(PASS_THROUGH_C, name=PASS_THROUGH_NAME)
    with BpfObject.open_bytes(res.elf, PASS_THROUGH_NAME) as obj:
        obj.load()
        with netns.enter(ns):
            attach.attach_xdp(obj.programs[PASS_THROUGH_NAME].fd, ifname, mode="native",
                              use_link=False)

    def undo() -> None:
        with netns.enter(ns):
            attach.detach_xdp(ifname, "native")
    # the peer ran no XDP program: a failed apply leaves it so again
    on_undo(f"detach the pass-through XDP program from {ifname} ({ns})", undo)


def release_pass_through(ifnames) -> list[str]:
    """Detach ebplane's pass-through program from ``ifnames`` (it was put there to make a
    neighbour's redirects work; the pipeline about to be attached does that job now)."""
    notes = []
    for name in ifnames:
        q = attach.query_xdp(name)
        if q["prog_id"] is None or q["mode"] != "native":
            continue
        prog = Program.from_id(q["prog_id"])
        try:
            ours = prog.name == PASS_THROUGH_NAME
        finally:
            prog.close()
        if ours:
            attach.detach_xdp(name, "native")
            notes.append(f"{name}: replaced ebplane's pass-through XDP program")
    return notes


def _set_ports(m: Map, ifindexes: list[int]) -> None:
    """Make the DEVMAP_HASH hold exactly ``ifindexes`` (a reused map may hold stale ones)."""
    m = m.with_codecs(U32, U32)
    want = set(ifindexes)
    for k in list(m.keys()):
        if k not in want:
            with contextlib.suppress(EbplaneError):
                m.delete(k)
    for idx in ifindexes:
        m.update(idx, idx)


def tc_port_flags(info: iface.IfaceInfo) -> int:
    """The forward_tc.h flags of an interface: a veth whose peer is in another namespace
    takes bpf_redirect_peer (the kernel drops a peer redirect into the same namespace)."""
    return TC_PORT_PEER if info.kind == "veth" and info.peer_elsewhere else 0


def _set_tc_ports(m: Map, ports: dict[int, int]) -> None:
    """Make the HASH hold exactly ``ports`` (ifindex -> flags)."""
    m = m.with_codecs(U32, TC_PORT)
    for k in list(m.keys()):
        if k not in ports:
            with contextlib.suppress(EbplaneError):
                m.delete(k)
    for idx, flags in ports.items():
        m.update(idx, TC_PORT.type(idx, flags))


def _tc(spec) -> bool:
    return spec.hook != "xdp"


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# Stages whose frames leave as an xdp_frame (DEVMAP/CPUMAP redirect, XDP_TX): the skb's
# checksum state (CHECKSUM_PARTIAL) is lost on the way.  xsk hands frames to user space.
LOSES_SKB_STATE = ("route", "bridge", "redirect", "tx", "steer", "multicast", "mirror")


@dataclass(frozen=True)
class Sender:
    """The veth peer that sends into one of the pipeline's interfaces, and whether it may
    hand over frames whose TCP/UDP checksum is left to "hardware" (CHECKSUM_PARTIAL)."""

    ifname: str            # the pipeline's interface
    peer: str              # the sending device
    netns: str | None      # its namespace (None: one without a name)
    offload: bool | None   # TX checksum offload on (None: unknown)

    @property
    def managed(self) -> bool:
        return self.netns is not None and self.netns.startswith(netns.PREFIX)


def partial_checksum_senders(spec) -> list[Sender]:
    """Veth peers of the pipeline's interfaces with TX checksum offload on (or unknown).

    Frames from the wire always carry full checksums; a veth's sender (a container, a
    namespace, a host-side socket) by default leaves them to be completed later, which
    never happens once XDP redirects the frame without its skb."""
    found = []
    for name in spec.interfaces:
        info = iface.info(name)
        if info.kind != "veth" or info.peer_ifindex is None:
            continue
        if info.peer_netns is None:
            found.append(Sender(name, f"ifindex {info.peer_ifindex}", None, None))
            continue
        with netns.enter(info.peer_netns):
            peer = socket.if_indextoname(info.peer_ifindex)
            offload = iface.tx_checksum_offload(peer)
        if offload is not False:
            found.append(Sender(name, peer, info.peer_netns, offload))
    return found


def _first_lossy(spec, stage) -> bool:
    """Whether ``stage`` is the pipeline's first stage that loses skb state (the checksum
    check runs once per pipeline, there)."""
    return next((s for s in spec.stages if s.kind in LOSES_SKB_STATE), None) is stage


def checksum_notes(spec, stage) -> list[str]:
    """apply's warnings for senders ebplane does not manage (left as they are)."""
    if not _first_lossy(spec, stage):
        return []
    notes = []
    for s in partial_checksum_senders(spec):
        if s.managed:
            continue
        where = f"namespace {s.netns}" if s.netns else "a namespace without a name"
        notes.append(
            f"checksums: {s.ifname}'s veth peer {s.peer} ({where}) "
            f"{'may offload' if s.offload is None else 'offloads'} TX checksums: its "
            f"kernel-socket TCP/UDP leaves with incomplete checksums, and once "
            f"{stage.kind} '{stage.name}' redirects it the receiver drops it (UdpInCsumErrors); "
            f"ebplane does not change devices outside ebp- namespaces: run "
            f"`ethtool -K {s.peer} tx off` there")
    return notes


def fix_checksum_senders(spec, stage, *, replay: bool) -> list[str]:
    """Turn TX checksum offload off on the managed (``ebp-``) veth peers that have it on."""
    if replay or not _first_lossy(spec, stage):
        return []
    notes = []
    for s in partial_checksum_senders(spec):
        if s.managed and s.offload:
            iface.disable_tx_checksum_offload(s.netns, s.peer)
            notes.append(f"checksums: {s.ifname}'s veth peer {s.peer} ({s.netns}) had TX "
                         f"checksum offload on; set `ethtool -K {s.peer} tx off` there, so "
                         f"that its TCP/UDP checksums are complete before {stage.kind} "
                         f"'{stage.name}' redirects them (stays until the namespace goes)")
    return notes


class ForwardingRuntime(StageControl):
    """What the forwarding stages share: per-outcome counters, making room on the
    pipeline's interfaces (a pass-through program ebplane put there for a neighbour), and
    complete checksums from the veth peers that send into it."""

    def check(self, spec, stage) -> list[str]:
        if _tc(spec):
            return []  # the skb keeps its checksum state; any device takes bpf_redirect
        return checksum_notes(spec, stage)

    def prepare(self, built, spec, stage, *, replay: bool = False) -> list[str]:
        if _tc(spec):
            return []
        notes = fix_checksum_senders(spec, stage, replay=replay)
        return notes if replay else notes + release_pass_through(spec.interfaces)

    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        return {"counts": slot_counts(maps(map_name(stage, "counters")),
                                      outcomes(stage, spec.hook))}

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        return self.describe_slot_at(stage, "xdp", slot, live)

    def describe_slot_at(self, stage, hook: str, slot: int, live=()) -> tuple[int | None, str]:
        names = outcomes(stage, hook)  # route's differ at TC (forward_tc.h)
        return None, names[slot] if slot < len(names) else f"slot {slot}"

    def slots(self, stage, live=()) -> dict[int, tuple[int | None, str]]:
        return self.slots_at(stage, "xdp", live)

    def slots_at(self, stage, hook: str, live=()) -> dict[int, tuple[int | None, str]]:
        return {i: (None, name) for i, name in enumerate(outcomes(stage, hook))}

    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in map_names(stage).items()}


class RouteRuntime(ForwardingRuntime):
    kind = "route"

    def check(self, spec, stage: RouteStage) -> list[str]:
        notes = super().check(spec, stage)
        if _tc(spec):
            return notes
        for info in iface.list_ifaces():
            if info.name == "lo":
                continue
            e = egress(info.name, spec)
            if not e.capable and not e.fixable:
                notes.append(f"route '{stage.name}': {e.why}; routes out of {info.name} are "
                             "left to the kernel")
        return notes

    def prepare(self, built, spec, stage: RouteStage, *, replay: bool = False) -> list[str]:
        notes = super().prepare(built, spec, stage, replay=replay)
        if _tc(spec):
            return notes + self._prepare_tc(built, spec, stage)
        names = [i.name for i in iface.list_ifaces() if i.name != "lo"]
        ready = make_capable(names, spec, replay=replay, stage=stage, notes=notes)
        _set_ports(built.map(map_name(stage, "ports")), [e.ifindex for e in ready])
        return notes + [f"route '{stage.name}': redirects to "
                        f"{', '.join(e.ifname for e in ready) or 'no interface'}"]


    @staticmethod
    def _prepare_tc(built, spec, stage: RouteStage) -> list[str]:
        peers = {i.ifindex: TC_PORT_PEER for i in iface.list_ifaces() if tc_port_flags(i)}
        _set_tc_ports(built.map(map_name(stage, "ports")), peers)
        if spec.hook != "tc-ingress":
            return [f"route '{stage.name}': bpf_redirect_neigh to every egress "
                    "(bpf_redirect_peer works from tc-ingress only)"]
        names = ", ".join(socket.if_indextoname(i) for i in peers) or "none"
        return [f"route '{stage.name}': bpf_redirect_peer into the namespaces behind {names}; "
                "bpf_redirect_neigh to other egresses"]


class BridgeRuntime(ForwardingRuntime):
    kind = "bridge"

    def check(self, spec, stage: BridgeStage) -> list[str]:
        notes = super().check(spec, stage)
        if _tc(spec):
            for p in stage.ports:
                iface.info(p)  # refused with a hint when a port does not exist
        else:
            notes += require_capable(stage, stage.ports, spec)
        missing = [p for p in stage.ports if p not in spec.interfaces]
        if missing:
            notes.append(f"bridge '{stage.name}': ports {', '.join(missing)} are not among the "
                         "pipeline's interfaces; frames arriving there are not bridged")
        return notes

    def prepare(self, built, spec, stage: BridgeStage, *, replay: bool = False) -> list[str]:
        notes = super().prepare(built, spec, stage, replay=replay)
        if _tc(spec):
            infos = [iface.info(p) for p in stage.ports]
            _set_tc_ports(built.map(map_name(stage, "ports")),
                          {i.ifindex: tc_port_flags(i) for i in infos})
            flood = built.map(map_name(stage, "flood")).with_codecs(U32, TC_PORT)
            for n, i in enumerate(infos):
                flood.update(n, TC_PORT.type(i.ifindex, tc_port_flags(i)))
            return notes
        ready = make_capable(stage.ports, spec, replay=replay, stage=stage)
        _set_ports(built.map(map_name(stage, "ports")), [e.ifindex for e in ready])
        return notes

    def stats(self, maps: Callable[[str], Map], spec, stage: BridgeStage) -> dict:
        d = super().stats(maps, spec, stage)
        now = time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
        fdb = maps(map_name(stage, "fdb")).with_codecs(FDB_KEY, FDB_ENTRY)
        names = {i.ifindex: i.name for i in _ifaces_of(spec)}
        entries = []
        for k, v in fdb.items():
            age = (now - v.seen_ns) / 1e9
            entries.append({"mac": _mac_text(k.mac), "vlan": k.vlan,
                            "port": names.get(v.ifindex, v.ifindex), "age": round(age, 1),
                            "expired": age > stage.ageing})
        d["fdb"] = sorted(entries, key=lambda e: (e["vlan"], e["mac"]))
        return d


def _ifaces_of(spec):
    """Interfaces of the pipeline's namespace (for names in stats); none if it is gone."""
    try:
        with (netns.enter(spec.netns) if spec.netns else contextlib.nullcontext()):
            return iface.list_ifaces()
    except EbplaneError:
        return []


class RedirectRuntime(ForwardingRuntime):
    kind = "redirect"

    def check(self, spec, stage: RedirectStage) -> list[str]:
        notes = super().check(spec, stage)
        if _tc(spec):
            iface.info(stage.to)  # refused with a hint when it does not exist
        else:
            notes += require_capable(stage, [stage.to], spec)
        if stage.macs == "peer":
            self._peer_mac(stage)
        return notes

    @staticmethod
    def _peer_mac(stage: RedirectStage) -> tuple[bytes, bytes]:
        info = iface.info(stage.to)
        if info.kind != "veth" or info.peer_ifindex is None or info.peer_netns is None:
            raise UsageError(f"redirect '{stage.name}': macs: peer needs {stage.to} to be a "
                             "veth whose peer is in a named namespace",
                             hint="use macs: keep")
        with netns.enter(info.peer_netns):
            peer = iface.info(socket.if_indextoname(info.peer_ifindex))
        return _mac(peer.mac), _mac(info.mac)

    def prepare(self, built, spec, stage: RedirectStage, *, replay: bool = False) -> list[str]:
        notes = super().prepare(built, spec, stage, replay=replay)
        if _tc(spec):
            return notes + self._prepare_tc(built, spec, stage)
        (target,) = make_capable([stage.to], spec, replay=replay, stage=stage)
        built.map(map_name(stage, "ports")).with_codecs(U32, U32).update(0, target.ifindex)
        cfg = built.map(map_name(stage, "config")).with_codecs(U32, MACS)
        if stage.macs == "peer":
            dmac, smac = self._peer_mac(stage)
            cfg.update(0, MACS.type(dmac, smac, 1))
        else:
            cfg.update(0, MACS.type(b"\0" * 6, b"\0" * 6, 0))
        return notes


    def _prepare_tc(self, built, spec, stage: RedirectStage) -> list[str]:
        info = iface.info(stage.to)
        flags = tc_port_flags(info) if spec.hook == "tc-ingress" else 0
        dmac, smac = self._peer_mac(stage) if stage.macs == "peer" else (b"\0" * 6, b"\0" * 6)
        built.map(map_name(stage, "config")).with_codecs(U32, TC_REDIRECT).update(
            0, TC_REDIRECT.type(info.ifindex, flags, dmac, smac, int(stage.macs == "peer")))
        how = (f"bpf_redirect_peer into the namespace of {stage.to}'s veth peer" if flags
               else f"bpf_redirect out of {stage.to}")
        return [f"redirect '{stage.name}': {how}"]


class TxRuntime(ForwardingRuntime):
    kind = "tx"

    def check(self, spec, stage: TxStage) -> list[str]:
        return super().check(spec, stage) + require_capable(stage, spec.interfaces, spec)

    def prepare(self, built, spec, stage: TxStage, *, replay: bool = False) -> list[str]:
        notes = super().prepare(built, spec, stage, replay=replay)
        make_capable(spec.interfaces, spec, replay=replay, stage=stage)
        return notes


class SteerRuntime(ForwardingRuntime):
    kind = "steer"

    def check(self, spec, stage: SteerStage) -> list[str]:
        possible = num_possible_cpus()
        bad = [c for c in stage.cpus if c >= possible]
        if bad:
            raise UsageError(f"steer '{stage.name}': CPU {bad[0]} does not exist "
                             f"(this machine has CPUs 0-{possible - 1})",
                             hint="list existing CPUs in cpus:")
        return super().check(spec, stage)

    def prepare(self, built, spec, stage: SteerStage, *, replay: bool = False) -> list[str]:
        notes = super().prepare(built, spec, stage, replay=replay)
        self.check(spec, stage)
        cpumap = built.map(map_name(stage, "cpus")).with_codecs(U32, CPUMAP_VAL)
        sel = built.map(map_name(stage, "config")).with_codecs(U32, U32)
        for i, cpu in enumerate(stage.cpus):
            cpumap.update(cpu, CPUMAP_VAL.type(stage.queue_size, 0))
            sel.update(i, cpu)
        return notes

    def stats(self, maps: Callable[[str], Map], spec, stage: SteerStage) -> dict:
        d = super().stats(maps, spec, stage)
        cm = maps(map_name(stage, "counters")).with_codecs(U32, COUNT)
        # where the XDP program ran (the receiving CPUs), per target CPU
        d["seen_on"] = {f"cpu{cpu}": [c.packets for c in cm.lookup(i)]
                        for i, cpu in enumerate(stage.cpus)}
        return d


class XskRuntime(ForwardingRuntime):
    kind = "xsk"

    def check(self, spec, stage: XskStage) -> list[str]:
        notes = []  # frames go to user space as they are: no checksum work here
        for name in spec.interfaces:
            info = iface.info(name)
            if stage.queue >= info.rx_queues:
                notes.append(f"xsk '{stage.name}': {name} has {info.rx_queues} rx queue(s); "
                             f"queue {stage.queue} never receives there")
        return notes


CONTROLS = {c.kind: c for c in (RouteRuntime(), BridgeRuntime(), RedirectRuntime(), TxRuntime(),
                                SteerRuntime(), XskRuntime())}
