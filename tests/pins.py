"""Private bpffs pin roots of this test session.

Every test pins under a root of its own in /sys/fs/bpf, named with this session's tag
(``ebp-test-s<pid>-<hex>``), so that the session-level check in conftest.py can tell the
roots it must have removed from those of another test session running on the same machine.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

BPFFS = Path("/sys/fs/bpf")
# the pytest process's id: fixtures run in it, so every root they make carries it
SESSION = f"s{os.getpid():x}"

# a private root of any test session (this one's or another's), and a benchmark's root
_PRIVATE = re.compile(r"^(?:ebp-test|ebplane-test)(?:-demo)?-(s[0-9a-f]+)-[0-9a-f]+$")
_BENCH = re.compile(r"^ebplane-bench-(\d+)$")


def private_root(prefix: str = "ebp-test") -> Path:
    """A fresh pin root for one test or module, tagged with this session."""
    return BPFFS / f"{prefix}-{SESSION}-{secrets.token_hex(4)}"


def foreign(entry: str) -> bool:
    """True for a pin root that another test session (or its benchmark) created."""
    m = _PRIVATE.match(entry)
    if m:
        return m.group(1) != SESSION
    m = _BENCH.match(entry)
    return bool(m) and int(m.group(1)) != os.getpid()
