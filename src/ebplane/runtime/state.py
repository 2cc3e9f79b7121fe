"""What the control plane remembers about an applied pipeline.

Kernel objects (maps, links, the program) are pinned under ``<bpffs root>/<name>/``; the rest
(the spec text, the live rule lists with their stable ids, how each interface is attached)
is a JSON file under ``$EBPLANE_STATE_DIR`` (default ``/run/ebplane``), written atomically.
Operations on one pipeline take an exclusive lock so two commands never interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from ebplane.errors import NotFound
from ebplane.kernel import bpffs


def state_dir() -> Path:
    return Path(os.environ.get("EBPLANE_STATE_DIR", "/run/ebplane")) / "pipelines"


def pin_dir(name: str) -> Path:
    return bpffs.root() / name


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
    applied_at: float = 0.0
    notes: list[str] = field(default_factory=list)
    # set while an apply or a rule edit is under way (written before its kernel commit point,
    # cleared by its last write): what to compare with the kernel if the command died,
    # see ebplane.runtime.pipeline.load_state
    pending: dict | None = None

    @property
    def path(self) -> Path:
        return state_dir() / f"{self.name}.json"

    def save(self) -> None:
        d = state_dir()
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{self.name}.json.{os.getpid()}"
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, self.path)

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @classmethod
    def load(cls, name: str) -> "PipelineState | None":
        p = state_dir() / f"{name}.json"
        try:
            return cls(**json.loads(p.read_text()))
        except FileNotFoundError:
            return None

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
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if not p.name.startswith("."))


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Exclusive lock on one pipeline for the duration of an operation."""
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
