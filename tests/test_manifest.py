"""The generation manifest: every map the generated C declares is in it once, keyed by
(stage, role), with the layout the C declares and the names of fixed counter slots; a state
file written before manifests were kept still resolves its maps (by the kinds' naming)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ebplane.codegen.pipeline import VERDICTS, Manifest, generate
from ebplane.runtime.pipeline import manifest_of
from ebplane.runtime.state import PipelineState
from ebplane.spec import load_spec
from ebplane.stages.conntrack.gen import COUNTERS as CT_COUNTERS
from ebplane.stages.count.gen import COUNTERS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ["edge.yaml", "route.yaml", "bridge.yaml", "steer.yaml", "xsk.yaml", "tenant.yaml"]
_DECL = re.compile(r"struct \{\n\t__uint\(type, (\w+)\);\n\t__uint\(max_entries, (\w+)\);"
                   r"(?:\n\t__type\(key, ([^)]+)\);\n\t__type\(value, ([^)]+)\);)?"
                   r"(?:\n\t__uint\(map_flags, (\w+)\);)?\n\} (\w+) SEC\(\"\.maps\"\);")

CT_SPEC = """\
pipeline: ct
hook: xdp
protocols: [ethernet, ipv4, ipv6, tcp, udp]
stages:
  - conntrack: {size: 1024}
  - count: {name: seen}
  - filter:
      name: fw
      rules: [{state: [established, related], action: pass}]
"""


def _declared(source: str) -> dict[str, tuple]:
    return {m.group(6): (m.group(1), m.group(2), m.group(3), m.group(4), m.group(5))
            for m in _DECL.finditer(source)}


@pytest.mark.parametrize("example", EXAMPLES)
def test_manifest_lists_every_declared_map_with_its_layout(example):
    prog = generate(load_spec(ROOT / "examples" / example))
    man = prog.manifest()
    declared = _declared(prog.source)
    names = [m["cname"] for m in man["maps"]]
    assert len(names) == len(set(names))
    assert set(names) == set(declared), (names, sorted(declared))
    keys = [(m["stage"], m["role"]) for m in man["maps"]]
    assert len(keys) == len(set(keys)), f"two maps in one (stage, role): {keys}"
    for m in man["maps"]:
        mtype, entries, key, value, flags = declared[m["cname"]]
        assert (m["type"], str(m["max_entries"]), m["flags"]) == (mtype, entries, flags)
        if key is not None:
            assert (m["key"], m["value"]) == (key, value)
        if m.get("slots") is not None:
            assert len(m["slots"]) == int(entries)
    assert man["hook"] == "xdp" and man["verdicts"] == VERDICTS["xdp"]
    assert Manifest(man).cname(None, "verdicts") == "ebp_verdicts"


def test_counter_slots_come_from_the_kinds_tuples(tmp_path):
    spec_file = tmp_path / "ct.yaml"
    spec_file.write_text(CT_SPEC)
    prog = generate(load_spec(spec_file))
    man = Manifest(prog.manifest())
    assert tuple(man.map("seen", "counters")["slots"]) == COUNTERS
    assert tuple(man.map("conntrack", "counters")["slots"]) == CT_COUNTERS
    # the count stage's C indexes its slots by the tuple, not by literals written apart
    body = prog.source.split("stage_1_count", 1)[1].split("}", 1)[0]
    assert f"? {COUNTERS.index('ipv4')} :" in body and f": {COUNTERS.index('other')}, " in body
    assert set(man.roles()) == {m["cname"] for m in man.maps}
    # conntrack.h's numbers are generated from the Python tables, ahead of the header
    head = prog.source.split('#include "conntrack.h"', 1)[0]
    assert f"#define EBP_CT_CNT_FULL {CT_COUNTERS.index('full')}\n" in head
    assert f"#define EBP_CT_NCOUNTERS {len(CT_COUNTERS)}\n" in head
    assert "#define EBP_CT_ESTABLISHED 2\n" in head  # the value `state: established` matches


def test_a_state_without_manifest_resolves_maps_by_naming(tmp_path):
    spec_file = tmp_path / "ct.yaml"
    spec_file.write_text(CT_SPEC)
    prog = generate(load_spec(spec_file))
    st = PipelineState(name="ct", spec_text=CT_SPEC, spec_file=str(spec_file), hook="xdp",
                       netns=None, prog_id=0, features=prog.features.to_dict())
    old = manifest_of(st)  # as an earlier version wrote the state: no manifest
    new = manifest_of(PipelineState(**{**st.__dict__, "manifest": prog.manifest()}))
    # every map the program has is known to both, in the same (stage, role)
    for cname, where in new.roles().items():
        assert old.roles().get(cname) == where, cname
    with pytest.raises(ValueError, match="manifest version"):
        Manifest({**prog.manifest(), "version": 99})


def test_user_layout_is_read_from_the_manifest(tmp_path):
    from ebplane.codegen.p4c import UserLayout
    from ebplane.runtime.pipeline import running_user_layout

    spec = load_spec(ROOT / "examples" / "tenant.yaml")
    prog = generate(spec)
    layout = prog.user_layout.to_dict()
    assert len(layout) >= 2  # tenant.yaml's rules match on several fields
    st = PipelineState(name=spec.name, spec_text="", spec_file="", hook=spec.hook, netns=None,
                       prog_id=0, features=prog.features.to_dict(), manifest=prog.manifest())
    assert running_user_layout(st, spec).to_dict() == layout
    assert UserLayout.from_dict(layout, prog.graph) == prog.user_layout
    # the manifest is what the program was built with: it wins over a recomputation
    moved = [{**f, "offset": f["offset"] + 1} for f in layout]
    st.manifest = {**prog.manifest(), "user_layout": moved}
    assert running_user_layout(st, spec).to_dict() == moved
    st.manifest = None  # a state written before manifests were kept: from its features
    assert running_user_layout(st, spec).to_dict() == layout
