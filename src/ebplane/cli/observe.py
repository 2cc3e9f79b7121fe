"""``ebplane trace | metrics | top``: what a pipeline does to packets, now."""

from __future__ import annotations

import json
import signal
import sys
import time


def register(sub) -> None:
    p = sub.add_parser("trace", help="capture packets with the verdict, stage and rule "
                       "that decided them (text, JSON lines or pcapng)")
    p.add_argument("name", metavar="PIPELINE")
    p.add_argument("filter_words", nargs="*", metavar="FILTER",
                   help="tcpdump/pcap-filter expression, run in the kernel")
    p.add_argument("-w", dest="write", metavar="FILE.pcapng",
                   help="write pcapng; each packet's comment says what happened to it")
    p.add_argument("--stage", help="only packets this stage decided")
    p.add_argument("--verdict", help="only packets with this verdict (drop, pass, tx, "
                   "redirect, aborted)")
    p.add_argument("--rule", type=int, metavar="N",
                   help="only packets rule N (index, as ebplane stats shows) decided")
    p.add_argument("--count", type=int, metavar="N", help="stop after N packets")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    p.add_argument("--snaplen", type=int, default=256, help="bytes of each frame (default 256)")
    p.add_argument("--rate", type=int, default=0, metavar="PPS",
                   help="at most PPS frames per second, limited in the kernel (default: none)")
    p.add_argument("--json", action="store_true", help="one JSON object per packet")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("metrics", help="serve Prometheus metrics of the applied pipelines")
    p.add_argument("--listen", default="127.0.0.1:9464", metavar="ADDR:PORT")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    p.add_argument("--bpf-stats", action="store_true",
                   help="keep the kernel's BPF run statistics on while serving (program run "
                        "count and time; costs some ns per packet)")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("top", help="live rates per pipeline, stage, rule and verdict "
                       "(q to quit)")
    p.add_argument("name", nargs="?", metavar="PIPELINE")
    p.add_argument("--interval", type=float, default=1.0, metavar="SECONDS")
    p.add_argument("--once", action="store_true",
                   help="print the rates over one interval and exit (no terminal UI)")
    p.set_defaults(func=cmd_top)


class _Stop(Exception):
    pass


def _stop_on_signals() -> None:
    """SIGTERM and SIGHUP end a trace like Ctrl-C: the program is respecialised back."""
    def handler(_sig, _frame):
        raise _Stop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _line(f) -> str:
    t = time.strftime("%H:%M:%S", time.localtime(f.time)) + f".{int(f.time % 1 * 1e6):06d}"
    who = f"{f.stage} {f.reason}" if f.stage else f.reason
    return f"{t} {f.ifname} {f.hook} {f.verdict:<12} {who:<24} len {f.length}  {_summary(f)}"


def _summary(f) -> str:
    from ebplane.runtime.trace import summary
    return summary(f.data)


def cmd_trace(args) -> int:
    from ebplane.runtime.trace import PcapngSink, Trace, TraceRequest
    req = TraceRequest(stage=args.stage, verdict=args.verdict, rule=args.rule,
                       snaplen=args.snaplen, rate=args.rate,
                       filter=" ".join(args.filter_words) or None)
    sink = PcapngSink(args.write, args.name) if args.write else None
    n = 0
    _stop_on_signals()
    deadline = time.monotonic() + args.duration if args.duration else None
    tr = Trace(args.name, req)
    try:
        with tr:
            print(f"tracing pipeline '{args.name}' (program {tr.prog_id}, capture hooks in; "
                  f"Ctrl-C to stop)", file=sys.stderr, flush=True)
            while args.count is None or n < args.count:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                for f in tr.frames(100):
                    if args.count is not None and n >= args.count:
                        break
                    n += 1
                    if sink:
                        sink.write(f)
                    elif args.json:
                        sys.stdout.write(json.dumps(f.to_dict()) + "\n")
                    else:
                        print(_line(f))
                sys.stdout.flush()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if sink:
            sink.close()
    c = tr.counters()
    lost = c.get("rate_limited", 0) + c.get("ring_full", 0) + c.get("copy_failed", 0)
    print(f"{n} packets {'written to ' + args.write if sink else 'shown'}; the kernel "
          f"selected {c.get('selected', 0)}, filtered out {c.get('filtered_out', 0)}, "
          f"delivered {c.get('captured', 0)}, could not deliver {lost} (rate limit "
          f"{c.get('rate_limited', 0)}, ring full {c.get('ring_full', 0)}, copy failed "
          f"{c.get('copy_failed', 0)}); program {tr.prog_id} trace-free again",
          file=sys.stderr)
    return 0


def cmd_metrics(args) -> int:
    from ebplane.runtime.metrics import parse_listen, serve
    host, port = parse_listen(args.listen)
    server, _thread = serve(host, port, bpf_stats=args.bpf_stats)
    print(f"serving Prometheus metrics on http://{host}:{server.server_port}/metrics",
          file=sys.stderr, flush=True)
    _stop_on_signals()
    try:
        end = time.monotonic() + args.duration if args.duration else None
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        server.shutdown()
    return 0


def cmd_top(args) -> int:
    from ebplane.cli.top import run_once, run_top
    if args.once:
        print(run_once(args.name, args.interval))
        return 0
    return run_top(args.name, args.interval)
