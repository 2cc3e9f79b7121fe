"""The protocols a pipeline can parse, and their dependencies.

The library's ``.p4`` files are the one truth (``ebplane.protocols``): every protocol they
declare can be listed, and what a protocol needs is read from the library's parse graph (the
protocols whose states lead to its entry state).  A pipeline may also list users' ``.p4``
files; :func:`parser_graph` composes the whole list so rules can be checked against it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ebplane.protocols import ParserGraph


def _dependencies() -> dict[str, tuple[str, ...]]:
    """name -> library protocols of which at least one must also be listed (empty: none)."""
    from ebplane.protocols import ir, load_library
    lib = load_library()
    owner = lib.state_owner()
    deps: dict[str, tuple[str, ...]] = {}
    for name, module in lib.modules.items():
        parents = {owner[st.name] for m in lib.modules.values() for st in m.states.values()
                   if module.entry in ir.targets(st.transition)} - {name}
        deps[name] = tuple(n for n in lib.names() if n in parents)
    return deps


class _KnownProtocols(Mapping[str, tuple[str, ...]]):
    """A read-only dict filled from the protocol library on first use: parsing the
    library takes ~0.2 s, which importing ``ebplane.spec`` (``--help``, error paths,
    callers that never read a spec) should not pay."""

    _data: dict[str, tuple[str, ...]] | None = None

    def _get(self) -> dict[str, tuple[str, ...]]:
        if self._data is None:
            self._data = _dependencies()
        return self._data

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())

    def __repr__(self) -> str:
        return f"KNOWN_PROTOCOLS({self._get()!r})"


# name -> protocols of which at least one must also be listed; iteration order is canonical
KNOWN_PROTOCOLS: Mapping[str, tuple[str, ...]] = _KnownProtocols()

REQUIRED_PROTOCOLS: tuple[str, ...] = ("ethernet",)


def is_protocol_file(name: str) -> bool:
    """A user's protocol file (a path ending in .p4) rather than a library name."""
    return name.endswith(".p4")


def canonical_order(names: Iterable[str]) -> tuple[str, ...]:
    """Library protocols in :data:`KNOWN_PROTOCOLS` order, then users' files as listed.

    Two specs listing the same protocols in a different order are the same
    pipeline; a canonical order keeps generated code and cache keys identical.
    """
    wanted = list(dict.fromkeys(names))
    return (tuple(p for p in KNOWN_PROTOCOLS if p in wanted)
            + tuple(p for p in wanted if p not in KNOWN_PROTOCOLS))


def missing_dependency(protocols: Iterable[str]) -> tuple[str, tuple[str, ...]] | None:
    """Return ``(protocol, needs)`` for the first listed protocol whose dependency is absent."""
    listed = set(protocols)
    for name in canonical_order(listed):
        needs = KNOWN_PROTOCOLS.get(name, ())
        if needs and not listed.intersection(needs):
            return name, needs
    return None


def parser_graph(protocols: Iterable[str]) -> ParserGraph:
    """The composed parse graph of ``protocols`` with every field loadable (for checking
    rule fields).  Cached per list and per modification time of users' files."""
    names = canonical_order(protocols)
    stamps = tuple(_mtime(p) for p in names if is_protocol_file(p))
    return _graph(names, stamps)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return -1.0  # build_parser reports the unreadable file


@lru_cache(maxsize=64)
def _graph(names: tuple[str, ...], _stamps: tuple[float, ...]) -> ParserGraph:
    from ebplane.protocols import build_parser
    return build_parser([Path(n) if is_protocol_file(n) else n for n in names])
