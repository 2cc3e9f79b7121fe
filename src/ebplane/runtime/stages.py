"""Control-plane hooks of stage kinds beyond filter and count.

A stage kind that needs more than its generated code (filling a DEVMAP with egress ports,
a CPUMAP with queue sizes, checking that a redirect target can receive frames) registers a
:class:`StageRuntime`.  ``apply`` calls ``check`` before compiling and ``prepare`` after the
program is loaded and before it is attached, both inside the pipeline's network namespace;
``replay`` calls ``prepare`` with ``replay=True`` (no interfaces are touched then).
"""

from __future__ import annotations

from typing import Callable

from ebplane.kernel.maps import Map


class StageRuntime:
    kind = ""

    def check(self, spec, stage) -> list[str]:
        """Validate against the running system; raise with a hint, or return notes."""
        return []

    def prepare(self, built, spec, stage, *, replay: bool = False) -> list[str]:
        """Fill the stage's maps of a freshly loaded program; return notes."""
        return []

    def stats(self, maps: Callable[[str], Map], spec, stage) -> dict:
        """The stage's counters for ``ebplane stats``."""
        return {}


STAGE_RUNTIMES: dict[str, StageRuntime] = {}
RUNTIME_MODULES: list[str] = ["ebplane.runtime.forwarding", "ebplane.runtime.l4",
                                   "ebplane.runtime.nat"]  # modules that register runtimes on import


def register_runtime(rt: StageRuntime) -> StageRuntime:
    STAGE_RUNTIMES[rt.kind] = rt
    return rt


def runtime_for(kind: str) -> StageRuntime | None:
    import importlib
    for mod in RUNTIME_MODULES:
        importlib.import_module(mod)
    return STAGE_RUNTIMES.get(kind)
