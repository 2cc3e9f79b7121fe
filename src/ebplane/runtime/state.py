"""What the control plane remembers about an applied pipeline.

Kernel objects (maps, links, the program) are pinned under ``<bpffs root>/<name>/``; the rest
(the spec text, the live rule lists with their stable ids, how each interface is attached)
is a JSON file under ``$EBPLANE_STATE_DIR`` (default ``/run/ebplane``), written atomically.
Operations on one pipeline take an exclusive lock so two commands never interleave.

The state directory and everything in it is root's only (directory 0700, files 0600): a spec
and its rules are not for every local user to read, and a lock file another user could open
would let them freeze the control plane (``flock -s`` on it).  When a group ``ebplane`` exists,
its members may read the state (directory 0750, state files 0640, group ``ebplane``); lock
files stay 0600.  Waiting for a lock has a timeout (``$EBPLANE_LOCK_TIMEOUT`` seconds, default
30) and the error names the holder.  A lock file is removed when its pipeline has no state
(after detach, or a first apply that failed): it is unlinked under the lock, and every locker
checks after acquiring that the file it holds is still the one at the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import json
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

from ebplane.errors import Busy, NotFound, PermissionDenied, UsageError, quoted, shorten
from ebplane.kernel import bpffs
from ebplane.spec.pipeline import PIPELINE_NAME_PATTERN


def check_name(name) -> str:
    """``name`` if it is a pipeline name by the spec's own rule, else a UsageError.

    Every path of a pipeline (state file, lock, pins) is built from its name: a name given on
    the command line or to the API is checked here before it touches a path, so that
    ``../x`` or ``/tmp/victim`` never leads outside the state and pin directories.
    """
    if not isinstance(name, str) or not re.fullmatch(PIPELINE_NAME_PATTERN, name):
        raise UsageError(f"invalid pipeline name {quoted(name)}: a name is 1-15 characters "
                         f"from a-z, 0-9 and -",
                         hint="use the name given as pipeline: in the spec (ebplane status "
                              "lists the applied pipelines)")
    return name


def state_dir() -> Path:
    return Path(os.environ.get("EBPLANE_STATE_DIR", "/run/ebplane")) / "pipelines"


def pin_dir(name: str) -> Path:
    return bpffs.root() / check_name(name)


GROUP = "ebplane"  # when this group exists, its members may read the state
DEFAULT_LOCK_TIMEOUT = 30.0


def _group() -> int | None:
    try:
        return grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return None


def denied(what: str, exc: OSError) -> PermissionDenied:
    """The privileges error for an OSError met on ebplane's state."""
    where = f" ({exc.filename})" if exc.filename else ""
    return PermissionDenied(f"{what}: {exc.strerror or exc}{where}",
                            err=exc.errno or errno.EACCES,
                            hint="run as root: the state and locks of applied pipelines are "
                                 f"root's only (members of group '{GROUP}', when it exists, "
                                 "may read them)")


def _private_dir() -> Path:
    """The state directory, created root-only; an existing one we own is tightened (an
    earlier version left it 0755)."""
    d = state_dir()
    gid = _group()
    mode = 0o750 if gid is not None else 0o700
    try:
        d.mkdir(parents=True, exist_ok=True, mode=mode)
        st = d.stat()
        if st.st_uid == os.geteuid():
            if gid is not None and st.st_gid != gid:
                os.chown(d, -1, gid)
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(d, mode)
    except PermissionError as e:
        raise denied("cannot use ebplane's state directory", e) from None
    return d


def _own_file(fd: int, mode: int, gid: int | None) -> None:
    """Give a file we own ``mode`` (and group ``gid``); an earlier version made them 0644."""
    st = os.fstat(fd)
    if st.st_uid != os.geteuid():
        return
    if gid is not None and st.st_gid != gid:
        os.fchown(fd, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.fchmod(fd, mode)


# fields holding rule lists ({table: [dict, ...]}), and per record name the rule dicts its
# writes encoded (kept alive, so that an id stays its own) and their JSON by id
_RULE_FIELDS = ("live_rules", "spec_rules")
_ENCODED: dict[str, tuple[list, dict[int, str]]] = {}
# json.dumps(x, separators=...) makes a new encoder each call: a third of encoding 200k rules
_encode = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class PipelineState:
    name: str
    spec_text: str
    spec_file: str
    hook: str
    netns: str | None
    prog_id: int
    features: dict
    attachments: list[dict] = field(default_factory=list)
    # table -> [{"id": n, "rule": {...}}] in priority order: what the kernel holds now
    live_rules: dict[str, list[dict]] = field(default_factory=dict)
    # table -> [{...}]: the rules of the spec when last applied (a changed spec wins on re-apply)
    spec_rules: dict[str, list[dict]] = field(default_factory=dict)
    # table -> how its rules are compiled into the program (FilterPlan.to_dict())
    filters: dict[str, dict] = field(default_factory=dict)
    applied_at: float = 0.0
    notes: list[str] = field(default_factory=list)
    # set while an apply or a rule edit is under way (written before its kernel commit point,
    # cleared by its last write): what to compare with the kernel if the command died,
    # see ebplane.runtime.pipeline.load_state
    pending: dict | None = None
    # while `ebplane trace` runs: {"pid", "pid_start", "started", "spec": CaptureSpec dict};
    # the program then carries the capture hooks (ebplane.runtime.trace)
    capture: dict | None = None
    apply_seconds: float = 0.0  # how long the last apply took
    # what generation said of the program (GeneratedProgram.manifest(): maps by stage and
    # role with their C names, layouts and counter slots, features, hook); None in states
    # written before ebplane kept it (names then follow the generators' conventions)
    manifest: dict | None = None

    @property
    def path(self) -> Path:
        return state_dir() / f"{check_name(self.name)}.json"

    def _json(self) -> str:
        """The record as compact JSON.  The fields are plain JSON values already: no deep
        copy (asdict), and the C encoder (with indent= it is the pure-Python one: 0.5 s at 5k
        rules).  The rule lists are encoded rule by rule, and a rule dict this process
        encoded for an earlier write of this record is not encoded again: one rule edit of
        a 100k-rule table rewrote the record in 0.5-1.6 s, nearly all of it encoding rules
        that had not changed (the dicts are never changed in place: an edit makes new ones).
        The encoded dicts stay referenced until the cache is dropped, so an id is never
        another object's."""
        head = {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in _RULE_FIELDS}
        refs, enc = _ENCODED.setdefault(self.name, ([], {}))
        parts, used = [], 0
        for name in _RULE_FIELDS:
            tables = []
            for table, items in getattr(self, name).items():
                ids = list(map(id, items))
                out = list(map(enc.get, ids))
                i = -1
                while True:  # the few not encoded yet (list.index scans in C)
                    try:
                        i = out.index(None, i + 1)
                    except ValueError:
                        break
                    out[i] = enc[ids[i]] = _encode(items[i])
                    refs.append(items[i])  # kept, so that its id stays its own
                used += len(ids)
                tables.append(f"{json.dumps(table)}:[{','.join(out)}]")
            parts.append(f"{json.dumps(name)}:{{{','.join(tables)}}}")
        if len(refs) > 2 * used + 1024:  # forget dicts no longer in the record
            _ENCODED.pop(self.name)
        text = json.dumps(head, separators=(",", ":"))
        return text[:-1] + ("," if len(text) > 2 else "") + ",".join(parts) + "}"

    def save(self) -> None:
        d = _private_dir()
        gid = _group()
        tmp = d / f".{check_name(self.name)}.json.{os.getpid()}"
        data = self._json().encode()
        try:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o640 if gid is not None else 0o600)
            with open(fd, "wb") as f:
                _own_file(fd, 0o640 if gid is not None else 0o600, gid)
                f.write(data)
            os.replace(tmp, self.path)
        except PermissionError as e:
            raise denied(f"cannot write the state of pipeline '{self.name}'", e) from None

    def delete(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        except PermissionError as e:
            raise denied(f"cannot remove the state of pipeline '{self.name}'", e) from None

    @classmethod
    def load(cls, name: str) -> "PipelineState | None":
        p = state_dir() / f"{check_name(name)}.json"
        try:
            return cls(**json.loads(p.read_text()))
        except FileNotFoundError:
            return None
        except PermissionError as e:
            raise denied(f"cannot read the state of pipeline '{name}'", e) from None

    @classmethod
    def require(cls, name: str) -> "PipelineState":
        st = cls.load(name)
        if st is None:
            applied = ", ".join(all_names()) or "none"
            raise NotFound(f"pipeline '{name}' is not applied (applied pipelines: {applied})",
                           hint="apply it first: ebplane apply SPEC")
        return st


def all_names() -> list[str]:
    d = state_dir()
    try:
        entries = os.listdir(d)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as e:
        raise denied("cannot list the applied pipelines", e) from None
    return sorted(n[:-5] for n in entries
                  if n.endswith(".json") and re.fullmatch(PIPELINE_NAME_PATTERN, n[:-5]))


def lock_timeout() -> float:
    text = os.environ.get("EBPLANE_LOCK_TIMEOUT")
    if text is None:
        return DEFAULT_LOCK_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise UsageError(f"EBPLANE_LOCK_TIMEOUT must be a number of seconds, not "
                         f"{quoted(text)}", hint="e.g. EBPLANE_LOCK_TIMEOUT=60 (0: do not wait)")
    return value


def _holder(path: Path, fd: int) -> str:
    """Who holds the lock on ``fd``: the pid its holder wrote into the file, else the pid the
    kernel lists in /proc/locks (a process that is not ebplane's writes nothing)."""
    pid = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(os.pread(fd, 32, 0).split()[0])
    if pid is None:
        st = os.fstat(fd)
        with contextlib.suppress(OSError):
            for line in Path("/proc/locks").read_text().splitlines():
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF" ("->" marks a waiter)
                if "->" in parts or len(parts) < 6:
                    continue
                maj_min_ino = parts[5].split(":")
                if len(maj_min_ino) == 3 and maj_min_ino[2] == str(st.st_ino) and \
                        int(maj_min_ino[0], 16) == os.major(st.st_dev) and \
                        int(maj_min_ino[1], 16) == os.minor(st.st_dev):
                    pid = int(parts[4])
                    break
    if pid is None:
        return "another process (unknown)"
    cmd = ""
    with contextlib.suppress(OSError):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace").strip()
    return f"process {pid}" + (f" ({shorten(cmd, 80)})" if cmd else "")


def _acquire(fd: int, path: Path, name: str, deadline: float, timeout: float) -> None:
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        now = time.monotonic()
        if now >= deadline:
            raise Busy(f"pipeline '{name}' is locked by {_holder(path, fd)}; gave up after "
                       f"{timeout:g} s", hint="wait for that command to finish (or end it), "
                       "or wait longer: EBPLANE_LOCK_TIMEOUT=SECONDS")
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, 0.02)  # a waiter gets the lock soon after its release


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Exclusive lock on one pipeline for the duration of an operation (see the module's
    docstring: private lock files, a timeout, removal with the pipeline's state)."""
    check_name(name)
    timeout = lock_timeout()
    d = _private_dir()
    path = d / f".{name}.lock"
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except PermissionError as e:
            raise denied(f"cannot lock pipeline '{name}'", e) from None
        try:
            _own_file(fd, 0o600, None)
            _acquire(fd, path, name, deadline, timeout)
            # a detach may have removed the file while we waited for it: then what we hold
            # is no lock at all, and a newcomer may hold the file now at the path
            try:
                now_at_path = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now_at_path = None
            held = os.fstat(fd)
            if now_at_path is not None and (now_at_path.st_ino, now_at_path.st_dev) == \
                    (held.st_ino, held.st_dev):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            if not (d / f"{name}.json").exists():  # detached, or never applied: no lock file
                with contextlib.suppress(OSError):
                    os.unlink(path)
            else:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # releases the lock
