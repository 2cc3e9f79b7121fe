"""Small typed validators shared by the spec, stage and rule parsers.

Each takes the raw value and its :class:`Where`, returns the value with a
precise type, or raises a located SpecError saying what was given and what is
allowed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ebplane.spec.located import Where


def type_name(obj: Any) -> str:
    """YAML's name for a Python value's type, for error messages."""
    if obj is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(obj), type(obj).__name__)


def mapping(obj: Any, where: Where, *, allowed: Sequence[str], required: Sequence[str] = (),
            what: str = "a mapping") -> dict[str, Any]:
    """A dict whose keys are all in ``allowed`` and include all of ``required``."""
    if not isinstance(obj, dict):
        raise where.error(f"expected {what}, got {type_name(obj)}")
    for key in obj:
        if key not in allowed:
            raise (where / str(key)).error(f"unknown key {key!r}", allowed=", ".join(allowed),
                                           key=True)
    for key in required:
        if key not in obj:
            raise where.error(f"missing required key {key!r}")
    return obj


def sequence(obj: Any, where: Where, *, what: str = "a list") -> list[Any]:
    if not isinstance(obj, list):
        raise where.error(f"expected {what}, got {type_name(obj)}", given=obj)
    return obj


def string(obj: Any, where: Where, *, what: str = "a string") -> str:
    if not isinstance(obj, str):
        raise where.error(f"expected {what}, got {type_name(obj)}", given=obj)
    return obj


def name(obj: Any, where: Where, *, pattern: str, allowed: str) -> str:
    """A string matching ``pattern`` in full; ``allowed`` describes it for the user."""
    text = string(obj, where, what="a name")
    if not re.fullmatch(pattern, text):
        raise where.error("invalid name", given=text, allowed=allowed)
    return text


def choice(obj: Any, where: Where, choices: Sequence[str]) -> str:
    if not isinstance(obj, str) or obj not in choices:
        raise where.error("invalid value", given=obj, allowed=" | ".join(choices))
    return obj


def table(body: dict, where: Where, *, size: int, size_max: int, size_what: str,
          when_full: Sequence[str], timeouts: dict[str, int], timeout_max: int
          ) -> tuple[int, str, bool, dict[str, int]]:
    """The options of a stage's own flow table (conntrack, nat): ``size``, ``when_full``,
    ``prealloc`` and ``timeouts`` (seconds per entry state, over the defaults given)."""
    n = integer(body.get("size", size), where / "size", 1, size_max, what=size_what)
    full = choice(body.get("when_full", "drop"), where / "when_full", when_full)
    prealloc = body.get("prealloc", False)
    if not isinstance(prealloc, bool):
        raise (where / "prealloc").error("expected true or false", given=prealloc,
                                         hint="prealloc: true allocates the whole table up front")
    raw = mapping(body.get("timeouts", {}) or {}, where / "timeouts", allowed=tuple(timeouts))
    out = dict(timeouts)
    for k, v in raw.items():
        out[k] = integer(v, where / "timeouts" / k, 1, timeout_max, what="timeout in seconds")
    return n, full, prealloc, out


def integer(obj: Any, where: Where, lo: int, hi: int, *, what: str = "value") -> int:
    # bool is an int subclass in Python, but `yes` is never meant as a number
    if not isinstance(obj, int) or isinstance(obj, bool):
        raise where.error(f"expected an integer {what}, got {type_name(obj)}", given=obj,
                          allowed=f"{lo}-{hi}")
    if not lo <= obj <= hi:
        raise where.error(f"{what} out of range", given=obj, allowed=f"{lo}-{hi}")
    return obj
