"""A client of the agent's API (the Python API of a running agent; the CLI uses it).

    from ebplane.agent.client import Client
    c = Client()                       # $EBPLANE_SOCKET, default /run/ebplane/agent.sock
    c.apply("firewall.yaml"); c.rules_add("fw", {"dport": 53, "action": "drop"})

:func:`connect` returns a client when an agent answers on the socket, else None (the CLI
then works directly, as without an agent).  Errors come back as :class:`AgentError`, an
:class:`~ebplane.errors.EbplaneError` with the agent's message, hint and exit code.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ebplane.errors import EbplaneError, PermissionDenied


def socket_path() -> Path:
    return Path(os.environ.get("EBPLANE_SOCKET", "/run/ebplane/agent.sock"))


class AgentError(EbplaneError):
    """An error the agent answered with; ``exit_code`` is the agent's."""

    def __init__(self, d: dict, exit_code: int):
        super().__init__(d.get("message", "the agent failed"), hint=d.get("hint"))
        self.exit_code = exit_code
        self.remote = d

    def to_dict(self) -> dict:
        return dict(self.remote)


class AgentUnavailable(EbplaneError):
    exit_code = 4


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except BaseException:
            s.close()
            raise
        self.sock = s


class Client:
    def __init__(self, path: str | Path | None = None, timeout: float | None = None):
        self.path = str(path or socket_path())
        self.timeout = timeout

    def request(self, method: str, route: str, body: Any = None, *,
                timeout: float | None = None) -> Any:
        conn = _UnixConnection(self.path, timeout if timeout is not None else self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data is not None else {}
            try:
                conn.request(method, route, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except PermissionError as e:
                raise PermissionDenied(f"cannot connect to the ebplane agent at {self.path}: "
                                       f"{e.strerror}", err=e.errno or 13,
                                       hint="run as root, or join group 'ebplane'") from None
            except (ConnectionRefusedError, FileNotFoundError) as e:
                raise AgentUnavailable(f"no ebplane agent answers at {self.path}: {e.strerror}",
                                       hint="start it: ebplane agent (or systemctl start "
                                            "ebplane-agent)") from None
        finally:
            conn.close()
        try:
            d = json.loads(raw or b"null")
        except ValueError:
            raise AgentError({"message": f"the agent answered {resp.status} without JSON"},
                             1) from None
        if resp.status >= 400:
            err = d.get("error", {}) if isinstance(d, dict) else {}
            raise AgentError(err, int(d.get("exit_code", 1)) if isinstance(d, dict) else 1)
        return d

    # -- operations (the same as the CLI's) -------------------------------------------------

    def health(self) -> dict:
        return self.request("GET", "/v1/health")

    def apply(self, spec_path: str | Path | None = None, *, spec_text: str | None = None,
              spec_file: str | None = None) -> dict:
        if spec_text is None:
            from ebplane.spec.located import read_source
            spec_text = read_source(Path(spec_path), "pipeline spec")
        return self.request("POST", "/v1/pipelines",
                            {"spec_text": spec_text,
                             "spec_file": spec_file or (str(spec_path) if spec_path else "<api>")})

    def status(self, name: str | None = None) -> list[dict]:
        return self.request("GET", f"/v1/pipelines/{quote(name, safe='')}" if name
                            else "/v1/pipelines")

    def detach(self, name: str) -> dict:
        return self.request("DELETE", f"/v1/pipelines/{quote(name, safe='')}")

    def stats(self, name: str | None = None) -> list[dict]:
        return self.request("GET", f"/v1/pipelines/{quote(name, safe='')}/stats" if name
                            else "/v1/stats")

    def _rules(self, name: str) -> str:
        return f"/v1/pipelines/{quote(name, safe='')}/rules"

    def rules_list(self, name: str, table: str | None = None) -> list[dict]:
        q = f"?{urlencode({'table': table})}" if table else ""
        return self.request("GET", self._rules(name) + q)

    def rules_add(self, name: str, rule: dict, *, at: int | None = None,
                  table: str | None = None) -> dict:
        return self.request("POST", self._rules(name), {"rule": rule, "at": at, "table": table})

    def rules_delete(self, name: str, indexes: list[int], *, table: str | None = None) -> dict:
        return self.request("POST", self._rules(name) + "/delete",
                            {"indexes": list(indexes), "table": table})

    def rules_replace(self, name: str, rules: list, *, table: str | None = None,
                      source: str = "rules") -> dict:
        return self.request("PUT", self._rules(name),
                            {"rules": list(rules), "table": table, "source": source})

    def events(self, after: int = 0, *, wait: float = 0, pipeline: str | None = None) -> list[dict]:
        q = {"after": after, "wait": wait}
        if pipeline:
            q["pipeline"] = pipeline
        return self.request("GET", f"/v1/events?{urlencode(q)}",
                            timeout=None if self.timeout is None else self.timeout + wait)


def connect(path: str | Path | None = None) -> Client | None:
    """A client when an agent answers at the socket, else None (no agent: work directly).
    A socket we may not open is an error, not a reason to bypass the agent."""
    p = Path(path or socket_path())
    if not p.exists():
        return None
    c = Client(p)
    try:
        c.request("GET", "/v1/health", timeout=5.0)
    except AgentUnavailable:
        return None
    return c
