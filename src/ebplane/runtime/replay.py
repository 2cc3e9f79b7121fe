"""Replay: run packets through a compiled pipeline with BPF_PROG_TEST_RUN, no network needed.

The program is built with the trace map (which stage and counter slot decided), loaded
privately (nothing pinned, nothing attached) and its tables filled from the spec.

Parser mode xdp: only the TC program runs.  BPF_PROG_TEST_RUN of a sched_cls program carries
no XDP metadata, so it finds no parse-info and parses the packet itself (the fallback it takes
for any frame that did not pass the XDP parser); the verdicts are those of fused mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from ebplane.codegen.pipeline import PIPELINE_MAPS, TRACE as TRACE_LAYOUT, TRACE_NONE, spec_features
from ebplane.kernel.codec import Packed, U32
from ebplane.kernel.libbpf import SkBuff, XdpMd
from ebplane.net import iface
from ebplane.runtime.build import Built, build
from ebplane.stages.control import control_for
from ebplane.runtime.tables import RuleEntry
from ebplane.spec import PipelineSpec

TRACE = Packed(TRACE_LAYOUT)


# BPF_PROG_TEST_RUN refuses a frame shorter than an Ethernet header
MIN_FRAME = 14
# ... and, for a TC (sched_cls) program, an IPv4 / IPv6 frame shorter than its fixed IP
# header (EtherType -> bytes the kernel wants after Ethernet); such frames do reach tc ingress
# on a real interface (ip_rcv drops them later), but cannot be replayed there
TC_MIN_L3 = {0x0800: 20, 0x86DD: 40}


@dataclass
class Decision:
    index: int
    verdict: str | None   # None: the frame was not run (reason "skipped", see detail)
    stage: str | None
    rule: int | None      # index of the rule in its filter's list
    reason: str           # rule | default | malformed | fragment_other | fragment_bad | end | skipped
    packet: bytes
    detail: str | None = None  # why a frame was skipped

    def to_dict(self) -> dict:
        d = {"index": self.index, "verdict": self.verdict, "stage": self.stage,
             "rule": self.rule, "reason": self.reason, "packet": self.packet.hex()}
        if self.detail is not None:
            d["detail"] = self.detail
        return d


class Replayer:
    """A pipeline loaded for replay.  Use as a context manager; :meth:`run` per packet."""

    def __init__(self, spec: PipelineSpec, *, ingress: str | None = None):
        """``ingress``: run every frame as received on that interface of the current
        namespace (its ifindex in the context: what route's FIB lookup and a bridge read)."""
        self.spec = spec
        self.ingress = iface.ifindex(ingress) if ingress else None
        self.built: Built = build(spec, spec_features(spec), trace=True)
        try:
            self.entries: dict[str, list[RuleEntry]] = self.built.install_spec_rules()
            for st in spec.stages:
                control_for(st.kind).prepare(self.built, spec, st, replay=True)
            self.trace = self.built.map(PIPELINE_MAPS["trace"]).with_codecs(U32, TRACE)
            self.program = self.built.program
        except BaseException:
            self.built.close()
            raise
        # slot -> (rule index | None, reason), per stage index
        self._slots: list[dict[int, tuple[int | None, str]]] = []
        for st in spec.stages:
            self._slots.append(control_for(st.kind).slots_at(st, spec.hook,
                                                             self.entries.get(st.name, ())))

    def run(self, index: int, frame: bytes) -> Decision:
        """Run one frame; ``index`` is only copied into the decision.  A frame the kernel
        cannot run (shorter than an Ethernet header) is a decision of its own: verdict None,
        reason ``skipped``, the packet unchanged."""
        if len(frame) < MIN_FRAME:
            return Decision(index, None, None, None, "skipped", frame,
                            f"frame of {len(frame)} bytes is shorter than an Ethernet header "
                            f"({MIN_FRAME} bytes): not run")
        if self.spec.hook != "xdp":
            need = TC_MIN_L3.get(int.from_bytes(frame[12:14], "big"))
            if need and len(frame) < MIN_FRAME + need:
                return Decision(index, None, None, None, "skipped", frame,
                                f"frame of {len(frame)} bytes cuts its IP header short: "
                                f"BPF_PROG_TEST_RUN of a TC program refuses it (needs "
                                f"{MIN_FRAME + need}); not run")
        # the program clears the trace slot of the CPU it runs on, but a slot of another CPU
        # may still hold an earlier packet's record: clear them all first
        self._reset_trace()
        res = self.program.test_run(frame, ctx=self._ctx(frame))
        # the record sits in the slot of the CPU the run used; the others hold TRACE_NONE
        decided = [x for x in self.trace.lookup(0) if x.stage != TRACE_NONE]
        rec = decided[0] if decided else None
        if rec is None:
            return Decision(index, res.verdict, None, None, "end", res.data)
        stage = self.spec.stages[rec.stage]
        rule, reason = self._slots[rec.stage].get(rec.slot, (None, "rule"))
        return Decision(index, res.verdict, stage.name, rule, reason, res.data)

    def _ctx(self, frame: bytes):
        if self.ingress is None:
            return None
        if self.spec.hook == "xdp":
            return XdpMd(data_end=len(frame), ingress_ifindex=self.ingress)
        return SkBuff(ifindex=self.ingress, ingress_ifindex=self.ingress)

    def run_all(self, frames: Iterable[bytes]) -> Iterator[Decision]:
        for i, fr in enumerate(frames):
            yield self.run(i, fr)

    def _reset_trace(self) -> None:
        self.trace.update(0, TRACE.type(TRACE_NONE, 0))

    def close(self) -> None:
        self.built.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
