"""The node side of the fleet: watch ``/ebplane/v1/desired/<node>/``, converge, report.

:class:`FleetNode` runs next to the agent's reconcile loop (``ebplane agent --fleet``) or,
with :class:`RecordingApplier`, without any kernel (the simulation of docs/fleet.md):

- registers the node's labels (``nodes/<node>``, durable) and its presence
  (``alive/<node>``, under a lease of ``ttl`` seconds kept alive every ``ttl/3``);
- reads the node's desired pipelines once (a full resync), then watches the prefix from
  the next revision; every change is applied through the applier (for the agent: the same
  ``Agent.apply`` / ``rules_replace`` path as a local change, so it is persisted in the
  agent's desired state and survives etcd being away);
- writes each pipeline's status (version applied, state, attached interfaces, error, last
  reconcile) under the lease: a node that dies stops renewing it and its status expires;
- when etcd cannot be reached, keeps what runs (the data plane never waits for etcd) and
  retries with a backoff; the watch resumes from the last revision seen, and a full resync
  follows when etcd compacted that revision away.  The last revision and the versions
  applied are kept in ``<data dir>/fleet.json``, so a restarted agent re-applies nothing
  that already runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from ebplane.errors import EbplaneError
from ebplane.fleet import layout
from ebplane.fleet.etcd import Compacted, Etcd, EtcdError

log = logging.getLogger("ebplane.agent")


class Applier(Protocol):
    def apply(self, name: str, doc: dict) -> dict: ...
    def detach(self, name: str) -> None: ...
    def has(self, name: str) -> bool: ...


class RecordingApplier:
    """No kernel: remembers what it was told (the simulated agents)."""

    def __init__(self):
        self.docs: dict[str, dict] = {}
        self.on_apply = None

    def apply(self, name: str, doc: dict) -> dict:
        self.docs[name] = doc
        if self.on_apply:
            self.on_apply(name, doc)
        return {"state": "ok", "attached": []}

    def detach(self, name: str) -> None:
        self.docs.pop(name, None)

    def has(self, name: str) -> bool:
        return name in self.docs


class FleetNode:
    def __init__(self, etcd: Etcd, node: str, labels: dict[str, str], applier: Applier,
                 data_dir: Path | None, *, ttl: int = 10):
        self.etcd = etcd
        self.node = layout.check_node(node)
        self.labels = labels
        self.applier = applier
        self.ttl = ttl
        self.file = Path(data_dir) / "fleet.json" if data_dir else None
        self.revision = 0
        self.applied: dict[str, int] = {}
        self._load()
        self.status: dict[str, dict] = {}
        self.lease = 0
        self.stopping = threading.Event()
        self.connected = threading.Event()
        self._watch = None
        self._need_resync = True
        self._dirty: set[str] = set()
        self._lock = threading.RLock()

    # -- local record ------------------------------------------------------------------------

    def _load(self) -> None:
        if self.file and self.file.exists():
            with contextlib.suppress(ValueError, OSError):
                d = json.loads(self.file.read_text())
                self.revision = int(d.get("revision", 0))
                self.applied = {k: int(v) for k, v in d.get("applied", {}).items()}

    def _save(self) -> None:
        if not self.file:
            return
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"node": self.node, "revision": self.revision,
                                   "applied": self.applied}))
        os.replace(tmp, self.file)

    # -- registration and lease --------------------------------------------------------------

    def _register(self) -> None:
        self.lease = self.etcd.grant(self.ttl)
        self.etcd.put(layout.NODES + self.node, json.dumps({"labels": self.labels}))
        self.etcd.put(layout.ALIVE + self.node,
                      json.dumps({"pid": os.getpid(), "since": time.time(),
                                  "labels": self.labels}), lease=self.lease)
        self._dirty |= set(self.status)
        self._flush()

    def _flush(self) -> None:
        """Status writes that could not be made (etcd away) are made once it answers."""
        for name in sorted(self._dirty):
            st = self.status.get(name)
            if st is None:
                self.etcd.delete(layout.status(self.node, name))
            else:
                self.etcd.put(layout.status(self.node, name), json.dumps(st), lease=self.lease)
            self._dirty.discard(name)

    def _keepalive_loop(self) -> None:
        while not self.stopping.wait(max(0.2, self.ttl / 3)):
            if not self.connected.is_set():
                continue
            try:
                if self.etcd.keepalive(self.lease) <= 0:  # expired while we were away
                    with self._lock:
                        self._register()
            except EtcdError as e:
                log.warning("fleet: lease keep-alive failed: %s", e.message)
                self._drop()

    def _drop(self) -> None:
        self.connected.clear()
        w = self._watch
        if w is not None:
            w.close()

    # -- converging --------------------------------------------------------------------------

    def _set_status(self, name: str, st: dict | None) -> None:
        if st is None:
            self.status.pop(name, None)
        else:
            self.status[name] = st
        self._dirty.add(name)
        with contextlib.suppress(EtcdError):
            if self.connected.is_set():
                self._flush()

    def converge(self, name: str, doc: dict) -> None:
        version = int(doc["version"])
        now = time.time()
        if self.applied.get(name) == version and self.applier.has(name):
            if self.status.get(name, {}).get("version") != version:
                self._set_status(name, {"version": version, "state": "ok", "error": None,
                                        "attached": [], "last_reconcile": now})
            return
        t0 = time.monotonic()
        try:
            res = self.applier.apply(name, doc)
        except EbplaneError as e:
            log.warning("fleet: %s version %d failed: %s", name, version, e.message)
            prev = self.status.get(name, {})
            self._set_status(name, {"version": self.applied.get(name), "state": "failed",
                                    "failed_version": version, "error": e.message,
                                    "hint": e.hint, "attached": prev.get("attached", []),
                                    "last_reconcile": now})
            return
        self.applied[name] = version
        self._save()
        self._set_status(name, {"version": version, "state": res.get("state", "ok"),
                                "error": res.get("why"), "attached": res.get("attached", []),
                                "seconds": round(time.monotonic() - t0, 3),
                                "last_reconcile": now})
        log.info("fleet: %s version %d %s", name, version, res.get("state", "ok"))

    def remove(self, name: str) -> None:
        if name in self.applied or self.applier.has(name):
            with contextlib.suppress(EbplaneError):
                self.applier.detach(name)
            log.info("fleet: %s detached (no longer desired for %s)", name, self.node)
        self.applied.pop(name, None)
        self._save()
        self._set_status(name, None)

    def resync(self) -> None:
        kvs, rev = self.etcd.range(layout.desired(self.node), prefix=True)
        seen = set()
        for kv in kvs:
            name = kv.key.rsplit("/", 1)[1]
            seen.add(name)
            self.converge(name, kv.json())
        for name in set(self.applied) - seen:
            self.remove(name)
        self.revision = rev
        self._save()
        self._need_resync = False

    def _on_events(self, events, rev: int) -> None:
        for ev in events:
            name = ev.kv.key.rsplit("/", 1)[1]
            if ev.type == "DELETE":
                self.remove(name)
            else:
                self.converge(name, ev.kv.json())
        if rev > self.revision:
            self.revision = rev
            self._save()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Until :meth:`stop`: (re)connect, resync when needed, watch."""
        ka = threading.Thread(target=self._keepalive_loop, daemon=True, name="fleet-lease")
        ka.start()
        backoff = 0.2
        while not self.stopping.is_set():
            try:
                with self._lock:
                    if not self.connected.is_set():
                        self._register()
                        self.connected.set()
                    if self._need_resync or self.revision == 0:
                        self.resync()
                w = self.etcd.watch(layout.desired(self.node), self.revision + 1)
                self._watch = w
                backoff = 0.2
                if self.stopping.is_set():
                    break
                for events, rev in w:
                    with self._lock:
                        self._on_events(events, rev)
                    if self.stopping.is_set():
                        break
                if not self.stopping.is_set():
                    raise EtcdError("the watch stream ended")
            except Compacted as e:
                log.info("fleet: revision %d compacted (oldest %d): full resync",
                         self.revision + 1, e.compact_revision)
                self._need_resync = True
            except EtcdError as e:
                if self.stopping.is_set():
                    break
                if self.connected.is_set():
                    log.warning("fleet: etcd unreachable (%s): the data plane keeps running; "
                                "retrying", e.message)
                self.connected.clear()
                self.stopping.wait(backoff)
                backoff = min(5.0, backoff * 2)
            finally:
                self._watch = None

    def stop(self, *, revoke: bool = False) -> None:
        self.stopping.set()
        self._drop()
        if revoke and self.lease:
            with contextlib.suppress(EtcdError):
                self.etcd.revoke(self.lease)


class AgentApplier:
    """Fleet changes through the agent's own path (``Agent.apply`` then ``rules_replace``),
    so they are in the agent's durable desired state; ``netns`` puts a node's pipelines in
    one network namespace (the spec's ``netns`` is replaced)."""

    def __init__(self, agent, netns: str | None = None):
        self.agent = agent
        self.netns = netns

    def _text(self, doc: dict) -> str:
        if not self.netns:
            return doc["spec_text"]
        import yaml
        d = yaml.safe_load(doc["spec_text"])
        d["netns"] = self.netns
        return yaml.safe_dump(d, sort_keys=False)

    def apply(self, name: str, doc: dict) -> dict:
        res = self.agent.apply(self._text(doc), doc.get("spec_file") or f"<fleet:{name}>")
        if res.get("state") == "ok":
            for table, rules in (doc.get("rules") or {}).items():
                self.agent.rules_replace(name, table, rules, source=f"fleet rules[{table}]")
        st = self.agent.status(name)[0]
        return {"state": res.get("state", "ok"), "why": res.get("why"),
                "attached": [a.get("ifname") for a in st.get("attachments", [])],
                "prog_id": st.get("prog_id")}

    def detach(self, name: str) -> None:
        self.agent.detach(name)

    def has(self, name: str) -> bool:
        return self.agent.store.pipeline(name) is not None
