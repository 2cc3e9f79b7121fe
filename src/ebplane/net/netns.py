"""Network namespaces owned by ebplane.

Every namespace ebplane creates is named ``ebp-...`` so that ebplane can list
and clean up its own namespaces without ever touching anybody else's.  The
namespaces are ordinary ``ip netns`` namespaces (a bind mount under
``/run/netns``), so ``ip netns list`` and ``ip -n NAME ...`` see them too.

:func:`enter` switches only the *calling thread* with ``setns(2)``: network
namespaces are per thread, and unlike ``ip netns exec`` this keeps the
process' view of ``/sys`` (and so ``/sys/fs/bpf``) intact.  Sockets opened
while inside stay bound to that namespace after leaving it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import subprocess
from collections.abc import Iterator, Sequence

from ebplane.errors import KernelError, NotFound, NotSupported, UsageError, kernel_error
from ebplane.kernel.libbpf import get_errno, libc

PREFIX = "ebp-"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
DEFAULT_TIMEOUT = 30.0
LOG_ENV = "EBPLANE_NETNS_LOG"

# A namespace name is a file name under /run/netns; keep it to a portable set.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LIST_HINT = "see `ip netns list`; the lab's namespaces are created by `ebplane lab up`"


def _path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def check_name(name: str) -> str:
    """Return ``name`` if ebplane may create or delete a namespace of that name.

    Only ``ebp-`` names are ours; refusing the rest keeps ebplane from
    deleting or clobbering a namespace somebody else relies on.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UsageError(f"invalid network namespace name {name!r}",
                         hint="use letters, digits, '-', '_' or '.', at most 64 characters")
    if not name.startswith(PREFIX):
        raise UsageError(f"network namespace name {name!r} lacks the prefix {PREFIX!r}",
                         hint=f"ebplane only manages namespaces named {PREFIX}...; "
                              f"rename it to {PREFIX}{name}")
    return name


def exists(name: str) -> bool:
    """Whether the ebplane namespace ``name`` exists (``ip netns list`` shows it)."""
    return os.path.exists(_path(check_name(name)))


def list_ours() -> list[str]:
    """Names of the existing namespaces with ebplane's prefix, sorted."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(PREFIX))


def missing_program(program: str) -> NotSupported:
    """The error for a missing external program (iproute2, ping, ethtool)."""
    return NotSupported(f"program {program!r} is not installed",
                        hint="install it: apt-get install -y iproute2 ethtool "
                             "(scripts/setup does this)")


def _exec(argv: Sequence[str], what: str, *, shown: Sequence[str] | None = None,
          check: bool = True, timeout: float = DEFAULT_TIMEOUT, input: str | None = None
          ) -> subprocess.CompletedProcess:
    """Run a command, raising an ebplane error (stderr quoted) on failure or timeout.

    ``shown`` is the command line to quote in errors when it differs from
    ``argv`` (the ``ip netns exec NS`` wrapper is noise to the reader).
    """
    shown = list(shown if shown is not None else argv)
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              input=input, check=False)
    except FileNotFoundError:
        raise missing_program(argv[0]) from None
    except subprocess.TimeoutExpired as e:
        raise KernelError(f"{what}: `{' '.join(shown)}` timed out after {timeout:g} s",
                          err=errno.ETIMEDOUT) from e
    if check and proc.returncode != 0:
        stderr = proc.stderr or ""
        if stderr.startswith("exec of") and "No such file" in stderr:
            raise missing_program(shown[0])
        raise command_error(what, shown, proc)
    return proc


def command_error(what: str, argv: Sequence[str], proc: subprocess.CompletedProcess
                  ) -> KernelError:
    """Turn a failed command into the most specific ebplane error, stderr included."""
    err = (proc.stderr or proc.stdout or "").strip()
    text = f"{what}: `{' '.join(argv)}` exited with {proc.returncode}: {err or '(no output)'}"
    low = err.lower()
    if "operation not permitted" in low or "permission denied" in low:
        return kernel_error(text, errno.EPERM)
    if "not supported" in low:
        return kernel_error(text, errno.EOPNOTSUPP)
    return KernelError(text)


def _log_created(name: str) -> None:
    """Append ``name`` to the file named by $EBPLANE_NETNS_LOG, if set.

    The test suite sets it to find the namespaces its own process tree
    created and left behind, without mistaking those of a concurrent run
    on the same machine for leaks.
    """
    log = os.environ.get(LOG_ENV)
    if log:
        with open(log, "a") as f:
            f.write(name + "\n")


def create(name: str) -> None:
    """Create the namespace ``name`` with its loopback device up.

    Loopback is brought up at once because almost everything (local pings,
    sockets bound to 127.0.0.1, the test harness) expects it.  On failure
    nothing is left behind.
    """
    check_name(name)
    if os.path.exists(_path(name)):
        raise UsageError(f"network namespace {name!r} already exists",
                         hint=f"remove it with `ip netns delete {name}` (or `ebplane lab down`)")
    _exec(["ip", "netns", "add", name], f"create network namespace {name!r}")
    try:
        _log_created(name)
        _exec(["ip", "-n", name, "link", "set", "lo", "up"],
              f"bring up loopback in namespace {name!r}")
    except BaseException:
        remove(name)
        raise


def remove(name: str) -> None:
    """Delete the namespace ``name``; a missing namespace is not an error.

    Processes still running inside keep their (now unnamed) namespace alive;
    ebplane kills none of them, since it cannot know whom they belong to.
    """
    check_name(name)
    if os.path.exists(_path(name)):
        _exec(["ip", "netns", "delete", name], f"delete network namespace {name!r}")


def _setns(fd: int, what: str) -> None:
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise kernel_error(what, get_errno())


@contextlib.contextmanager
def enter(name: str) -> Iterator[str]:
    """Run the ``with`` body with the calling thread inside namespace ``name``.

    Any existing ``ip netns`` namespace may be entered, not only ``ebp-`` ones:
    entering changes nothing.  The thread's original namespace is restored
    on exit, also when the body raises.  Sockets and child processes created
    inside belong to the entered namespace.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        check_name(name)  # raises the UsageError that explains valid names
    try:
        target = os.open(_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"network namespace {name!r} does not exist",
                       hint=_LIST_HINT) from None
    try:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target, f"enter network namespace {name!r}")
            try:
                yield name
            finally:
                _setns(original, f"return from network namespace {name!r}")
        finally:
            os.close(original)
    finally:
        os.close(target)


def current_inode() -> int:
    """Inode of the calling thread's network namespace (equal inode = same namespace)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def current_name() -> str | None:
    """The ``ip netns`` name of the calling thread's namespace, or None if it has none."""
    here = os.stat("/proc/thread-self/ns/net")
    try:
        names = sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return None
    for name in names:
        try:
            st = os.stat(_path(name))
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino):
            return name
    return None


def inode(name: str) -> int:
    """Inode of the named namespace, to compare with :func:`current_inode`."""
    try:
        return os.stat(_path(name)).st_ino
    except FileNotFoundError:
        raise NotFound(f"network namespace {name!r} does not exist", hint=_LIST_HINT) from None


class Namespace:
    """A namespace that exists exactly as long as the ``with`` block using it.

    ``with Namespace("ebp-x") as ns:`` creates ``ebp-x`` and removes it on
    exit, also when the block raises.
    """

    def __init__(self, name: str):
        self.name = check_name(name)

    def __enter__(self) -> "Namespace":
        create(self.name)
        return self

    def __exit__(self, *exc) -> None:
        remove(self.name)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def temporary(prefix: str = "ebp-t") -> Namespace:
    """A :class:`Namespace` with a fresh short unique name ``PREFIX-<6 hex>``."""
    for _ in range(8):
        name = f"{prefix}-{secrets.token_hex(3)}"
        if not os.path.exists(_path(check_name(name))):
            return Namespace(name)
    raise UsageError(f"could not find an unused namespace name with prefix {prefix!r}",
                     hint="remove stale namespaces: `ip netns list`")


def run(ns: str, argv: Sequence[str], *, check: bool = True, timeout: float = DEFAULT_TIMEOUT,
        input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` inside namespace ``ns`` and return the finished process.

    Uses ``ip netns exec``, which hides ``/sys/fs/bpf``; use :func:`enter` for
    anything that needs bpffs.  With ``check`` a non-zero exit raises an
    ebplane error quoting stderr; a timeout always raises (the child is killed).
    """
    check_name(ns)
    if not os.path.exists(_path(ns)):
        raise NotFound(f"network namespace {ns!r} does not exist", hint=_LIST_HINT)
    return _exec(["ip", "netns", "exec", ns, *argv], f"in namespace {ns!r}", shown=argv,
                 check=check, timeout=timeout, input=input)
