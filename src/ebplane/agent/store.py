"""The agent's desired state: an SQLite database in WAL mode under ``$EBPLANE_DATA_DIR``
(default ``/var/lib/ebplane``), file ``desired.db``.

Why SQLite (stdlib ``sqlite3``): every change is one transaction, durable when the call
returns (``journal_mode=WAL`` with ``synchronous=FULL``: the WAL is fsync'd at each commit),
atomic across a crash (a transaction is in the database or not at all), and incremental:
a rule is one row, so adding one rule to a table of 100k writes one row and a few WAL pages,
not the table.  A JSON file rewritten per change would cost in proportion to the table
(several MB per edit at 100k rules); a hand-written journal would need its own compaction
and torn-write handling, which SQLite has.

Schema:

- ``pipelines(name, spec_text, spec_file, updated_at)``: the last spec applied through the
  agent, per pipeline;
- ``rules(pipeline, tbl, id, ord, rule)``: the live rules of each filter, ``id`` the rule's
  stable counter id, ``ord`` a real number giving the priority order (a rule inserted between
  two others takes the mean of their ``ord``; the table is renumbered in the rare case the
  mean is not strictly between them), ``rule`` its JSON;
- ``events(seq, ts, pipeline, kind, message, detail)``: what the agent did and why (the most
  recent 10 000 are kept).

The directory is root's (0700; 0750 with group ``ebplane`` when that group exists), the
database files 0600 (0640 with the group): specs and rules are not for every user to read.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

from ebplane.errors import PermissionDenied, UsageError

GROUP = "ebplane"
MAX_EVENTS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS pipelines (
    name TEXT PRIMARY KEY,
    spec_text TEXT NOT NULL,
    spec_file TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rules (
    pipeline TEXT NOT NULL,
    tbl TEXT NOT NULL,
    id INTEGER NOT NULL,
    ord REAL NOT NULL,
    rule TEXT NOT NULL,
    PRIMARY KEY (pipeline, tbl, id)
);
CREATE INDEX IF NOT EXISTS rules_order ON rules (pipeline, tbl, ord);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    pipeline TEXT,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    detail TEXT
);
"""


def data_dir() -> Path:
    return Path(os.environ.get("EBPLANE_DATA_DIR", "/var/lib/ebplane"))


def _gid() -> int | None:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def _private(path: Path, mode: int, gid: int | None) -> None:
    with contextlib.suppress(FileNotFoundError):
        st = path.stat()
        if st.st_uid != os.geteuid():
            return
        if gid is not None and st.st_gid != gid:
            os.chown(path, -1, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)


Entry = dict  # {"id": int, "rule": {...}}


class Store:
    """The desired state.  One connection shared by the agent's threads behind a lock
    (sqlite3 serialises writers anyway; reads are short)."""

    def __init__(self, directory: Path | None = None, *, readonly: bool = False):
        self.dir = Path(directory or data_dir())
        self.path = self.dir / "desired.db"
        gid = _gid()
        try:
            if readonly:
                if not self.path.exists():
                    raise UsageError(f"no agent state at {self.path}",
                                     hint="start the agent (ebplane agent) or set "
                                          "EBPLANE_DATA_DIR")
                self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                          check_same_thread=False)
            else:
                old = os.umask(0o077 if gid is None else 0o027)
                try:
                    self.dir.mkdir(parents=True, exist_ok=True)
                    _private(self.dir, 0o750 if gid is not None else 0o700, gid)
                    self.db = sqlite3.connect(self.path, check_same_thread=False,
                                              isolation_level=None, timeout=30)
                    self.db.execute("PRAGMA journal_mode=WAL")
                    self.db.execute("PRAGMA synchronous=FULL")
                    self.db.executescript(SCHEMA)
                finally:
                    os.umask(old)
                for suffix in ("", "-wal", "-shm"):
                    _private(Path(f"{self.path}{suffix}"), 0o640 if gid is not None else 0o600,
                             gid)
        except PermissionError as e:
            raise PermissionDenied(f"cannot open the agent's state {self.path}: {e.strerror}",
                                   err=e.errno or 13,
                                   hint="run the agent as root") from None
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    # -- pipelines --------------------------------------------------------------------------

    def names(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self.db.execute("SELECT name FROM pipelines ORDER BY name")]

    def pipeline(self, name: str) -> dict | None:
        with self._lock:
            r = self.db.execute("SELECT spec_text, spec_file, updated_at FROM pipelines "
                                "WHERE name = ?", (name,)).fetchone()
        if r is None:
            return None
        return {"name": name, "spec_text": r[0], "spec_file": r[1], "updated_at": r[2]}

    def rules(self, name: str) -> dict[str, list[Entry]]:
        """table -> rules in priority order."""
        out: dict[str, list[Entry]] = {}
        with self._lock:
            for tbl, rid, rule in self.db.execute(
                    "SELECT tbl, id, rule FROM rules WHERE pipeline = ? ORDER BY tbl, ord",
                    (name,)):
                out.setdefault(tbl, []).append({"id": rid, "rule": json.loads(rule)})
        return out

    def orders(self, name: str, table: str) -> list[float]:
        with self._lock:
            return [r[0] for r in self.db.execute(
                "SELECT ord FROM rules WHERE pipeline = ? AND tbl = ? ORDER BY ord",
                (name, table))]

    def put_pipeline(self, name: str, spec_text: str, spec_file: str,
                     rules: dict[str, list[Entry]]) -> None:
        """The pipeline's spec and all its rules, replacing what was stored (one transaction)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO pipelines VALUES (?, ?, ?, ?)",
                       (name, spec_text, spec_file, time.time()))
            db.execute("DELETE FROM rules WHERE pipeline = ?", (name,))
            db.executemany("INSERT INTO rules VALUES (?, ?, ?, ?, ?)",
                           ((name, t, e["id"], float(i), json.dumps(e["rule"]))
                            for t, es in rules.items() for i, e in enumerate(es)))

    def delete_pipeline(self, name: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM pipelines WHERE name = ?", (name,))
            db.execute("DELETE FROM rules WHERE pipeline = ?", (name,))

    def change_rules(self, name: str, table: str, old: Sequence[Entry], orders: list[float],
                     new: Sequence[Entry], hint: tuple[int, int] | None = None) -> list[float]:
        """Persist the change from ``old`` (with its ``orders``) to ``new``: the rows of the
        common prefix and suffix stay, the middle is replaced, so one rule added or removed is
        one or two rows whatever the table's size.  Returns the orders of ``new``.

        ``hint``: (prefix, suffix) lengths the caller knows unchanged (a rule added at an
        index, rules deleted between two).  They are checked on the rules' ids (a rule keeps
        its id while it stays; an added rule takes an id no rule had, see
        ``ebplane.runtime.tables.assign_ids``), so a change to a 100k-rule table compares
        integers, not rules; without a hint, or when the check fails, rules are compared."""
        n_old, n_new = len(old), len(new)
        p = s = -1
        if hint is not None:
            hp, hs = hint
            if 0 <= hp and 0 <= hs and hp + hs <= min(n_old, n_new):
                old_ids = [e["id"] for e in old]
                new_ids = [e["id"] for e in new]
                if old_ids[:hp] == new_ids[:hp] and old_ids[n_old - hs:] == new_ids[n_new - hs:] \
                        and not set(new_ids[hp:n_new - hs]) & set(old_ids[:hp]) \
                        and not set(new_ids[hp:n_new - hs]) & set(old_ids[n_old - hs:]):
                    p, s = hp, hs
        if p < 0:
            p = 0
            while p < n_old and p < n_new and old[p]["id"] == new[p]["id"] and \
                    old[p]["rule"] == new[p]["rule"]:
                p += 1
            s = 0
            while s < n_old - p and s < n_new - p and old[n_old - 1 - s]["id"] == \
                    new[n_new - 1 - s]["id"] and \
                    old[n_old - 1 - s]["rule"] == new[n_new - 1 - s]["rule"]:
                s += 1
        gone = old[p:n_old - s]
        added = new[p:n_new - s]
        lo = orders[p - 1] if p > 0 else None
        hi = orders[n_old - s] if s > 0 else None
        if lo is None and hi is None:
            lo, hi = 0.0, len(added) + 1.0
        elif lo is None:
            lo = hi - len(added) - 1.0
        elif hi is None:
            hi = lo + len(added) + 1.0
        step = (hi - lo) / (len(added) + 1)
        new_orders = [lo + step * (i + 1) for i in range(len(added))]
        renumber = any(not (a < b) for a, b in zip([lo] + new_orders, new_orders + [hi]))
        with self._tx() as db:
            db.executemany("DELETE FROM rules WHERE pipeline = ? AND tbl = ? AND id = ?",
                           ((name, table, e["id"]) for e in gone))
            if renumber:  # the reals ran out between two neighbours: write the table anew
                db.execute("DELETE FROM rules WHERE pipeline = ? AND tbl = ?", (name, table))
                db.executemany("INSERT INTO rules VALUES (?, ?, ?, ?, ?)",
                               ((name, table, e["id"], float(i), json.dumps(e["rule"]))
                                for i, e in enumerate(new)))
                return [float(i) for i in range(n_new)]
            db.executemany("INSERT INTO rules VALUES (?, ?, ?, ?, ?)",
                           ((name, table, e["id"], o, json.dumps(e["rule"]))
                            for e, o in zip(added, new_orders)))
        return list(orders[:p]) + new_orders + list(orders[n_old - s:])

    # -- events -----------------------------------------------------------------------------

    def add_event(self, ev: dict) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO events (ts, pipeline, kind, message, detail) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (ev["ts"], ev.get("pipeline"), ev["kind"], ev["message"],
                              json.dumps(ev.get("detail")) if ev.get("detail") else None))
            seq = cur.lastrowid
            if seq % 1000 == 0:
                db.execute("DELETE FROM events WHERE seq <= ?", (seq - MAX_EVENTS,))
        return seq

    def events(self, after: int = 0, pipeline: str | None = None, limit: int = 1000) -> list[dict]:
        q = "SELECT seq, ts, pipeline, kind, message, detail FROM events WHERE seq > ?"
        args: list = [after]
        if pipeline:
            q += " AND pipeline = ?"
            args.append(pipeline)
        q += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self.db.execute(q, args).fetchall()
        return [{"seq": s, "ts": ts, "pipeline": p, "kind": k, "message": m,
                 **({"detail": json.loads(d)} if d else {})} for s, ts, p, k, m, d in rows]
