"""Several pipelines on one interface (``priority:``; docs/composition.md), on the real kernel.

Two pipelines of different owners share veth0 of a throw-away namespace: ``pa`` (priority 1)
counts everything and passes it on, ``pb`` (priority 2) drops UDP port 9.  Frames are written
into veth1 and reach veth0's hook; what passes XDP is seen by a packet socket on veth0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_fixtures import Sender, dropped, ebp_env, mac, send_frames, write_spec  # noqa: F401
from ebplane.errors import AttachError, UsageError
from ebplane.lab.traffic import Capture, Flow
from ebplane.runtime import pipeline
from ebplane.spec import parse_spec

pytestmark = pytest.mark.lab

EBPLANE = [str(Path(sys.executable).parent / "ebplane")] \
    if (Path(sys.executable).parent / "ebplane").exists() else [sys.executable, "-m", "ebplane.cli.main"]

DNS = Flow("udp", "198.18.0.1", "198.18.0.2", 40000, 53)
PORT9 = Flow("udp", "198.18.0.1", "198.18.0.2", 40003, 9)
PROTOS = "[ethernet, ipv4, ipv6, tcp, udp]"
COUNT = "  - count: {}\n"
DROP9 = ("  - filter:\n      name: acl\n      rules:\n"
         "        - {proto: udp, dport: 9, action: drop}\n")
# the same policy through another program (a different stage list): a re-apply replaces it
DROP9_COUNTED = DROP9 + "  - count: {name: after}\n"


def spec_text(ns: str, name: str, priority: int | None, stages: str, hook: str = "xdp",
              interfaces: str = "[veth0]") -> str:
    mode = "mode: native\n" if hook == "xdp" else ""
    prio = f"priority: {priority}\n" if priority is not None else ""
    return (f"pipeline: {name}\nhook: {hook}\n{mode}{prio}netns: {ns}\ninterfaces: {interfaces}\n"
            f"protocols: {PROTOS}\nstages:\n{stages}")


def apply(tmp_path: Path, ns: str, name: str, priority, stages: str, hook: str = "xdp",
          interfaces: str = "[veth0]", **kw):
    path = write_spec(tmp_path / f"{name}.yaml",
                      spec_text(ns, name, priority, stages, hook, interfaces))
    return pipeline.apply(path, **kw)


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EBPLANE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"ebplane {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def passed(ns: str, n: int = 3) -> tuple[int, int]:
    """How many of ``n`` DNS and ``n`` port-9 frames sent into veth1 came through veth0's XDP."""
    caps = [Capture(ns, "veth0", f) for f in (DNS, PORT9)]
    try:
        src, dst = mac(ns, "veth1"), mac(ns, "veth0")
        send_frames(ns, "veth1", [DNS.frame(src, dst), PORT9.frame(src, dst)], n)
        deadline = time.monotonic() + 0.3
        return tuple(c.wait(n, max(0.0, deadline - time.monotonic())) for c in caps)
    finally:
        for c in caps:
            c.close()


def counted(name: str) -> int:
    st = pipeline.stats(name)[0]
    return next(s for s in st["stages"] if s["kind"] == "count")["counts"]["all"]["packets"]


def drops9(name: str) -> int:
    st = pipeline.stats(name)[0]
    return next(s for s in st["stages"] if s["kind"] == "filter")["rules"][0]["packets"]


def order(name: str) -> list[str]:
    comp = pipeline.composition(name)
    assert len(comp) == 1 and comp[0]["in_order"], comp
    return [m["pipeline"] for m in comp[0]["members"]]


def domain(root: Path) -> Path:
    return root / "_dispatch"


@pytest.fixture
def veth(veth_pair):
    """The namespace of the veth pair, without IPv6 (whose own frames, router solicitations
    and the like, would add to the counts)."""
    from ebplane.net import netns
    ns = veth_pair[0]
    for dev in ("all", "default", "veth0", "veth1"):
        netns.run(ns, ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"])
    return ns


# -- spec -------------------------------------------------------------------------------------

def test_priority_in_spec():
    s = parse_spec(spec_text("x", "pa", 3, COUNT))
    assert s.priority == 3 and parse_spec(spec_text("x", "pa", None, COUNT)).priority is None
    assert parse_spec(spec_text("x", "pa", 3, COUNT)).to_dict()["priority"] == 3
    for bad, why in ((16, "out of range"), ("high", "expected an integer"), (-1, "out of range")):
        with pytest.raises(Exception) as e:
            parse_spec(spec_text("x", "pa", bad, COUNT))
        assert why in str(e.value) and "priority" in str(e.value)


def test_member_record_is_a_typed_attachment(ebp_env):
    """A member's record (also while only planned) is read by the dispatcher's type, which
    finds nothing running when there is no dispatcher."""
    from ebplane.net import attach as att
    from ebplane.runtime import dispatch
    for planned in (False, True):
        rec = {"ifname": "lo", "hook": "xdp", "method": "dispatch", "priority": 3,
               "netns": None, "prog_id": 1, **({"planned": True} if planned else {})}
        a = att.attached(rec)
        assert type(a) is dispatch.Member and a.running() is None
    assert type(att.attached({"ifname": "lo", "hook": "xdp", "planned": True})) is att.Planned


def test_replay_alone_ignores_priority(ebp_env):
    """A composed pipeline's spec replays alone, as if it held the hook (no dispatcher)."""
    from ebplane.runtime.replay import Replayer
    with Replayer(parse_spec(spec_text("x", "pb", 2, DROP9))) as r:
        assert r.run(0, PORT9.frame("02:00:00:00:00:01", "02:00:00:00:00:02")).verdict == "XDP_DROP"
        assert r.run(1, DNS.frame("02:00:00:00:00:01", "02:00:00:00:00:02")).verdict == "XDP_PASS"
    assert not domain(ebp_env).exists()


# -- XDP: root + PROG_ARRAY -------------------------------------------------------------------

@pytest.mark.parametrize("first_applied", ["pa", "pb"])
@pytest.mark.parametrize("removed", ["pa", "pb"])
def test_xdp_two_owners_in_order_and_removal(ebp_env, veth, tmp_path, first_applied, removed):
    specs = {"pa": (1, COUNT), "pb": (2, DROP9)}
    for name in (first_applied, "pb" if first_applied == "pa" else "pa"):
        res = apply(tmp_path, veth, name, *specs[name])
        assert res.attachments[0]["method"] == "dispatch"
    assert order("pa") == ["pa", "pb"]  # by priority, whatever the order of the applies
    assert passed(veth) == (3, 0)
    assert counted("pa") >= 6 and drops9("pb") == 3  # pa saw the port-9 frames pb dropped
    st = {d["name"]: d for d in pipeline.status()}
    assert all(d["health"] == "ok" for d in st.values()), st
    # removing either leaves the other attached and working
    before_a = counted("pa")
    pipeline.detach(removed)
    kept = "pb" if removed == "pa" else "pa"
    assert order(kept) == [kept]
    assert pipeline.status(kept)[0]["health"] == "ok"
    if kept == "pb":
        assert passed(veth) == (3, 0) and drops9("pb") == 6
    else:
        assert passed(veth) == (3, 3) and counted("pa") >= before_a + 6
    pipeline.detach(kept)  # the root goes with the last member
    from ebplane.net import attach as att, netns
    with netns.enter(veth):
        assert att.query_xdp("veth0")["prog_id"] is None
    assert not domain(ebp_env).exists()
    assert passed(veth) == (3, 3)


def test_xdp_member_of_two_interfaces(ebp_env, veth, tmp_path):
    """A member on two interfaces looks its interface's slots up per packet (one program for
    both); on veth0 it hands on to a member of veth0 alone (constant slots)."""
    from ebplane.net import attach as att, netns
    apply(tmp_path, veth, "pa", 1, COUNT, interfaces="[veth0, veth1]")
    apply(tmp_path, veth, "pb", 2, DROP9)
    assert passed(veth) == (3, 0) and drops9("pb") == 3
    comp = {c["ifname"]: [m["pipeline"] for m in c["members"]] for c in pipeline.composition()}
    assert comp == {"veth0": ["pa", "pb"], "veth1": ["pa"]}
    pipeline.detach("pb")
    assert passed(veth) == (3, 3)
    pipeline.detach("pa")
    with netns.enter(veth):
        assert [att.query_xdp(d)["prog_id"] for d in ("veth0", "veth1")] == [None, None]
    assert not domain(ebp_env).exists()


@pytest.mark.parametrize("replaced", ["pa", "pb"])
def test_xdp_replace_under_traffic_no_gap(ebp_env, veth, tmp_path, replaced):
    """One member re-applied (a new program each time) while frames flow: the other's counters
    count every frame sent, and so do the replaced member's (old and new versions share its
    maps): no frame skipped either."""
    apply(tmp_path, veth, "pa", 1, COUNT)
    apply(tmp_path, veth, "pb", 2, DROP9_COUNTED)
    versions = {"pa": [COUNT, "  - count: {}\n  - count: {name: again}\n"],
                "pb": [DROP9, DROP9_COUNTED]}[replaced]
    src, dst = mac(veth, "veth1"), mac(veth, "veth0")
    base_a, base_b = counted("pa"), pipeline.stats("pb")[0]["verdicts"]
    lost0 = dropped(veth, "veth1") + dropped(veth, "veth0")
    progs = set()
    with Sender(veth, "veth1", DNS.frame(src, dst)) as sender:
        for i in range(6):
            res = apply(tmp_path, veth, replaced, 1 if replaced == "pa" else 2, versions[i % 2])
            progs.add(res.prog_id)
        time.sleep(0.2)
    sent = sender.sent
    time.sleep(0.2)
    assert len(progs) >= 2  # the program really was replaced
    assert dropped(veth, "veth1") + dropped(veth, "veth0") == lost0
    assert counted("pa") - base_a == sent
    vb = pipeline.stats("pb")[0]["verdicts"]
    through_b = sum(v["packets"] for v in vb.values()) - sum(v["packets"] for v in base_b.values())
    assert through_b == sent
    assert order("pa") == ["pa", "pb"]
    assert passed(veth) == (3, 0)


def test_priority_tie_and_mix_are_refused(ebp_env, veth, tmp_path):
    apply(tmp_path, veth, "pa", 1, COUNT)
    with pytest.raises(UsageError) as e:
        apply(tmp_path, veth, "pb", 1, DROP9)
    assert "priority 1 on veth0 (xdp) is taken by pipeline 'pa'" in e.value.message
    with pytest.raises(UsageError) as e:
        apply(tmp_path, veth, "pb", None, DROP9)
    assert "pipeline 'pa' is attached to veth0 (xdp) with priority 1" in e.value.message
    assert "priority:" in e.value.hint
    path = write_spec(tmp_path / "pb.yaml", spec_text(veth, "pb", 1, DROP9))
    proc = cli("apply", str(path), check=False)
    assert proc.returncode == 2 and "taken by pipeline 'pa'" in proc.stderr
    # nothing changed: pa alone, still counting; pb not applied
    assert [d["name"] for d in pipeline.status()] == ["pa"]
    assert order("pa") == ["pa"] and passed(veth) == (3, 3)


def test_alone_pipeline_then_composed_is_refused(ebp_env, veth, tmp_path):
    apply(tmp_path, veth, "pa", None, COUNT)
    with pytest.raises(UsageError) as e:
        apply(tmp_path, veth, "pb", 2, DROP9)
    assert "alone (no priority:)" in e.value.message and "'pa'" in e.value.hint
    assert passed(veth) == (3, 3)


@pytest.mark.parametrize("priority", [1, None])
def test_foreign_xdp_reported_then_replaced(ebp_env, veth, tmp_path, priority):
    from ebplane.kernel.programs import BpfObject
    from ebplane.net import attach as att, netns
    from ebplane.toolchain.clang import compile_c
    src = ('#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n'
           'SEC("xdp") int someone_else(struct xdp_md *ctx) { return XDP_PASS; }\n'
           'char LICENSE[] SEC("license") = "GPL";\n')
    obj = BpfObject.open_bytes(compile_c(src, name="foreign").elf, "foreign").load()
    try:
        prog = obj.programs["someone_else"]
        with netns.enter(veth):
            att.attach_xdp(prog.fd, "veth0", mode="native", use_link=False)
        with pytest.raises(AttachError) as e:
            apply(tmp_path, veth, "pa", priority, COUNT)
        assert f"id {prog.id}" in e.value.message and "someone_else" in e.value.message
        assert "--replace-foreign" in e.value.hint
        with netns.enter(veth):  # left alone
            assert att.query_xdp("veth0")["prog_id"] == prog.id
        assert not (ebp_env / "pa").exists() and pipeline.status() == []
        path = write_spec(tmp_path / "pa.yaml", spec_text(veth, "pa", priority, COUNT))
        proc = cli("apply", str(path), check=False)
        assert proc.returncode == 3 and f"id {prog.id}" in proc.stderr
        if priority is None:  # what apply --replace-foreign does first when the agent runs
            assert "replaced the foreign" in pipeline.evict_foreign(path)[0]
            with netns.enter(veth):
                assert att.query_xdp("veth0")["prog_id"] is None
                att.attach_xdp(prog.fd, "veth0", mode="native", use_link=False)
        res = apply(tmp_path, veth, "pa", priority, COUNT, replace_foreign=True)
        assert any("replaced the foreign XDP program" in n for n in res.notes)
        if priority is None:
            assert passed(veth) == (3, 3) and counted("pa") >= 6
            return
        apply(tmp_path, veth, "pb", 2, DROP9)
        assert passed(veth) == (3, 0) and order("pa") == ["pa", "pb"]
    finally:
        with netns.enter(veth):
            if att.query_xdp("veth0")["prog_id"] == obj.programs["someone_else"].id:
                att.detach_xdp("veth0")
        obj.close()


# -- crash safety ----------------------------------------------------------------------------

@pytest.mark.parametrize("step,expect", [("apply-intent", "back"), ("apply-joined", "forward")])
def test_killed_while_joining(ebp_env, veth, tmp_path, step, expect):
    """``ebplane apply`` of the second member SIGKILLed before its kernel commit (rolled back)
    or right after it joined the chain (rolled forward); the first member never stops."""
    apply(tmp_path, veth, "pa", 1, COUNT)
    path = write_spec(tmp_path / "pb.yaml", spec_text(veth, "pb", 2, DROP9))
    proc = cli("apply", str(path), env={"EBPLANE_TEST_CRASH_AT": step}, check=False)
    assert proc.returncode == -9, proc.stderr
    before = counted("pa")
    if expect == "back":
        assert [d["name"] for d in pipeline.status()] == ["pa"]
        assert passed(veth) == (3, 3) and order("pa") == ["pa"]
    else:
        st = {d["name"]: d for d in pipeline.status()}
        assert set(st) == {"pa", "pb"} and st["pb"]["health"] == "ok", st
        assert passed(veth) == (3, 0) and order("pa") == ["pa", "pb"]
    assert counted("pa") == before + 6
    cli("apply", str(path))  # the next command works from there
    assert passed(veth) == (3, 0) and order("pa") == ["pa", "pb"]
    cli("detach", "pa")
    assert passed(veth) == (3, 0) and order("pb") == ["pb"]


# -- TC: tcx runs several programs per hook ----------------------------------------------------

def test_tcx_two_owners_ordered_by_priority(ebp_env, veth, tmp_path):
    from ebplane.net import attach as att, netns
    hook = "tc-ingress"
    pb = apply(tmp_path, veth, "pb", 2, DROP9, hook)
    pa = apply(tmp_path, veth, "pa", 1, COUNT, hook)  # placed before pb, applied after it
    pc = apply(tmp_path, veth, "pc", 3, "  - count: {name: last}\n", hook)
    with netns.enter(veth):
        assert att.query_tcx("veth0", "ingress") == [pa.prog_id, pb.prog_id, pc.prog_id]
    assert order("pa") == ["pa", "pb", "pc"]
    src, dst = mac(veth, "veth1"), mac(veth, "veth0")
    send_frames(veth, "veth1", [DNS.frame(src, dst), PORT9.frame(src, dst)], 4)
    time.sleep(0.2)
    assert counted("pa") >= 8 and drops9("pb") == 4
    assert counted("pc") == counted("pa") - 4  # pa passed all on; pb's drops are final
    pb2 = apply(tmp_path, veth, "pb", 2, DROP9_COUNTED, hook)  # replaced in place
    with netns.enter(veth):
        assert att.query_tcx("veth0", "ingress") == [pa.prog_id, pb2.prog_id, pc.prog_id]
    pipeline.detach("pb")
    with netns.enter(veth):
        assert att.query_tcx("veth0", "ingress") == [pa.prog_id, pc.prog_id]
    assert order("pc") == ["pa", "pc"]


def test_status_shows_members_in_order(ebp_env, veth, tmp_path):
    apply(tmp_path, veth, "pb", 7, DROP9)
    apply(tmp_path, veth, "pa", 3, COUNT)
    out = cli("status").stdout
    assert f"veth0 (xdp, netns {veth}): 3:pa -> 7:pb" in out
    import json
    d = {x["name"]: x for x in json.loads(cli("status", "--json").stdout)}
    assert d["pa"]["priority"] == 3 and d["pb"]["composition"][0]["in_order"] is True


@pytest.mark.slow
def test_random_kills_of_a_member_never_stop_the_other(ebp_env, veth, tmp_path):
    """``ebplane apply`` of pb (a new program each time) SIGKILLed at random points, ten times,
    while frames flow: pa counts every frame sent, and each next command finds pb either
    applied and attached or not there, never half."""
    import random
    apply(tmp_path, veth, "pa", 1, COUNT)
    path = tmp_path / "pb.yaml"
    src, dst = mac(veth, "veth1"), mac(veth, "veth0")
    rng = random.Random(5)
    durations = []  # one apply of each version, unkilled: compiled once, and timed
    for body in (DROP9_COUNTED, DROP9):
        write_spec(path, spec_text(veth, "pb", 2, body))
        t0 = time.monotonic()
        cli("apply", str(path))
        durations.append(time.monotonic() - t0)
    pipeline.detach("pb")
    longest = max(durations)
    base = counted("pa")
    outcomes = []
    with Sender(veth, "veth1", DNS.frame(src, dst)) as sender:
        for i in range(10):
            write_spec(path, spec_text(veth, "pb", 2, DROP9 if i % 2 else DROP9_COUNTED))
            proc = subprocess.Popen([*EBPLANE, "apply", str(path)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3 * longest, 1.5 * longest))
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
            st = {d["name"]: d for d in pipeline.status()}  # settles what the kill left
            assert st["pa"]["health"] == "ok"
            if "pb" in st:
                assert st["pb"]["health"] == "ok", st["pb"]
                assert order("pa") == ["pa", "pb"]
            else:
                assert order("pa") == ["pa"]
            outcomes.append("pb" in st)
        time.sleep(0.2)
    time.sleep(0.2)
    assert counted("pa") - base == sender.sent
    assert any(outcomes)
    pipeline.apply(path)
    assert passed(veth) == (3, 0)


def test_killed_after_replacing_a_member(ebp_env, veth, tmp_path):
    """A re-apply of pb killed right after its slot took the new program: the next command
    rolls it forward (pb's record names the new program), pa never noticed."""
    apply(tmp_path, veth, "pa", 1, COUNT)
    old = apply(tmp_path, veth, "pb", 2, DROP9).prog_id
    path = write_spec(tmp_path / "pb.yaml", spec_text(veth, "pb", 2, DROP9_COUNTED))
    proc = cli("apply", str(path), env={"EBPLANE_TEST_CRASH_AT": "apply-replaced"}, check=False)
    assert proc.returncode == -9, proc.stderr
    st = {d["name"]: d for d in pipeline.status()}
    assert st["pb"]["health"] == "ok" and st["pb"]["prog_id"] != old
    assert order("pa") == ["pa", "pb"] and passed(veth) == (3, 0)
    assert counted("pb") == 3  # the new version's count stage: only what it saw since


def test_member_with_a_separate_parser(ebp_env, veth, tmp_path):
    """Parser mode separate: the member's parser program sits in the slot and tail-calls its
    stage program, which goes on to the next member (two tail calls of the budget)."""
    sep = "parser: {mode: separate}\n"
    path = write_spec(tmp_path / "pa.yaml", spec_text(veth, "pa", 1, COUNT).replace(
        "stages:", sep + "stages:"))
    pipeline.apply(path)
    path = write_spec(tmp_path / "pb.yaml", spec_text(veth, "pb", 2, DROP9).replace(
        "stages:", sep + "stages:"))
    pipeline.apply(path)
    assert passed(veth) == (3, 0) and counted("pa") == 6 and drops9("pb") == 3
    assert order("pa") == ["pa", "pb"]


def test_two_owners_apply_at_once(ebp_env, veth, tmp_path):
    """Two first members applied by two processes at the same moment: one root, both in."""
    paths = [write_spec(tmp_path / f"{n}.yaml", spec_text(veth, n, p, body))
             for n, p, body in (("pa", 1, COUNT), ("pb", 2, DROP9))]
    procs = [subprocess.Popen([*EBPLANE, "apply", str(p)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for p in paths]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert order("pa") == ["pa", "pb"] and passed(veth) == (3, 0)
    links = list((domain(ebp_env)).glob("*/links/*"))
    assert [p.name for p in links] == ["veth0@xdp"]


def test_namespace_gone_then_detach(ebp_env, tmp_path):
    """The namespace of a composition is deleted under it: status says DEAD, detach of each
    member works, and the dispatcher's pins go with the last."""
    from ebplane.net import netns
    with netns.temporary() as ns:
        netns.run(ns.name, ["ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1"])
        netns.run(ns.name, ["ip", "link", "set", "veth0", "up"])
        apply(tmp_path, ns.name, "pa", 1, COUNT)
        apply(tmp_path, ns.name, "pb", 2, DROP9)
        assert domain(ebp_env).exists()
    assert {d["name"]: d["health"] for d in pipeline.status()} == {"pa": "DEAD", "pb": "DEAD"}
    pipeline.detach("pa")
    pipeline.detach("pb")
    assert pipeline.status() == [] and not domain(ebp_env).exists()


@pytest.mark.slow
def test_readme_tour_in_the_lab(ebp_env, lab, tmp_path):
    """The README's two owners (examples/counting-lab.yaml, examples/acl-lab.yaml) on the
    lab's dut, with kernel sockets: client -> server through the dut's eth0."""
    from ebplane.lab import traffic
    client, dut, server = lab.ns("client"), lab.ns("dut"), lab.ns("server")
    root = Path(__file__).resolve().parent.parent / "examples"
    for f in ("counting-lab.yaml", "acl-lab.yaml"):
        text = (root / f).read_text().replace("ebp-lab-dut", dut)
        pipeline.apply(write_spec(tmp_path / f, text))
    assert [m["pipeline"] for m in pipeline.composition()[0]["members"]] == ["counting", "acl"]
    assert traffic.socket_udp(client, server, "198.18.2.2", port=5353, count=20) == 20
    assert traffic.socket_udp(client, server, "198.18.2.2", port=9, count=20, timeout=0.5) == 0
    assert drops9("acl") == 20
    assert counted("counting") >= 40
    pipeline.detach("counting")
    assert traffic.socket_udp(client, server, "198.18.2.2", port=9, count=5, timeout=0.5) == 0
    pipeline.detach("acl")
    assert traffic.socket_udp(client, server, "198.18.2.2", port=9, count=5) == 5


def test_xdp_member_moves_to_another_priority(ebp_env, veth, tmp_path):
    """A re-apply with another priority fills the new slot before it empties the old one: the
    other member counts every frame, the moved one at least every frame (a frame in flight
    may meet both of its versions)."""
    apply(tmp_path, veth, "pa", 1, COUNT)
    apply(tmp_path, veth, "pb", 2, DROP9_COUNTED)
    src, dst = mac(veth, "veth1"), mac(veth, "veth0")
    base_a, base_b = counted("pa"), counted("pb")
    with Sender(veth, "veth1", DNS.frame(src, dst)) as sender:
        for prio in (3, 0, 5):
            apply(tmp_path, veth, "pa", prio, COUNT)
            assert order("pb") == (["pb", "pa"] if prio > 2 else ["pa", "pb"])
        time.sleep(0.2)
    time.sleep(0.2)
    assert counted("pb") - base_b == sender.sent
    assert counted("pa") - base_a >= sender.sent
    assert passed(veth) == (3, 0)
    comp = pipeline.composition()[0]
    assert [m["priority"] for m in comp["members"]] == [2, 5] and comp["in_order"]


def test_tc_priority_change_is_refused(ebp_env, veth, tmp_path):
    apply(tmp_path, veth, "pa", 1, COUNT, "tc-ingress")
    with pytest.raises(UsageError) as e:  # a tcx link keeps its place: detach + apply
        apply(tmp_path, veth, "pa", 4, COUNT, "tc-ingress")
    assert "detach" in e.value.hint
    with pytest.raises(UsageError):  # nor does a pipeline alone get one on re-apply
        apply(tmp_path, veth, "pa", None, COUNT, "tc-ingress")


def test_move_killed_after_joining_rolls_forward(ebp_env, veth, tmp_path):
    apply(tmp_path, veth, "pa", 1, COUNT)
    apply(tmp_path, veth, "pb", 2, DROP9)
    path = write_spec(tmp_path / "pa.yaml", spec_text(veth, "pa", 3, COUNT))
    proc = cli("apply", str(path), env={"EBPLANE_TEST_CRASH_AT": "apply-joined"}, check=False)
    assert proc.returncode == -9, proc.stderr
    pipeline.status()  # settles: forward, and the old slot is emptied
    comp = pipeline.composition()[0]
    assert [(m["priority"], m["pipeline"]) for m in comp["members"]] == [(2, "pb"), (3, "pa")]
    assert len(comp["kernel_order"]) == 2 and comp["in_order"]
    before = counted("pa")  # pa runs after pb now: it no longer sees what pb drops
    assert passed(veth) == (3, 0) and counted("pa") == before + 3


def test_detach_after_a_move_was_killed(ebp_env, veth, tmp_path):
    """Killed while moving (both slots filled), then detached straight away: both slots are
    emptied and the root goes."""
    apply(tmp_path, veth, "pa", 1, COUNT)
    path = write_spec(tmp_path / "pa.yaml", spec_text(veth, "pa", 3, COUNT))
    proc = cli("apply", str(path), env={"EBPLANE_TEST_CRASH_AT": "apply-joined"}, check=False)
    assert proc.returncode == -9, proc.stderr
    cli("detach", "pa")
    from ebplane.net import attach as att, netns
    with netns.enter(veth):
        assert att.query_xdp("veth0")["prog_id"] is None
    assert not domain(ebp_env).exists()
