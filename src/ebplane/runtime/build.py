"""Spec -> loaded (not yet attached) program: generate, compile, open, reuse pinned maps, load.

Shared by ``apply`` (pins, attaches) and ``replay`` (runs on packets, leaves nothing behind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ebplane.codegen.pipeline import Features, GeneratedProgram, generate
from ebplane.errors import NotFound
from ebplane.kernel.codec import U32
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import BpfObject, Program
from ebplane.runtime.tables import FilterTable
from ebplane.spec import FilterStage, PipelineSpec
from ebplane.toolchain.clang import compile_c


@dataclass
class Built:
    spec: PipelineSpec
    gen: GeneratedProgram
    obj: BpfObject
    cached: bool
    reused_maps: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def program(self) -> Program:
        return self.obj.programs[self.gen.name]

    @property
    def xdp_parser(self) -> Program | None:
        """Parser mode xdp: the XDP program attached next to the TC program (``program``)."""
        return self.obj.programs[self.gen.xdp_parser] if self.gen.xdp_parser else None

    def map(self, cname: str) -> Map:
        return self.obj.maps[cname]

    def table(self, stage: FilterStage) -> FilterTable:
        g = self.gen
        return FilterTable(stage.name, stage.capacity,
                           self.map(g.map_for(stage.name, "rules")),
                           self.map(g.map_for(stage.name, "shapes")),
                           self.map(g.map_for(stage.name, "config")),
                           self.map(g.map_for(stage.name, "counters")), g.user_layout)

    def close(self) -> None:
        self.obj.close()


def build(spec: PipelineSpec, features: Features, *, trace: bool = False,
          reuse_pins: Path | None = None) -> Built:
    """Generate, compile and load ``spec``.  With ``reuse_pins`` (the pipeline's map pin
    directory), maps pinned there with the same definition are reused, so rules and counters
    carry over; a map whose definition changed (type, sizes, capacity or flags: see
    ``MapSpec.compatible``) is created anew, and said so in ``notes``."""
    gen = generate(spec, features, trace=trace)
    res = compile_c(gen.source, name=spec.name)
    obj = BpfObject.open_bytes(res.elf, spec.name)
    built = Built(spec, gen, obj, res.cached)
    try:
        if reuse_pins is not None:
            for role in gen.maps:
                if not role.pinned or not role.reusable:
                    continue
                path = reuse_pins / role.cname
                if not path.exists():
                    continue
                try:
                    pinned = Map.from_pin(path)
                except NotFound:
                    continue
                with pinned:
                    why = obj.map_specs[role.cname].compatible(pinned)
                    if why is None:
                        obj.reuse_map(role.cname, pinned.fd)  # the object keeps a dup
                        built.reused_maps.add(role.cname)
                if why is not None:
                    built.notes.append(f"map {role.cname} changed ({why}): created anew, "
                                       f"its previous contents are dropped")
        obj.load()
        if gen.stage_prog is not None:  # separate parser: it tail-calls the stage program
            obj.maps["ebp_progs"].update_raw(U32.encode(0),
                                             U32.encode(obj.programs[gen.stage_prog].fd))
    except BaseException:
        obj.close()
        raise
    return built
