"""Control plane of the mirror stage: the mirror port's ifindex (and at XDP, the original's
port) in the stage's config; at XDP both ports in a DEVMAP_HASH, made capable of receiving
redirected frames like every redirect target (:mod:`ebplane.stages.forward.control`)."""

from __future__ import annotations

from typing import Callable

from ebplane.errors import EbplaneError, UsageError
from ebplane.kernel.codec import COUNT, U32, Packed
from ebplane.kernel.maps import Map
from ebplane.net import iface
from ebplane.stages.control import StageControl
from ebplane.stages.forward.control import ForwardingRuntime, make_capable, require_capable
from ebplane.stages.mirror import gen as mirror_gen
from ebplane.stages.mirror.spec import MirrorStage
from ebplane.stages.multicast.control import multi_buffer_note

# the codec of struct ebp_mirror_cfg, made from its one definition (gen.py's Layout)
MIRROR_CFG = Packed(mirror_gen.CFG)


class MirrorControl(StageControl):
    kind = "mirror"

    def check(self, spec, stage: MirrorStage) -> list[str]:
        if spec.hook == "xdp":
            # the selected frame goes out by one broadcast that leaves out the port it came
            # in on (BPF_F_EXCLUDE_INGRESS): a port of the pipeline as to: would never get
            # the copies of its own frames, as out: would lose their originals
            for key, port in (("to", stage.to), ("out", stage.out)):
                if port in spec.interfaces:
                    raise UsageError(
                        f"mirror '{stage.name}': {key}: {port} is an interface the pipeline is "
                        f"attached to; at hook xdp the copy and the original leave by one "
                        f"broadcast that skips the port a frame came in on, so selected frames "
                        f"arriving on {port} would lose their "
                        f"{'copy' if key == 'to' else 'original'} without a counter",
                        hint=f"name another port as {key}:, or mirror at hook tc-ingress "
                             "(bpf_clone_redirect sends the copy to any port)")
            fw = ForwardingRuntime()
            return (fw.check(spec, stage) + require_capable(stage, [stage.to, stage.out], spec)
                    + multi_buffer_note(spec, stage))
        iface.ifindex(stage.to)
        return []

    def prepare(self, built, spec, stage: MirrorStage, *, replay: bool = False) -> list[str]:
        n = mirror_gen.map_names(stage.name)
        cfg = built.map(n["config"]).with_codecs(U32, MIRROR_CFG)
        if spec.hook != "xdp":
            try:
                to = iface.ifindex(stage.to)
            except EbplaneError:
                if not replay:
                    raise
                to = 0
            cfg.update(0, MIRROR_CFG.type(to, 0))
            return []
        notes = ForwardingRuntime().prepare(built, spec, stage, replay=replay)
        ready = {e.ifname: e.ifindex for e in make_capable([stage.to, stage.out], spec,
                                                            replay=replay, stage=stage)}
        ports = built.map(n["ports"]).with_codecs(U32, U32)
        for i in ready.values():
            ports.update(i, i)
        cfg.update(0, MIRROR_CFG.type(ready.get(stage.to, 0), ready.get(stage.out, 0)))
        return notes


    def slots(self, stage, live=()) -> dict[int, tuple[int | None, str]]:
        return {i: (None, name) for i, name in enumerate(mirror_gen.OUTCOMES)}

    def slots_at(self, stage, hook: str, live=()) -> dict[int, tuple[int | None, str]]:
        return self.slots(stage, live)  # the same slots at every hook

    def describe_slot(self, stage, slot: int, live=()) -> tuple[int | None, str]:
        return self.slots(stage).get(slot, (None, f"slot {slot}"))

    def describe_slot_at(self, stage, hook: str, slot: int, live=()) -> tuple[int | None, str]:
        return self.describe_slot(stage, slot, live)
    def map_roles(self, stage) -> dict[str, str]:
        return {c: r for r, c in mirror_gen.map_names(stage.name).items()}

    def targets(self, spec, stage: MirrorStage) -> list[str]:
        return [n for n in (stage.to, stage.out) if n]

    def stats(self, maps: Callable[[str], Map], spec, stage: MirrorStage) -> dict:
        cm = maps(mirror_gen.map_names(stage.name)["counters"]).with_codecs(U32, COUNT)
        counts = {}
        for i, name in enumerate(mirror_gen.OUTCOMES):
            c = cm.lookup_sum(i)
            counts[name] = {"packets": c.packets, "bytes": c.bytes}
        return {"counts": counts, "to": stage.to, "sample": stage.sample,
                **({"out": stage.out} if stage.out else {})}


CONTROLS = {"mirror": MirrorControl()}
