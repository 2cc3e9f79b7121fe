"""Correctness under change: real ``ebplane`` processes killed in the middle of apply and
``rules replace``, lost state, lost pins.

Each test kills a subprocess (``.venv/bin/ebplane ...``) that works on a private state dir and
bpffs root, on a veth pair in a throw-away namespace, then checks with frames sent through the
veth which version of the policy is in force (it must be the previous or the new one, never a
mix), and that the next command succeeds and leaves the record and the kernel in agreement.

Kill points: the moment a kernel-visible commit appears (a link pin, the program a link runs,
a filter's generation flip), the named steps of the test hook ``EBPLANE_TEST_CRASH_AT``
(see ``ebplane.runtime.pipeline._crash_point``), and random delays within one operation
(the ``slow`` set: 50 kills per operation).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_fixtures import ebp_env, mac, send_frames, write_spec  # noqa: F401
from ebplane.lab.traffic import Capture, Flow

pytestmark = pytest.mark.lab

EBPLANE = [str(Path(sys.executable).parent / "ebplane")] \
    if (Path(sys.executable).parent / "ebplane").exists() else [sys.executable, "-m", "ebplane.cli.main"]

DNS = Flow("udp", "198.18.0.1", "198.18.0.2", 40000, 53)
OTHER = Flow("udp", "198.18.0.1", "198.18.0.2", 40003, 9)
EXTRA = Flow("udp", "198.18.0.1", "198.18.0.2", 40004, 7777)

# version A drops DNS, version B drops port 9; EXTRA is dropped only by the rule tests add
RULE_A = "{dst: 198.18.0.2, proto: udp, dport: 53, action: drop}"
RULE_B = "{dst: 198.18.0.2, proto: udp, dport: 9, action: drop}"
RULE_EXTRA = "{dst: 198.18.0.2, proto: udp, dport: 7777, action: drop}"
RULES = {"A": RULE_A, "B": RULE_B}


def spec_text(ns: str, version: str, hook: str = "xdp") -> str:
    mode = "mode: native\n" if hook == "xdp" else ""
    return (f"pipeline: ap\nhook: {hook}\n{mode}netns: {ns}\ninterfaces: [veth0]\n"
            f"protocols: [ethernet, ipv4, ipv6, tcp, udp]\nstages:\n"
            f"  - filter:\n      name: acl\n      default: next\n      classifier: tree\n"
            f"      rules:\n"
            f"        - {RULES[version]}\n"
            f"        - {{dst: 198.18.0.99, proto: tcp, dport: 1, action: drop}}\n"
            f"  - count: {{}}\n")


def run(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*EBPLANE, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"ebplane {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([*EBPLANE, *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def kill(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    return proc.returncode


def kill_when(proc: subprocess.Popen, seen, timeout: float = 60.0) -> bool:
    """SIGKILL ``proc`` as soon as ``seen()`` is true; False if it ended first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if seen():
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=30)
            return True
    proc.communicate(timeout=30)
    return False


def in_force(ns: str) -> str:
    """Which policy filters veth0, from frames sent through the veth: "A" (DNS dropped),
    "B" (port 9 dropped), "none" (both pass), "both"; "+extra" when port 7777 is dropped."""
    flows = (DNS, OTHER, EXTRA)
    caps = [Capture(ns, "veth0", f) for f in flows]
    try:
        src, dst = mac(ns, "veth1"), mac(ns, "veth0")
        for f in flows:
            send_frames(ns, "veth1", [f.frame(src, dst)], 3)
        deadline = time.monotonic() + 0.25  # one wait for all: passed frames come at once
        passed = [c.wait(3, max(0.0, deadline - time.monotonic())) >= 3 for c in caps]
    finally:
        for c in caps:
            c.close()
    dns, other, extra = passed
    v = {(False, True): "A", (True, False): "B", (True, True): "none",
         (False, False): "both"}[(dns, other)]
    return v if extra else v + "+extra"


def link_pin(root: Path) -> Path:
    return root / "ap" / "links" / "veth0@xdp"


@pytest.fixture
def veth(veth_pair):
    ns, _, _ = veth_pair
    return ns


# -- item 2: a pipeline pinned without state -------------------------------------------------

def test_first_apply_killed_at_link_pin_is_adopted(ebp_env, veth, tmp_path):
    """Killed the moment its link pin appears, a first apply leaves a running pipeline and no
    state: the next apply adopts it (replaces the program through the pinned link)."""
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    pin = link_pin(ebp_env)
    for _ in range(3):
        proc = start("apply", str(spec))
        assert kill_when(proc, pin.exists), "apply ended before its link was pinned"
        assert in_force(veth) in ("none", "A")
        res = run("apply", str(spec), "--json")  # on old main: EBUSY, exit 3
        assert in_force(veth) == "A"
        assert '"created": false' in res.stdout or "adopted" in res.stdout
        run("detach", "ap")
        assert in_force(veth) == "none" and not (ebp_env / "ap").exists()


def test_lost_state_dir_then_apply_adopts(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    shutil.rmtree(os.environ["EBPLANE_STATE_DIR"])
    assert in_force(veth) == "A"
    write_spec(spec, spec_text(veth, "B"))
    run("apply", str(spec))  # on old main: EBUSY, and its rollback unpinned the running one
    assert in_force(veth) == "B"
    run("rules", "add", "ap", "--rule", RULE_EXTRA)
    assert in_force(veth) == "B+extra"


def test_failed_apply_leaves_what_it_found(ebp_env, veth, tmp_path):
    """A pipeline pinned without state, and an apply that fails (an interface it cannot
    attach to): the failed apply removes nothing it did not create."""
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    shutil.rmtree(os.environ["EBPLANE_STATE_DIR"])
    before = sorted(str(p.relative_to(ebp_env)) for p in (ebp_env / "ap").rglob("*"))
    # veth1 gets a foreign XDP program first, so attaching there fails with EBUSY
    from ebplane.net import attach as att, netns
    from ebplane.kernel.programs import Program
    with netns.enter(veth):
        held = Program.from_pin(ebp_env / "ap" / "prog")
        a = att.attach_xdp(held.fd, "veth1", mode="generic", use_link=True)
    try:
        write_spec(spec, spec_text(veth, "B").replace("[veth0]", "[veth0, veth1]"))
        proc = run("apply", str(spec), check=False)
        assert proc.returncode == 3, proc.stderr
        assert in_force(veth) == "A"
        after = sorted(str(p.relative_to(ebp_env)) for p in (ebp_env / "ap").rglob("*"))
        assert after == before
    finally:
        a.link.close()
        held.close()
    write_spec(spec, spec_text(veth, "B"))
    run("apply", str(spec))
    assert in_force(veth) == "B"


@pytest.mark.slow
def test_first_apply_random_kills(ebp_env, veth, tmp_path):
    """50 first applies killed at random points: each time the next apply succeeds."""
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    t0 = time.monotonic()
    run("apply", str(spec))
    duration = time.monotonic() - t0
    run("detach", "ap")
    from ebplane.runtime import pipeline
    rng = random.Random(2)
    t_start = startup_seconds()
    outcomes: dict[str, int] = {}
    kills = 0
    while kills < 50:
        proc = start("apply", str(spec))
        time.sleep(rng.uniform(0.8 * t_start, duration))
        kills += proc.poll() is None
        kill(proc)
        v = in_force(veth)
        assert v in ("none", "A")
        outcomes[v] = outcomes.get(v, 0) + 1
        pipeline.apply(spec)  # the next command (in process: the loop's time budget)
        assert in_force(veth) == "A"
        pipeline.detach("ap")
    print("\nfirst apply, in force after the kill:", outcomes)


def test_detach_of_a_pipeline_pinned_without_state(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    shutil.rmtree(os.environ["EBPLANE_STATE_DIR"])
    run("detach", "ap")
    assert in_force(veth) == "none" and not (ebp_env / "ap").exists()


# -- item 3: killed between the kernel commit and the record --------------------------------

def record_version() -> str:
    """The version the state record says is in force ("A"/"B", "+extra")."""
    from ebplane.runtime.pipeline import RuleTable
    ports = {r["rule"].get("dport") for r in RuleTable("ap").list()}
    v = "A" if 53 in ports else "B" if 9 in ports else "?"
    return v + ("+extra" if 7777 in ports else "")


def link_prog_id(root: Path) -> int | None:
    from ebplane.kernel.links import Link
    try:
        with Link.from_pin(link_pin(root)) as link:
            return link.prog_id()
    except Exception:
        return None


def generation(root: Path) -> int:
    """What changes with every committed install of filter acl (tree form): the root of the
    tree in force, the one u32 of its config entry."""
    from ebplane.kernel.codec import U32
    from ebplane.kernel.maps import Map
    m = Map.from_pin(root / "ap" / "maps" / "flt_acl_cfg")
    try:
        return int.from_bytes(bytes(m.lookup(U32.encode(0)))[:4], "little")
    finally:
        m.close()


def rules_file(tmp_path: Path, version: str) -> Path:
    return write_spec(tmp_path / f"rules-{version}.yaml",
                      f"- {RULES[version]}\n- {{dst: 198.18.0.99, proto: tcp, dport: 1, action: drop}}\n")


def next_command_agrees(veth: str, *, in_process: bool = False) -> str:
    """The next command (a rule edit, in a fresh process) succeeds, and afterwards record and
    kernel agree: returns the version in force."""
    if in_process:  # the same code without a process start (the slow loops' budget)
        from ebplane.runtime.pipeline import RuleTable
        from ebplane.spec import parse_rule
        RuleTable("ap").add(parse_rule({"dst": "198.18.0.2", "proto": "udp", "dport": 7777,
                                        "action": "drop"}, protocols=["ipv4", "udp"]))
    else:
        run("rules", "add", "ap", "--rule", RULE_EXTRA)
    v = in_force(veth)
    assert v in ("A+extra", "B+extra") and v == record_version(), v
    return v[0]


def test_reapply_killed_after_the_program_switch(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    version = "A"
    for _ in range(3):
        new = "B" if version == "A" else "A"
        write_spec(spec, spec_text(veth, new))
        before, previous = link_prog_id(ebp_env), record_version()
        proc = start("apply", str(spec))
        assert kill_when(proc, lambda: link_prog_id(ebp_env) != before), "apply ended first"
        assert in_force(veth) in (previous, new)  # the new program may still read the old rules
        # on old main the record still said the old version: old policy plus the new rule
        assert next_command_agrees(veth) == new
        version = new


def test_rules_replace_killed_after_the_generation_flip(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    version = "A"
    for _ in range(3):
        new = "B" if version == "A" else "A"
        gen = generation(ebp_env)
        proc = start("rules", "replace", "ap", str(rules_file(tmp_path, new)))
        assert kill_when(proc, lambda: generation(ebp_env) != gen), "rules replace ended first"
        assert in_force(veth) == new
        assert next_command_agrees(veth) == new
        version = new


@pytest.mark.parametrize("step", ["apply-intent", "apply-link-pinned", "apply-renamed"])
def test_first_apply_killed_at_step(ebp_env, veth, tmp_path, step):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    proc = run("apply", str(spec), env={"EBPLANE_TEST_CRASH_AT": step}, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert in_force(veth) in ("none", "A")
    run("status")
    run("apply", str(spec))
    assert in_force(veth) == "A"


@pytest.mark.parametrize("step", ["apply-intent", "apply-replaced", "apply-installed",
                                  "apply-renamed"])
def test_reapply_killed_at_step(ebp_env, veth, tmp_path, step):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    write_spec(spec, spec_text(veth, "B"))
    proc = run("apply", str(spec), env={"EBPLANE_TEST_CRASH_AT": step}, check=False)
    assert proc.returncode == -signal.SIGKILL
    assert in_force(veth) in ("A", "B")
    want = "A" if step == "apply-intent" else "B"  # forward once the new program runs
    assert next_command_agrees(veth) == want


@pytest.mark.parametrize("step", ["rules-intent", "rules-installed"])
def test_rules_replace_killed_at_step(ebp_env, veth, tmp_path, step):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    proc = run("rules", "replace", "ap", str(rules_file(tmp_path, "B")),
               env={"EBPLANE_TEST_CRASH_AT": step}, check=False)
    assert proc.returncode == -signal.SIGKILL
    want = "A" if step == "rules-intent" else "B"
    assert in_force(veth) == want
    assert next_command_agrees(veth) == want


@pytest.mark.parametrize("step", ["rules-intent", "rules-installed"])
def test_incremental_rule_edit_killed_at_step(ebp_env, veth, tmp_path, step):
    """An incremental tree edit (a RuleTable object that keeps the tree's mirror, as a Python
    API user does) killed before the root flip is undone by the next command (its intent record
    holds the inverse edit), killed after it is kept."""
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    script = (
        "import os, sys\n"
        "from ebplane.runtime.pipeline import RuleTable\n"
        "from ebplane.spec import parse_rule\n"
        "p = lambda d: parse_rule(d, protocols=['ipv4', 'udp'])\n"
        "t = RuleTable('ap')\n"
        "t.add(p({'dst': '198.18.0.98', 'proto': 'udp', 'dport': 2, 'action': 'drop'}))\n"
        "print('mirror' if t._cache else 'none', flush=True)\n"
        f"os.environ['EBPLANE_TEST_CRASH_AT'] = '{step}'\n"
        "t.add(p({'dst': '198.18.0.2', 'proto': 'udp', 'dport': 7777, 'action': 'drop'}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.strip() == "mirror"  # the edit that was killed took the incremental path
    want = "A" if step == "rules-intent" else "A+extra"
    assert record_version() == want  # the next command settled the record
    assert in_force(veth) == want


def startup_seconds() -> float:
    """How long the CLI takes to start (imports): kills before that test nothing."""
    t0 = time.monotonic()
    run("--help")
    return time.monotonic() - t0


def random_kills(veth, start_op, kills: int, seed: int) -> dict:
    """``kills`` runs of ``start_op(new)`` killed at a random point within one operation,
    each followed by the check that the previous or the new version is in force and that
    the next command succeeds with record and kernel in agreement."""
    rng = random.Random(seed)
    t_start = startup_seconds()
    durations = []
    for _ in range(3):  # the first compiles each version; the others take it from the cache
        version = record_version()[0]
        t0 = time.monotonic()
        start_op("B" if version == "A" else "A").wait(timeout=60)
        durations.append(time.monotonic() - t0)
    duration = min(durations)
    version = record_version()[0]
    seen: dict[str, int] = {}
    done = 0
    while done < kills:
        new = "B" if version == "A" else "A"
        previous = record_version()
        proc = start_op(new)
        time.sleep(rng.uniform(0.8 * t_start, duration))
        killed = proc.poll() is None
        kill(proc)
        done += killed
        v = in_force(veth)
        assert v in (previous, new), (v, previous, new)
        version = next_command_agrees(veth, in_process=True)
        assert version in (previous[0], new)
        key = ("killed: " if killed else "finished: ") + ("new" if version == new else "previous")
        seen[key] = seen.get(key, 0) + 1
    return seen


@pytest.mark.slow
def test_reapply_random_kills(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))

    def op(new):
        write_spec(spec, spec_text(veth, new))
        return start("apply", str(spec))
    print("\nre-apply:", random_kills(veth, op, 50, seed=3))


@pytest.mark.slow
def test_rules_replace_random_kills(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    files = {v: rules_file(tmp_path, v) for v in RULES}
    print("\nrules replace:", random_kills(
        veth, lambda new: start("rules", "replace", "ap", str(files[new])), 50, seed=4))


# -- item 4: status says what the kernel has -------------------------------------------------

def test_status_dead_after_pins_removed_and_reapply_repairs(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    run("rules", "add", "ap", "--rule", RULE_EXTRA)
    shutil.rmtree(ebp_env / "ap")  # the link pin held the attachment: filtering stops
    assert in_force(veth) == "none"
    import json
    [st] = json.loads(run("status", "--json").stdout)
    assert st["health"] == "DEAD" and st["attachments"][0]["health"] == "DEAD"
    assert st["attachments"][0]["alive"] is False
    assert f"ebplane apply {spec}" in st["repair"] and "ebplane detach ap" in st["repair"]
    human = run("status").stdout
    assert "veth0(link/native DEAD)" in human and "repair: re-apply" in human
    proc = run("stats", "ap", check=False)
    assert proc.returncode == 2 and "DEAD" in proc.stderr and "ebplane apply" in proc.stderr
    res = json.loads(run("apply", str(spec), "--json").stdout)  # old main: nothing is pinned
    assert any("attached again" in n for n in res["notes"])
    assert in_force(veth) == "A+extra"  # the live rules, run-time edit included
    [st] = json.loads(run("status", "--json").stdout)
    assert st["health"] == "ok" and st["repair"] is None
    assert st["attachments"][0]["health"] == "ok"


def test_status_drifted_and_reapply_repairs(ebp_env, veth, tmp_path):
    import json
    from ebplane.codegen.pipeline import spec_features
    from ebplane.kernel.links import Link
    from ebplane.runtime.build import build
    from ebplane.spec import parse_spec
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    other = parse_spec(spec_text(veth, "B").replace("pipeline: ap", "pipeline: other"), "other")
    built = build(other, spec_features(other, {"acl": [r for r in other.stages[0].rules]}))
    try:
        with Link.from_pin(link_pin(ebp_env)) as link:  # someone swaps the program
            link.update(built.program.fd)
        assert in_force(veth) == "none"  # its tables are empty
        [st] = json.loads(run("status", "--json").stdout)
        assert st["health"] == "DRIFTED" and st["attachments"][0]["health"] == "DRIFTED"
        assert str(built.program.id) in st["attachments"][0]["why"]
        assert "DRIFTED" in run("status").stdout
    finally:
        built.close()
    run("apply", str(spec))
    assert in_force(veth) == "A"
    [st] = json.loads(run("status", "--json").stdout)
    assert st["health"] == "ok"
