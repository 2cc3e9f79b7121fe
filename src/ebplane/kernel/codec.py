"""Typed codecs for map keys and values, so callers never pack bytes by hand.

A codec has ``size`` and turns Python values into exactly ``size`` bytes and back:

>>> U32.encode(7)
b'\\x07\\x00\\x00\\x00'
>>> Counter = Struct("Counter", [("packets", "Q"), ("bytes", "Q")])
>>> Counter.decode(Counter.encode(Counter.type(1, 2))).bytes
2
"""

from __future__ import annotations

import ctypes
import struct
from collections import namedtuple
from typing import Any, Sequence

from ebplane.codegen import layout as _layout


class Codec:
    size: int

    def encode(self, value: Any) -> bytes:
        raise NotImplementedError

    def decode(self, data: bytes) -> Any:
        raise NotImplementedError

    def add(self, a: Any, b: Any) -> Any:
        """Sum of two values (per-CPU aggregation); numbers and numeric structs only."""
        raise TypeError(f"{self!r} values cannot be summed")


class Raw(Codec):
    """Bytes of a fixed size (the default when a map has no codec)."""

    def __init__(self, size: int):
        self.size = size

    def encode(self, value) -> bytes:
        value = bytes(value)
        if len(value) != self.size:
            raise ValueError(f"expected {self.size} bytes, got {len(value)}")
        return value

    def decode(self, data: bytes) -> bytes:
        return bytes(data[: self.size])

    def __repr__(self) -> str:
        return f"Raw({self.size})"


class Scalar(Codec):
    """One little-endian integer: U8/U16/U32/U64 and the signed ones."""

    def __init__(self, fmt: str):
        self._s = struct.Struct("<" + fmt)
        self.size = self._s.size
        self.fmt = fmt

    def encode(self, value) -> bytes:
        return self._s.pack(value)

    def decode(self, data: bytes):
        return self._s.unpack_from(data)[0]

    def add(self, a, b):
        return a + b

    def __repr__(self) -> str:
        return f"Scalar({self.fmt!r})"


U8, U16, U32, U64 = Scalar("B"), Scalar("H"), Scalar("I"), Scalar("Q")
S32, S64 = Scalar("i"), Scalar("q")


class Struct(Codec):
    """A C struct as a named tuple: ``Struct("Counter", [("packets", "Q"), ("bytes", "Q")])``.

    Field formats are ``struct`` module codes (``"4s"`` for a byte array); the layout is
    C's natural alignment on x86-64 (``@`` mode with native sizes), which is what clang
    gives the BPF side for the same field list.  For a struct of ebplane's own programs use
    a ``codegen.layout.Layout`` and :class:`Packed` instead: one definition gives the C and
    the codec.
    """

    def __init__(self, name: str, fields: Sequence[tuple[str, str]]):
        self.type = namedtuple(name, [f for f, _ in fields])
        self._s = struct.Struct("@" + "".join(fmt for _, fmt in fields))
        # pad to the alignment of the widest scalar, as C does
        align = max(struct.calcsize("@" + fmt.lstrip("0123456789")) if fmt[-1] != "s" else 1
                    for _, fmt in fields)
        self.size = -(-self._s.size // align) * align
        self._pad = b"\0" * (self.size - self._s.size)
        self._numeric = all(fmt[-1] in "bBhHiIlLqQ" for _, fmt in fields)

    def encode(self, value) -> bytes:
        if isinstance(value, dict):
            value = self.type(**value)
        return self._s.pack(*value) + self._pad

    def decode(self, data: bytes):
        return self.type(*self._s.unpack_from(data))

    def add(self, a, b):
        if not self._numeric:
            raise TypeError(f"{self.type.__name__} has non-numeric fields and cannot be summed")
        return self.type(*(x + y for x, y in zip(a, b)))

    def __repr__(self) -> str:
        return f"Struct({self.type.__name__}, size={self.size})"


class Packed(Codec):
    """The codec of a struct defined once as a ``codegen.layout.Layout`` (whose C the
    generator writes): a named tuple of its fields, packed at the layout's offsets (padding
    zeroed).  Arrays are tuples, arrays of ``__u8`` (and ``raw`` fields) bytes, nested
    structs named tuples of their own.

    >>> from ebplane.codegen.layout import Field, Layout
    >>> KEY = Packed(Layout("k", [Field("mac", "__u8", 6), Field("vlan", "__u16")]))
    >>> KEY.encode(KEY.type(b"\\x02" * 6, 7)).hex(), KEY.size
    ('0202020202020700', 8)
    """

    def __init__(self, layout):
        from ebplane.codegen.layout import SCALARS

        self.layout = layout
        self.size = layout.size
        # (a trailing array of symbolic length is not part of the codec)
        fixed = [f for f in layout.fields if not isinstance(f.count, str)]
        self.type = namedtuple(layout.name, [f.name for f in fixed])
        fmt, cur = "<", 0
        self._parts = []  # per field: (number of items it unpacks to, how to make the value)
        for f, off in zip(fixed, layout.offsets):
            if off > cur:
                fmt += f"{off - cur}x"
            n = f.count or 1
            if f.nested:
                inner = Packed(f.ctype)
                fmt += f"{f.ctype.size}s" * n
                self._parts.append((n, inner if not f.count else ("array", inner)))
            elif f.as_bytes:
                fmt += f"{f.size}s"
                self._parts.append((1, None))
            else:
                fmt += f"{n}{SCALARS[f.ctype][0]}"
                self._parts.append((n, None if not f.count else "array"))
            cur = off + f.size
        if self.size > cur:
            fmt += f"{self.size - cur}x"
        self._s = struct.Struct(fmt)
        assert self._s.size == self.size, (layout, self._s.size)
        self._numeric = all(not f.nested and not f.as_bytes for f in fixed)
        self._flat = all(how is None for _, how in self._parts)

    def encode(self, value) -> bytes:
        if isinstance(value, dict):
            value = self.type(**value)
        flat = []
        for v, (n, how) in zip(value, self._parts):
            if how is None:
                flat.append(v)
            elif how == "array":
                flat.extend(v)
            elif isinstance(how, tuple):
                flat.extend(how[1].encode(x) for x in v)
            else:
                flat.append(how.encode(v))
        return self._s.pack(*flat)

    def decode(self, data: bytes):
        flat = self._s.unpack_from(data)
        if self._flat:  # scalars and byte arrays only: the unpacked tuple is the value
            return self.type._make(flat)
        vals, i = [], 0
        for n, how in self._parts:
            if how is None:
                vals.append(flat[i])
            elif how == "array":
                vals.append(flat[i:i + n])
            elif isinstance(how, tuple):
                vals.append(tuple(how[1].decode(x) for x in flat[i:i + n]))
            else:
                vals.append(how.decode(flat[i]))
            i += n
        return self.type._make(vals)

    def add(self, a, b):
        if not self._numeric:
            raise TypeError(f"{self.layout.name} has non-numeric fields and cannot be summed")
        return self.type(*(tuple(p + q for p, q in zip(x, y)) if isinstance(x, tuple) else x + y
                           for x, y in zip(a, b)))

    def __repr__(self) -> str:
        return f"Packed({self.layout.name}, size={self.size})"


class CStruct(Codec):
    """A ``ctypes.Structure`` subclass as the value type."""

    def __init__(self, cls: type[ctypes.Structure]):
        self.cls = cls
        self.size = ctypes.sizeof(cls)

    def encode(self, value) -> bytes:
        return bytes(value)

    def decode(self, data: bytes):
        return self.cls.from_buffer_copy(bytes(data[: self.size]))

    def __repr__(self) -> str:
        return f"CStruct({self.cls.__name__})"


def as_codec(spec, size: int) -> Codec:
    """Accept a Codec, a ctypes Structure class, or None (raw bytes of ``size``)."""
    if spec is None:
        return Raw(size)
    if isinstance(spec, Codec):
        codec = spec
    elif isinstance(spec, type) and issubclass(spec, ctypes.Structure):
        codec = CStruct(spec)
    else:
        raise TypeError(f"not a codec: {spec!r}")
    if codec.size != size:
        raise ValueError(f"codec {codec!r} is {codec.size} bytes but the map's is {size}")
    return codec


# struct ebp_count of the generated programs (per-CPU packets, bytes), from its one
# definition (codegen.layout.COUNT, which the generator writes into each program)
COUNT = Packed(_layout.COUNT)
