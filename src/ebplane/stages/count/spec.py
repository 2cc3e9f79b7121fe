"""The spec of ``count``: a stage that counts what reaches it and decides nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ebplane.spec import check
from ebplane.spec.located import Where
from ebplane.spec.stages import Stage, stage_name


@dataclass(frozen=True)
class CountStage(Stage):
    """Counts the packets and bytes that reach it."""

    kind: ClassVar[str] = "count"


def parse_count(obj: Any, where: Where, protocols: tuple[str, ...]) -> CountStage:
    body = check.mapping({} if obj is None else obj, where, allowed=("name",))
    return CountStage(name=stage_name(body, where, "count"))


PARSERS = {"count": parse_count}
