"""The pipeline spec front end: every validation error is located, good specs round-trip."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest
import yaml

from ebplane.errors import SpecError, UsageError
from ebplane.spec import (KNOWN_PROTOCOLS, STAGE_KINDS, CountStage, FilterStage, PipelineSpec,
                          Rule, load_spec, parse_rule, parse_spec, register_stage)
from ebplane.spec.protocol_set import canonical_order, missing_dependency

ALL = "[ethernet, vlan, ipv4, ipv6, tcp, udp, icmp, icmpv6]"

GOOD = """\
pipeline: edge
hook: xdp
interfaces: [eth1, veth-a]
mode: native
netns: ebp-lab-dut
protocols: [udp, ethernet, ipv6, vlan, ipv4, tcp, icmp, icmpv6]
stages:
  - filter:
      name: acl
      default: next
      malformed: drop
      capacity: 131072
      rules:
        - {src: 198.18.0.0/24, proto: udp, dport: 53, action: drop}
        - {dst: "2001:db8::/32", proto: tcp, dport: "22-23", action: drop}
        - {vlan: 100, action: pass}
        - {sport: 1024-65535, action: pass}
        - {src: 198.18.1.1, dst: 198.19.0.0/16, proto: 132, action: drop}
        - {action: drop}
  - count: {name: c1}
  - count: {}
"""


def rule_spec(rule: str, protocols: str = ALL) -> str:
    """A spec whose only rule (on line 7) is ``rule``."""
    return ("pipeline: edge\n"
            "hook: xdp\n"
            f"protocols: {protocols}\n"
            "stages:\n"
            "  - filter:\n"
            "      rules:\n"
            f"        - {rule}\n")


def spec_error(text: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(text, "t.yaml")
    err = info.value
    assert err.file == "t.yaml"
    assert str(err).startswith(f"t.yaml:{err.line}:{err.column}: ")
    return err


# -- good specs -------------------------------------------------------------------------------

def test_good_spec_model():
    spec = parse_spec(GOOD, "good.yaml")
    assert spec.name == "edge" and spec.hook == "xdp" and spec.mode == "native"
    assert spec.interfaces == ("eth1", "veth-a") and spec.netns == "ebp-lab-dut"
    listed = {"ethernet", "vlan", "ipv4", "ipv6", "tcp", "udp", "icmp", "icmpv6"}
    # canonical (library) order, not the file's
    assert spec.protocols == tuple(p for p in KNOWN_PROTOCOLS if p in listed)
    assert spec.source == "good.yaml"
    acl, c1, count = spec.stages
    assert isinstance(acl, FilterStage) and isinstance(c1, CountStage)
    assert (acl.name, acl.default, acl.malformed, acl.capacity) == ("acl", "next", "drop", 131072)
    assert (c1.name, count.name) == ("c1", "count")
    r = acl.rules
    assert r[0] == Rule("drop", src=ipaddress.ip_network("198.18.0.0/24"), proto=17,
                        dport=(53, 53))
    assert r[0].line == 14 and r[5].line == 19
    assert r[1].dst == ipaddress.ip_network("2001:db8::/32") and r[1].dport == (22, 23)
    assert r[1].proto == 6 and r[1].family == 6
    assert r[2].vlan == 100 and r[2].family == 0
    assert r[3].sport == (1024, 65535) and r[3].proto is None
    assert r[4].src == ipaddress.ip_network("198.18.1.1/32") and r[4].proto == 132
    assert r[5] == Rule("drop")
    assert spec.stage("c1") is c1
    with pytest.raises(UsageError, match="no stage 'nope'"):
        spec.stage("nope")


def test_round_trip_through_yaml():
    spec = parse_spec(GOOD, "good.yaml")
    again = parse_spec(yaml.safe_dump(spec.to_dict(), sort_keys=False), "good.yaml")
    assert again == spec
    assert again.to_dict() == spec.to_dict()


def test_defaults(tmp_path: Path):
    path = tmp_path / "min.yaml"
    path.write_text("pipeline: p\nhook: tc-ingress\nprotocols: [ethernet]\n"
                    "stages:\n  - filter:\n  - count:\n")
    spec = load_spec(path)
    assert spec.source == str(path)
    assert spec.mode is None and spec.netns is None and spec.interfaces == ()
    f, c = spec.stages
    assert f == FilterStage(name="filter", default="next", malformed="drop", capacity=65536,
                            rules=())
    assert c == CountStage(name="count")
    assert parse_spec(rule_spec("{action: pass}")).mode == "auto"
    d = spec.to_dict()
    assert "mode" not in d and "netns" not in d and "interfaces" not in d


def test_rule_round_trip_and_cli_parse():
    for text in ({"src": "198.18.0.0/15", "sport": 7, "dport": "1000-2000", "action": "drop"},
                 {"dst": "2001:db8::1/128", "proto": "icmpv6", "action": "pass"},
                 {"proto": 47, "vlan": 4094, "action": "drop"},
                 {"action": "pass"}):
        rule = Rule.from_dict(text)
        assert rule.line is None
        assert rule.to_dict() == text
        assert parse_rule(rule.to_dict(), protocols=KNOWN_PROTOCOLS) == rule
    # a numeric protocol with a name and a single-port string normalise to the YAML form
    assert Rule.from_dict({"proto": 6, "dport": "80", "action": "drop"}).to_dict() == \
        {"proto": "tcp", "dport": 80, "action": "drop"}


def test_cli_rule_errors_name_the_root():
    with pytest.raises(SpecError) as info:
        parse_rule({"dport": 99999, "action": "drop"}, protocols=KNOWN_PROTOCOLS)
    err = info.value
    assert err.field == "rule.dport" and err.line is None and err.file is None
    assert str(err).startswith("rule.dport: port out of range")
    with pytest.raises(SpecError, match=r"^new\.proto: proto tcp needs protocol tcp"):
        parse_rule({"proto": "tcp", "action": "drop"}, protocols=("ethernet", "ipv4"),
                   where="new")


def test_stage_registry_accepts_new_kinds():
    assert {"filter", "count"} <= set(STAGE_KINDS) and "sample" not in STAGE_KINDS

    @dataclasses.dataclass(frozen=True)
    class Sample(CountStage):
        kind = "sample"

    @register_stage("sample")
    def parse_sample(obj, where, protocols):
        return Sample(name="sample")

    try:
        spec = parse_spec("pipeline: p\nhook: xdp\nprotocols: [ethernet]\nstages:\n"
                          "  - sample: {}\n")
        assert spec.stages == (Sample(name="sample"),)
        assert spec.to_dict()["stages"] == [{"sample": {"name": "sample"}}]
    finally:
        del STAGE_KINDS["sample"]


def test_protocol_set_helpers():
    assert canonical_order(["tcp", "ethernet", "ipv4"]) == ("ethernet", "ipv4", "tcp")
    assert missing_dependency(["ethernet", "ipv6", "icmp"]) == ("icmp", ("ipv4",))
    assert missing_dependency(["ethernet", "ipv6", "udp"]) is None


# -- files and YAML ---------------------------------------------------------------------------

def test_missing_file_is_usage_error(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(UsageError, match="not found") as info:
        load_spec(missing)
    assert str(missing) in str(info.value)
    assert not isinstance(info.value, SpecError)


def test_yaml_syntax_error_is_located():
    err = spec_error("pipeline: edge\nhook: xdp\nprotocols: [ethernet\nstages: []\n")
    assert "YAML syntax error" in err.reason
    assert err.line == 4 and err.column == 7


def test_yaml_bad_indentation():
    err = spec_error("pipeline: edge\n  hook: xdp\n")
    assert "YAML syntax error" in err.reason and err.line == 2


def test_duplicate_yaml_key():
    err = spec_error("pipeline: edge\nhook: xdp\nhook: tc-ingress\n")
    assert err.line == 3 and err.column == 1 and err.field == "hook"
    assert "duplicate key 'hook'" in err.reason


def test_empty_spec_and_wrong_top_level_type():
    assert "empty" in spec_error("# nothing\n").reason
    err = spec_error("- pipeline: edge\n")
    assert err.line == 1 and "expected a mapping" in err.reason


def test_unsafe_yaml_tag_refused():
    err = spec_error("pipeline: !!python/object:os.system edge\n")
    assert err.line == 1 and "YAML" in err.reason


# -- top-level keys ---------------------------------------------------------------------------

def complete(text: str) -> str:
    """Append the required keys ``text`` lacks (after it, so its line numbers hold)."""
    for key, value in (("pipeline", "edge"), ("hook", "xdp"), ("protocols", "[ethernet]"),
                       ("stages", "[count: {}]")):
        if f"{key}:" not in text:
            text += f"{key}: {value}\n"
    return text


@pytest.mark.parametrize("text, line, column, field, reason", [
    ("pipeline: edge\nhook: xdp\nprotocol: [ethernet]\n", 3, 1, "protocol", "unknown key"),
    ("hook: xdp\nprotocols: [ethernet]\nstages: [count: {}]\n", 1, 1, None,
     "missing required key 'pipeline'"),
    ("pipeline: Edge_1\nhook: xdp\n", 1, 11, "pipeline", "invalid name"),
    ("pipeline: a-very-long-name-x\nhook: xdp\n", 1, 11, "pipeline", "invalid name"),
    ("pipeline: 7\nhook: xdp\n", 1, 11, "pipeline", "expected a name"),
    ("pipeline: edge\nhook: tc\n", 2, 7, "hook", "invalid value"),
    ("pipeline: edge\nhook: tc-egress\nmode: native\n", 3, 1, "mode", "xdp only"),
    ("pipeline: edge\nhook: xdp\nmode: offload\n", 3, 7, "mode", "invalid value"),
    ("pipeline: edge\nhook: xdp\ninterfaces: eth0\n", 3, 13, "interfaces", "expected a list"),
    ("pipeline: edge\nhook: xdp\ninterfaces: [eth0, eth/1]\n", 3, 20, "interfaces[1]",
     "invalid name"),
    ("pipeline: edge\nhook: xdp\ninterfaces: [a-sixteen-chars-x]\n", 3, 14, "interfaces[0]",
     "invalid name"),
    ("pipeline: edge\nhook: xdp\ninterfaces: ['eth 0']\n", 3, 14, "interfaces[0]",
     "invalid name"),
    ("pipeline: edge\nhook: xdp\ninterfaces: [eth0, eth0]\n", 3, 20, "interfaces[1]",
     "listed twice"),
    ("pipeline: edge\nhook: xdp\nnetns: a/b\n", 3, 8, "netns", "invalid name"),
    ("pipeline: edge\nhook: xdp\nprotocols: ethernet\n", 3, 12, "protocols", "expected a list"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ethernet, sctp]\n", 3, 23, "protocols[1]",
     "invalid value"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ipv4]\n", 3, 12, "protocols",
     "protocol ethernet is required"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ethernet, tcp]\n", 3, 23, "protocols[1]",
     "protocol tcp needs ipv4 or ipv6"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ethernet, ipv6, icmp]\n", 3, 29, "protocols[2]",
     "protocol icmp needs ipv4"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ethernet, ipv4, icmpv6]\n", 3, 29,
     "protocols[2]", "protocol icmpv6 needs ipv6"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ethernet, ethernet]\n", 3, 23, "protocols[1]",
     "listed twice"),
    ("pipeline: edge\nhook: xdp\nprotocols: [ethernet]\n", 1, 1, None,
     "missing required key 'stages'"),
])
def test_top_level_errors(text, line, column, field, reason):
    if "missing required key" not in reason:
        text = complete(text)
    err = spec_error(text)
    assert (err.line, err.column, err.field) == (line, column, field)
    assert reason in err.reason


def test_unknown_top_level_key_lists_allowed():
    err = spec_error("pipeline: edge\nhook: xdp\nprotocol: [ethernet]\n")
    assert err.allowed == "pipeline, hook, interfaces, mode, netns, protocols, stages, parser, priority"
    assert "allowed: pipeline, hook" in str(err)


# -- stages -----------------------------------------------------------------------------------

HEAD = "pipeline: edge\nhook: xdp\nprotocols: [ethernet, ipv4]\nstages:\n"


@pytest.mark.parametrize("stages, line, column, field, reason", [
    ("  []\n", 5, 3, "stages", "at least one stage"),
    ("  filter: {}\n", 5, 3, "stages", "expected a list of stages"),
    ("  - filter\n", 5, 5, "stages[0]", "exactly one key"),
    ("  - {filter: {}, count: {}}\n", 5, 5, "stages[0]", "exactly one key"),
    ("  - shaper: {}\n", 5, 5, "stages[0].shaper", "unknown stage kind"),
    ("  - count: {name: c1, mode: x}\n", 5, 23, "stages[0].count.mode", "unknown key"),
    ("  - count: [1]\n", 5, 12, "stages[0].count", "expected a mapping"),
    ("  - filter: {name: Acl}\n", 5, 20, "stages[0].filter.name", "invalid name"),
    ("  - filter: {name: a_sixteen_chars_}\n", 5, 20, "stages[0].filter.name", "invalid name"),
    ("  - filter: {}\n  - filter: {}\n", 6, 13, "stages[1].filter.name",
     "duplicate stage name 'filter'"),
    ("  - filter: {name: x}\n  - count: {name: x}\n", 6, 19, "stages[1].count.name",
     "duplicate stage name 'x'"),
    ("  - filter: {default: accept}\n", 5, 23, "stages[0].filter.default", "invalid value"),
    ("  - filter: {malformed: next}\n", 5, 25, "stages[0].filter.malformed", "invalid value"),
    ("  - filter: {capacity: 0}\n", 5, 24, "stages[0].filter.capacity", "out of range"),
    ("  - filter: {capacity: 4194305}\n", 5, 24, "stages[0].filter.capacity", "out of range"),
    ("  - filter: {capacity: lots}\n", 5, 24, "stages[0].filter.capacity", "expected an integer"),
    ("  - filter: {capacity: 1, rules: [{action: drop}, {action: pass}]}\n", 5, 34,
     "stages[0].filter.rules", "2 rules exceed the capacity 1"),
    ("  - filter: {rules: {action: drop}}\n", 5, 21, "stages[0].filter.rules",
     "expected a list of rules"),
    ("  - filter: {ruls: []}\n", 5, 14, "stages[0].filter.ruls", "unknown key"),
])
def test_stage_errors(stages, line, column, field, reason):
    err = spec_error(HEAD + stages)
    assert (err.line, err.column, err.field) == (line, column, field)
    assert reason in err.reason


def test_unknown_stage_kind_lists_kinds():
    err = spec_error(HEAD + "  - shaper: {}\n")
    assert err.given == "shaper" and err.allowed == ", ".join(STAGE_KINDS)
    assert err.allowed.startswith("filter, count, route")


# -- rules ------------------------------------------------------------------------------------

# ``at``: the text where the error must point (its first occurrence in the rule)
@pytest.mark.parametrize("rule, protocols, at, field, reason", [
    ("{src: 198.18.0.0/24, action: drop, port: 1}", ALL, "port", "port", "unknown key"),
    ("{src: 198.18.0.0/24}", ALL, "{", "", "missing required key 'action'"),
    ("{action: reject}", ALL, "reject", "action", "invalid value"),
    ("[198.18.0.0/24, drop]", ALL, "[", "", "expected a rule"),
    ("{src: 198.18.0.1/24, action: drop}", ALL, "198", "src", "host bits set"),
    ("{src: 198.18.0.300, action: drop}", ALL, "198", "src", "invalid address or CIDR"),
    ("{dst: 198.18.0.0/33, action: drop}", ALL, "198", "dst", "invalid address or CIDR"),
    ("{src: 1234, action: drop}", ALL, "1234", "src", "expected an address or CIDR string"),
    ("{src: 198.18.0.0/24, dst: '2001:db8::/32', action: drop}", ALL, "'2001", "dst",
     "src is IPv4 but dst is IPv6"),
    ("{src: 198.18.0.0/24, action: drop}", "[ethernet, ipv6]", "198", "src",
     "an IPv4 address needs protocol ipv4"),
    ("{dst: '2001:db8::1', action: drop}", "[ethernet, ipv4]", "'2001", "dst",
     "an IPv6 address needs protocol ipv6"),
    ("{proto: tcp, action: drop}", "[ethernet, ipv4, udp]", "tcp", "proto",
     "proto tcp needs protocol tcp"),
    ("{proto: udp, action: drop}", "[ethernet, ipv4, tcp]", "udp", "proto",
     "proto udp needs protocol udp"),
    ("{proto: icmp, action: drop}", "[ethernet, ipv4]", "icmp", "proto",
     "proto icmp needs protocol icmp"),
    ("{proto: icmpv6, action: drop}", "[ethernet, ipv6]", "icmpv6", "proto",
     "proto icmpv6 needs protocol icmpv6"),
    ("{proto: 6, action: drop}", "[ethernet, ipv4]", "6", "proto",
     "proto tcp needs protocol tcp"),
    ("{proto: 47, action: drop}", "[ethernet, vlan]", "47", "proto",
     "a proto match needs protocol ipv4 or ipv6"),
    ("{proto: 256, action: drop}", ALL, "256", "proto", "out of range"),
    ("{proto: sctp, action: drop}", ALL, "sctp", "proto", "unknown protocol"),
    ("{proto: true, action: drop}", ALL, "true", "proto", "expected an integer"),
    ("{dst: '2001:db8::/32', proto: icmp, action: drop}", ALL, "icmp", "proto",
     "proto icmp never matches IPv6"),
    ("{src: 198.18.0.0/15, proto: icmpv6, action: drop}", ALL, "icmpv6", "proto",
     "proto icmpv6 never matches IPv4"),
    ("{proto: icmp, dport: 80, action: drop}", ALL, "80", "dport",
     "ports need proto tcp or udp"),
    ("{proto: 47, sport: 80, action: drop}", ALL, "80", "sport", "ports need proto tcp or udp"),
    ("{dport: 80, action: drop}", "[ethernet, ipv4, icmp]", "80", "dport",
     "a port match needs protocol tcp or udp"),
    ("{dport: 70000, action: drop}", ALL, "70000", "dport", "port out of range"),
    ("{dport: -1, action: drop}", ALL, "-1", "dport", "port out of range"),
    ("{sport: '1000-70000', action: drop}", ALL, "'1000", "sport", "port out of range"),
    ("{dport: 23-22, action: drop}", ALL, "23-22", "dport", "port range is reversed"),
    ("{dport: http, action: drop}", ALL, "http", "dport", "invalid port or port range"),
    ("{dport: 1.5, action: drop}", ALL, "1.5", "dport", "expected an integer port"),
    ("{vlan: 100, action: drop}", "[ethernet, ipv4]", "100", "vlan",
     "a vlan match needs protocol vlan"),
    ("{vlan: 0, action: drop}", ALL, "0", "vlan", "VLAN id out of range"),
    ("{vlan: 4095, action: drop}", ALL, "4095", "vlan", "VLAN id out of range"),
    ("{vlan: '100', action: drop}", ALL, "'100'", "vlan", "expected an integer VLAN id"),
    ("{match: {gre.key: 1}, action: drop}", ALL, "gre.key", "match.gre.key",
     "user protocol field 'gre.key' needs protocol 'gre' in protocols:"),
    ("{match: {myproto.tag: 7}, action: drop}", ALL, "myproto", "match.myproto.tag",
     "user protocol field 'myproto.tag' needs protocol 'myproto'"),
    ("{match: {ttl: 1}, action: drop}", ALL, "ttl", "match.ttl", "protocol.field"),
    ("{match: [1], action: drop}", ALL, "[1]", "match", "expected a mapping"),
])
def test_rule_errors(rule, protocols, at, field, reason):
    err = spec_error(rule_spec(rule, protocols))
    assert err.line == 7
    assert err.field == "stages[0].filter.rules[0]" + ("." + field if field else "")
    rule_line = rule_spec(rule, protocols).splitlines()[6]
    assert err.column == rule_line.index(at) + 1
    assert reason in err.reason


def test_rule_error_in_later_rule_names_its_index_and_line():
    text = HEAD + ("  - filter:\n      rules:\n"
                   "        - {src: 198.18.0.0/24, action: drop}\n"
                   "        - src: 198.18.0.0/24\n"
                   "          dport: 53\n"
                   "          action: drop\n")
    err = spec_error(text)
    assert (err.line, err.column) == (9, 18)
    assert err.field == "stages[0].filter.rules[1].dport"
    assert "a port match needs protocol tcp or udp" in err.reason
    assert err.given == 53
    assert err.hint == "add tcp to the pipeline's protocols: list"


def test_host_bits_hint_gives_the_network():
    err = spec_error(rule_spec("{src: 198.18.0.1/24, action: drop}"))
    assert err.given == "198.18.0.1/24"
    assert err.hint == "did you mean 198.18.0.0/24?"
    err = spec_error(rule_spec("{dst: '2001:db8::1/32', action: drop}"))
    assert err.hint == "did you mean 2001:db8::/32?"


def test_error_to_dict_carries_location():
    d = spec_error(rule_spec("{dport: 70000, action: drop}")).to_dict()
    assert d["error"] == "SpecError"
    assert (d["file"], d["line"], d["column"]) == ("t.yaml", 7, 19)
    assert d["field"] == "stages[0].filter.rules[0].dport"
    assert d["given"] == 70000 and d["allowed"] == "0-65535"


def test_rules_without_fields_or_proto_are_allowed():
    spec = parse_spec(rule_spec("{dport: 80-81, action: pass}", "[ethernet, ipv4, udp]"))
    (rule,) = spec.stages[0].rules
    assert rule.proto is None and rule.dport == (80, 81)


def test_spec_is_a_frozen_model():
    spec = parse_spec(GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]
    assert isinstance(spec, PipelineSpec) and isinstance(spec.stages, tuple)


# -- the fast path for rule lists of one JSON-style mapping a line ------------------------------

@pytest.mark.parametrize("rule, at, field, reason", [
    ('{"src": "198.18.0.1/24", "action": "drop"}', '"198', "src", "host bits set"),
    ('{"src": "198.18.0.0/24", "action": "drop", "port": 1}', '"port', "port", "unknown key"),
    ('{"proto": "icmp", "sport": 80, "action": "drop"}', "80", "sport",
     "ports need proto tcp or udp"),
    ('{"proto": "tcp", "dport": "80-20", "action": "drop"}', '"80-20', "dport",
     "port range is reversed"),
    ('{"proto": "tcp", "dport": 70000, "action": "drop"}', "70000", "dport", "port out of range"),
    ('{"src": "198.18.0.0/24", "action": "drop", "src": "198.18.1.0/24"}', '"src": "198.18.1',
     "src", "duplicate key"),
])
def test_fast_rule_errors_keep_their_location(rule, at, field, reason):
    """A rule list read by the fast path (JSON-style, one rule a line) gets the same located
    error as one read by the YAML reader: the fast path falls back to it on any error."""
    good = '        - {"src": "198.18.0.0/24", "proto": "tcp", "dport": "1-2", "action": "drop"}\n'
    text = rule_spec(rule).replace("      rules:\n", "      rules:\n" + good * 3)
    err = spec_error(text)
    assert err.line == 10 and err.field == f"stages[0].filter.rules[3].{field}"
    assert err.column == text.splitlines()[9].index(at) + 1
    assert reason in err.reason


def test_fast_read_equals_the_located_read():
    from ebplane.spec.located import load_located
    head = HEAD.replace("[ethernet, ipv4]", ALL)
    text = (head + "  - filter:\n      rules: &r\n"
            '        - {"src": "198.18.0.0/24", "proto": "tcp", "dport": 53, "action": "drop"}\n'
            '        -   {"dst": "2001:db8::/32" , "action": "pass"}  \n'
            "        - {src: 198.18.1.0/24, action: drop}\n"
            "      alias: *r\n")
    fast, w1 = load_located(text, "t.yaml", fast=True)
    slow, w2 = load_located(text, "t.yaml")
    assert fast == slow and w1.marks.coarse and not w2.marks.coarse
    for i in range(3):
        path = ("stages", 0, "filter", "rules", i)
        assert w1.marks.values[path] == w2.marks.values[path]
    rules = parse_spec(text.replace("      alias: *r\n", ""), "t.yaml").stages[0].rules
    assert [r.line for r in rules] == [7, 8, 9]


@pytest.mark.parametrize("body", [
    # the line is text of a block scalar, or part of a quoted string: not a rule
    "      note: |\n        - {\"src\": \"198.18.0.0/24\", \"action\": \"drop\"}\n      rules: []\n",
    "      note: \"a\n        - {\\\"src\\\": 1}\"\n      rules: []\n",
])
def test_fast_path_never_changes_what_a_line_means(body):
    from ebplane.spec.located import load_located
    text = HEAD + "  - filter:\n" + body
    assert load_located(text, "t.yaml", fast=True)[0] == load_located(text, "t.yaml")[0]
