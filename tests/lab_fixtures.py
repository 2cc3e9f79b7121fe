"""A lab for one test (or module): its topology up under a fresh name, so that tests never
meet each other's namespaces, and always taken down (also on failure)."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path
from typing import Iterator

from ebplane.lab.topology import Lab


@contextlib.contextmanager
def fresh_lab(topology: Path, tag: str) -> Iterator[Lab]:
    """The lab of the ``topology`` file up as ``ebp-<tag><6 hex digits>``."""
    lab = Lab.load(topology, name=f"ebp-{tag}{secrets.token_hex(3)}")
    lab.up()
    try:
        yield lab
    finally:
        lab.down()


def topology_file(tmp_path: Path, name: str, text: str) -> Path:
    """``text`` written to ``tmp_path/name.yaml``, for :func:`fresh_lab`."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path
