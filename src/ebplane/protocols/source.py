"""Reading P4 text: the lark parser and errors that point into the source.

Every error about a protocol file is a :class:`~ebplane.errors.SpecError` whose
``str()`` reads ``file:line:col: message``, then the offending source line and a
caret under the column, so that the user never has to count characters.
"""

from __future__ import annotations

from functools import cache

import lark

from ebplane.errors import SpecError
from ebplane.protocols.grammar import GRAMMAR
from ebplane.protocols.ir import Loc

# Readable names for the grammar's regex terminals (literal ones print as themselves).
_TERMINAL_NAMES = {
    "NAME": "a name",
    "INT": "a number",
    "STRING": "a string",
    "INCLUDE": "#include",
    "SHIFT": "'<<' or '>>'",
    "$END": "end of file",
}
_MAX_EXPECTED = 10


def render(loc: Loc, message: str, *, hint: str | None = None,
           field: str | None = None) -> SpecError:
    """A SpecError at ``loc`` whose text shows the source line and a caret."""
    text = message
    if loc.text:
        line = loc.text.rstrip("\n")
        # keep tabs so the caret lines up with what the terminal shows
        pad = "".join("\t" if ch == "\t" else " " for ch in line[:max(loc.column - 1, 0)])
        text = f"{message}\n    {line}\n    {pad}^"
    return SpecError(text, file=loc.file, line=loc.line, column=loc.column, field=field,
                     hint=hint)


class Source:
    """One P4 file's text, for making :class:`Loc` values that carry their line."""

    def __init__(self, file: str, text: str):
        self.file = file
        self.text = text
        self.lines = text.splitlines()

    def loc(self, line: int, column: int) -> Loc:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return Loc(self.file, line, column, text)

    def loc_of(self, node: lark.Tree | lark.Token) -> Loc:
        """Location of a token or of the first token of a tree."""
        if isinstance(node, lark.Token):
            return self.loc(node.line or 1, node.column or 1)
        meta = node.meta
        if getattr(meta, "empty", True):
            return self.loc(1, 1)
        return self.loc(meta.line, meta.column)

    def parse(self) -> lark.Tree:
        """Parse the text; syntax errors become a located SpecError with what was expected."""
        parser = _parser()
        try:
            return parser.parse(self.text)
        except lark.exceptions.UnexpectedInput as e:
            raise self._syntax_error(parser, e) from None

    def _syntax_error(self, parser: lark.Lark, e: lark.exceptions.UnexpectedInput) -> SpecError:
        if isinstance(e, lark.exceptions.UnexpectedCharacters):
            found = f"unexpected character {self.text[e.pos_in_stream]!r}"
            expected = e.allowed
            line, column = e.line, e.column
        elif isinstance(e, lark.exceptions.UnexpectedToken):
            tok = e.token
            if tok.type == "$END":
                found = "unexpected end of file"
                line, column = self._end()
            else:
                found = f"unexpected {tok.value!r}"
                line, column = tok.line, tok.column
            expected = e.expected
            if e.interactive_parser is not None:
                # LALR's lookahead sets are merged; replaying each token is exact
                expected = e.interactive_parser.accepts() or expected
        else:  # UnexpectedEOF
            found = "unexpected end of file"
            line, column = self._end()
            expected = e.expected
        names = sorted({_describe_terminal(parser, t) for t in expected or ()})
        if len(names) > _MAX_EXPECTED:
            names = names[:_MAX_EXPECTED] + ["..."]
        message = found + (f"; expected {_one_of(names)}" if names else "")
        return render(self.loc(line, column), message,
                      hint="docs/p4-subset.md lists the P4-16 constructs ebplane accepts")

    def _end(self) -> tuple[int, int]:
        if not self.lines:
            return 1, 1
        return len(self.lines), len(self.lines[-1]) + 1


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def _describe_terminal(parser: lark.Lark, name: str) -> str:
    if name in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name
    if isinstance(pattern, lark.lexer.PatternStr):
        return repr(pattern.value)
    return name.lower()


@cache
def _parser() -> lark.Lark:
    return lark.Lark(GRAMMAR, parser="lalr", lexer="contextual", propagate_positions=True,
                     maybe_placeholders=False)
