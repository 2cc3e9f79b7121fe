""":class:`StageEdit`: what every run-time editor of one stage of an applied pipeline shares
(``ebplane backends``, ``ebplane groups``): finding the stage of its kind by name, and the
pipeline's pinned maps, opened on first use and closed on exit.  The editors take the
pipeline's lock (``self._pl._locked``) around what they change."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from ebplane.errors import NotFound, UsageError
from ebplane.kernel.maps import Map


class StageEdit:
    """One ``kind`` stage of an applied pipeline: ``stage`` names it (needed when the pipeline
    has more than one).  ``noun`` says the kind in messages, ``none_hint`` how to get one."""

    kind: str = ""
    noun: str = ""
    none_hint: str = "see `ebplane status`"

    def __init__(self, pipeline: str, stage: str | None = None):
        from ebplane.runtime import pipeline as pl  # the applied pipelines' state and pins
        self._pl = pl
        self.pipeline = pipeline
        spec = pl._spec_of(pl.require_state(pipeline))
        found = [s for s in spec.stages if s.kind == self.kind]
        if not found:
            raise UsageError(f"pipeline '{pipeline}' has no {self.noun}", hint=self.none_hint)
        names = ", ".join(s.name for s in found)
        if stage is None:
            if len(found) > 1:
                raise UsageError(f"pipeline '{pipeline}' has several {self.noun}s ({names})",
                                 hint="name one with --stage")
            self.stage = found[0]
        else:
            match = [s for s in found if s.name == stage]
            if not match:
                raise NotFound(f"pipeline '{pipeline}' has no {self.noun} '{stage}'",
                               hint=f"its {self.noun}s: {names}")
            self.stage = match[0]
        self.spec = spec

    @contextlib.contextmanager
    def _pinned(self) -> Iterator[Callable[[str], Map]]:
        """``maps(cname)``: the pipeline's pinned map of that name, closed on exit."""
        opened: list[Map] = []

        def maps(cname: str) -> Map:
            m = self._pl._pinned_map(self.pipeline, cname)
            opened.append(m)
            return m
        try:
            yield maps
        finally:
            for m in opened:
                m.close()
