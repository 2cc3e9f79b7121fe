"""Prometheus metrics of the applied pipelines, through ``prometheus_client``.

:func:`register` adds the collectors to a registry; :func:`serve` serves ``/metrics`` on
ADDR:PORT.  ``ebplane metrics --listen ADDR:PORT`` serves them without an agent; the agent
calls the same :func:`serve` for ``ebplane agent --metrics ADDR:PORT``.

Every scrape reads the kernel (pinned maps, program info) and the state files afresh, so the
counters are those of ``ebplane stats`` at that moment.  Metric families:

- ``ebplane_packets_total`` / ``ebplane_bytes_total`` {pipeline, stage, rule, verdict}: what
  each filter decided, per rule (``rule`` is its index, or ``default`` / ``malformed``);
- ``ebplane_verdict_packets_total`` / ``ebplane_verdict_bytes_total`` {pipeline, verdict}:
  what the program returned;
- ``ebplane_stage_packets_total`` / ``..._bytes_total`` {pipeline, stage, kind, outcome}:
  count classes and the outcomes of forwarding stages (route: no_neigh, ttl_exceeded, frag,
  mtu...);
- ``ebplane_drops_total`` {pipeline, stage, reason}: packets dropped, by reason (a filter's
  rule N, its default, malformed);
- ``ebplane_map_capacity`` / ``ebplane_map_entries`` {pipeline, map, stage, type}: every
  pinned map's capacity, and its entries for the hash kinds (bridge FDBs, conntrack and
  learning tables as they arrive); ``ebplane_table_rules`` / ``ebplane_table_capacity``
  {pipeline, table} for the filters;
- ``ebplane_program_runs_total`` / ``ebplane_program_run_seconds_total`` {pipeline, program}:
  the kernel's BPF statistics (counted only while they are on: ``serve(bpf_stats=True)`` /
  ``ebplane metrics --bpf-stats`` holds them on, or ``sysctl kernel.bpf_stats_enabled=1``;
  ``ebplane_bpf_stats_enabled`` says whether the sysctl is on), ``ebplane_program_instructions``;
- ``ebplane_apply_last_seconds`` {pipeline} (from the state), and in the process that applies
  (the agent) ``ebplane_apply_seconds`` / ``ebplane_rule_change_seconds`` histograms and
  ``ebplane_reconcile_events_total`` {pipeline, event} (:func:`reconcile_event`);
- ``ebplane_capture_active`` {pipeline} and ``ebplane_capture_frames_total`` {pipeline,
  outcome} while ``ebplane trace`` runs.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

from ebplane.codegen.capture import CAPTURE_MAPS
from ebplane.errors import EbplaneError, UsageError
from ebplane.kernel.maps import Map
from ebplane.kernel.programs import Program
from ebplane.runtime import pipeline as pl
from ebplane.runtime.state import all_names, pin_dir
from ebplane.stages.control import control_for

log = logging.getLogger(__name__)

HASH_KINDS = {"hash", "lru_hash", "percpu_hash", "lru_percpu_hash", "lpm_trie", "devmap_hash"}
MAX_COUNTED_ENTRIES = 1 << 20  # a map larger than this is not walked on every scrape

_lock = threading.Lock()
_inprocess = None  # the histograms and counters of this process (created once)


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[v6]:PORT`` for IPv6) -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen {text!r}: expected ADDR:PORT", hint="e.g. 127.0.0.1:9464")
    return host.strip("[]") or "127.0.0.1", int(port)


def _bpf_stats_enabled() -> bool:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/kernel/bpf_stats_enabled").read_text()) == 1
    return False


# family -> (c: counter / g: gauge, help, label names) of the families of stage counters
STAGE_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "ebplane_packets": ("c", "Packets decided per filter rule",
                        ("pipeline", "stage", "rule", "verdict")),
    "ebplane_bytes": ("c", "Bytes decided per filter rule", ("pipeline", "stage", "rule", "verdict")),
    "ebplane_drops": ("c", "Packets dropped, by stage and reason", ("pipeline", "stage", "reason")),
    "ebplane_table_rules": ("g", "Rules of a filter", ("pipeline", "table")),
    "ebplane_stage_packets": ("c", "Packets per stage outcome",
                              ("pipeline", "stage", "kind", "outcome")),
    "ebplane_stage_bytes": ("c", "Bytes per stage outcome", ("pipeline", "stage", "kind", "outcome")),
}


def stage_samples(pipeline: str, stg: dict) -> list[tuple[str, tuple[str, ...], int]]:
    """(family, label values, value) of one stage of ``ebplane stats``, from what its kind
    says its counters are (``StageControl.rows``): rows that decide (rules, defaults) per
    rule and verdict, with drops by reason and the number of rules; the others per outcome."""
    rows = control_for(stg["kind"]).rows(stg)
    out = []
    for r in rows:
        if r.action is None:
            labels = (pipeline, stg["stage"], stg["kind"], r.key)
            out += [("ebplane_stage_packets", labels, r.packets),
                    ("ebplane_stage_bytes", labels, r.bytes)]
            continue
        labels = (pipeline, stg["stage"], r.key, r.action)
        out += [("ebplane_packets", labels, r.packets), ("ebplane_bytes", labels, r.bytes)]
        if r.action == "drop":
            reason = r.key if r.index is None else f"rule {r.key}"
            out.append(("ebplane_drops", (pipeline, stg["stage"], reason), r.packets))
    if any(r.action is not None for r in rows):  # a stage that decides by rules
        out.append(("ebplane_table_rules", (pipeline, stg["stage"]),
                    sum(r.index is not None for r in rows)))
    return out


class PipelineCollector:
    """Reads every applied pipeline at each scrape."""

    def __init__(self, names=None):
        self.names = names  # None: all applied pipelines

    def describe(self):
        return []  # collected at scrape time only (pipelines come and go)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        F = {}

        def fam(kind, name, doc, labels):
            if name not in F:
                cls = CounterMetricFamily if kind == "c" else GaugeMetricFamily
                F[name] = cls(name, doc, labels=labels)
            return F[name]

        stats_on = _bpf_stats_enabled()
        fam("g", "ebplane_bpf_stats_enabled", "Whether the kernel's BPF run statistics are on "
            "(sysctl kernel.bpf_stats_enabled)", []).add_metric([], 1 if stats_on else 0)
        fam("g", "ebplane_pipelines", "Applied pipelines", [])
        names = self.names if self.names is not None else all_names()
        seen = 0
        for name in names:
            try:
                [s] = pl.stats(name, reap=False)
                st = pl.require_state(name)
            except (EbplaneError, ValueError) as e:
                log.warning("metrics: pipeline %s: %s", name, e)
                continue
            seen += 1
            for v, c in s["verdicts"].items():
                fam("c", "ebplane_verdict_packets", "Packets per verdict the program returned",
                    ["pipeline", "verdict"]).add_metric([name, v], c["packets"])
                fam("c", "ebplane_verdict_bytes", "Bytes per verdict the program returned",
                    ["pipeline", "verdict"]).add_metric([name, v], c["bytes"])
            for stg in s["stages"]:
                for fname, labels, value in stage_samples(name, stg):
                    kind, doc, lnames = STAGE_FAMILIES[fname]
                    fam(kind, fname, doc, list(lnames)).add_metric(list(labels), value)
            spec = pl._spec_of(st)
            for stage in spec.stages:
                if stage.has_rules:
                    fam("g", "ebplane_table_capacity", "Rule capacity of a filter",
                        ["pipeline", "table"]).add_metric([name, stage.name], stage.capacity)
            self._maps(name, fam)
            self._programs(name, fam, spec)
            fam("g", "ebplane_apply_last_seconds", "Duration of the pipeline's last apply",
                ["pipeline"]).add_metric([name], st.apply_seconds)
            fam("g", "ebplane_capture_active", "1 while ebplane trace captures on the pipeline",
                ["pipeline"]).add_metric([name], 1 if st.capture else 0)
            if st.capture:
                self._capture(name, fam)
        F["ebplane_pipelines"].add_metric([], seen)
        yield from F.values()

    @staticmethod
    def _maps(name, fam) -> None:
        d = pin_dir(name) / "maps"
        if not d.is_dir():
            return
        for p in sorted(d.iterdir()):
            try:
                m = Map.from_pin(p)
            except EbplaneError:
                continue
            with m:
                labels = [name, p.name, m.type_name]
                fam("g", "ebplane_map_capacity", "Capacity (max_entries) of a pinned map",
                    ["pipeline", "map", "type"]).add_metric(labels, m.max_entries)
                if m.type_name in HASH_KINDS and m.max_entries <= MAX_COUNTED_ENTRIES:
                    with contextlib.suppress(EbplaneError):
                        try:
                            n = len(m.raw_keys_batch())
                        except EbplaneError:  # no batch ops for this kind: walk the keys
                            n = len(m)
                        fam("g", "ebplane_map_entries", "Entries of a pinned hash-kind map",
                            ["pipeline", "map", "type"]).add_metric(labels, n)

    @staticmethod
    def _programs(name, fam, spec) -> None:
        for pin in ("prog", "xdp-parser"):
            try:
                p = Program.from_pin(pin_dir(name) / pin)
            except EbplaneError:
                continue
            with contextlib.closing(p):
                i = p.info()
            labels = [name, i["name"]]
            fam("c", "ebplane_program_runs", "Runs of the program (BPF statistics)",
                ["pipeline", "program"]).add_metric(labels, i["run_cnt"])
            fam("c", "ebplane_program_run_seconds", "Time spent in the program (BPF "
                "statistics)", ["pipeline", "program"]).add_metric(labels, i["run_time_ns"] / 1e9)
            fam("g", "ebplane_program_instructions", "Instructions of the loaded program",
                ["pipeline", "program"]).add_metric(labels, i["insns"])

    @staticmethod
    def _capture(name, fam) -> None:
        from ebplane.codegen.capture import CAPTURE_COUNTERS
        from ebplane.kernel.codec import COUNT, U32
        try:
            m = Map.from_pin(pin_dir(name) / "maps" / CAPTURE_MAPS["capture-counters"]).with_codecs(U32, COUNT)
        except EbplaneError:
            return
        with m:
            for i, k in enumerate(CAPTURE_COUNTERS):
                fam("c", "ebplane_capture_frames", "Frames of a running trace, by outcome",
                    ["pipeline", "outcome"]).add_metric([name, k], m.lookup_sum(i).packets)


class _InProcess:
    """What only the applying process sees: latencies and the agent's reconcile events."""

    def __init__(self, registry):
        from prometheus_client import Counter, Histogram
        self.registry = registry
        buckets = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
        self.apply = Histogram("ebplane_apply_seconds", "Duration of applies (this process)",
                               ["pipeline"], buckets=buckets, registry=registry)
        self.rules = Histogram("ebplane_rule_change_seconds", "Duration of rule changes "
                               "(this process)", ["pipeline", "table"], buckets=buckets,
                               registry=registry)
        self.reconcile = Counter("ebplane_reconcile_events", "Reconcile events of the agent",
                                 ["pipeline", "event"], registry=registry)

    def observe(self, what: str, name: str, table: str | None, seconds: float) -> None:
        if what == "apply":
            self.apply.labels(name).observe(seconds)
        else:
            self.rules.labels(name, table or "").observe(seconds)


def register(registry=None, names=None):
    """Register ebplane's collectors into ``registry`` (default: prometheus_client's global
    REGISTRY); returns the registry.  Applies and rule changes of this process are observed
    from then on."""
    global _inprocess
    from prometheus_client import REGISTRY
    registry = registry if registry is not None else REGISTRY
    registry.register(PipelineCollector(names))
    with _lock:
        if _inprocess is None:
            _inprocess = _InProcess(registry)
            pl.OBSERVERS.append(_inprocess.observe)
    return registry


def reconcile_event(pipeline: str, event: str) -> None:
    """Count a reconcile event of the agent (``drift_repaired``, ``reapplied``...)."""
    if _inprocess is not None:
        _inprocess.reconcile.labels(pipeline, event).inc()


def serve(addr: str = "127.0.0.1", port: int = 9464, registry=None, *,
          bpf_stats: bool = False):
    """Serve ``/metrics`` on ADDR:PORT in a daemon thread; returns (server, thread):
    ``server.shutdown()`` stops it.  Port 0 picks a free port (``server.server_port``).
    ``bpf_stats``: keep the kernel's BPF run statistics on while serving (BPF_ENABLE_STATS,
    off again when the server is shut down or the process exits)."""
    from prometheus_client import start_http_server
    stats_fd = None
    if bpf_stats:
        from ebplane.kernel.programs import enable_run_stats
        stats_fd = enable_run_stats()
    registry = register(registry)
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        if stats_fd is not None:
            stats_fd.close()
        raise UsageError(f"cannot serve metrics on {addr}:{port}: {e.strerror or e}",
                         hint="choose another --listen ADDR:PORT") from None
    if stats_fd is not None:
        shutdown = server.shutdown

        def shutdown_and_stop_stats():
            shutdown()
            stats_fd.close()
        server.shutdown = shutdown_and_stop_stats
    return server, thread
