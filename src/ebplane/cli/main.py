"""The ``ebplane`` command.  Each command group lives in its own module with a
``register(subparsers)`` function; this module wires them and turns errors into
messages and exit codes."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys

from ebplane import __version__
from ebplane.errors import EbplaneError

# command modules, in the order `ebplane --help` lists them
COMMAND_MODULES = ["probe", "pipeline", "rules", "backends", "groups", "agent", "observe", "parser",
                   "lab", "demo", "bench", "chain", "fleet"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebplane", description="A programmable network data plane "
                                "built from eBPF building blocks.")
    p.add_argument("--version", action="version", version=f"ebplane {__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show debug logs, libbpf's messages and whole verifier logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"ebplane.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"ebplane.cli.{name}":
                continue  # a command group not built yet
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # KEY=VALUE words after an option (rules add NAME --at 0 dport=53 action=drop)
    if extra and hasattr(args, "fields") and all("=" in w and not w.startswith("-") for w in extra):
        args.fields = list(args.fields or []) + extra
    # the words of a trace's FILTER after an option (trace fw -w x.pcapng udp port 53)
    elif extra and hasattr(args, "filter_words") and not any(w.startswith("-") for w in extra):
        args.filter_words = list(args.filter_words or []) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    level = os.environ.get("EBPLANE_LOG", "debug" if args.verbose else "warning").upper()
    logging.basicConfig(level=getattr(logging, level, logging.WARNING),
                        format="%(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        try:
            rc = args.func(args)
            return int(rc or 0)
        except PermissionError as e:
            # wherever it comes from (a state file, a pin, /run/netns): missing privileges
            from ebplane.errors import PermissionDenied
            where = f" ({e.filename})" if e.filename else ""
            raise PermissionDenied(f"permission denied: {e.strerror or e}{where}",
                                   err=e.errno or 13,
                                   hint="run as root (or with CAP_BPF and CAP_NET_ADMIN)") from None
    except EbplaneError as e:
        if getattr(args, "json", False):
            # one line: commands that print JSON lines (replay) stay one object per line
            json.dump(e.to_dict(), sys.stdout, default=str)
            sys.stdout.write("\n")
        print(f"error: {e}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        for note in getattr(e, "__notes__", ()):  # e.g. rollback steps that failed
            print(f"note: {note}", file=sys.stderr)
        if args.verbose and getattr(e, "log", None):
            print(e.log, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head(1) and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
