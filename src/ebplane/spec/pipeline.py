"""The pipeline spec: top-level validation, the :class:`PipelineSpec` model, loading.

Everything a spec says is checked here, before any code is generated or any
kernel object is created, so a bad spec never leaves partial state behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ebplane.errors import NotFound, SpecError, UsageError
from ebplane.spec import check
from ebplane.spec.located import Where, load_located, read_source
from ebplane.spec.protocol_set import (KNOWN_PROTOCOLS, REQUIRED_PROTOCOLS, canonical_order,
                                       is_protocol_file, missing_dependency, parser_graph)
from ebplane.spec.stages import STAGE_KINDS, Stage

SPEC_KEYS: tuple[str, ...] = ("pipeline", "hook", "interfaces", "mode", "netns", "protocols",
                              "stages", "parser", "priority")
HOOKS: tuple[str, ...] = ("xdp", "tc-ingress", "tc-egress")
XDP_MODES: tuple[str, ...] = ("auto", "native", "generic")
# fused: the parser is inlined into the one program; separate: a parser program hands a
# compact parse-info to the stage program in the XDP metadata area; xdp (hook tc-ingress): an
# XDP parser program leaves that parse-info for the TC stage program (docs/protocols.md)
PARSER_MODES: tuple[str, ...] = ("fused", "separate", "xdp")

PIPELINE_NAME_PATTERN = r"[a-z0-9-]{1,15}"
# what the kernel's dev_valid_name() accepts
IFNAME_PATTERN = r"(?!\.{1,2}$)[^/:\s\x00]{1,15}"
NETNS_PATTERN = r"(?!\.{1,2}$)[^/\s\x00]{1,255}"
# priority: pipelines sharing an interface and hook run in ascending priority; at XDP the
# priority is the pipeline's slot in the interface's dispatcher (docs/composition.md), and the
# number of slots is bounded by the kernel's 33 tail calls per packet
PRIORITY_MAX = 15


@dataclass(frozen=True)
class PipelineSpec:
    """A validated pipeline: where it attaches, what it parses, what it does."""

    name: str
    hook: str
    interfaces: tuple[str, ...]
    mode: str | None  # xdp attach mode; None for tc hooks
    netns: str | None  # None: the current network namespace
    protocols: tuple[str, ...]  # canonical order (KNOWN_PROTOCOLS), then users' .p4 files
    stages: tuple[Stage, ...]
    source: str  # the file it came from, for messages
    parser_mode: str = "fused"
    # None: the pipeline holds its hook alone; else it composes with the other pipelines of
    # its interfaces and hook, in ascending priority (docs/composition.md)
    priority: int | None = None

    def stage(self, name: str) -> Stage:
        """The stage (table) called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise NotFound(f"pipeline '{self.name}' has no stage '{name}'",
                       hint=f"stages: {', '.join(s.name for s in self.stages)}")

    def to_dict(self) -> dict[str, Any]:
        """The spec in its YAML form; ``parse_spec(yaml.safe_dump(s.to_dict()))`` equals ``s``
        up to ``source`` and rule line numbers."""
        d: dict[str, Any] = {"pipeline": self.name, "hook": self.hook}
        if self.interfaces:
            d["interfaces"] = list(self.interfaces)
        if self.mode is not None:
            d["mode"] = self.mode
        if self.netns is not None:
            d["netns"] = self.netns
        d["protocols"] = list(self.protocols)
        d["stages"] = [s.to_dict() for s in self.stages]
        if self.parser_mode != "fused":
            d["parser"] = {"mode": self.parser_mode}
        if self.priority is not None:
            d["priority"] = self.priority
        return d


def load_spec(path: str | Path) -> PipelineSpec:
    """Read and validate the spec file at ``path``."""
    p = Path(path)
    text = read_source(p, "spec file")
    return parse_spec(text, str(p))


def parse_spec(text: str, filename: str = "<spec>") -> PipelineSpec:
    """Validate a spec given as YAML text; ``filename`` is used in error messages.

    Rule lists of one JSON-style mapping a line are read by the fast path of
    :func:`load_located`; an error in a spec read that way is found again on the text read
    without it, which gives every field its own line and column.
    """
    obj, root = load_located(text, filename, fast=True)
    if root.marks is None or not root.marks.coarse:
        return _validate(obj, root, filename)
    try:
        return _validate(obj, root, filename)
    except SpecError:
        pass
    obj, root = load_located(text, filename)
    return _validate(obj, root, filename)


def _validate(obj: Any, root: Where, filename: str) -> PipelineSpec:
    d = check.mapping(obj, root, allowed=SPEC_KEYS, required=("pipeline", "hook", "protocols",
                                                              "stages"),
                      what="a mapping with pipeline:, hook:, protocols:, stages:")
    name = check.name(d["pipeline"], root / "pipeline", pattern=PIPELINE_NAME_PATTERN,
                      allowed="1-15 characters from a-z, 0-9, -")
    hook = check.choice(d["hook"], root / "hook", HOOKS)
    interfaces = _interfaces(d.get("interfaces", []), root / "interfaces")
    mode = _mode(d, root, hook)
    netns = None
    if "netns" in d:
        netns = check.name(d["netns"], root / "netns", pattern=NETNS_PATTERN,
                           allowed="a network namespace name: 1-255 characters, no '/' or spaces")
    protocols = _protocols(d["protocols"], root / "protocols", Path(filename).parent)
    parser_mode = _parser_mode(d.get("parser", {}), root / "parser", hook)
    stages = _stages(d["stages"], root / "stages", protocols)
    priority = None
    if "priority" in d:
        priority = check.integer(d["priority"], root / "priority", 0, PRIORITY_MAX,
                                 what="priority")
        if parser_mode == "xdp":
            raise (root / "priority").error(
                "a pipeline with parser mode xdp attaches an XDP parser next to its TC "
                "program and cannot compose with other pipelines", given=priority, key=True,
                hint="remove priority:, or use parser mode fused")
    for i, st in enumerate(stages):
        if st.hooks is not None and hook not in st.hooks:
            raise (root / "stages" / i / st.kind).error(
                f"stage kind {st.kind} works at hook {' or '.join(st.hooks)} only", given=hook,
                key=True, hint=f"use hook: {st.hooks[0]} (or move the stage to a pipeline of its own)")
        st.check_hook(hook, root / "stages" / i / st.kind)
    provided: set[str] = set()  # what the stages so far give later ones (Stage.provides)
    for i, st in enumerate(stages):
        provided.update(st.provides)
        for j, rule in enumerate(st.rules if st.has_rules else ()):
            if rule.state is not None and "ct_state" not in provided:
                raise (root / "stages" / i / st.kind / "rules" / j / "state").error(
                    "a state: rule needs a conntrack stage before its filter", key=True,
                    hint="add `- conntrack: {}` to stages:, before this filter")
    return PipelineSpec(name=name, hook=hook, interfaces=interfaces, mode=mode, netns=netns,
                        protocols=protocols, stages=stages, source=filename,
                        parser_mode=parser_mode, priority=priority)


def _interfaces(obj: Any, where: Where) -> tuple[str, ...]:
    names = check.sequence(obj, where, what="a list of interface names")
    seen: set[str] = set()
    for i, ifname in enumerate(names):
        check.name(ifname, where / i, pattern=IFNAME_PATTERN,
                   allowed="an interface name: 1-15 characters, no '/', ':' or spaces")
        if ifname in seen:
            raise (where / i).error("interface listed twice", given=ifname)
        seen.add(ifname)
    return tuple(names)


def _mode(d: dict[str, Any], root: Where, hook: str) -> str | None:
    if hook != "xdp":
        if "mode" in d:
            raise (root / "mode").error(f"mode applies to hook xdp only, not {hook}",
                                        given=d["mode"], key=True,
                                        hint="remove mode:, or use hook: xdp")
        return None
    return check.choice(d.get("mode", "auto"), root / "mode", XDP_MODES)


def _protocols(obj: Any, where: Where, base: Path) -> tuple[str, ...]:
    """Library names and users' .p4 files (paths relative to the spec file, made absolute)."""
    names = check.sequence(obj, where, what="a list of protocol names")
    resolved: list[str] = []
    for i, proto in enumerate(names):
        if isinstance(proto, str) and is_protocol_file(proto):
            path = Path(proto) if Path(proto).is_absolute() else base / proto
            try:
                found = path.is_file()
            except (OSError, ValueError):  # a name too long for the file system, a NUL byte
                found = False
            if not found:
                raise (where / i).error("protocol file not found", given=proto,
                                        hint="give the path of a .p4 file, relative to the "
                                             "spec file")
            proto = str(path.resolve())
        else:
            check.choice(proto, where / i, tuple(KNOWN_PROTOCOLS) + ("FILE.p4",))
        if proto in resolved:
            raise (where / i).error("protocol listed twice", given=names[i])
        resolved.append(proto)
    names = resolved
    for required in REQUIRED_PROTOCOLS:
        if required not in names:
            raise where.error(f"protocol {required} is required", given=names,
                              hint=f"add {required} to protocols:")
    missing = missing_dependency(names)
    if missing is not None:
        proto, needs = missing
        raise (where / names.index(proto)).error(
            f"protocol {proto} needs {' or '.join(needs)}", given=proto,
            hint=f"add {needs[0]} to protocols:")
    ordered = canonical_order(names)
    try:
        parser_graph(ordered)  # composes: users' files parse, hooks fit, all reached
    except SpecError as e:
        if e.file is not None and e.line is not None:  # located in a .p4 file: show that
            raise
        # about a whole file (named like a library protocol, unreadable): the spec's entry
        at = where
        if e.file is not None:
            with_file = [i for i, n in enumerate(names) if n == str(Path(e.file).resolve())]
            at = where / with_file[0] if with_file else where
            raise at.error(f"{e.file}: {e.reason}", hint=e.hint) from None
        raise at.error(e.reason, given=e.given, allowed=e.allowed, hint=e.hint) from None
    return ordered


def _parser_mode(obj: Any, where: Where, hook: str) -> str:
    body = check.mapping({} if obj is None else obj, where, allowed=("mode",))
    mode = check.choice(body.get("mode", "fused"), where / "mode", PARSER_MODES)
    if mode == "separate" and hook != "xdp":
        raise (where / "mode").error("a separate parser program needs hook xdp (it hands "
                                     "parse-info over in the XDP metadata area)", given=mode,
                                     hint="use mode: fused, or hook: xdp"
                                          + (" (or mode: xdp, an XDP parser for these TC "
                                             "stages)" if hook == "tc-ingress" else ""))
    if mode == "xdp" and hook != "tc-ingress":
        # only frames entering through the interface pass XDP first; at hook xdp the parser
        # is already in the program
        raise (where / "mode").error(f"parser mode xdp (an XDP parser handing parse-info to "
                                     f"TC stages) needs hook tc-ingress, not {hook}: only "
                                     f"received frames pass XDP before TC", given=mode,
                                     hint="use hook: tc-ingress, or mode: fused"
                                          + (" (or mode: separate)" if hook == "xdp" else ""))
    return mode


def _stages(obj: Any, where: Where, protocols: tuple[str, ...]) -> tuple[Stage, ...]:
    items = check.sequence(obj, where, what="a list of stages")
    if not items:
        raise where.error("a pipeline needs at least one stage",
                          allowed=", ".join(STAGE_KINDS), hint="add e.g. - filter: {...}")
    stages: list[Stage] = []
    for i, item in enumerate(items):
        at = where / i
        if not isinstance(item, dict) or len(item) != 1:
            raise at.error("a stage is a mapping with exactly one key, its kind",
                           given=item if not isinstance(item, dict) else list(item),
                           allowed=", ".join(STAGE_KINDS))
        (kind, body), = item.items()
        if kind not in STAGE_KINDS:
            raise (at / str(kind)).error("unknown stage kind", given=kind,
                                         allowed=", ".join(STAGE_KINDS), key=True)
        stage = STAGE_KINDS[kind](body, at / kind, protocols)
        for other in stages:
            if other.name == stage.name:
                raise (at / kind / "name").error(f"duplicate stage name {stage.name!r}",
                                        given=stage.name,
                                        hint="give each stage a unique name: (used for "
                                             "run-time edits)")
        stages.append(stage)
    return tuple(stages)
