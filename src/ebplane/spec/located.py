"""YAML to plain Python values, remembering where each value came from.

Validation works on ordinary dicts and lists (so the same validators serve a
spec file and a rule given on the command line as JSON), while errors still
point at ``file:line:column``.  :func:`load_located` builds both from one YAML
text; :class:`Where` carries a value's field path and finds its position.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from ebplane.errors import PermissionDenied, SpecError, UsageError, quoted, shorten
# the bounded file reader lives in the layer below, which reads protocol files with it
from ebplane.protocols.files import (DEFAULT_MAX_BYTES, DEFAULT_MAX_P4_BYTES,  # noqa: F401
                                     MAX_BYTES_ENV, MAX_P4_BYTES_ENV, max_bytes, read_source)

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass
class Marks:
    """1-based (line, column) of each value and of each mapping key, by field path."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    # True when some values were read by the fast path (load_located(fast=True)): those
    # have the position of their line's sequence item only, not of each field in it
    coarse: bool = False


@dataclass(frozen=True)
class Where:
    """The location of one value: its field path, and the file and marks to resolve it.

    ``path`` is relative to the document root; ``root`` is a name shown in front of
    it for values that did not come from a file (``rule`` for a CLI rule).
    """

    file: str | None = None
    path: Path = ()
    marks: Marks | None = None
    root: str = ""

    def __truediv__(self, part: PathPart) -> Where:
        return Where(self.file, self.path + (part,), self.marks, self.root)

    @property
    def field(self) -> str:
        text = self.root
        for part in self.path:
            if isinstance(part, int):
                text += f"[{part}]"
            else:
                text += f".{part}" if text else part
        return text

    def position(self, *, key: bool = False) -> tuple[int, int] | None:
        """Position of the value (``key=True``: of its key, where an unknown key is).

        A value that is absent (a defaulted field) is placed at its nearest parent.
        """
        if self.marks is None:
            return None
        if key and self.path in self.marks.keys:
            return self.marks.keys[self.path]
        for end in range(len(self.path), -1, -1):
            pos = self.marks.values.get(self.path[:end])
            if pos is not None:
                return pos
        return None

    @property
    def line(self) -> int | None:
        pos = self.position()
        return pos[0] if pos else None

    def error(self, message: str, *, given: Any = None, allowed: Any = None,
              hint: str | None = None, key: bool = False) -> SpecError:
        """A SpecError located at this value (``key=True``: at its key)."""
        pos = self.position(key=key)
        return SpecError(message, file=self.file, line=pos[0] if pos else None,
                         column=pos[1] if pos else None, field=self.field or None,
                         given=given, allowed=allowed, hint=hint)


# libyaml's parser when PyYAML has it (about 10x faster on specs with 100k rules); its events
# carry the same marks
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Bounds on what a YAML text may make us build (hostile input: docs/pipelines.md, "Limits").
# A spec is about 8 levels deep; 64 leaves room and stays far below Python's recursion limit.
MAX_DEPTH = 64
# nodes an alias may copy in, over the whole document, beyond the document's own size:
# merge keys and anchors of rule templates fit, a "billion laughs" alias bomb does not
MAX_ALIAS_NODES = 100_000
# longest scalar an integer is read from (Python refuses more than 4300 digits anyway)
MAX_INT_DIGITS = 100

_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_INT_TAG = "tag:yaml.org,2002:int"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _error(message: str, mark, filename: str, **kw) -> SpecError:
    return SpecError(message, file=filename, line=mark.line + 1 if mark else None,
                     column=mark.column + 1 if mark else None, **kw)


class _Open:
    """A mapping or sequence being built: its value, path, and (mappings) the next key."""

    __slots__ = ("value", "path", "anchor", "size", "key", "key_mark", "merges", "mark")

    def __init__(self, value, path: Path, anchor, mark):
        self.value, self.path, self.anchor, self.mark = value, path, anchor, mark
        self.size = 1  # nodes in it, aliases expanded
        self.key = _NO_KEY
        self.key_mark = None
        self.merges: list = []


_NO_KEY = object()


def load_located(text: str, filename: str, *, fast: bool = False) -> tuple[Any, Where]:
    """Parse one YAML document into plain values and a root :class:`Where`.

    ``fast=True`` reads block-sequence items written as one JSON-style flow mapping a line
    (``- {"src": "198.18.0.0/24", "action": "drop"}``: a rule list of 100k rules) without
    the YAML parser (see :func:`_fast_items`); those values are the same, but their fields
    carry no position of their own (``marks.coarse``): a caller that finds an error in such
    a value reads the text again without ``fast`` to locate it (:func:`parse_spec`).  Any
    error while reading is always reported as the reader without ``fast`` reports it.

    Raises SpecError (with line and column) on YAML syntax errors, unsupported tags,
    duplicate mapping keys (which plain PyYAML silently accepts), and on documents beyond
    the bounds above: nesting deeper than MAX_DEPTH, recursive aliases, aliases that expand
    to more than MAX_ALIAS_NODES nodes, integers of more than MAX_INT_DIGITS digits.

    The values are built from the parser's events, without a recursive composer (libyaml's
    crashes the process on a document nested 100k levels deep).
    """
    if fast:
        items, replaced = _fast_items(text)
        if items:
            try:
                marks = Marks(coarse=True)
                value = _read(replaced, filename, marks, items)
                if not items:  # every fast item was placed as a sequence item
                    return value, Where(filename, (), marks)
            except SpecError:
                pass  # located by the reader below, on the text as written
    marks = Marks()
    return _read(text, filename, marks, None), Where(filename, (), marks)


# One block-sequence item a line, a flow mapping in the JSON style: string keys in double
# quotes, values double-quoted strings or decimal integers, printable ASCII without escapes.
# On these JSON and YAML read the same values (json.loads is C code: ~20x the YAML parser).
_STR = r'"[ !#-\[\]-~]*"'
# (no space between a key and its colon: a mapping's '":' are its keys, counted to find a
# duplicate key without a Python hook per mapping)
_FAST_LINE = re.compile(
    r'( *)- (\{ *' + _STR + r': +(?:' + _STR + r'|-?(?:0|[1-9][0-9]{0,17}))'
    r'(?: *, *' + _STR + r': +(?:' + _STR + r'|-?(?:0|[1-9][0-9]{0,17})))* *\}) *')
_FAST_PLACEHOLDER = "ebplane.fast.item"


def _fast_items(text: str) -> tuple[dict[int, tuple[int, dict, int]], str]:
    """The lines of ``text`` the fast path reads, and the text with each of them replaced
    by a plain scalar at the same line and column.

    Returns {0-based line: (0-based column of '{', value, node count)}.  The reader then
    meets the placeholder where the mapping was and puts the value there; a placeholder it
    meets anywhere else (a block scalar, a quoted string over several lines, a flow
    sequence) stays in ``items`` and the text is read again as written.
    """
    if "- {" not in text or any(c in text for c in "\r\x85\u2028\u2029\ufeff"):
        return {}, text  # other line breaks than \n would number lines differently
    import json
    match = _FAST_LINE.fullmatch
    lines = text.split("\n")
    found: list[tuple[int, int, str]] = []  # (line, indent, mapping text)
    for n, line in enumerate(lines):
        if "- {" in line:
            m = match(line)
            if m is not None:
                found.append((n, len(m.group(1)), m.group(2)))
    if not found:
        return {}, text
    try:  # one call of the C decoder for all of them
        values = json.loads("[" + ",".join(f[2] for f in found) + "]")
    except ValueError:  # pragma: no cover - the pattern admits only valid JSON
        return {}, text
    items: dict[int, tuple[int, dict, int]] = {}
    for (n, indent, mapping), value in zip(found, values):
        if len(value) != mapping.count('":'):
            continue  # a duplicate key: the reader reports it
        items[n] = (indent + 2, value, 1 + 2 * len(value))
        lines[n] = " " * indent + "- " + _FAST_PLACEHOLDER
    return items, "\n".join(lines)


def _read(text: str, filename: str, marks: Marks, fast: dict | None) -> Any:
    loader = _Loader(text)
    try:
        value = _build(loader, marks, filename, fast)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise _error(f"YAML syntax error: {problem}", mark, filename) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", file=filename) from None
    finally:
        loader.dispose()
    return value


def _build(loader, marks: Marks, filename: str, fast: dict | None) -> Any:
    get = loader.get_event
    ev = get()  # StreamStart
    ev = get()
    if isinstance(ev, yaml.StreamEndEvent):
        raise SpecError("the spec is empty", file=filename, line=1, column=1,
                        hint="start from the example in the documentation: pipeline:, hook:, "
                             "protocols:, stages:")
    doc_mark = ev.start_mark
    stack: list[_Open] = []
    anchors: dict[str, tuple[Any, int]] = {}  # anchor -> (value, size)
    building: set[str] = set()  # anchors of collections not closed yet
    alias_nodes = 0
    result: Any = None
    done = False
    resolve = loader.resolve
    constructors = loader.yaml_constructors

    def place(value, size: int, mark) -> None:
        """Put a finished value into the collection being built (or make it the result)."""
        nonlocal result, done
        if not stack:
            result, done = value, True
            return
        top = stack[-1]
        top.size += size
        if isinstance(top.value, list):
            marks.values[top.path + (len(top.value),)] = (mark.line + 1, mark.column + 1)
            top.value.append(value)
        elif top.key is _NO_KEY:  # a key
            if value is _MERGE:
                top.key = _MERGE
            else:
                if not isinstance(value, (str, int, float, bool)) and value is not None:
                    raise _error("a mapping key must be a plain scalar", mark, filename,
                                 given=value)
                top.key = value
            top.key_mark = mark
        else:
            key, top.key = top.key, _NO_KEY
            if key is _MERGE:
                sources = value if isinstance(value, list) else [value]
                if not all(isinstance(v, dict) for v in sources):
                    raise _error("a merge key (<<) needs a mapping or a list of mappings",
                                 top.key_mark, filename)
                top.merges.extend(sources)
                return
            child = top.path + (key if isinstance(key, str) else str(key),)
            if key in top.value:
                km = top.key_mark
                raise _error(f"duplicate key {quoted(key)}", km, filename,
                             field=Where(path=child).field,
                             hint="each key may appear once per mapping")
            marks.keys[child] = (top.key_mark.line + 1, top.key_mark.column + 1)
            marks.values[child] = (mark.line + 1, mark.column + 1)
            top.value[key] = value

    while not done:
        ev = get()
        cls = type(ev)
        if cls is yaml.ScalarEvent:
            if fast and ev.value == _FAST_PLACEHOLDER and not ev.style and ev.tag is None \
                    and ev.anchor is None and stack and isinstance(stack[-1].value, list):
                item = fast.get(ev.start_mark.line)
                if item is not None and item[0] == ev.start_mark.column:
                    del fast[ev.start_mark.line]
                    place(item[1], item[2], ev.start_mark)
                    continue
            tag = ev.tag
            if tag is None or tag == "!":
                tag = resolve(yaml.ScalarNode, ev.value, ev.implicit)
            if tag == _MERGE_TAG and stack and isinstance(stack[-1].value, dict) \
                    and stack[-1].key is _NO_KEY:
                value = _MERGE
            else:
                if tag == _INT_TAG and len(ev.value) > MAX_INT_DIGITS:
                    raise _error(f"integer of {len(ev.value)} digits: too long (at most "
                                 f"{MAX_INT_DIGITS})", ev.start_mark, filename)
                fn = constructors.get(tag) or constructors.get(None)
                node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
                try:
                    value = fn(loader, node)
                except ValueError as exc:  # a malformed timestamp, base-60 number, ...
                    raise _error(f"invalid value: {exc}", ev.start_mark, filename) from None
            if ev.anchor is not None:
                anchors[ev.anchor] = (value, 1)
            if not stack:
                marks.values[()] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
            place(value, 1, ev.start_mark)
        elif cls is yaml.MappingStartEvent or cls is yaml.SequenceStartEvent:
            is_map = cls is yaml.MappingStartEvent
            if ev.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                raise _error(f"unsupported tag {quoted(ev.tag)}", ev.start_mark, filename)
            if len(stack) >= MAX_DEPTH:
                raise _error(f"nested more than {MAX_DEPTH} levels deep", ev.start_mark,
                             filename, hint="a spec is a few levels deep: check the brackets "
                                            "and the indentation")
            if stack:
                top = stack[-1]
                if isinstance(top.value, dict) and top.key is _NO_KEY:
                    raise _error("a mapping key must be a plain scalar", ev.start_mark,
                                 filename)
                if isinstance(top.value, list):
                    path = top.path + (len(top.value),)
                elif top.key is _MERGE:
                    path = top.path
                else:
                    key = top.key
                    path = top.path + (key if isinstance(key, str) else str(key),)
            else:
                path = ()
                marks.values[()] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
            if ev.anchor is not None:
                building.add(ev.anchor)
            stack.append(_Open({} if is_map else [], path, ev.anchor, ev.start_mark))
        elif cls is yaml.MappingEndEvent or cls is yaml.SequenceEndEvent:
            top = stack.pop()
            value = top.value
            if top.merges:  # explicit keys win, then the first merged mapping
                merged: dict = {}
                for src in reversed(top.merges):
                    merged.update(src)
                merged.update(value)
                value = merged
            if top.anchor is not None:
                building.discard(top.anchor)
                anchors[top.anchor] = (value, top.size)
            place(value, top.size, top.mark)
        elif cls is yaml.AliasEvent:
            if ev.anchor in building:
                raise _error(f"recursive alias *{shorten(ev.anchor, 40)}: it refers to the "
                             f"collection it is in", ev.start_mark, filename)
            if ev.anchor not in anchors:
                raise _error(f"undefined alias *{shorten(ev.anchor, 40)}", ev.start_mark,
                             filename)
            value, size = anchors[ev.anchor]
            alias_nodes += size
            if alias_nodes > MAX_ALIAS_NODES:
                raise _error(f"aliases expand to more than {MAX_ALIAS_NODES} nodes",
                             ev.start_mark, filename,
                             hint="write the values out, or use fewer nested aliases")
            if not stack:
                marks.values[()] = (ev.start_mark.line + 1, ev.start_mark.column + 1)
            place(value, size, ev.start_mark)
        else:  # pragma: no cover - the parser yields no other event inside a document
            raise _error("unexpected YAML event", getattr(ev, "start_mark", None), filename)
    get()  # DocumentEnd
    ev = get()
    if not isinstance(ev, yaml.StreamEndEvent):
        raise _error("expected a single document in the stream, but found another document",
                     ev.start_mark, filename)
    del doc_mark
    return result


_MERGE = object()  # a merge key (<<) while its mapping is built
