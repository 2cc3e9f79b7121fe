"""A small etcd v3 client over etcd's JSON gRPC gateway (``/v3/kv/range``, ``/v3/kv/put``,
``/v3/kv/txn``, ``/v3/watch``, ``/v3/lease/*``, ``/v3/auth/authenticate``), with ``requests``.

Why not the ``etcd3`` package: it pins an old grpcio/protobuf pair that does not install next
to current Python releases, and it is unmaintained.  The gateway is part of every etcd v3
server (3.4 and later serve it on the client port), speaks JSON with base64 keys and values,
and needs only an HTTP client; ``requests`` is maintained and already widely installed.

Endpoints are tried in order; a request that cannot connect moves to the next one.
Authentication: ``user``/``password`` (a token from ``/v3/auth/authenticate``, sent as the
``Authorization`` header and renewed when etcd says it is invalid).  TLS: ``https://``
endpoints, ``ca`` (CA bundle to verify the server), ``cert``/``key`` (client certificate).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import requests

from ebplane.errors import EbplaneError, UsageError


class EtcdError(EbplaneError):
    """etcd could not be reached or refused a request."""
    exit_code = 1


class EtcdUnavailable(EtcdError):
    pass


class Compacted(EtcdError):
    """A watch asked for a revision etcd has compacted away."""

    def __init__(self, compact_revision: int):
        super().__init__(f"revision compacted (oldest kept: {compact_revision})",
                         hint="resync with a full read")
        self.compact_revision = compact_revision


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def unb64(s: str | None) -> str:
    return base64.b64decode(s or "").decode()


def prefix_end(prefix: str) -> str:
    """The range end that covers every key starting with ``prefix``."""
    b = bytearray(prefix.encode())
    b[-1] += 1
    return bytes(b).decode()


@dataclass
class KV:
    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int

    @classmethod
    def of(cls, d: dict) -> "KV":
        return cls(unb64(d.get("key")), unb64(d.get("value")), int(d.get("mod_revision", 0)),
                   int(d.get("create_revision", 0)), int(d.get("lease", 0)))

    def json(self):
        return json.loads(self.value)


@dataclass
class Event:
    type: str  # PUT or DELETE
    kv: KV


@dataclass
class Config:
    endpoints: list[str]
    user: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = 5.0

    @classmethod
    def parse(cls, endpoints: str | None, **kw) -> "Config":
        """``endpoints``: comma-separated URLs (``http://127.0.0.1:2379``, ``https://...``);
        a bare ``host:port`` means http.  Unset: ``$EBPLANE_ETCD``.  Authentication and TLS
        from ``$EBPLANE_ETCD_USER``, ``$EBPLANE_ETCD_PASSWORD``, ``$EBPLANE_ETCD_CA``,
        ``$EBPLANE_ETCD_CERT``, ``$EBPLANE_ETCD_KEY`` unless given."""
        raw = endpoints or os.environ.get("EBPLANE_ETCD", "")
        eps = [e.strip() for e in raw.split(",") if e.strip()]
        if not eps:
            raise UsageError("no etcd endpoint given",
                             hint="pass --etcd http://HOST:2379[,...] or set EBPLANE_ETCD")
        eps = [e if "://" in e else f"http://{e}" for e in eps]
        for k, env in (("user", "USER"), ("password", "PASSWORD"), ("ca", "CA"),
                       ("cert", "CERT"), ("key", "KEY")):
            if kw.get(k) is None:
                kw[k] = os.environ.get(f"EBPLANE_ETCD_{env}") or None
        return cls([e.rstrip("/") for e in eps], **kw)


class Etcd:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.s = requests.Session()
        if cfg.ca:
            self.s.verify = cfg.ca
        if cfg.cert:
            self.s.cert = (cfg.cert, cfg.key) if cfg.key else cfg.cert
        self._token: str | None = None
        self._ep = 0
        self._lock = threading.Lock()

    # -- transport ---------------------------------------------------------------------------

    def _headers(self) -> dict:
        if self.cfg.user and self._token is None:
            self._authenticate()
        return {"Authorization": self._token} if self._token else {}

    def _authenticate(self) -> None:
        d = self._post_raw("/v3/auth/authenticate",
                           {"name": self.cfg.user, "password": self.cfg.password or ""}, {})
        self._token = d.get("token")

    def _post_raw(self, path: str, body: dict, headers: dict, *, stream: bool = False,
                  timeout=None):
        last: Exception | None = None
        n = len(self.cfg.endpoints)
        for i in range(n):
            ep = self.cfg.endpoints[(self._ep + i) % n]
            try:
                r = self.s.post(ep + path, json=body, headers=headers, stream=stream,
                                timeout=timeout or self.cfg.timeout)
            except requests.RequestException as e:
                last = e
                continue
            self._ep = (self._ep + i) % n
            if stream and r.status_code == 200:
                return r
            try:
                d = r.json()
            except ValueError:
                d = {}
            if r.status_code != 200:
                msg = d.get("error") or d.get("message") or r.text[:200]
                if "token" in str(msg) and self.cfg.user:
                    self._token = None
                raise EtcdError(f"etcd {ep}{path}: HTTP {r.status_code}: {msg}",
                                hint="check the endpoint, the user's permissions and TLS "
                                     "settings (docs/fleet.md)")
            return d
        raise EtcdUnavailable(f"no etcd endpoint answers ({', '.join(self.cfg.endpoints)}): "
                              f"{last}", hint="check that etcd runs and that --etcd / "
                                              "EBPLANE_ETCD names its client URLs")

    def post(self, path: str, body: dict, **kw):
        try:
            return self._post_raw(path, body, self._headers(), **kw)
        except EtcdError as e:
            if self.cfg.user and self._token is None and "token" in e.message:
                return self._post_raw(path, body, self._headers(), **kw)
            raise

    # -- kv ----------------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def range(self, key: str, prefix: bool = False) -> tuple[list[KV], int]:
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        d = self.post("/v3/kv/range", body)
        return [KV.of(k) for k in d.get("kvs", [])], int(d["header"]["revision"])

    def put(self, key: str, value: str, lease: int = 0) -> int:
        body = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.post("/v3/kv/put", body)["header"]["revision"])

    def delete(self, key: str, prefix: bool = False) -> int:
        body = {"key": b64(key)}
        if prefix:
            body["range_end"] = b64(prefix_end(key))
        return int(self.post("/v3/kv/deleterange", body)["header"]["revision"])

    def put_if(self, key: str, value: str, mod_revision: int) -> int | None:
        """Put when the key's mod revision is still ``mod_revision`` (0: the key is absent);
        the new revision, or None when someone else changed it first."""
        d = self.post("/v3/kv/txn", {
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "MOD",
                         "mod_revision": str(mod_revision)}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value)}}]})
        return int(d["header"]["revision"]) if d.get("succeeded") else None

    def compact(self, revision: int) -> None:
        self.post("/v3/kv/compaction", {"revision": str(revision), "physical": True})

    # -- leases ------------------------------------------------------------------------------

    def grant(self, ttl: int) -> int:
        return int(self.post("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def keepalive(self, lease: int) -> int:
        """The lease's remaining TTL; 0 when it expired (then grant a new one)."""
        d = self.post("/v3/lease/keepalive", {"ID": str(lease)})
        return int(d.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self.post("/v3/lease/revoke", {"ID": str(lease)})

    # -- watch -------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, *, stop: threading.Event | None = None,
              progress: bool = True) -> "Watch":
        body = {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision),
                                   "progress_notify": progress}}
        r = self.post("/v3/watch", body, stream=True, timeout=(self.cfg.timeout, None))
        return Watch(r)

    def close(self) -> None:
        self.s.close()


class Watch:
    """One watch stream: iterate for lists of events with the revision they bring the
    watcher to; :meth:`close` (from any thread) ends the iteration."""

    def __init__(self, resp: requests.Response):
        self.resp = resp
        self.revision = 0

    def __iter__(self) -> Iterator[tuple[list[Event], int]]:
        try:
            for line in self.resp.iter_lines():
                if not line:
                    continue
                d = json.loads(line)
                if "error" in d:
                    raise EtcdError(f"etcd watch: {d['error']}")
                res = d.get("result", {})
                cr = int(res.get("compact_revision", 0) or 0)
                if cr:
                    raise Compacted(cr)
                if res.get("canceled"):
                    raise EtcdError(f"etcd cancelled the watch: {res.get('cancel_reason', '')}")
                if res.get("created"):
                    continue  # the header's revision is the store's, not what was seen
                rev = int(res.get("header", {}).get("revision", 0) or 0)
                evs = [Event(e.get("type", "PUT"), KV.of(e["kv"])) for e in res.get("events", [])]
                if evs:
                    rev = max(rev, max(e.kv.mod_revision for e in evs))
                self.revision = max(self.revision, rev)
                yield evs, rev
        except (requests.RequestException, AttributeError, ValueError, OSError) as e:
            raise EtcdUnavailable(f"etcd watch stream ended: {e}") from None

    def close(self) -> None:
        try:
            self.resp.close()
        except Exception:
            pass
