"""Protocols in a P4-16 subset, composed into a specialised parse graph.

The language is documented in docs/p4-subset.md.  The library of shipped
protocols is ``library/*.p4``; users add their own ``.p4`` files.

- :func:`load_library` -- every shipped protocol, checked.
- :func:`load_protocol_file` -- a user's protocol file, checked against the library.
- :func:`build_parser` -- compose protocols into a :class:`ParserGraph`: only
  reachable states, only needed fields, a parse-info layout; ``to_p4()``,
  ``describe()``, ``to_dict()`` and ``parse_bytes()`` (reference interpreter).
"""

from ebplane.protocols.compose import build_parser, check_cycles
from ebplane.protocols.frontend import Hook, ProtocolModule, parse_module
from ebplane.protocols.graph import (FieldMatch, FieldPath, LayoutSlot, ParseInfoLayout,
                                    ParserGraph)
from ebplane.protocols.library import ProtocolLibrary, load_library, load_protocol_file


def parse_protocol_text(text: str, name: str = "protocol", path: str = "<text>") -> ProtocolModule:
    """Parse P4 text as one protocol on its own (no library cross-checks), e.g. an export."""
    return parse_module(name, path, text)


__all__ = ["FieldMatch", "FieldPath", "Hook", "LayoutSlot", "ParseInfoLayout", "ParserGraph", "ProtocolLibrary",
           "ProtocolModule", "build_parser", "check_cycles", "load_library",
           "load_protocol_file", "parse_protocol_text"]
