"""The agent's API: HTTP/1.0 with JSON bodies on a Unix socket (``$EBPLANE_SOCKET``, default
``/run/ebplane/agent.sock``, mode 0660, group ``ebplane`` when it exists).  Every request
is checked against its peer's credentials (SO_PEERCRED): root and members of group
``ebplane`` only.  The routes are described in docs/api.md.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import re
import socket
import socketserver
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from ebplane import __version__
from ebplane.agent.core import Agent
from ebplane.agent.store import GROUP
from ebplane.errors import (Busy, EbplaneError, NotFound, PermissionDenied, UsageError)

log = logging.getLogger("ebplane.agent")

MAX_BODY = 64 << 20  # a rule set of 100k rules is ~10 MB of JSON


def socket_path() -> Path:
    return Path(os.environ.get("EBPLANE_SOCKET", "/run/ebplane/agent.sock"))


def _group_gid() -> int | None:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def peer_allowed(uid: int, gid: int, pid: int) -> bool:
    """Root, the agent's own user, or a member of group ``ebplane`` (primary or
    supplementary group of the peer process)."""
    if uid in (0, os.geteuid()):
        return True
    g = _group_gid()
    if g is None:
        return False
    if gid == g:
        return True
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return str(g) in line.split()[1:]
    return False


def _http_status(e: EbplaneError) -> int:
    if isinstance(e, PermissionDenied) or e.exit_code == 4:
        return 403
    if isinstance(e, NotFound):
        return 404
    if isinstance(e, Busy):
        return 409
    if e.exit_code == 2:
        return 400
    return 422  # the kernel or the toolchain refused


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, agent: Agent):
        self.agent = agent
        super().__init__(path, _Handler, bind_and_activate=False)


ROUTES: list[tuple[str, str, str]] = [
    ("GET", r"/v1/health", "health"),
    ("GET", r"/v1/pipelines", "status"),
    ("POST", r"/v1/pipelines", "apply"),
    ("GET", r"/v1/pipelines/(?P<name>[^/]+)", "status"),
    ("DELETE", r"/v1/pipelines/(?P<name>[^/]+)", "detach"),
    ("GET", r"/v1/stats", "stats"),
    ("GET", r"/v1/pipelines/(?P<name>[^/]+)/stats", "stats"),
    ("GET", r"/v1/pipelines/(?P<name>[^/]+)/rules", "rules_list"),
    ("POST", r"/v1/pipelines/(?P<name>[^/]+)/rules", "rules_add"),
    ("PUT", r"/v1/pipelines/(?P<name>[^/]+)/rules", "rules_replace"),
    ("POST", r"/v1/pipelines/(?P<name>[^/]+)/rules/delete", "rules_delete"),
    ("GET", r"/v1/events", "events"),
]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = f"ebplane-agent/{__version__}"

    def address_string(self) -> str:  # a Unix socket peer has no address
        return "unix"

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s " + fmt, getattr(self, "peer", "?"), *args)

    def _peer(self) -> tuple[int, int, int]:
        raw = self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                      struct.calcsize("3i"))
        return struct.unpack("3i", raw)  # pid, uid, gid

    def _send(self, code: int, body) -> None:
        data = json.dumps(body, default=_default).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, e: EbplaneError) -> None:
        self._send(_http_status(e), {"error": e.to_dict(), "exit_code": e.exit_code})

    def _handle(self, method: str) -> None:
        pid, uid, gid = self._peer()
        self.peer = f"pid {pid} uid {uid}"
        if not peer_allowed(uid, gid, pid):
            self._error(PermissionDenied(
                f"the ebplane agent refuses requests from uid {uid} (pid {pid}): only root "
                f"and members of group '{GROUP}' may use it",
                hint=f"run as root, or ask an administrator to add you to group '{GROUP}'"))
            return
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        for m, pattern, op in ROUTES:
            match = re.fullmatch(pattern, url.path)
            if match and m == method:
                break
        else:
            self._error(NotFound(f"no API route {method} {url.path}",
                                 hint="see docs/api.md"))
            return
        try:
            body = self._body() if method in ("POST", "PUT") else {}
            result = getattr(self, f"op_{op}")(query=query, body=body, **match.groupdict())
        except EbplaneError as e:
            self._error(e)
            return
        except Exception as e:  # noqa: BLE001 - an internal error is still an answer
            log.exception("request %s %s failed", method, self.path)
            self._send(500, {"error": {"error": "InternalError", "message": repr(e)},
                             "exit_code": 1})
            return
        self._send(200, result)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise UsageError(f"request body of {n} bytes exceeds {MAX_BODY}")
        try:
            d = json.loads(self.rfile.read(n) or b"{}")
        except ValueError as e:
            raise UsageError(f"request body is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise UsageError("request body must be a JSON object")
        return d

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- operations -------------------------------------------------------------------------

    @property
    def agent(self) -> Agent:
        return self.server.agent

    def op_health(self, **_) -> dict:
        return {"agent": "ebplane", "version": __version__, "pid": os.getpid(),
                "pipelines": self.agent.store.names()}

    def op_status(self, name: str | None = None, **_) -> list:
        return self.agent.status(name)

    def op_apply(self, body: dict, **_) -> dict:
        text, file = body.get("spec_text"), body.get("spec_file") or "<api>"
        if not isinstance(text, str):
            raise UsageError("POST /v1/pipelines needs spec_text (the spec's YAML)")
        return self.agent.apply(text, str(file))

    def op_detach(self, name: str, **_) -> dict:
        return self.agent.detach(name)

    def op_stats(self, name: str | None = None, **_) -> list:
        return self.agent.stats(name)

    def op_rules_list(self, name: str, query: dict, **_) -> list:
        return self.agent.rules_list(name, query.get("table"))

    def op_rules_add(self, name: str, body: dict, **_) -> dict:
        at = body.get("at")
        if at is not None and not isinstance(at, int):
            raise UsageError(f"at must be an integer, not {at!r}")
        return self.agent.rules_add(name, body.get("table"), body.get("rule"), at)

    def op_rules_replace(self, name: str, body: dict, **_) -> dict:
        rules = body.get("rules")
        if not isinstance(rules, list):
            raise UsageError("PUT .../rules needs rules: a list of rules")
        return self.agent.rules_replace(name, body.get("table"), rules,
                                        str(body.get("source") or "rules"))

    def op_rules_delete(self, name: str, body: dict, **_) -> dict:
        idx = body.get("indexes")
        if not isinstance(idx, list) or not all(isinstance(i, int) for i in idx):
            raise UsageError("POST .../rules/delete needs indexes: a list of integers")
        return self.agent.rules_delete(name, body.get("table"), idx)

    def op_events(self, query: dict, **_) -> list:
        try:
            after = int(query.get("after", 0))
            wait = min(float(query.get("wait", 0)), 60.0)
        except ValueError:
            raise UsageError("after must be an integer and wait a number of seconds") from None
        if after < 0:  # the last -after events
            after = max(0, self.agent.last_seq + after)
        evs = self.agent.store.events(after, query.get("pipeline"))
        if not evs and wait > 0:
            deadline = time.monotonic() + wait
            while not evs and time.monotonic() < deadline and not self.agent.stopping.is_set():
                self.agent.wait_events(after, deadline - time.monotonic())
                evs = self.agent.store.events(after, query.get("pipeline"))
        return evs


def _default(o):
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def serve(agent: Agent, path: Path | None = None) -> _Server:
    """Bind the API socket (0660, group ``ebplane`` when it exists) and serve it from a
    thread; a stale socket (no agent answers) is replaced."""
    path = Path(path or socket_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(str(path))
                raise Busy(f"an agent already serves {path}",
                           hint="stop it first (systemctl stop ebplane-agent), or set "
                                "EBPLANE_SOCKET")
            except (ConnectionRefusedError, FileNotFoundError):
                path.unlink(missing_ok=True)  # stale: its agent is gone
    srv = _Server(str(path), agent)
    old = os.umask(0o117)
    try:
        srv.server_bind()
    finally:
        os.umask(old)
    gid = _group_gid()
    if gid is not None:
        os.chown(path, 0 if os.geteuid() == 0 else -1, gid)
    os.chmod(path, 0o660)
    srv.server_activate()
    threading.Thread(target=srv.serve_forever, daemon=True, name="api").start()
    return srv
