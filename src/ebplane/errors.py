"""The one exception hierarchy of ebplane.

Every error a user can meet derives from :class:`EbplaneError`.  Each carries a
one-line ``str()`` that names the cause, and where there is one, a ``hint`` that
says what to do instead.  The CLI prints ``error: <message>`` and, on a second
line, ``hint: <hint>``, and exits with ``exit_code``.

Exit codes: 2 = the user's input is wrong (spec, arguments, missing interface),
3 = the kernel or toolchain refused (verifier, clang, attach), 4 = missing
privileges or platform support.
"""

from __future__ import annotations

import errno as _errno
import os


# longest value an error message quotes: a spec value, a name, a P4 literal may be megabytes
MAX_QUOTED = 120
# longest message or hint: one screen, whatever the error quotes
MAX_MESSAGE = 2000


def shorten(text, limit: int = MAX_QUOTED) -> str:
    """``text`` (any value: ``str()`` of it) cut to ``limit`` characters, the cut marked with
    an ellipsis and the length left out."""
    text = text if isinstance(text, str) else str(text)
    if len(text) <= limit:
        return text
    keep = max(limit - 30, 10)
    return f"{text[:keep]}... ({len(text) - keep} more characters)"


def quoted(value, limit: int = MAX_QUOTED) -> str:
    """``repr(value)`` for a message, bounded like :func:`shorten` (the repr of a huge int
    or string is never built whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, (str, bytes)) and len(value) > limit:
        return shorten(repr(value[:limit]), limit) + f" ({len(value)} long)"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 50:
        return f"<a {type(value).__name__} of {len(value)} items>"
    try:
        return shorten(repr(value), limit)
    except (ValueError, RecursionError):  # int too big to print, a self-referencing list
        return f"<a {type(value).__name__}>"


class EbplaneError(Exception):
    """Base of all ebplane errors."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        message = shorten(message, MAX_MESSAGE)
        super().__init__(message)
        self.message = message
        self.hint = shorten(hint, MAX_MESSAGE) if hint is not None else None

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        d = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            d["hint"] = self.hint
        if getattr(self, "__notes__", None):  # e.g. rollback steps that failed
            d["notes"] = list(self.__notes__)
        return d


# -- user input ---------------------------------------------------------------

class UsageError(EbplaneError):
    """Wrong arguments or a request that makes no sense."""

    exit_code = 2


class SpecError(UsageError):
    """A pipeline spec (or protocol file) is invalid.

    ``file``, ``line``, ``column``, ``field``, ``given`` and ``allowed`` locate
    the problem; ``str()`` renders them as ``file:line:col: field: message``.
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 column: int | None = None, field: str | None = None, given=None,
                 allowed=None, hint: str | None = None):
        self.file, self.line, self.column = file, line, column
        self.field, self.given, self.allowed = field, given, allowed
        self.reason = message
        loc = ":".join(shorten(str(x), 400) for x in (file, line, column) if x is not None)
        text = message
        if field:
            text = f"{shorten(field, 200)}: {text}"
        if given is not None:
            text += f" (given: {quoted(given)}"
            text += f"; allowed: {shorten(allowed, 400)})" if allowed is not None else ")"
        elif allowed is not None:
            text += f" (allowed: {shorten(allowed, 400)})"
        if loc:
            text = f"{loc}: {text}"
        super().__init__(text, hint=hint)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update({k: v for k, v in (("file", self.file), ("line", self.line),
                                     ("column", self.column), ("field", self.field),
                                     ("given", _bounded(self.given)),
                                     ("allowed", _bounded(self.allowed, 400)))
                  if v is not None})
        return d


def _bounded(value, limit: int = MAX_QUOTED):
    """``value`` itself when it is small enough to show whole, else its :func:`quoted` text."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int) and value.bit_length() <= 256:
        return value
    if isinstance(value, str) and len(value) <= limit:
        return value
    if isinstance(value, (list, tuple)) and len(value) <= 50:
        text = quoted(value, limit)
        if "..." not in text and not text.startswith("<"):
            return value
    return quoted(value, limit)


class Busy(UsageError):
    """Another command holds the lock of the pipeline longer than the lock timeout."""


class InterfaceNotFound(UsageError):
    """A named network interface does not exist (in the namespace asked for)."""


class NotFound(UsageError):
    """A named object (pipeline, rule, table, namespace, pin) does not exist."""


class KeyNotFound(EbplaneError, KeyError):
    """A map lookup or delete found no entry for the key."""

    exit_code = 2

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


# -- toolchain and kernel -----------------------------------------------------

class ToolchainError(EbplaneError):
    """clang or another build tool is missing or failed."""

    exit_code = 3


class CompileError(ToolchainError):
    """clang rejected the C source; ``diagnostics`` holds its whole output."""

    def __init__(self, message: str, *, diagnostics: str = "", file: str | None = None,
                 line: int | None = None, source_line: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.diagnostics, self.file, self.line, self.source_line = diagnostics, file, line, source_line


class KernelError(EbplaneError, OSError):
    """A bpf() or netlink call failed; ``errno`` is set."""

    exit_code = 3

    def __init__(self, message: str, *, err: int = 0, hint: str | None = None):
        EbplaneError.__init__(self, message, hint=hint)
        self.errno = err
        self.strerror = os.strerror(err) if err else None

    def __str__(self) -> str:
        return self.message


class VerifierError(KernelError):
    """The verifier rejected a program.

    ``log`` is the verifier log (its tail when ``truncated``: the kernel keeps the last
    part of a log that does not fit the buffer); ``summary`` is the verifier's last
    meaningful line and ``source`` the C line it refers to (``file:line: code``), found by
    the kernel layer (``ebplane.kernel.verifier``) that read the log.  ``str()`` is one line
    made of the program, the summary and the source.
    """

    def __init__(self, program: str, log: str, *, err: int = _errno.EACCES,
                 summary: str | None = None, source: str | None = None,
                 truncated: bool = False):
        self.program = program
        self.log = log
        self.truncated = truncated
        if summary is None:  # nobody read the log: its last line is the best guess
            lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
            summary = lines[-1] if lines else "no verifier log"
        self.summary, self.source = summary, source
        text = f"verifier rejected program '{program}': {summary}"
        if source:
            text += f" [at {source}]"
        hint = "the whole verifier log is in the exception's .log (CLI: --verbose)"
        if truncated:
            hint = ("the verifier log did not fit 16 MiB: .log holds its last part "
                    "(CLI: --verbose)")
        super().__init__(text, err=err, hint=hint)


class NotSupported(KernelError):
    """The kernel, libbpf or the interface's driver lacks a feature."""

    exit_code = 4


class PermissionDenied(KernelError):
    """Missing privileges (EPERM / EACCES outside the verifier)."""

    exit_code = 4


class AttachError(KernelError):
    """Attaching a program to a hook failed."""


class BpffsError(KernelError):
    """bpffs is missing or a pin path is unusable."""


def kernel_error(what: str, err: int, *, hint: str | None = None) -> KernelError:
    """Map an errno from a kernel call to the most specific error class.

    ``what`` says what was attempted ("create map 'x'", "attach XDP to eth0").
    """
    err = abs(err)
    text = f"{what}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})"
    if err == _errno.EPERM:
        # missing privileges is the likely cause whatever was attempted: say so first
        caps = ("run as root, or grant CAP_BPF and CAP_NET_ADMIN (CAP_SYS_ADMIN on older "
                "kernels); also check kernel.unprivileged_bpf_disabled and the memlock limit")
        return PermissionDenied(text, err=err, hint=f"{caps}; {hint}" if hint else caps)
    if err in (_errno.EOPNOTSUPP, _errno.ENOTSUP):
        return NotSupported(text, err=err, hint=hint)
    return KernelError(text, err=err, hint=hint)
