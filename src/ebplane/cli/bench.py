"""``ebplane bench``: run the benchmark suite (benchmarks/) and write JSON, Markdown, PNG."""

from __future__ import annotations

import dataclasses
import shlex
import signal
from pathlib import Path

from ebplane.bench.run import SECTIONS
from ebplane.cli.output import emit, progress
from ebplane.errors import UsageError


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure ebplane against hand-written C, xdp-filter, "
                                     "nftables and kernel forwarding")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (seconds): checks that the benchmark runs, figures mean little")
    p.add_argument("--out", default="bench-out", metavar="DIR",
                   help="where bench.json, bench.md and bench.png go (default: bench-out)")
    p.add_argument("--sections", default=",".join(SECTIONS), metavar="LIST",
                   help=f"comma-separated: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--suite", metavar="DIR", help="the benchmark suite (default: the "
                                                   "benchmarks/ directory of this source tree)")
    p.add_argument("--classbench-sizes", metavar="LIST",
                   help="classbench: comma-separated rule counts (default: the preset's)")
    p.add_argument("--classbench-kinds", metavar="LIST",
                   help="classbench: comma-separated seed types, acl, fw, ipc, low-shape")
    p.add_argument("--classbench-live", type=int, metavar="N",
                   help="classbench: rules of the live run, 0 for none")
    p.add_argument("--json", action="store_true", help="print the JSON document on stdout")
    p.set_defaults(func=cmd_bench)


def _terminate(signum, frame):
    raise KeyboardInterrupt  # run the same clean-up as Ctrl-C


def cmd_bench(args) -> int:
    from ebplane.bench import BenchConfig, parse_sections, run_bench
    sections = parse_sections(args.sections)
    config = BenchConfig.quick() if args.quick else BenchConfig.full()
    try:
        if args.classbench_sizes:
            config = dataclasses.replace(config, classbench_sizes=tuple(
                int(x) for x in args.classbench_sizes.split(",")))
        if args.classbench_kinds:
            config = dataclasses.replace(config, classbench_kinds=tuple(
                k.strip() for k in args.classbench_kinds.split(",")))
        if args.classbench_live is not None:
            config = dataclasses.replace(config, classbench_live_size=args.classbench_live)
    except ValueError:
        raise UsageError(f"--classbench-sizes takes rule counts, not {args.classbench_sizes!r}",
                         hint="e.g. --classbench-sizes 10000,100000") from None
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        doc = run_bench(Path(args.out), sections, config,
                        command="ebplane bench " + shlex.join(_given(args)),
                        suite_dir=Path(args.suite) if args.suite else None, progress=progress)
    finally:
        signal.signal(signal.SIGTERM, previous)
    emit(args, doc, lambda d: (Path(args.out) / "bench.md").read_text())
    return 0


def _given(args) -> list[str]:
    """The options of this run, for the report's command line."""
    words = ["--quick"] if args.quick else []
    words += ["--out", args.out, "--sections", args.sections]
    for opt in ("classbench_sizes", "classbench_kinds", "classbench_live"):
        if getattr(args, opt, None) is not None:
            words += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    return words + (["--suite", args.suite] if args.suite else [])
