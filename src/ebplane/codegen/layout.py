"""C struct layouts defined once, in Python.

A :class:`Layout` lists a struct's fields with their C types; the code generator writes the
C ``struct`` from it into the program (``Emit.struct``), and the control plane packs and
unpacks map keys and values with a codec made from the same object
(:class:`ebplane.kernel.codec.Packed`), at the offsets computed here by C's rules (each
field at a multiple of its alignment, the size a multiple of the largest alignment, as
clang lays out a struct for the BPF target).  One place to change a layout;
``tests/test_layouts.py`` compares these offsets with the compiled object's BTF.

>>> KEY = Layout("ebp_demo_key", [Field("mac", "__u8", 6), Field("vlan", "__u16")])
>>> KEY.size, KEY.offset("vlan")
(8, 6)
>>> print(KEY.c().expandtabs(8))
struct ebp_demo_key {
	__u8  mac[6];
	__u16 vlan;
};
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

# C scalar type -> (struct module code, size); alignment equals size on the BPF target
SCALARS: dict[str, tuple[str, int]] = {
    "__u8": ("B", 1), "__u16": ("H", 2), "__u32": ("I", 4), "__u64": ("Q", 8),
    "__s8": ("b", 1), "__s16": ("h", 2), "__s32": ("i", 4), "__s64": ("q", 8),
}


@dataclass(frozen=True)
class Field:
    """One member: ``ctype`` a scalar (``SCALARS``) or a nested :class:`Layout`; ``count``
    makes it an array (0: not an array; a string: a trailing array whose length is a C
    constant, outside the codec's fixed part, as a captured frame's bytes).  ``raw``: the
    control plane sees the member as bytes (addresses kept in ``__u32`` words); arrays of
    ``__u8`` are bytes anyway."""
    name: str
    ctype: Union[str, "Layout"]
    count: int | str = 0
    comment: str = ""
    raw: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.ctype, Layout) and self.ctype not in SCALARS:
            raise ValueError(f"field {self.name}: unknown C type {self.ctype!r}")

    @property
    def nested(self) -> bool:
        return isinstance(self.ctype, Layout)

    @property
    def elem_size(self) -> int:
        return self.ctype.size if self.nested else SCALARS[self.ctype][1]

    @property
    def align(self) -> int:
        return self.ctype.align if self.nested else SCALARS[self.ctype][1]

    @property
    def size(self) -> int:
        """Bytes of the member (a trailing array of symbolic length: 0)."""
        if isinstance(self.count, str):
            return 0
        return self.elem_size * (self.count or 1)

    @property
    def as_bytes(self) -> bool:
        return bool(self.count) and (self.raw or self.ctype in ("__u8", "__s8"))

    def decl(self) -> str:
        ctype = f"struct {self.ctype.name}" if self.nested else self.ctype
        dim = f"[{self.count}]" if self.count else ""
        return f"{ctype:<5} {self.name}{dim};"


class Layout:
    """A C struct: its name, fields (in order) and the offsets C gives them."""

    def __init__(self, name: str, fields: Sequence[Field], comment: str = ""):
        self.name = name
        self.fields = tuple(fields)
        self.comment = comment
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"struct {name}: a field name twice")
        for f in self.fields[:-1]:
            if isinstance(f.count, str):
                raise ValueError(f"struct {name}: {f.name}[{f.count}] must be the last field")
        offsets, off = [], 0
        for f in self.fields:
            off = -(-off // f.align) * f.align
            offsets.append(off)
            off += f.size
        self.offsets = tuple(offsets)
        self.align = max(f.align for f in self.fields)
        # sizeof of the struct; with a trailing array of symbolic length: the fixed part
        self.size = off if isinstance(self.fields[-1].count, str) else \
            -(-off // self.align) * self.align

    def offset(self, field: str) -> int:
        return self.offsets[[f.name for f in self.fields].index(field)]

    def nested(self) -> list["Layout"]:
        """The layouts this one contains, innermost first (each once)."""
        out: list[Layout] = []
        for f in self.fields:
            if f.nested:
                for n in f.ctype.nested() + [f.ctype]:
                    if n not in out:
                        out.append(n)
        return out

    def c(self) -> str:
        """The C definition (comments of the fields after them, aligned)."""
        decls = [f.decl() for f in self.fields]
        width = max(len(d) for d in decls)
        lines = [f"/* {self.comment} */"] if self.comment else []
        lines.append(f"struct {self.name} {{")
        for f, d in zip(self.fields, decls):
            lines.append(f"\t{d.ljust(width)}  /* {f.comment} */" if f.comment else f"\t{d}")
        lines.append("};")
        return "\n".join(lines)

    def flat_format(self) -> str:
        """The ``struct`` module format of the struct with every member flattened: scalars
        and array items in order, as numbers (nested structs inlined), padding as pad bytes.
        For packing many records at the speed of one ``struct.Struct`` call each, where
        :class:`~ebplane.kernel.codec.Packed`'s named tuples cost too much (the filter's
        boxes).

        >>> Layout("t", [Field("a", "__u8"), Field("b", "__u32", 2)]).flat_format()
        '<B3x2I'
        """
        fmt, cur = self._flat_parts(0)
        return "<" + fmt + (f"{self.size - cur}x" if self.size > cur else "")

    def _flat_parts(self, base: int) -> tuple[str, int]:
        fmt, cur = "", base
        for f, off in zip(self.fields, self.offsets):
            if isinstance(f.count, str):
                raise ValueError(f"struct {self.name}: {f.name}[{f.count}] has no fixed size")
            off += base
            if off > cur:
                fmt += f"{off - cur}x"
            for i in range(f.count or 1) if f.nested else ():
                inner, end = f.ctype._flat_parts(off + i * f.ctype.size)
                fmt += inner + (f"{off + (i + 1) * f.ctype.size - end}x"
                                if off + (i + 1) * f.ctype.size > end else "")
            if not f.nested:
                fmt += f"{f.count or ''}{SCALARS[f.ctype][0]}"
            cur = off + f.size
        return fmt, cur

    def numpy_dtype(self):
        """The struct as a numpy structured dtype (little-endian, the same offsets and
        size): for packing arrays of records at once (the filter's tree nodes)."""
        import numpy as np

        def one(f: Field):
            base = f.ctype.numpy_dtype() if f.nested else \
                np.dtype(f"<{'u' if f.ctype.startswith('__u') else 'i'}{f.elem_size}")
            return (base, (f.count,)) if f.count else base

        fixed = [(f, o) for f, o in zip(self.fields, self.offsets) if not isinstance(f.count, str)]
        return np.dtype({"names": [f.name for f, _ in fixed],
                         "formats": [one(f) for f, _ in fixed],
                         "offsets": [o for _, o in fixed], "itemsize": self.size})

    def to_dict(self) -> dict:
        """Size and offsets (the manifest's record of a type)."""
        return {"size": self.size,
                "fields": {f.name: {"offset": o, "size": f.size} for f, o
                           in zip(self.fields, self.offsets)}}

    def __eq__(self, other) -> bool:
        return isinstance(other, Layout) and (self.name, self.fields) == (other.name, other.fields)

    def __hash__(self) -> int:
        return hash((self.name, self.fields))

    def __repr__(self) -> str:
        return f"Layout({self.name}, size={self.size})"


# one slot of every counters map (PERCPU_ARRAY): what ebp_count() in codegen/bpf/ebplane.h
# bumps; generated into each program ahead of the stage headers, decoded by
# ``kernel.codec.COUNT``
COUNT = Layout("ebp_count", [Field("packets", "__u64"), Field("bytes", "__u64")],
               "per-CPU packet/byte counter")
