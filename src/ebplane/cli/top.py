"""``ebplane top`` and ``ebplane stats --rate``: packet and bit rates per pipeline, stage, rule
and verdict, from two readings of the counters (``ebplane stats``) an interval apart.

The live view is drawn with ``rich`` (``rich.live.Live`` on the alternate screen), sorted by
packet rate, refreshed every interval; ``q`` quits (the terminal is in cbreak mode meanwhile
and restored on exit, Ctrl-C too).
"""

from __future__ import annotations

import os
import select
import sys
import time

Key = tuple[str, str, str, str]  # pipeline, stage, what (rule / outcome), verdict


def counters(items: list[dict]) -> dict[Key, tuple[int, int]]:
    """Flatten ``stats()`` into (pipeline, stage, what, verdict) -> (packets, bytes)."""
    from ebplane.stages.control import control_for
    out: dict[Key, tuple[int, int]] = {}
    for d in items:
        n = d["name"]
        for v, c in d["verdicts"].items():
            out[(n, "(program)", "", v)] = (c["packets"], c["bytes"])
        for st in d["stages"]:
            # what each counter is, as the stage's kind says (StageControl.rows)
            for r in control_for(st["kind"]).rows(st):
                out[(n, st["stage"], r.label, r.action or "")] = (r.packets, r.bytes)
    return out


def rates(prev: dict[Key, tuple[int, int]], cur: dict[Key, tuple[int, int]],
          seconds: float) -> list[tuple[Key, float, float, int]]:
    """(key, packets/s, bits/s, total packets), highest packet rate first."""
    rows = []
    for k, (p, b) in cur.items():
        p0, b0 = prev.get(k, (p, b))
        rows.append((k, max(p - p0, 0) / seconds, max(b - b0, 0) * 8 / seconds, p))
    rows.sort(key=lambda r: (-r[1], -r[3], r[0]))
    return rows


def _human(x: float, unit: str) -> str:
    for prefix in ("", "k", "M", "G", "T"):
        if abs(x) < 1000:
            return f"{x:.1f} {prefix}{unit}" if prefix or x % 1 else f"{x:.0f} {unit}"
        x /= 1000
    return f"{x:.1f} P{unit}"


def render(rows, title: str):
    from rich import box
    from rich.table import Table
    t = Table(title=title, title_justify="left", expand=False, box=box.SIMPLE_HEAD)
    # the numbers keep their width; the rule text gives way in a narrow terminal
    for col, just, width in (("pipeline", "left", 8), ("stage", "left", 8),
                             ("rule / outcome", "left", None), ("verdict", "left", 11),
                             ("pps", "right", 10), ("bps", "right", 10),
                             ("packets", "right", 9)):
        t.add_column(col, justify=just, no_wrap=True, min_width=width,
                     overflow="ellipsis" if width is None else "fold")
    for (pipe, stage, what, verdict), pps, bps, total in rows:
        t.add_row(pipe, stage, what[:48], verdict, _human(pps, "pps"), _human(bps, "bps"),
                  str(total))
    return t


def _read(name: str | None):
    from ebplane.runtime.pipeline import stats
    return counters(stats(name)), time.monotonic()


def run_once(name: str | None, interval: float = 1.0) -> str:
    """The rates over one interval, as plain text (``stats --rate``, ``top --once``)."""
    from rich.console import Console
    prev, t0 = _read(name)
    time.sleep(interval)
    cur, t1 = _read(name)
    console = Console(width=160, color_system=None, force_terminal=False, record=True,
                      file=open(os.devnull, "w"))
    console.print(render(rates(prev, cur, t1 - t0), f"rates over {t1 - t0:.1f} s"))
    return console.export_text().rstrip()


def run_top(name: str | None, interval: float = 1.0) -> int:
    import termios
    import tty

    from rich.console import Console
    from rich.live import Live

    from ebplane.errors import UsageError
    if not sys.stdin.isatty():
        raise UsageError("ebplane top needs a terminal", hint="use --once (or ebplane stats "
                         "--rate) for the rates as text")
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    prev, t0 = _read(name)
    console = Console()
    try:
        tty.setcbreak(fd)
        with Live(render([], "ebplane top (q to quit)"), console=console, screen=True,
                  auto_refresh=False) as live:
            while True:
                r, _, _ = select.select([fd], [], [], interval)
                if r and os.read(fd, 64).strip().lower().startswith(b"q"):
                    return 0
                cur, t1 = _read(name)
                rows = rates(prev, cur, max(t1 - t0, 1e-3))
                prev, t0 = cur, t1
                live.update(render(rows, f"ebplane top {name or ''} - "
                                   f"{time.strftime('%H:%M:%S')} - q to quit"), refresh=True)
    except KeyboardInterrupt:
        return 0
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
