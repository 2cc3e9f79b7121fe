"""Struct layouts: the C clang compiled equals the Python codecs the control plane uses.

A layout defined once in Python (``codegen.layout.Layout``) is written into the program as C
and packed by ``kernel.codec.Packed``; this reads the compiled object's BTF (``bpftool btf
dump file``) and checks every such struct's size and member offsets against the Layout (the filter's
too, whose codecs are a ``struct`` format and a numpy dtype made from its Layouts).
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from ebplane.codegen import dispatch
from ebplane.codegen.capture import CAP_REC, CaptureSpec
from ebplane.codegen.layout import COUNT as COUNT_LAYOUT, Field, Layout
from ebplane.codegen.pipeline import TRACE, generate
from ebplane.kernel.codec import COUNT, Packed
from ebplane.spec import parse_spec
from ebplane.stages.balancer import gen as lb_gen
from ebplane.stages.conntrack import gen as ct_gen
from ebplane.stages.encap import gen as encap_gen
from ebplane.stages.filter import gen as flt_gen
from ebplane.stages.filter.model import BOX, RULE, Box
from ebplane.stages.filter.tree import NODE_DTYPE, node_bytes
from ebplane.stages.forward import gen as fwd_gen
from ebplane.stages.mirror import gen as mirror_gen
from ebplane.stages.multicast import gen as mc_gen
from ebplane.toolchain.clang import compile_c

SPEC = """\
pipeline: layouts
hook: xdp
protocols: [ethernet, vlan, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - conntrack: {size: 64}
  - filter:
      name: t
      rules:
        - {src: 198.18.1.0/24, action: pass}
        - {state: established, action: pass}
  - bridge: {ports: [a0, a1]}
  - redirect: {to: a1}
"""
# the same stages at tc-ingress use forward_tc.h's structs
SPEC_TC = SPEC.replace("hook: xdp", "hook: tc-ingress").replace("layouts", "layouts-tc")
# the other kinds whose structs are Layouts (balancer: XDP only; mirror differs by hook)
SPEC_KINDS = """\
pipeline: layouts-k
hook: xdp
protocols: [ethernet, ipv4, ipv6, tcp, udp, icmp, icmpv6]
stages:
  - decap: {tunnels: [ipip]}
  - balancer:
      name: lb
      source: {ipv4: 198.18.0.1}
      vips: [{vip: 198.18.10.1, port: 80, backends: [198.18.20.1]}]
  - encap: {tunnel: ipip, src: 198.18.0.1, dst: 198.18.0.2}
  - multicast: {snooping: true, groups: {g: {addresses: [239.1.1.1]}}}
  - mirror: {to: p1, out: p2}
"""
SPEC_KINDS_TC = """\
pipeline: layouts-k-tc
hook: tc-ingress
protocols: [ethernet, ipv4, ipv6, udp]
stages:
  - decap: {tunnels: [ipip]}
  - encap: {tunnel: gre, src: "2001:db8::1", dst: "2001:db8::2", key: 9}
  - multicast: {groups: {g: {addresses: ["ff0e::1"]}}}
  - mirror: {to: p1}
"""
KIND_LAYOUTS = {"xdp": {*lb_gen.LAYOUTS, *flt_gen.LAYOUTS, encap_gen.ENCAP, *mc_gen.LAYOUTS,
                        mirror_gen.CFG},
                "tc-ingress": {encap_gen.ENCAP, *mc_gen.LAYOUTS, mirror_gen.CFG}}


def _btf_structs(elf: bytes, tmp_path) -> dict[str, dict]:
    """struct name -> {"size", "members": [(name, byte offset)]} of an object's BTF."""
    path = tmp_path / "prog.o"
    path.write_bytes(elf)
    out = subprocess.run(["bpftool", "-j", "btf", "dump", "file", str(path)], check=True,
                         capture_output=True, text=True).stdout
    structs = {}
    for t in json.loads(out)["types"]:
        if t["kind"] == "STRUCT" and t["name"] != "(anon)":
            structs[t["name"]] = {"size": t["size"],
                                  "members": [(m["name"], m["bits_offset"] // 8)
                                              for m in t["members"]]}
    return structs


def _compile(spec_text: str, tmp_path_factory):
    """The program of a spec and the structs of its compiled object's BTF."""
    spec = parse_spec(spec_text, "layouts.yaml")
    prog = generate(spec, trace=True, capture=CaptureSpec())
    # BTF describes the types the code uses; a global pointer of each makes sure of them all
    names = [t.name for t in prog.types.values()] + ["ebp_flt_rule",
                                                     "ebp_flt_box", "ebp_flt_node"]
    anchors = "".join(f"struct {n} *ebp_anchor_{n};\n" for n in names)
    elf = compile_c(prog.source + anchors, name="layouts").elf
    return prog, _btf_structs(elf, tmp_path_factory.mktemp("btf"))


@pytest.fixture(scope="module", params=[SPEC, SPEC_TC], ids=["xdp", "tc"])
def program(request, tmp_path_factory):
    return _compile(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=[SPEC_KINDS, SPEC_KINDS_TC], ids=["xdp", "tc"])
def kinds_program(request, tmp_path_factory):
    return _compile(request.param, tmp_path_factory)


def _check_layouts(prog, btf) -> None:
    for layout in prog.types.values():
        got = btf[layout.name]
        assert got["members"] == [(f.name, o) for f, o in zip(layout.fields, layout.offsets)]
        if isinstance(layout.fields[-1].count, str):  # a trailing array of symbolic length
            assert layout.size == layout.offsets[-1]
        else:
            assert got["size"] == layout.size == Packed(layout).size


def test_generated_structs_have_the_layouts_offsets(program):
    prog, btf = program
    want = {TRACE, CAP_REC, COUNT_LAYOUT, *ct_gen.LAYOUTS, *fwd_gen.STRUCTS}
    if prog.hook != "xdp":
        want |= set(fwd_gen.STRUCTS_TC)
    assert want <= set(prog.types.values())
    _check_layouts(prog, btf)
    assert prog.manifest()["types"]["ebp_ct_entry"]["size"] == btf["ebp_ct_entry"]["size"]


def test_other_kinds_structs_have_the_layouts_offsets(kinds_program):
    """balancer, encap, multicast, mirror: their structs are generated from Layouts (their
    headers declare none), and clang lays them out as the codecs do."""
    prog, btf = kinds_program
    assert KIND_LAYOUTS[prog.hook] <= set(prog.types.values())
    _check_layouts(prog, btf)
    assert btf["ebp_encap"]["size"] == encap_gen.ENCAP.size == encap_gen.OUTER_MAX + 19
    assert prog.manifest()["types"]["ebp_mc_key"]["size"] == btf["ebp_mc_key"]["size"] == 20


def test_dispatcher_chain_entry_has_its_layouts_offsets(tmp_path):
    """struct ebp_chain_if (the composition's shared map, outside any pipeline's program)."""
    source = "\n".join(["#include <linux/bpf.h>", "#include <bpf/bpf_helpers.h>",
                        dispatch.chain_maps_c(), 'char LICENSE[] SEC("license") = "GPL";'])
    btf = _btf_structs(compile_c(source, name="chainlayout").elf, tmp_path)
    got, layout = btf["ebp_chain_if"], dispatch.CHAIN_IF
    assert got["members"] == [(f.name, o) for f, o in zip(layout.fields, layout.offsets)]
    assert got["size"] == layout.size == Packed(layout).size == 8


def test_filter_structs_have_the_layouts_offsets_and_codecs(program):
    """ebp_flt_rule, ebp_flt_box, ebp_flt_node: generated from the filter's Layouts (filter.h
    declares none); the compiled object lays them out as the Layouts do, and the codecs the
    control plane packs them with are made from the same Layouts: a box packed by
    ``Box.pack`` and a node by ``node_bytes`` read back field by field."""
    prog, btf = program
    assert set(flt_gen.LAYOUTS) <= set(prog.types.values())
    assert COUNT.layout is COUNT_LAYOUT  # ebp_count: a Layout, checked with the others
    rule_l, box_l, node_l = flt_gen.LAYOUTS
    assert btf["ebp_flt_rule"]["size"] == RULE.size == rule_l.size
    assert btf["ebp_flt_box"]["size"] == BOX.size == box_l.size == 216
    assert btf["ebp_flt_node"]["size"] == NODE_DTYPE.itemsize == node_l.size == 24
    assert {n: o for n, (_, o) in NODE_DTYPE.fields.items()} == \
        dict(btf["ebp_flt_node"]["members"])
    n = box_l.fields[0].count  # the dimensions
    box = Box(tuple(range(1, n + 1)), tuple(range(101, 101 + n)), prio=7, rule_id=8,
              action=0x101, user_need=5, user_mask=(1, 2, 3, 4), user_value=(5, 6, 7, 8),
              mark=9, klass=10)
    got = Packed(box_l).decode(box.pack(prio_scale=3))
    assert (got.lo, got.hi, got.user_mask, got.user_value, got.user_need) == \
        (box.lo, box.hi, box.user_mask, box.user_value, 5)
    assert got.rule == Packed(rule_l).type(21, 8, 0x101, 9, 10)
    node = Packed(node_l).decode(node_bytes(np.array([[2**40 + 3, 11, 12, 0xFF]], np.uint64)))
    assert node == Packed(node_l).type(2**40 + 3, 11, 12, 0xFF, 0)


def test_packed_codec_round_trips_arrays_nested_and_padding():
    inner = Layout("inner", [Field("a", "__u8"), Field("b", "__u32")])
    outer = Layout("outer", [Field("x", "__u16"), Field("words", "__u32", 2),
                           Field("addr", "__u32", 2, raw=True), Field("one", inner),
                           Field("two", inner, 2), Field("tail", "__u8")])
    assert (inner.size, outer.offset("words"), outer.offset("one"), outer.size) == (8, 4, 20, 48)
    codec = Packed(outer)
    v = codec.type(7, (1, 2), bytes(range(8)), codec_in(inner)(3, 4),
                   (codec_in(inner)(5, 6), codec_in(inner)(8, 9)), 10)
    data = codec.encode(v)
    assert len(data) == 48 and data[2:4] == b"\0\0" and codec.decode(data) == v
    assert data[12:20] == bytes(range(8))
    with pytest.raises(ValueError, match="unknown C type"):
        Field("f", "int")


def codec_in(layout):
    return Packed(layout).type
