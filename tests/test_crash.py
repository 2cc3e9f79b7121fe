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
            f"  - filter:\n      name: acl\n      default: next\n      rules:\n"
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
        passed = [c.wait(3, 0.25) >= 3 for c in caps]
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
    rng = random.Random(2)
    outcomes = {}
    for _ in range(50):
        proc = start("apply", str(spec))
        time.sleep(rng.uniform(0.2, duration))
        kill(proc)
        v = in_force(veth)
        assert v in ("none", "A")
        outcomes[v] = outcomes.get(v, 0) + 1
        run("apply", str(spec))
        assert in_force(veth) == "A"
        run("detach", "ap")
    print("in force after the kill:", outcomes)


def test_detach_of_a_pipeline_pinned_without_state(ebp_env, veth, tmp_path):
    spec = write_spec(tmp_path / "ap.yaml", spec_text(veth, "A"))
    run("apply", str(spec))
    shutil.rmtree(os.environ["EBPLANE_STATE_DIR"])
    run("detach", "ap")
    assert in_force(veth) == "none" and not (ebp_env / "ap").exists()
