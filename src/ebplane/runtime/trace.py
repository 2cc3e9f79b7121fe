"""``ebplane trace``: the packets a pipeline sees, each with what happened to it.

A trace respecialises the pipeline's program with the capture hooks
(:mod:`ebplane.codegen.capture`) through the same path as a re-apply (``bpf_link_update``:
no packet lost, maps and counters kept, run-time rules kept), reads the ring buffer, and
respecialises it back to the trace-free program when it ends (also on Ctrl-C and SIGTERM).
The state records the capture and the tracer's pid: a trace killed with SIGKILL leaves an
orphaned capture, which the next ``trace``, ``status``, ``stats`` or apply removes
(:func:`ebplane.runtime.pipeline.drop_orphan_capture`).

Frames the kernel could not deliver (rate limit, ring buffer full, copy failed) are counted
in the program (``CAPTURE_COUNTERS``) and reported by :meth:`Trace.counters`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from ebplane.codegen.capture import CAP_REC, CAPTURE_COUNTERS, CAPTURE_MAPS, REC_HEADER, CaptureSpec
from ebplane.codegen.pipeline import TRACE_NONE, VERDICTS as CODEGEN_VERDICTS
from ebplane.errors import Busy, EbplaneError, NotFound, UsageError
from ebplane.kernel.codec import COUNT, U32, Packed
from ebplane.kernel.maps import Map
from ebplane.kernel.ringbuf import RingBuffer
from ebplane.net import iface
from ebplane.net.probe import netns_enter
from ebplane.runtime import pipeline as pl
from ebplane.runtime.pcap import LINKTYPE_ETHERNET
from ebplane.runtime.state import PipelineState, pin_dir, state_dir
from ebplane.spec import PipelineSpec
from ebplane.stages.control import control_for

_REC = Packed(CAP_REC)  # the record header; the frame follows at REC_HEADER

# --verdict words -> the hook's action value
# a verdict as --verdict names it (drop, pass, XDP_TX, tc_act_shot, ...) -> its value, from
# codegen's VERDICTS; at tc, pass and drop are aliases of ok and shot
VERDICTS = {fam: {k.lower().removeprefix("xdp_").removeprefix("tc_act_"): v
                  for k, v in names.items()} for fam, names in CODEGEN_VERDICTS.items()}
VERDICTS["tc"] = {"pass": VERDICTS["tc"]["ok"], **VERDICTS["tc"],
                  "drop": VERDICTS["tc"]["shot"]}


@dataclass
class TraceRequest:
    stage: str | None = None
    verdict: str | None = None
    rule: int | None = None      # index of the rule in the filter (ebplane stats' '#')
    snaplen: int = 256
    rate: int = 0                # frames per second per CPU, 0: no limit
    filter: str | None = None    # tcpdump / pcap-filter expression


@dataclass
class Frame:
    """One captured frame and what the pipeline did with it."""
    time: float          # seconds since the epoch
    ifname: str
    hook: str
    stage: str | None    # the stage that decided, None: no stage did (end of pipeline)
    kind: str | None
    rule: int | None     # index of the filter rule that decided
    reason: str          # rule N / default / malformed / a forwarding outcome / end
    verdict: str         # XDP_DROP, TC_ACT_OK...
    length: int
    data: bytes
    cpu: int

    def to_dict(self) -> dict:
        return {"time": self.time, "ifname": self.ifname, "hook": self.hook,
                "stage": self.stage, "kind": self.kind, "rule": self.rule,
                "reason": self.reason, "verdict": self.verdict, "length": self.length,
                "captured": len(self.data), "cpu": self.cpu, "summary": summary(self.data),
                "data": self.data.hex()}

    def comment(self, pipeline: str) -> str:
        """What the pcapng packet comment carries (Wireshark's frame.comment)."""
        parts = [f"ebplane pipeline={pipeline}", f"hook={self.hook}", f"ifname={self.ifname}",
                 f"verdict={self.verdict}", f"stage={self.stage or '-'}",
                 f"rule={'-' if self.rule is None else self.rule}", f"reason={self.reason}"]
        return " ".join(parts)


def summary(data: bytes) -> str:
    import scapy.layers.inet  # noqa: F401  (binds IPv4, TCP, UDP, ICMP under Ether)
    import scapy.layers.inet6  # noqa: F401
    from scapy.layers.l2 import Ether
    try:
        return Ether(data).summary()
    except Exception:  # scapy dissects anything; a frame cut by snaplen may still raise
        return f"{len(data)} bytes"


def capture_spec(spec: PipelineSpec, st: PipelineState, req: TraceRequest) -> CaptureSpec:
    """A trace request against the pipeline -> the constants of the capture hooks."""
    stage_idx = slot = verdict = None
    hook = "xdp" if spec.hook == "xdp" else "tc"
    if req.stage is not None:
        names = [s.name for s in spec.stages]
        if req.stage not in names:
            raise NotFound(f"pipeline '{spec.name}' has no stage '{req.stage}'",
                           hint=f"stages: {', '.join(names)}")
        stage_idx = names.index(req.stage)
    if req.rule is not None:
        filters = [(i, s) for i, s in enumerate(spec.stages) if s.has_rules]
        if stage_idx is not None:
            filters = [(i, s) for i, s in filters if i == stage_idx]
        if len(filters) != 1:
            raise UsageError("--rule needs one filter stage: name it with --stage" if filters
                             else f"pipeline '{spec.name}' has no filter stage"
                             f"{' ' + repr(req.stage) if req.stage else ''}")
        stage_idx, fst = filters[0]
        live = st.live_rules.get(fst.name, [])
        if not 0 <= req.rule < len(live):
            raise UsageError(f"filter '{fst.name}' has no rule {req.rule} ({len(live)} rules)",
                             hint=f"see ebplane stats {spec.name}")
        slot = live[req.rule]["id"]
    if req.verdict is not None:
        v = req.verdict.lower().removeprefix("xdp_").removeprefix("tc_act_")
        if v not in VERDICTS[hook]:
            raise UsageError(f"verdict {req.verdict!r} is not one of a {hook} program's",
                             hint=f"one of {', '.join(VERDICTS[hook])}")
        verdict = VERDICTS[hook][v]
    insns = ()
    if req.filter:
        from ebplane.toolchain.pcapfilter import compile_filter
        insns = tuple(compile_filter(req.filter))
    ncpu = os.cpu_count() or 1
    rate = -(-req.rate // ncpu) if req.rate else 0  # per CPU, rounded up
    return CaptureSpec(snaplen=req.snaplen, rate=rate, stage=stage_idx, slot=slot,
                       verdict=verdict, filter=insns, filter_text=req.filter or "")


def decision(spec: PipelineSpec, live: dict[str, list[dict]], stage: int,
             slot: int) -> tuple[str | None, str | None, int | None, str]:
    """(stage name, kind, rule index, reason) of a trace record's stage and counter slot."""
    if stage == TRACE_NONE or stage >= len(spec.stages):
        return None, None, None, "end of pipeline"
    st = spec.stages[stage]
    rule, reason = control_for(st.kind).describe_slot_at(st, spec.hook, slot,
                                                         live.get(st.name, []))
    return st.name, st.kind, rule, reason


@contextlib.contextmanager
def _signals_held():
    """A second Ctrl-C (or SIGTERM) while the trace-free program is put back is ignored: the
    respecialisation finishes (an apply is all or nothing, but the trace would stay)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    saved = [signal.signal(s, signal.SIG_IGN) for s in sigs]
    try:
        yield
    finally:
        for s, h in zip(sigs, saved):
            signal.signal(s, h)


def malformed_detail(graph, frame: bytes, length: int) -> str:
    """Why the parse graph rejects ``frame`` (the first bytes of a frame of ``length``), as
    P4 says it (PacketTooShort, NoMatch, StackOutOfBounds...) with the parser state."""
    from ebplane.protocols.interp import run
    r = run(graph, frame)
    if r["error"] is None:
        return "parses in user space (a header cut beyond snaplen?)" \
            if len(frame) < length else "parses in user space"
    where = r["path"][-1] if r["path"] else "start"
    if r["error"] == "PacketTooShort" and len(frame) < length:
        return f"cut beyond snaplen in {where}: raise --snaplen to tell"
    return f"{r['error']} in parser state {where}"


class Trace:
    """A running capture on an applied pipeline (a context manager: the exit respecialises
    the program back)."""

    def __init__(self, name: str, req: TraceRequest):
        self.name = name
        self.req = req
        self.ring: Map | None = None
        self.counts: Map | None = None
        self._rb: RingBuffer | None = None
        self._pending: list[Frame] = []
        self.prog_id_before: int | None = None
        self.prog_id: int | None = None
        self._graph = None
        self._state_mtime = None

    # -- start / stop -------------------------------------------------------------------------
    def start(self) -> "Trace":
        pl.drop_orphan_capture(self.name)
        with pl._locked(self.name):
            st = pl.require_state(self.name)
            if st.capture and pl.capture_alive(st.capture):
                raise Busy(f"pipeline '{self.name}' is being traced by pid "
                           f"{st.capture['pid']}", hint="one trace at a time: stop that one "
                           "first (Ctrl-C in its terminal)")
            self.spec = pl._spec_of(st)
            cap = capture_spec(self.spec, st, self.req)
            self.prog_id_before = st.prog_id
            record = {"pid": os.getpid(), "pid_start": pl._proc_start(os.getpid()),
                      "started": time.time(), "spec": cap.to_dict()}
            res = pl._apply(self.spec, st.spec_text, st.spec_file, capture=record)
            self.prog_id = res.prog_id
            self.live = pl.PipelineState.require(self.name).live_rules
        try:
            maps = pin_dir(self.name) / "maps"
            self.ring = Map.from_pin(maps / CAPTURE_MAPS["capture"])
            self.counts = Map.from_pin(maps / CAPTURE_MAPS["capture-counters"]).with_codecs(U32, COUNT)
            self._rb = RingBuffer(self.ring, self._on_record)
            with netns_enter(self.spec.netns):
                self.ifnames = {}
                for n in self.spec.interfaces:
                    with contextlib.suppress(EbplaneError):
                        self.ifnames[iface.ifindex(n)] = n
        except BaseException:
            self.stop()
            raise
        # bpf_ktime_get_ns is CLOCK_MONOTONIC: the offset to the wall clock
        self._epoch = time.time() - time.monotonic()
        return self

    def stop(self) -> None:
        """Respecialise back to the trace-free program (if this trace's capture is in force)."""
        if self._rb is not None:
            self._rb.close()
            self._rb = None
        with contextlib.suppress(EbplaneError):
            self.final_counters = self.counters()
        for m in (self.ring, self.counts):
            if m is not None:
                m.close()
        self.ring = self.counts = None
        with _signals_held(), pl._locked(self.name):
            st = pl.load_state(self.name)
            if st is not None and st.capture and st.capture["pid"] == os.getpid():
                res = pl._apply(pl._spec_of(st), st.spec_text, st.spec_file, capture=None)
                self.prog_id = res.prog_id

    def __enter__(self) -> "Trace":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reading ------------------------------------------------------------------------------
    def _on_record(self, data: bytes) -> None:
        rec = _REC.decode(data)
        stage_name, kind, rule, reason = decision(self.spec, self.live, rec.stage, rec.slot)
        frame = bytes(data[REC_HEADER:REC_HEADER + rec.cap_len])
        if reason.startswith("malformed"):
            reason += ": " + self.why_malformed(frame, rec.pkt_len)
        hook = "xdp" if self.spec.hook == "xdp" else "tc"
        self._pending.append(Frame(
            time=self._epoch + rec.ts / 1e9,
            ifname=self.ifnames.get(rec.ifindex, f"if{rec.ifindex}"),
            hook=self.spec.hook, stage=stage_name, kind=kind, rule=rule, reason=reason,
            verdict=pl.VERDICT_NAMES[hook].get(rec.action, str(rec.action)),
            length=rec.pkt_len, data=frame, cpu=rec.cpu))

    def why_malformed(self, frame: bytes, length: int) -> str:
        """Which header the parser could not read: the pipeline's parse graph (as the
        running program was specialised) run by the reference interpreter on the frame."""
        from ebplane.codegen.pipeline import Features, spec_parser
        if self._graph is None:
            st = pl.PipelineState.require(self.name)
            self._graph = spec_parser(self.spec.protocols, Features(**st.features))[0]
        return malformed_detail(self._graph, frame, length)

    def frames(self, timeout_ms: int = 100) -> list[Frame]:
        """The frames delivered within ``timeout_ms`` (maybe none)."""
        assert self._rb is not None, "trace not started"
        self._refresh_rules()
        self._rb.poll(timeout_ms)
        out, self._pending = self._pending, []
        return out

    def _refresh_rules(self) -> None:
        """Rules edited during the trace (ebplane rules add...): frames name them by their
        index in the rules in force, so re-read the state when its file changed."""
        with contextlib.suppress(OSError):
            mtime = os.stat(state_dir() / f"{self.name}.json").st_mtime_ns
            if mtime != self._state_mtime:
                self._state_mtime = mtime
                st = pl.PipelineState.load(self.name)
                if st is not None:
                    self.live = st.live_rules

    def __iter__(self) -> Iterator[Frame]:
        while True:
            yield from self.frames()

    def counters(self) -> dict[str, int]:
        """Frames the capture hook selected, filtered out, could not deliver, delivered."""
        if self.counts is None:
            return getattr(self, "final_counters", {})
        return {k: self.counts.lookup_sum(i).packets for i, k in enumerate(CAPTURE_COUNTERS)}


class _Frame(bytes):
    """Bytes that carry pcapng attributes."""


class PcapngSink:
    """Frames into a pcapng file, each with its verdict, stage and rule as a packet comment
    (shown by Wireshark, and by ``tshark -T fields -e frame.comment``)."""

    def __init__(self, path: str, pipeline: str):
        from scapy.utils import PcapNgWriter
        self.pipeline = pipeline
        self.w = PcapNgWriter(str(path))
        self.w.linktype = LINKTYPE_ETHERNET
        self.n = 0

    def write(self, f: Frame) -> None:
        # the frame's bytes as captured (not re-built by a dissector), with the attributes
        # scapy's pcapng writer reads: time, wire length, interface (one IDB each), comments
        p = _Frame(f.data)
        p.time = f.time
        p.wirelen = f.length
        p.sniffed_on = f.ifname
        p.comments = [f.comment(self.pipeline).encode()]
        self.w.write(p)
        self.n += 1

    def close(self) -> None:
        self.w.close()
