"""``ebplane agent``: open the desired state, serve the API, reconcile, until SIGTERM.

One agent per data directory (an exclusive lock on ``$EBPLANE_DATA_DIR/agent.lock``).
SIGTERM or SIGINT stop it cleanly: the API closes, the loop ends, and the data plane keeps
running as it is (pins and links outlive the agent).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time

from ebplane.agent.core import Agent
from ebplane.agent.server import serve, socket_path
from ebplane.agent.store import Store, data_dir
from ebplane.errors import Busy, PermissionDenied

log = logging.getLogger("ebplane.agent")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        d = {"ts": round(record.created, 3), "level": record.levelname.lower(),
             "logger": record.name, "msg": record.getMessage()}
        d.update(getattr(record, "fields", {}))
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, default=str)


def setup_logging(json_logs: bool, verbose: bool) -> None:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(JsonFormatter() if json_logs else
                   logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    lg = logging.getLogger("ebplane.agent")
    lg.handlers[:] = [h]
    lg.propagate = False
    lg.setLevel(logging.DEBUG if verbose else logging.INFO)


def _log_event(ev: dict) -> None:
    log.info("%s%s: %s", ev["kind"], f" {ev['pipeline']}" if ev.get("pipeline") else "",
             ev["message"], extra={"fields": {"event": ev}})
    from ebplane.runtime import metrics  # counted when `--metrics` serves them (else no-op)
    metrics.reconcile_event(ev.get("pipeline") or "", ev["kind"])


def run(*, interval: float = 0.5, json_logs: bool = False, verbose: bool = False,
        extra=None) -> int:
    """``extra(agent)``, when given, returns an object with ``run()`` and ``stop()`` run in a
    thread beside the reconcile loop (the fleet node of ``--fleet``)."""
    setup_logging(json_logs, verbose)
    if os.geteuid() != 0:
        raise PermissionDenied("the ebplane agent needs root (it loads BPF programs and "
                               "attaches them)", hint="run it as root, or through "
                               "packaging/ebplane-agent.service")
    store = Store()
    lock_fd = os.open(store.dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise Busy(f"another ebplane agent uses {store.dir}",
                   hint="stop it first; one agent per data directory") from None
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
    agent = Agent(store, interval=interval, on_event=_log_event)

    def stop(signum, _frame) -> None:
        log.info("signal %s: stopping (the data plane keeps running)", signum)
        agent.stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    t0 = time.monotonic()
    agent.import_direct()
    srv = serve(agent)
    log.info("agent %d: desired state %s, API %s", os.getpid(), data_dir(), socket_path(),
             extra={"fields": {"pid": os.getpid(), "socket": str(socket_path()),
                               "data_dir": str(data_dir())}})
    side = None
    try:
        agent.reconcile_all(start=True)
        log.info("start reconcile done in %.3f s", time.monotonic() - t0)
        if extra is not None:
            side = extra(agent)
            threading.Thread(target=side.run, daemon=True, name="agent-extra").start()
        agent.run()
    finally:
        if side is not None:
            side.stop()
        srv.shutdown()
        srv.server_close()
        try:
            os.unlink(socket_path())
        except FileNotFoundError:
            pass
        store.close()
        os.close(lock_fd)
    return 0
