"""Reading the user's files, bounded: spec, rules and protocol files are at most a set number
of bytes of UTF-8, and anything else is a located error, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from ebplane.errors import PermissionDenied, SpecError, UsageError, quoted

# the largest spec or rules file read (a spec of 100k rules is about 7 MB), and the largest
# protocol file (the library's are a few KB; lark reads about 120 KB/s of P4)
DEFAULT_MAX_BYTES = 16 << 20
MAX_BYTES_ENV = "EBPLANE_MAX_SPEC_BYTES"
DEFAULT_MAX_P4_BYTES = 256 << 10
MAX_P4_BYTES_ENV = "EBPLANE_MAX_P4_BYTES"


def max_bytes(env: str = MAX_BYTES_ENV, default: int = DEFAULT_MAX_BYTES) -> int:
    text = os.environ.get(env)
    if text is None:
        return default
    try:
        value = int(text, 10) if len(text) < 20 else -1
    except ValueError:
        value = -1
    if value <= 0:
        raise UsageError(f"{env} must be a number of bytes, not {quoted(text)}",
                         hint=f"e.g. {env}={default * 4}")
    return value


def read_source(path, what: str = "spec file") -> str:
    """The text of a spec, rules or protocol file: at most :func:`max_bytes` bytes of UTF-8.

    A file too large, not UTF-8 (located at its first bad byte) or unreadable is a
    SpecError / UsageError / PermissionDenied, never a traceback.
    """
    p = Path(path)
    env, default = ((MAX_P4_BYTES_ENV, DEFAULT_MAX_P4_BYTES) if what == "protocol file"
                    else (MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
    limit = max_bytes(env, default)
    try:
        with open(p, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {p}",
                         hint="check the path (relative paths are from the current directory)"
                         ) from None
    except PermissionError as exc:
        raise PermissionDenied(f"cannot read {what} {p}: {exc.strerror}", err=exc.errno,
                               hint="run as a user who may read it (or as root)") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise UsageError(f"{what} {p} is larger than {limit} bytes",
                         hint=f"raise the limit: {env}=BYTES" + (
                             " (a spec of 100k rules is about 7 MB)" if env == MAX_BYTES_ENV
                             else " (reading P4 takes about 1 s per 120 KB)"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SpecError(f"not UTF-8 text: byte {data[e.start]:#04x}", file=str(p), line=line,
                        column=column, hint=f"save the {what} as UTF-8") from None
