"""YAML to plain Python values, remembering where each value came from.

Validation works on ordinary dicts and lists (so the same validators serve a
spec file and a rule given on the command line as JSON), while errors still
point at ``file:line:column``.  :func:`load_located` builds both from one YAML
text; :class:`Where` carries a value's field path and finds its position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ebplane.errors import SpecError

PathPart = str | int
Path = tuple[PathPart, ...]


@dataclass
class Marks:
    """1-based (line, column) of each value and of each mapping key, by field path."""

    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)


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


# libyaml's parser when PyYAML has it (about 10x faster on specs with 100k rules); its nodes
# carry the same marks
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_located(text: str, filename: str) -> tuple[Any, Where]:
    """Parse one YAML document into plain values and a root :class:`Where`.

    Raises SpecError (with line and column) on YAML syntax errors, unsupported
    tags and duplicate mapping keys, which plain PyYAML silently accepts.
    """
    loader = _Loader(text)
    marks = Marks()
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the spec is empty", file=filename, line=1, column=1,
                            hint="start from the example in the documentation: pipeline:, hook:, "
                                 "protocols:, stages:")
        value = _convert(loader, node, (), marks, filename)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"YAML syntax error: {problem}", file=filename,
                        line=mark.line + 1 if mark else None,
                        column=mark.column + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", file=filename) from None
    finally:
        loader.dispose()
    return value, Where(filename, (), marks)


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: Path, marks: Marks,
             filename: str) -> Any:
    marks.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve YAML merge keys (<<)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise SpecError("a mapping key must be a plain scalar", file=filename,
                                line=_pos(key_node)[0], column=_pos(key_node)[1],
                                given=str(key))
            child = path + (key if isinstance(key, str) else str(key),)
            if key in result:
                raise SpecError(f"duplicate key {key!r}", file=filename, line=_pos(key_node)[0],
                                column=_pos(key_node)[1], field=Where(path=child).field,
                                hint="each key may appear once per mapping")
            marks.keys[child] = _pos(key_node)
            result[key] = _convert(loader, value_node, child, marks, filename)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(loader, item, path + (i,), marks, filename)
                for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)
