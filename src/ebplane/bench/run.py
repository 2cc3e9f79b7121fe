"""The whole benchmark: run the sections asked for, write bench.json, bench.md, bench.png.

Pipelines the benchmark applies live under a private state directory and bpffs root, so it
never meets (or clobbers) a user's applied pipelines, and whatever it applied is detached
at the end, also after an error or Ctrl-C; its namespaces (``ebp-bench*``) are removed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ebplane import __version__
from ebplane.bench.harness import CostHarness, Progress, Suite
from ebplane.errors import UsageError

SECTIONS: tuple[str, ...] = ("cost", "live", "control", "scaling", "xsk", "classbench",
                             "containers", "balancer", "jumbo", "l4")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of one benchmark run; :meth:`full` and :meth:`quick` are the two presets."""
    repeat: int                      # test_run repeats per call (program cost)
    runs: int                        # calls per program cost figure
    live_seconds: float              # length of one live run
    live_repeats: int                # live runs per device under test
    load_sizes: tuple[int, ...]      # rule counts of the table-load test
    reapplies: int                   # re-applies under traffic
    scale_rules: tuple[int, ...]
    scale_shapes: tuple[int, ...]
    xsk_frames: int                  # frames per AF_XDP receive run
    xsk_runs: int
    classbench_sizes: tuple[int, ...] = (10, 100)   # rules per generated rule set (cost)
    classbench_kinds: tuple[str, ...] = ("acl", "low-shape")  # seed types (bench/classbench.py)
    classbench_live_size: int = 100                 # rules of the live run (IPv4, first kind)
    classbench_seed: int = 1
    balancer_calls: int = 2000                      # single-packet runs per cost batch
    balancer_batches: int = 5

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(repeat=1_000_000, runs=5, live_seconds=2.0, live_repeats=3,
                   load_sizes=(1_000, 100_000), reapplies=10,
                   scale_rules=(1, 100, 10_000, 100_000), scale_shapes=(1, 4, 16),
                   xsk_frames=2_000_000, xsk_runs=3,
                   classbench_sizes=(10, 100, 1_000, 10_000, 100_000),
                   classbench_kinds=("acl", "fw", "ipc", "low-shape"), classbench_live_size=10_000)

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny sizes: checks that everything runs, in seconds; the figures mean little."""
        return cls(repeat=2_000, runs=2, live_seconds=0.1, live_repeats=1, load_sizes=(1_000,),
                   reapplies=2, scale_rules=(1, 100), scale_shapes=(1, 4),
                   xsk_frames=20_000, xsk_runs=1, classbench_sizes=(10, 100),
                   classbench_kinds=("acl", "low-shape"), classbench_live_size=100,
                   balancer_calls=300, balancer_batches=2)


def machine() -> dict:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {"cpu": cpu, "nproc": os.cpu_count(), "usable_cpus": sorted(os.sched_getaffinity(0)),
            "kernel": platform.release(), "os": os_name, "python": platform.python_version()}


def parse_sections(text: str) -> tuple[str, ...]:
    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in names if s not in SECTIONS]
    if bad or not names:
        raise UsageError(f"unknown benchmark section {bad[0] if bad else text!r}",
                         hint=f"choose from {','.join(SECTIONS)}")
    return names


@contextlib.contextmanager
def _private_control_plane():
    """Point ebplane's state directory and pin root at throw-away places for the run."""
    keys = ("EBPLANE_STATE_DIR", "EBPLANE_BPFFS_ROOT")
    saved = {k: os.environ.get(k) for k in keys}
    state = tempfile.mkdtemp(prefix="ebp-bench-state-")
    os.environ["EBPLANE_STATE_DIR"] = state
    os.environ["EBPLANE_BPFFS_ROOT"] = f"/sys/fs/bpf/ebplane-bench-{os.getpid()}"
    try:
        yield
    finally:
        from ebplane.kernel import bpffs
        from ebplane.runtime.pipeline import detach
        from ebplane.runtime.state import all_names
        for name in all_names():  # left applied by an interrupted section
            with contextlib.suppress(Exception):
                detach(name)
        with contextlib.suppress(Exception):
            bpffs.unpin(bpffs.root())
        shutil.rmtree(state, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_bench(out: Path, sections: tuple[str, ...], config: BenchConfig, *, command: str,
              suite_dir: Path | None = None, progress: Progress) -> dict:
    """Run ``sections``; write ``out``/bench.json, bench.md and bench.png; return the JSON."""
    from ebplane.bench.classbench_run import run_classbench
    from ebplane.bench.control import run_control
    from ebplane.bench.cost import run_cost
    from ebplane.bench.live import LiveLab, run_live
    from ebplane.bench.report import chart, markdown
    from ebplane.bench.scaling import run_scaling
    from ebplane.kernel import bpffs

    suite = Suite.load(suite_dir)
    started = time.time()
    results: dict = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(_private_control_plane())
        bpffs.ensure_mounted()  # inside: the pin root it creates is the run's private one
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ebp-bench-")))
        harness = lab = None
        if {"cost", "scaling", "classbench"} & set(sections):
            harness = stack.enter_context(CostHarness(config.repeat, config.runs))
            if "cost" in sections:
                results["cost"] = run_cost(suite, harness, progress)
            if "scaling" in sections:
                results["scaling"] = run_scaling(harness, config.scale_rules,
                                                 config.scale_shapes, progress)
        if {"live", "control", "balancer", "l4"} & set(sections) or ("classbench" in sections
                                                    and config.classbench_live_size):
            progress("lab: bringing up ebp-bench (gen -- dut -- sink)")
            lab = stack.enter_context(LiveLab(suite, workdir))
            if "live" in sections:
                results["live"] = run_live(lab, config.live_seconds, config.live_repeats, progress)
            if "control" in sections:
                results["control"] = run_control(lab, config.load_sizes, config.reapplies,
                                                 progress)
            if "l4" in sections:
                from ebplane.bench.l4 import run_l4
                results["l4"] = run_l4(lab, config.live_seconds, config.live_repeats, progress)
        if "xsk" in sections:
            from ebplane.bench.xsk import run_xsk
            results["xsk"] = run_xsk(config.xsk_frames, config.xsk_runs, progress)
        if "classbench" in sections:
            results["classbench"] = run_classbench(harness, lab, config, progress)
        if "containers" in sections:
            from ebplane.bench.containers import run_containers
            results["containers"] = run_containers(workdir, config.live_seconds,
                                                   config.live_repeats, progress)
        if "balancer" in sections:
            from ebplane.bench.balancer import run_balancer
            results["balancer"] = run_balancer(suite, lab, config.balancer_calls,
                                               config.balancer_batches, config.live_seconds,
                                               config.live_repeats, progress)
        if "jumbo" in sections:
            from ebplane.bench.jumbo import run_jumbo
            results["jumbo"] = run_jumbo(workdir, config.live_seconds, config.live_repeats,
                                         progress)
    doc = {"ebplane": __version__, "command": command,
           "started": datetime.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
           "seconds": round(time.time() - started, 1), "machine": machine(),
           "config": asdict(config), "suite": str(suite.root),
           "sections": {k: results[k] for k in SECTIONS if k in results}}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(doc) + "\n")
    chart(doc, out / "bench.png")
    progress(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return doc
