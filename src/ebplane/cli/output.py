"""Output conventions of every command: human text by default, ``--json`` for scripts
(valid JSON on stdout and nothing else), errors as ``error: ...`` / ``hint: ...`` on stderr
with the error's exit code."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Sequence


def emit(args, data: Any, human: Callable[[Any], str] | None = None) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2, default=_default)
        sys.stdout.write("\n")
    else:
        text = human(data) if human else json.dumps(data, indent=2, default=_default)
        if text:
            print(text)


def _default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.hex()
    return str(o)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    cols = list(zip(*([list(headers)] if headers else []) + rows)) if (rows or headers) else []
    widths = [max(len(c) for c in col) for col in cols]
    out = []
    if headers:
        out.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
        out.append("  ".join("-" * w for w in widths))
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(out)


def progress(msg: str) -> None:
    """A progress line for long work: stderr, so --json stdout stays clean."""
    print(msg, file=sys.stderr, flush=True)


def agent():
    """A client of the running agent (``ebplane.agent.client``), or None: every command that
    changes or reads pipelines goes through the agent when one answers, else works directly."""
    from ebplane.agent.client import connect
    return connect()


def via(data: Any, how: str) -> Any:
    """Mark --json output with who did the work: ``"via": "agent"`` or ``"direct"`` (in each
    item of a list)."""
    if isinstance(data, dict):
        data["via"] = how
    elif isinstance(data, list):
        for d in data:
            if isinstance(d, dict):
                d["via"] = how
    return data
