"""Spec -> loaded (not yet attached) program: generate, compile, open, reuse pinned maps, load.

Shared by ``apply`` (pins, attaches) and ``replay`` (runs on packets, leaves nothing behind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ebplane.codegen.pipeline import PIPELINE_MAPS, Features, GeneratedProgram, generate
from ebplane.errors import NotFound
from ebplane.kernel.codec import U32
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import BpfObject, Program
from ebplane.runtime.tables import RuleEntry, assign_ids
from ebplane.spec import FilterStage, PipelineSpec
from ebplane.stages.filter.plan import CompiledTable, compile_table
from ebplane.stages.control import jumbo_interfaces  # noqa: F401  (apply reads it here)
from ebplane.stages.filter.table import FilterTable
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

    @property
    def tc_marks(self) -> Program | None:
        """An XDP pipeline whose rules set marks: the TC ingress program that copies them
        from the metadata area to the skb, attached next to the XDP program."""
        return self.obj.programs[self.gen.tc_marks] if self.gen.tc_marks else None

    @property
    def tc_ingress(self) -> Program | None:
        """A tc-egress pipeline with a nat stage: the TC ingress program attached next to it
        (destination translation before routing)."""
        return self.obj.programs[self.gen.tc_ingress] if self.gen.tc_ingress else None

    def map(self, cname: str) -> Map:
        return self.obj.maps[cname]

    def table(self, stage: FilterStage) -> FilterTable:
        return FilterTable(stage.name, stage.capacity, self.map)

    def install_spec_rules(self) -> dict[str, list[RuleEntry]]:
        """Fill every filter with its spec's rules (ids 0..n-1), as compiled into the program
        (replay, benchmarks: a program loaded from a spec alone).  Returns the entries."""
        out = {}
        for st in self.spec.stages:
            if st.has_rules:
                out[st.name] = entries = assign_ids(st.rules, [], st.capacity)
                ct = self.gen.compiled_filters.get(st.name) or \
                    compile_filter(st, entries, self.gen.user_layout)
                self.table(st).install(ct, [e.id for e in entries])
        return out

    def close(self) -> None:
        self.obj.close()


def compile_filter(stage: FilterStage, entries: list[RuleEntry], layout,
                   running=None) -> CompiledTable:
    """A filter's live rules compiled for a program whose user area has ``layout``."""
    return compile_table([e.rule for e in entries], [e.id for e in entries], name=stage.name,
                         layout=layout, running=running, choice=stage.classifier)


def build(spec: PipelineSpec, features: Features, *, trace: bool = False,
          reuse_pins: Path | None = None, filters: dict | None = None,
          keep_groups: set[str] | None = None, frags: bool = False,
          capture=None, chain_maps: dict[str, int] | None = None,
          chain_base: int | None = None) -> Built:
    """Generate, compile and load ``spec``.  With ``reuse_pins`` (the pipeline's map pin
    directory), maps pinned there with the same definition are reused, so rules and counters
    carry over; a map whose definition changed (type, sizes, capacity or flags: see
    ``MapSpec.compatible``) is created anew, and said so in ``notes``.  Maps of a group
    (``MapRole.group``) are reused only all together, and only for groups in
    ``keep_groups``.  ``filters``: table -> FilterPlan, ``frags``: multi-buffer XDP (see
    ``generate``); ``capture``: the capture hooks of a running trace (a ``CaptureSpec``, see
    ``generate``); ``chain_maps``: a member of a composition at XDP (``priority:``) is
    built to go on to the next member, with the dispatcher's shared maps (C name -> fd, see
    ``ebplane.runtime.dispatch``); ``chain_base``: its interface's base there, when it has
    one interface."""
    gen = generate(spec, features, trace=trace, filters=filters, frags=frags, capture=capture,
                   chain=chain_maps is not None, chain_base=chain_base)
    res = compile_c(gen.source, name=spec.name)
    obj = BpfObject.open_bytes(res.elf, spec.name)
    built = Built(spec, gen, obj, res.cached)
    try:
        if reuse_pins is not None:
            usable: dict[str, Map] = {}
            opened: list[Map] = []
            for role in gen.maps:
                if not role.pinned or not role.reusable:
                    continue
                if role.group is not None and role.group not in (keep_groups or set()):
                    continue
                path = reuse_pins / role.cname
                if not path.exists():
                    continue
                try:
                    pinned = Map.from_pin(path)
                except NotFound:
                    continue
                why = obj.map_specs[role.cname].compatible(pinned)
                if why is None:
                    usable[role.cname] = pinned
                    opened.append(pinned)
                else:
                    pinned.close()
                    built.notes.append(f"map {role.cname} changed ({why}): created anew, "
                                       f"its previous contents are dropped")
            groups: dict[str, list[str]] = {}
            for role in gen.maps:
                if role.group is not None:
                    groups.setdefault(role.group, []).append(role.cname)
            for members in groups.values():  # all of a group, or none of it
                if not all(m in usable for m in members):
                    for m in members:
                        usable.pop(m, None)
            for cname, pinned in usable.items():
                obj.reuse_map(cname, pinned.fd)  # the object keeps a dup
                built.reused_maps.add(cname)
            for m in opened:
                m.close()
        for cname, fd in (chain_maps or {}).items():
            if cname in obj.map_specs:
                obj.reuse_map(cname, fd)
        obj.load()
        if gen.stage_prog is not None:  # separate parser: it tail-calls the stage program
            obj.maps[PIPELINE_MAPS["progs"]].update_raw(U32.encode(0),
                                             U32.encode(obj.programs[gen.stage_prog].fd))
    except BaseException:
        obj.close()
        raise
    return built

