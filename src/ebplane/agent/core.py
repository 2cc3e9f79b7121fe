"""The agent: owns the desired state (:mod:`ebplane.agent.store`) and keeps the kernel
converged to it.

Every change (apply, detach, rule edits) goes through the runtime functions first (the
kernel and the runtime's record under ``$EBPLANE_STATE_DIR``) and is written to the desired
state once the kernel holds it: a change the kernel refuses is never desired, and an agent
killed between the two finds the kernel one change ahead of its desired state at its next
start, and puts the desired version back (the previous version: never a mix).

Reconcile (at start for every pipeline, then every ``interval`` seconds and on every netlink
link event of the namespaces it watches), per pipeline under its lock; see docs/agent.md:

- interface or namespace missing: ``pending`` (attached as soon as it appears);
- no record and no program in the kernel (after a reboot): built, loaded, attached, rules
  installed again (``restored``);
- record, program and attachments present and matching (agent restarted): ``adopted``,
  the kernel untouched;
- an attachment detached, replaced, or a pin removed: applied again (``drift-repaired``);
- at start, a rule list or spec that differs from the desired one: the desired one is
  installed (``rules-restored``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

from ebplane.agent.store import Store
from ebplane.errors import EbplaneError, NotFound, UsageError, VerifierError
from ebplane.kernel import bpffs
from ebplane.net import attach as att
from ebplane.net import iface
from ebplane.net import netns as netns_mod
from ebplane.runtime import pipeline as rt
from ebplane.runtime.state import PipelineState, all_names, check_name, pin_dir
from ebplane.runtime.tables import assign_ids

log = logging.getLogger("ebplane.agent")

RTMGRP_LINK = 1


def _filters(spec) -> list:
    return [s for s in spec.stages if s.has_rules]


class Agent:
    def __init__(self, store: Store, *, interval: float = 0.5,
                 on_event: Callable[[dict], None] | None = None):
        self.store = store
        self.interval = interval
        self.on_event = on_event
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._events = threading.Condition()
        self.last_seq = 0
        self.wake = threading.Event()
        self.stopping = threading.Event()
        # name -> {"state": ok|pending|failed, "why": str, "since": ts}
        self.phase: dict[str, dict] = {}
        self._retry_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        # name -> table -> orders of the stored rules (read lazily)
        self._orders: dict[str, dict[str, list[float]]] = {}
        self._watchers: dict[str | None, threading.Thread] = {}
        self._cache: dict[tuple[str, str], list[dict]] = {}  # (name, table) -> stored rules
        self._tables: dict[tuple[str, str | None], rt.RuleTable] = {}  # see _edit
        self._check_rules: set[str] = set()  # compare rules with the kernel at next reconcile

    # -- plumbing ---------------------------------------------------------------------------

    def lock(self, name: str) -> threading.RLock:
        check_name(name)
        with self._locks_guard:
            return self._locks.setdefault(name, threading.RLock())

    def event(self, kind: str, pipeline: str | None, message: str, **detail: Any) -> dict:
        ev = {"ts": time.time(), "pipeline": pipeline, "kind": kind, "message": message}
        if detail:
            ev["detail"] = detail
        ev["seq"] = self.store.add_event(ev)
        with self._events:
            self.last_seq = ev["seq"]
            self._events.notify_all()
        if self.on_event:
            self.on_event(ev)
        return ev

    def wait_events(self, after: int, timeout: float) -> None:
        with self._events:
            self._events.wait_for(lambda: self.last_seq > after or self.stopping.is_set(),
                                  timeout=timeout)

    def _set_phase(self, name: str, state: str, why: str = "") -> bool:
        """Record the pipeline's phase; True when it changed (an event is due)."""
        cur = self.phase.get(name)
        if cur and cur["state"] == state and cur["why"] == why:
            return False
        self.phase[name] = {"state": state, "why": why, "since": time.time()}
        return True

    # -- desired state ----------------------------------------------------------------------

    def _desired_rules(self, spec, old: dict | None) -> tuple[dict[str, list[dict]], list[str]]:
        """The rules a (re-)applied spec gets: per filter, the desired live rules when the
        spec's rules for it did not change since the last apply (run-time edits are kept),
        else the spec's rules (keeping the ids of identical rules)."""
        notes = []
        old_rules = self.store.rules(spec.name) if old else {}
        old_spec = None
        if old:
            with contextlib.suppress(EbplaneError):
                old_spec = rt.spec_of_text(old["spec_text"], old["spec_file"])
        old_spec_rules = {f.name: [r.to_dict() for r in f.rules] for f in _filters(old_spec)} \
            if old_spec else {}
        out = {}
        for st in _filters(spec):
            mine = [r.to_dict() for r in st.rules]
            if st.name in old_rules and old_spec_rules.get(st.name) == mine:
                out[st.name] = old_rules[st.name]
                continue
            if st.name in old_rules:
                notes.append(f"filter '{st.name}': the spec's rules changed; they replace the "
                             f"live rules")
            previous = rt._stored_entries(old_rules.get(st.name, []), spec.protocols)
            out[st.name] = [e.to_state() for e in assign_ids(st.rules, previous, st.capacity)]
        return out, notes

    def _where(self, spec) -> str | None:
        """Why the pipeline cannot be attached now (namespace or interface missing), or None."""
        if spec.netns and not netns_mod.exists(spec.netns):
            return f"network namespace {spec.netns} does not exist"
        with rt.netns_enter(spec.netns):
            missing = [i for i in spec.interfaces if not _iface_exists(i)]
        if missing:
            return f"interface {', '.join(missing)} does not exist" + \
                (f" in network namespace {spec.netns}" if spec.netns else "")
        return None

    def _persist(self, name: str, spec_text: str, spec_file: str) -> None:
        st = PipelineState.load(name)
        rules = st.live_rules if st else {}
        self.store.put_pipeline(name, spec_text, spec_file, rules)
        self._forget(name)

    # -- operations (the API) ---------------------------------------------------------------

    def apply(self, spec_text: str, spec_file: str) -> dict:
        spec = rt.spec_of_text(spec_text, spec_file)  # bad input: refused, nothing stored
        with self.lock(spec.name):
            old = self.store.pipeline(spec.name)
            rules, notes = self._desired_rules(spec, old)
            why = self._where(spec)
            if why is not None:
                self.store.put_pipeline(spec.name, spec_text, spec_file, rules)
                self._forget(spec.name)
                if self._set_phase(spec.name, "pending", why):
                    self.event("pending", spec.name, f"{why}: pending, attached when it "
                               f"appears")
                self._watch(spec.netns)
                return {"name": spec.name, "state": "pending", "why": why, "created": old is None,
                        "prog_id": None, "attachments": [], "compiled_from_cache": False,
                        "reused_maps": [], "rules": {k: len(v) for k, v in rules.items()},
                        "notes": notes, "seconds": 0.0}
            try:
                res = rt.apply_text(spec_text, spec_file, rules=rules)
            except VerifierError as e:
                self.event("verifier-refused", spec.name, e.message)
                raise
            self._persist(spec.name, spec_text, spec_file)
            self._set_phase(spec.name, "ok")
            self._failures.pop(spec.name, None)
            self.event("applied", spec.name, f"applied: program {res.prog_id} on "
                       f"{', '.join(spec.interfaces)}", prog_id=res.prog_id)
            self._watch(spec.netns)
            d = res.to_dict()
            d["notes"] = notes + d["notes"]
            return {**d, "state": "ok"}

    def detach(self, name: str) -> dict:
        with self.lock(name):
            desired = self.store.pipeline(name)
            res = {"name": name, "detached": []}
            if PipelineState.load(name) is not None or pin_dir(name).is_dir():
                res = rt.detach(name)
            elif desired is None:
                rt.detach(name)  # raises NotFound naming the applied pipelines
            self.store.delete_pipeline(name)
            self.phase.pop(name, None)
            self._forget(name)
            self.event("detached", name, f"detached from {', '.join(res['detached']) or 'no interface'}")
            return res

    def names(self) -> list[str]:
        return sorted(set(self.store.names()) | set(all_names()))

    def status(self, name: str | None = None) -> list[dict]:
        names = [check_name(name)] if name else self.names()
        out = []
        for n in names:
            with self.lock(n):
                desired = self.store.pipeline(n)
                if desired is None and name and PipelineState.load(n) is None:
                    raise NotFound(f"pipeline '{n}' is not applied (applied pipelines: "
                                   f"{', '.join(self.names()) or 'none'})",
                                   hint="apply it first: ebplane apply SPEC")
                phase = self.phase.get(n, {"state": "unknown", "why": "", "since": None})
                items = rt.status(n) if PipelineState.load(n) is not None else []
                if items:
                    d = items[0]
                else:
                    spec = rt.spec_of_text(desired["spec_text"], desired["spec_file"])
                    d = {"name": n, "health": "PENDING" if phase["state"] == "pending" else "DEAD",
                         "problems": [phase["why"] or "not in the kernel"], "repair": None,
                         "hook": spec.hook, "netns": spec.netns, "prog_id": None,
                         "program": None, "attachments": [], "features": {},
                         "rules": {k: len(v) for k, v in self.store.rules(n).items()},
                         "filters": {}, "applied_at": desired["updated_at"],
                         "spec_file": desired["spec_file"], "notes": []}
                d["agent"] = {**phase, "desired": desired is not None,
                              "in_sync": phase["state"] == "ok" and d["health"] == "ok"}
                out.append(d)
        return out

    def stats(self, name: str | None = None) -> list[dict]:
        if name:
            with self.lock(name):
                return rt.stats(name)
        out = []
        for n in all_names():
            with self.lock(n):
                out += rt.stats(n) if PipelineState.load(n) else []
        return out

    def rules_list(self, name: str, table: str | None) -> list[dict]:
        with self.lock(name):
            return rt.RuleTable(name, table).list()

    def _edit(self, name: str, table: str | None, op: Callable[[rt.RuleTable], dict],
              hint: Callable[[int], tuple[int, int]] | None = None) -> dict:
        with self.lock(name):
            if PipelineState.load(name) is None and self.store.pipeline(name) is not None:
                why = self.phase.get(name, {}).get("why") or "it is not in the kernel"
                raise UsageError(f"pipeline '{name}' is pending ({why}): its rules can be "
                                 f"changed once it is attached",
                                 hint="re-apply a spec with the rules, or wait for the interface")
            # one table object per table between requests: it keeps the tree's mirror, so an
            # add or delete is an incremental edit (docs/pipelines.md); dropped by _forget
            t = self._tables.get((name, table))
            if t is None:
                t = rt.RuleTable(name, table)
                self._tables[(name, table)] = t
            if self.store.pipeline(name) is None:  # applied directly, not imported yet
                self.import_direct()
            old = self._rules_of(name, t.name)
            orders = self._orders_of(name, t.name)
            try:
                res = op(t)
            except BaseException:
                self._tables.pop((name, table), None)  # opened anew next time
                raise
            new = [e.to_state() for e in t.last_entries]
            t0 = time.perf_counter()
            try:
                self._orders[name][t.name] = self.store.change_rules(
                    name, t.name, old, orders, new, hint(len(old)) if hint else None)
                self._cache[(name, t.name)] = new
            except BaseException:
                self._check_rules.add(name)  # the kernel is ahead: compare at next reconcile
                self._forget(name)
                raise
            res["persisted_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            self.event("rules-changed", name, f"filter '{t.name}': {res['rules']} rules"
                       f"{' (program regenerated)' if res.get('regenerated') else ''}")
            return res

    def _rules_of(self, name: str, table: str) -> list[dict]:
        key = (name, table)
        if key not in self._cache:
            self._cache[key] = self.store.rules(name).get(table, [])
        return self._cache[key]

    def _orders_of(self, name: str, table: str) -> list[float]:
        per = self._orders.setdefault(name, {})
        if table not in per:
            per[table] = self.store.orders(name, table)
        return per[table]

    def _forget(self, name: str) -> None:
        self._orders.pop(name, None)
        for k in [k for k in self._tables if k[0] == name]:
            self._tables.pop(k, None)
        for k in [k for k in self._cache if k[0] == name]:
            self._cache.pop(k, None)

    def rules_add(self, name: str, table: str | None, rule: dict, at: int | None) -> dict:
        def hint(n: int) -> tuple[int, int]:  # unchanged: the rules before and after it
            pos = n if at is None else at
            return pos, n - pos
        return self._edit(name, table, lambda t: t.add(t.parse(rule, "rule"), at), hint)

    def rules_delete(self, name: str, table: str | None, indexes: list[int]) -> dict:
        def hint(n: int) -> tuple[int, int]:
            return (min(indexes), n - 1 - max(indexes)) if indexes else (n, 0)
        return self._edit(name, table, lambda t: t.delete(indexes), hint)

    def rules_replace(self, name: str, table: str | None, rules: list, source: str = "rules") -> dict:
        return self._edit(name, table, lambda t: t.replace(
            [t.parse(r, f"{source}[{i}]") for i, r in enumerate(rules)]))

    # -- reconcile --------------------------------------------------------------------------

    def import_direct(self) -> None:
        """Pipelines in the runtime's record that the desired state does not know (applied
        without an agent): they become desired as they are."""
        known = set(self.store.names())
        for n in all_names():
            if n in known:
                continue
            with self.lock(n):
                st = rt.load_state(n)
                if st is None:
                    continue
                self.store.put_pipeline(n, st.spec_text, st.spec_file, st.live_rules)
                self.event("imported", n, "applied without the agent: taken into its desired "
                           "state as it runs")

    def reconcile_all(self, *, start: bool = False) -> None:
        for n in self.store.names():
            if self.stopping.is_set():
                return
            if not start and time.monotonic() < self._retry_at.get(n, 0):
                continue
            try:
                self.reconcile(n, start=start)
            except EbplaneError as e:
                k = self._failures[n] = self._failures.get(n, 0) + 1
                self._retry_at[n] = time.monotonic() + min(60.0, 0.5 * 2 ** k)
                if self._set_phase(n, "failed", e.message):
                    self.event("verifier-refused" if isinstance(e, VerifierError) else "error",
                               n, f"could not converge: {e.message}",
                               **({"hint": e.hint} if e.hint else {}))
            except Exception as e:  # a bug must not stop the loop for the other pipelines
                log.exception("reconcile of %s failed", n)
                self._retry_at[n] = time.monotonic() + 10
                if self._set_phase(n, "failed", f"internal error: {e!r}"):
                    self.event("error", n, f"internal error while reconciling: {e!r}")

    def reconcile(self, name: str, *, start: bool = False) -> str:
        """Bring one pipeline to its desired state; returns what was done."""
        with self.lock(name):
            desired = self.store.pipeline(name)
            if desired is None:
                return "unknown"
            text, file = desired["spec_text"], desired["spec_file"]
            spec = rt.spec_of_text(text, file)
            self._watch(spec.netns)
            why = self._where(spec)
            if why is not None:
                was = self.phase.get(name, {}).get("state")
                if self._set_phase(name, "pending", why):
                    kind = "interface-gone" if was == "ok" else "pending"
                    self.event(kind, name, f"{why}: pending, attached when it appears")
                return "pending"
            was_pending = self.phase.get(name, {}).get("state") == "pending"
            st = rt.load_state(name)  # settles a change a killed command left half-done
            if st is None:
                had_pins = pin_dir(name).is_dir()
                rules = self.store.rules(name)
                res = rt.apply_text(text, file, rules=rules)
                self._done(name)
                kind = "attached" if was_pending else "restored"
                self.event(kind, name, f"{'interface appeared: attached' if was_pending else 'not in the kernel (after a reboot?): built, loaded, attached'}"
                           f"{' (adopted pins left without a record)' if had_pins else ''}; "
                           f"program {res.prog_id}, rules "
                           f"{', '.join(f'{k}:{v}' for k, v in res.rules.items()) or 'none'}",
                           prog_id=res.prog_id)
                return kind
            d = rt.status(name)[0]
            problems = list(d["problems"])
            if st.spec_text != text:
                problems.append("the spec in force differs from the desired one")
            rules = None
            if start or name in self._check_rules:
                rules = self.store.rules(name)
                if {k: v for k, v in st.live_rules.items() if v or k in rules} != \
                        {k: v for k, v in rules.items() if v or k in st.live_rules}:
                    problems.append("the rules in force differ from the desired ones")
                self._check_rules.discard(name)
            if not problems:
                self._done(name)
                if start:
                    self.event("adopted", name, f"found in force as desired: adopted without "
                               f"touching the kernel (program {st.prog_id})",
                               prog_id=st.prog_id)
                return "adopted" if start else "ok"
            self._evict_foreign(spec, st)
            res = rt.apply_text(text, file, rules=rules if rules is not None else self.store.rules(name))
            self._done(name)
            kind = "attached" if was_pending else "drift-repaired"
            self.event(kind, name, f"{'; '.join(problems)}: repaired (program {res.prog_id})",
                       problems=problems, prog_id=res.prog_id)
            return kind

    def _done(self, name: str) -> None:
        self._set_phase(name, "ok")
        self._failures.pop(name, None)
        self._retry_at.pop(name, None)
        self._forget(name)

    def _evict_foreign(self, spec, st: PipelineState) -> None:
        """An XDP program that is not the pipeline's, attached by netlink where the pipeline
        attaches (``ip link set dev X xdp obj ...``): removed, so that the pipeline can attach
        again (the desired state says what runs there)."""
        if spec.hook != "xdp" and spec.parser_mode != "xdp":
            return
        with rt.netns_enter(spec.netns):
            for a in st.attachments:
                if a["hook"] != "xdp":
                    continue
                with contextlib.suppress(EbplaneError):
                    q = att.query_xdp(a["ifname"])
                    live = rt._kernel_prog(a)
                    if q.get("prog_id") and q["prog_id"] != a["prog_id"] and live is None:
                        att.detach_xdp(a["ifname"], q.get("mode"))
                        self.event("evicted", spec.name, f"{a['ifname']}: removed foreign XDP "
                                   f"program {q['prog_id']} attached in the pipeline's place")

    # -- netlink link events ----------------------------------------------------------------

    def _watch(self, netns: str | None) -> None:
        """A thread that wakes the reconcile loop on every link event of ``netns``."""
        t = self._watchers.get(netns)
        if t is not None and t.is_alive():
            return
        if netns and not netns_mod.exists(netns):
            return
        try:
            with rt.netns_enter(netns):
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
                sock.bind((0, RTMGRP_LINK))
            ino = netns_mod.inode(netns) if netns else None
        except (OSError, EbplaneError) as e:
            log.warning("cannot watch link events of %s: %s", netns or "the agent's namespace", e)
            return
        t = threading.Thread(target=self._watch_loop, args=(sock, netns, ino), daemon=True,
                             name=f"links-{netns or '-'}")
        self._watchers[netns] = t
        t.start()

    def _watch_loop(self, sock: socket.socket, netns: str | None, ino: int | None) -> None:
        sock.settimeout(1.0)
        with sock:
            while not self.stopping.is_set():
                try:
                    sock.recv(65536)
                except socket.timeout:
                    if netns and (not netns_mod.exists(netns) or netns_mod.inode(netns) != ino):
                        self.wake.set()
                        return  # the namespace is gone (or another has its name)
                    continue
                except OSError:
                    continue  # ENOBUFS: events lost, reconcile anyway
                self.wake.set()

    def run(self) -> None:
        """The reconcile loop, until :attr:`stopping` is set."""
        while not self.stopping.is_set():
            self.wake.wait(self.interval)
            self.wake.clear()
            if self.stopping.is_set():
                break
            self.reconcile_all()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        with self._events:
            self._events.notify_all()


def _iface_exists(name: str) -> bool:
    try:
        iface.ifindex(name)
        return True
    except EbplaneError:
        return False
