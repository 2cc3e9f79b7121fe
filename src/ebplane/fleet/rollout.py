"""The operator's side: ``ebplane fleet apply|rules|status|detach``.

A change is a new fleet definition (``pipelines/<name>``; its etcd revision is the version),
then a rollout: the selected nodes' ``desired/<node>/<name>`` keys are written batch by batch
(the canary nodes first, then ``max_unavailable`` nodes at a time), and each batch must report
the new version in force before the next starts.  The first node that reports a failure
(verifier, kernel or attach refusal) stops the rollout: the definition and the nodes already
written are put back to the previous version, and the nodes not reached never see the change.
Nodes that are not alive (no ``alive/<node>`` key) are written but not waited for: they
converge when they come back.
"""

from __future__ import annotations

import json
import time

from ebplane.errors import EbplaneError, NotFound, UsageError
from ebplane.fleet import layout
from ebplane.fleet.etcd import Etcd


class RolloutFailed(EbplaneError):
    """A node refused the change (verifier, kernel, attach) or did not report it in time;
    ``report`` says which batches ran and where it stopped."""
    exit_code = 3
    report: dict = {}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "report": self.report}


def nodes(etcd: Etcd) -> dict[str, dict]:
    """node -> {"labels": ..., "alive": bool}"""
    out = {}
    kvs, _ = etcd.range(layout.NODES, prefix=True)
    for kv in kvs:
        out[kv.key[len(layout.NODES):]] = {"labels": kv.json().get("labels", {}), "alive": False}
    kvs, _ = etcd.range(layout.ALIVE, prefix=True)
    for kv in kvs:
        n = kv.key[len(layout.ALIVE):]
        out.setdefault(n, {"labels": kv.json().get("labels", {})})["alive"] = True
    return out


def definition(etcd: Etcd, name: str) -> tuple[dict | None, int]:
    kv = etcd.get(layout.PIPELINES + name)
    return (kv.json(), kv.mod_revision) if kv else (None, 0)


def _spec_rules(spec) -> dict[str, list[dict]]:
    return {st.name: [r.to_dict() for r in st.rules] for st in spec.stages
            if st.has_rules}


def _parse(spec_text: str, spec_file: str):
    from ebplane.runtime.pipeline import spec_of_text
    return spec_of_text(spec_text, spec_file)


def apply(etcd: Etcd, spec_text: str, spec_file: str, selector: dict[str, str], *,
          canary: list[str] | int = 1, max_unavailable: int = 1,
          timeout: float = 60.0) -> dict:
    spec = _parse(spec_text, spec_file)  # bad input: refused before etcd is touched
    doc = {"name": spec.name, "spec_text": spec_text, "spec_file": spec_file,
           "rules": _spec_rules(spec), "selector": selector}
    return rollout(etcd, spec.name, doc, canary=canary, max_unavailable=max_unavailable,
                   timeout=timeout)


def rules_edit(etcd: Etcd, name: str, table: str | None, op: str, *, rule: dict | None = None,
               at: int | None = None, indexes: list[int] | None = None, **kw) -> dict:
    doc, _ = definition(etcd, name)
    if doc is None:
        raise NotFound(f"pipeline '{name}' is not in the fleet",
                       hint="ebplane fleet apply SPEC --selector k=v first")
    rules = doc.get("rules") or {}
    if table is None:
        if len(rules) != 1:
            raise UsageError(f"pipeline '{name}' has filters {', '.join(rules) or 'none'}: "
                             f"say which", hint="pass --table NAME")
        table = next(iter(rules))
    if table not in rules:
        raise NotFound(f"pipeline '{name}' has no filter '{table}' (filters: "
                       f"{', '.join(rules) or 'none'})", hint="pass --table with one of them")
    lst = list(rules[table])
    if op == "add":
        pos = len(lst) if at is None else at
        if not 0 <= pos <= len(lst):
            raise UsageError(f"--at {at}: the filter has {len(lst)} rules",
                             hint=f"give a position from 0 to {len(lst)}")
        lst.insert(pos, rule)
    else:
        bad = [i for i in indexes or [] if not 0 <= i < len(lst)]
        if bad or not indexes:
            raise UsageError(f"rule index {bad or indexes} out of range: the filter has "
                             f"{len(lst)} rules", hint="see the rules with ebplane fleet status "
                             "--json, or ebplane rules list on a node")
        lst = [r for i, r in enumerate(lst) if i not in set(indexes)]
    new = {**doc, "rules": {**rules, table: lst}}
    # validate the result locally as the nodes will: the spec with these rules
    import yaml
    d = yaml.safe_load(doc["spec_text"])
    for st in d.get("stages", []):
        if isinstance(st, dict) and "filter" in st and (st["filter"] or {}).get("name") == table:
            st["filter"]["rules"] = lst
    _parse(yaml.safe_dump(d, sort_keys=False), doc.get("spec_file") or name)
    return rollout(etcd, name, new, **kw)


def _wait(etcd: Etcd, name: str, batch: list[str], version: int, alive: dict,
          deadline: float) -> tuple[list[str], dict[str, str]]:
    """Wait until every alive node of ``batch`` reports ``version``; (done, failed{node: why})."""
    todo = [n for n in batch if alive.get(n)]
    done, failed = [], {}
    while todo:
        for n in list(todo):
            kv = etcd.get(layout.status(n, name))
            st = kv.json() if kv else {}
            if st.get("state") == "failed" and st.get("failed_version") == version:
                failed[n] = st.get("error") or "failed"
                todo.remove(n)
            elif st.get("version") == version and st.get("state") in ("ok", "pending"):
                done.append(n)
                todo.remove(n)
        if failed:
            break
        if todo and time.monotonic() > deadline:
            for n in todo:
                failed[n] = "did not report the new version in time"
            break
        if todo:
            time.sleep(0.05)
    return done, failed


def rollout(etcd: Etcd, name: str, doc: dict, *, canary: list[str] | int = 1,
            max_unavailable: int = 1, timeout: float = 60.0) -> dict:
    if max_unavailable < 1:
        raise UsageError("--max-unavailable must be at least 1", hint="e.g. --max-unavailable 1")
    t0 = time.monotonic()
    old_doc, old_rev = definition(etcd, name)
    allnodes = nodes(etcd)
    selector = doc.get("selector") or {}
    targets = sorted(n for n, d in allnodes.items() if layout.matches(selector, d["labels"], n))
    if isinstance(canary, int):
        canaries = targets[:canary]
    else:
        unknown = [c for c in canary if c not in targets]
        if unknown:
            raise UsageError(f"canary node(s) {', '.join(unknown)} not selected (selected: "
                             f"{', '.join(targets) or 'none'})", hint="name selected nodes")
        canaries = list(canary)
    rest = [n for n in targets if n not in canaries]
    batches = ([canaries] if canaries else []) + \
        [rest[i:i + max_unavailable] for i in range(0, len(rest), max_unavailable)]
    rev = etcd.put_if(layout.PIPELINES + name, json.dumps({**doc, "version": None}), old_rev)
    if rev is None:
        raise UsageError(f"pipeline '{name}' was changed by someone else meanwhile",
                         hint="run the command again")
    version = rev
    node_doc = json.dumps({**doc, "version": version})
    alive = {n: d["alive"] for n, d in allnodes.items()}
    deadline = time.monotonic() + timeout
    written: list[str] = []
    previous: dict[str, str | None] = {}
    report = {"name": name, "version": version, "previous_version": old_rev or None,
              "selected": targets, "batches": batches, "done": [], "not_alive":
              [n for n in targets if not alive.get(n)], "stopped": None}
    for batch in batches:
        for n in batch:
            kv = etcd.get(layout.desired(n, name))
            previous[n] = kv.value if kv else None
            etcd.put(layout.desired(n, name), node_doc)
            written.append(n)
        done, failed = _wait(etcd, name, batch, version, alive, deadline)
        report["done"] += done
        if failed:
            # put back what was written: the nodes that failed keep (or return to) the
            # previous version; the nodes not reached never saw the change
            for n in written:
                if previous[n] is None:
                    etcd.delete(layout.desired(n, name))
                else:
                    etcd.put(layout.desired(n, name), previous[n])
            if old_doc is None:
                etcd.delete(layout.PIPELINES + name)
            else:
                etcd.put(layout.PIPELINES + name, json.dumps(old_doc))
            report["stopped"] = failed
            report["seconds"] = round(time.monotonic() - t0, 3)
            why = "; ".join(f"{n}: {w}" for n, w in failed.items())
            e = RolloutFailed(f"rollout of '{name}' version {version} stopped at batch "
                              f"{batches.index(batch) + 1}/{len(batches)}: {why}",
                              hint="the nodes keep the previous version; fix the spec and "
                                   "apply again (ebplane fleet status shows each node)")
            e.report = report
            raise e
    # nodes selected before but not any more
    kvs, _ = etcd.range(layout.DESIRED, prefix=True)
    for kv in kvs:
        n, _, p = kv.key[len(layout.DESIRED):].partition("/")
        if p == name and n not in targets:
            etcd.delete(kv.key)
            report.setdefault("removed", []).append(n)
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


def detach(etcd: Etcd, name: str) -> dict:
    doc, _ = definition(etcd, name)
    kvs, _ = etcd.range(layout.DESIRED, prefix=True)
    removed = []
    for kv in kvs:
        n, _, p = kv.key[len(layout.DESIRED):].partition("/")
        if p == name:
            etcd.delete(kv.key)
            removed.append(n)
    if doc is None and not removed:
        raise NotFound(f"pipeline '{name}' is not in the fleet", hint="see ebplane fleet status")
    etcd.delete(layout.PIPELINES + name)
    return {"name": name, "detached_from": sorted(removed)}


def status(etcd: Etcd) -> dict:
    """Per node and pipeline: desired and applied versions, state, lag, error."""
    allnodes = nodes(etcd)
    defs = {kv.key[len(layout.PIPELINES):]: kv.mod_revision
            for kv in etcd.range(layout.PIPELINES, prefix=True)[0]}
    rows = {}
    for kv in etcd.range(layout.DESIRED, prefix=True)[0]:
        n, _, p = kv.key[len(layout.DESIRED):].partition("/")
        rows[(n, p)] = {"node": n, "pipeline": p, "desired_version": kv.json()["version"],
                        "version": None, "state": "unknown", "error": None, "attached": [],
                        "last_reconcile": None}
    for kv in etcd.range(layout.STATUS, prefix=True)[0]:
        n, _, p = kv.key[len(layout.STATUS):].partition("/")
        st = kv.json()
        r = rows.setdefault((n, p), {"node": n, "pipeline": p, "desired_version": None})
        r.update({k: st.get(k) for k in ("version", "state", "error", "attached",
                                          "last_reconcile", "failed_version")})
    out = []
    for (n, p), r in sorted(rows.items()):
        info = allnodes.get(n, {"labels": {}, "alive": False})
        r["alive"] = info["alive"]
        r["labels"] = info["labels"]
        if not info["alive"]:
            r["state"] = "down"
        r["lag"] = (r["version"] != r["desired_version"])
        r["fleet_version"] = defs.get(p)
        out.append(r)
    return {"nodes": {n: d for n, d in sorted(allnodes.items())}, "pipelines": out}
