"""BPF maps: lookup/update/delete/iterate, batches, per-CPU values, pins.

A :class:`MapSpec` describes a map (type, sizes, capacity, flags) without a kernel object:
an opened ``BpfObject`` has one per map, and ``MapSpec.compatible`` says whether an
existing (pinned) map can stand in for it.  A :class:`Map` owns one fd (an ``FD``).
Keys and values go through codecs (``ebplane.kernel.codec``);
without one they are raw bytes of the map's key/value size.  Per-CPU maps return a list
with one value per possible CPU from :meth:`Map.lookup`, and the sum from
:meth:`Map.lookup_sum`.
"""

from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ebplane.errors import KeyNotFound, NotSupported, kernel_error
from ebplane.kernel import bpffs
from ebplane.kernel.codec import Codec, as_codec
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import (BPF_ANY, MAP_TYPE_NAMES, MAP_TYPES, PERCPU_MAP_TYPES,
                                   MapBatchOpts, MapCreateOpts, MapInfo, lib,
                                   num_possible_cpus, obj_info)

# map_flags bits by name (uapi bpf.h), for messages
MAP_FLAG_NAMES = {1 << 0: "no_prealloc", 1 << 1: "no_common_lru", 1 << 2: "numa_node",
                  1 << 3: "rdonly", 1 << 4: "wronly", 1 << 5: "stack_build_id",
                  1 << 6: "zero_seed", 1 << 7: "rdonly_prog", 1 << 8: "wronly_prog",
                  1 << 9: "clone", 1 << 10: "mmapable", 1 << 11: "preserve_elems",
                  1 << 12: "inner_map", 1 << 13: "link", 1 << 14: "path_fd",
                  1 << 15: "vtype_btf_obj_fd", 1 << 16: "token_fd", 1 << 17: "segv_on_fault",
                  1 << 18: "no_user_conv"}


def flag_names(flags: int) -> str:
    """``no_prealloc|rdonly_prog`` for a map_flags value (``0`` when none)."""
    names = [n for bit, n in MAP_FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(MAP_FLAG_NAMES)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


@dataclass(frozen=True)
class MapSpec:
    """What a map is, apart from any kernel object: read from an opened BPF object
    (``BpfObject.map_specs``) or from a live map (``Map.spec``)."""
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0

    @property
    def type_name(self) -> str:
        return MAP_TYPE_NAMES.get(self.type, str(self.type))

    def compatible(self, have: "MapSpec | Map") -> str | None:
        """None when the existing map ``have`` can serve as this map, else why not
        (``"value size 8 -> 16, flags 0 -> no_prealloc"``: what it is -> what is wanted).
        Type, key and value size, capacity and flags must all be equal."""
        have = have.spec if isinstance(have, Map) else have
        diffs = []
        if have.type != self.type:
            diffs.append(f"type {have.type_name} -> {self.type_name}")
        for what, attr in (("key size", "key_size"), ("value size", "value_size"),
                           ("capacity", "max_entries")):
            h, w = getattr(have, attr), getattr(self, attr)
            if h != w:
                diffs.append(f"{what} {h} -> {w}")
        if have.flags != self.flags:
            diffs.append(f"flags {flag_names(have.flags)} -> {flag_names(self.flags)}")
        return ", ".join(diffs) or None


def _round8(n: int) -> int:
    return (n + 7) & ~7


class Map:
    """One BPF map, owning its fd (an :class:`FD`, or an int it takes over)."""

    def __init__(self, fd: int | FD, *, name: str | None = None, key=None, value=None):
        self._fd = fd if isinstance(fd, FD) else FD(fd)
        info = obj_info(self.fd, MapInfo)
        self.id = info.id
        self.type = info.type
        self.type_name = MAP_TYPE_NAMES.get(info.type, str(info.type))
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.map_flags
        self.name = name or info.name.decode()
        self.percpu = info.type in PERCPU_MAP_TYPES
        self.ncpus = num_possible_cpus() if self.percpu else 1
        self._slot = _round8(self.value_size) if self.percpu else self.value_size
        self.key_codec: Codec = as_codec(key, self.key_size)
        self.value_codec: Codec = as_codec(value, self.value_size)

    @property
    def fd(self) -> int:
        """The fd number (-1 once closed)."""
        return self._fd._fd

    @property
    def spec(self) -> MapSpec:
        return MapSpec(self.name, self.type, self.key_size, self.value_size, self.max_entries,
                       self.flags)

    # -- construction -------------------------------------------------------------
    @classmethod
    def create(cls, map_type: str | int, key_size: int, value_size: int, max_entries: int, *,
               name: str = "", flags: int = 0, inner_map_fd: int | None = None,
               key=None, value=None) -> "Map":
        """Create a map outside any object (inner maps, tests)."""
        t = MAP_TYPES[map_type] if isinstance(map_type, str) else map_type
        opts = MapCreateOpts(sz=ctypes.sizeof(MapCreateOpts), map_flags=flags,
                             inner_map_fd=inner_map_fd or 0)
        fd = lib.bpf_map_create(t, name.encode()[:15] or None, key_size, value_size,
                                max_entries, ctypes.byref(opts))
        if fd < 0:
            raise kernel_error(f"create {MAP_TYPE_NAMES.get(t, t)} map '{name}'", -fd)
        return cls(fd, name=name, key=key, value=value)

    @classmethod
    def from_pin(cls, path: str | Path, *, key=None, value=None) -> "Map":
        return cls(bpffs.get_pinned(path), key=key, value=value)

    @classmethod
    def from_id(cls, map_id: int, *, key=None, value=None) -> "Map":
        fd = lib.bpf_map_get_fd_by_id(map_id)
        if fd < 0:
            raise kernel_error(f"open map id {map_id}", -fd)
        return cls(fd, key=key, value=value)

    def with_codecs(self, key=None, value=None) -> "Map":
        """Set the codecs (returns self, for chaining)."""
        self.key_codec = as_codec(key, self.key_size)
        self.value_codec = as_codec(value, self.value_size)
        return self

    def pin(self, path: str | Path) -> Path:
        return bpffs.pin_fd(self.fd, path)

    def close(self) -> None:
        self._fd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<Map {self.name} {self.type_name} fd={self.fd} id={self.id}>"

    # -- single elements ----------------------------------------------------------
    def _k(self, key) -> ctypes.Array:
        return ctypes.create_string_buffer(self.key_codec.encode(key), self.key_size)

    def _vbuf(self, count: int = 1) -> ctypes.Array:
        return ctypes.create_string_buffer(self._slot * self.ncpus * count)

    def _encode_value(self, value) -> bytes:
        if not self.percpu:
            return self.value_codec.encode(value)
        values = list(value) if isinstance(value, (list, tuple)) and len(value) == self.ncpus \
            and not hasattr(value, "_fields") else [value] * self.ncpus
        pad = b"\0" * (self._slot - self.value_size)
        return b"".join(self.value_codec.encode(v) + pad for v in values)

    def _decode_value(self, raw: bytes):
        if not self.percpu:
            return self.value_codec.decode(raw)
        return [self.value_codec.decode(raw[i * self._slot:(i + 1) * self._slot])
                for i in range(self.ncpus)]

    def lookup(self, key):
        """The value (per-CPU maps: a list, one per CPU); KeyNotFound when absent."""
        buf = self._vbuf()
        ret = lib.bpf_map_lookup_elem(self.fd, self._k(key), buf)
        if ret < 0:
            if -ret == errno.ENOENT:
                raise KeyNotFound(f"key {key!r} not found in map '{self.name}'")
            raise kernel_error(f"lookup in map '{self.name}'", -ret)
        return self._decode_value(buf.raw)

    def get(self, key, default=None):
        try:
            return self.lookup(key)
        except KeyNotFound:
            return default

    def lookup_sum(self, key):
        """Per-CPU maps: the values of all CPUs added up."""
        values = self.lookup(key)
        if not self.percpu:
            return values
        total = values[0]
        for v in values[1:]:
            total = self.value_codec.add(total, v)
        return total

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        vb = self._encode_value(value)
        ret = lib.bpf_map_update_elem(self.fd, self._k(key), vb, flags)
        if ret < 0:
            raise kernel_error(f"update map '{self.name}'", -ret,
                               hint="the map is full: raise its capacity" if -ret == errno.E2BIG
                               else None)

    def delete(self, key) -> None:
        ret = lib.bpf_map_delete_elem(self.fd, self._k(key))
        if ret < 0:
            if -ret == errno.ENOENT:
                raise KeyNotFound(f"key {key!r} not found in map '{self.name}'")
            raise kernel_error(f"delete from map '{self.name}'", -ret)

    def __getitem__(self, key):
        return self.lookup(key)

    def __setitem__(self, key, value):
        self.update(key, value)

    def __delitem__(self, key):
        self.delete(key)

    def __contains__(self, key) -> bool:
        buf = self._vbuf()
        return lib.bpf_map_lookup_elem(self.fd, self._k(key), buf) == 0

    # -- iteration ----------------------------------------------------------------
    def raw_keys(self) -> Iterator[bytes]:
        cur = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = lib.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret < 0:
                if -ret == errno.ENOENT:
                    return
                raise kernel_error(f"iterate map '{self.name}'", -ret)
            yield nxt.raw
            cur = ctypes.create_string_buffer(nxt.raw, self.key_size)

    def keys(self) -> Iterator[Any]:
        for k in self.raw_keys():
            yield self.key_codec.decode(k)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """All entries; uses a batch lookup where the kernel offers it."""
        try:
            yield from self.lookup_batch()
            return
        except NotSupported:
            pass
        for k in self.raw_keys():
            buf = self._vbuf()
            if lib.bpf_map_lookup_elem(self.fd, k, buf) == 0:
                yield self.key_codec.decode(k), self._decode_value(buf.raw)

    def __iter__(self):
        return self.keys()

    def __len__(self) -> int:
        return sum(1 for _ in self.raw_keys())

    # -- batches ------------------------------------------------------------------
    def _batch_opts(self, elem_flags: int = 0) -> MapBatchOpts:
        return MapBatchOpts(sz=ctypes.sizeof(MapBatchOpts), elem_flags=elem_flags, flags=0)

    def lookup_batch(self, chunk: int = 4096) -> Iterator[tuple[Any, Any]]:
        """All entries, ``chunk`` per syscall."""
        for k, v in self._lookup_batch_raw(chunk):
            yield self.key_codec.decode(k), self._decode_value(v)

    def raw_keys_batch(self, chunk: int = 4096) -> list[bytes]:
        """All keys as bytes, by batch where the kernel offers it (fast on big hashes)."""
        try:
            return [k for k, _ in self._lookup_batch_raw(chunk)]
        except NotSupported:
            return list(self.raw_keys())

    def _lookup_batch_raw(self, chunk: int) -> Iterator[tuple[bytes, bytes]]:
        keys = ctypes.create_string_buffer(self.key_size * chunk)
        vals = self._vbuf(chunk)
        in_b = None
        out_b = ctypes.create_string_buffer(max(self.key_size, 8))
        vsz = self._slot * self.ncpus
        while True:
            count = ctypes.c_uint32(chunk)
            ret = lib.bpf_map_lookup_batch(self.fd, in_b, out_b, keys, vals, ctypes.byref(count),
                                           ctypes.byref(self._batch_opts()))
            err = -ret if ret < 0 else 0
            if err == errno.ENOSPC and count.value == 0:
                # one hash bucket holds more entries than ``chunk``: retry with room for it
                chunk *= 2
                keys = ctypes.create_string_buffer(self.key_size * chunk)
                vals = self._vbuf(chunk)
                continue
            if err and err != errno.ENOENT:
                if err in (errno.EINVAL, 524, errno.EOPNOTSUPP) and in_b is None:
                    raise NotSupported(f"batch lookup on {self.type_name} map", err=err)
                raise kernel_error(f"batch lookup in map '{self.name}'", err)
            kr, vr = keys.raw, vals.raw
            for i in range(count.value):
                yield kr[i * self.key_size:(i + 1) * self.key_size], vr[i * vsz:(i + 1) * vsz]
            if err == errno.ENOENT:
                return
            in_b = ctypes.create_string_buffer(out_b.raw, len(out_b))

    def update_batch(self, keys: Sequence | bytes, values: Sequence | bytes, *,
                     flags: int = BPF_ANY, chunk: int = 65536) -> int:
        """Write many entries, ``chunk`` per syscall.  ``keys``/``values`` are sequences of
        Python values, or already packed bytes (``n * key_size``, ``n * value_size``)."""
        kb = keys if isinstance(keys, (bytes, bytearray)) else \
            b"".join(self.key_codec.encode(k) for k in keys)
        vb = values if isinstance(values, (bytes, bytearray)) else \
            b"".join(self._encode_value(v) for v in values)
        vsz = self._slot * self.ncpus
        n = len(kb) // self.key_size
        if len(vb) != n * vsz:
            raise ValueError(f"{n} keys but {len(vb) // vsz} values")
        done = 0
        while done < n:
            m = min(chunk, n - done)
            count = ctypes.c_uint32(m)
            kbuf = ctypes.create_string_buffer(bytes(kb[done * self.key_size:(done + m) * self.key_size]))
            vbuf = ctypes.create_string_buffer(bytes(vb[done * vsz:(done + m) * vsz]))
            ret = lib.bpf_map_update_batch(self.fd, kbuf, vbuf, ctypes.byref(count),
                                           ctypes.byref(self._batch_opts(flags)))
            if ret < 0:
                if -ret in (errno.EINVAL, 524, errno.EOPNOTSUPP) and count.value == 0 and done == 0 \
                        and self.type_name not in ("hash", "array", "percpu_hash", "percpu_array",
                                                   "lru_hash", "lru_percpu_hash"):
                    # map types without batch ops: one syscall per entry
                    for i in range(n):
                        self.update_raw(kb[i * self.key_size:(i + 1) * self.key_size],
                                        vb[i * vsz:(i + 1) * vsz], flags)
                    return n
                raise kernel_error(f"batch update of map '{self.name}' ({done + count.value} of "
                                   f"{n} written)", -ret,
                                   hint="the map is full: raise its capacity"
                                   if -ret in (errno.E2BIG, errno.ENOSPC) else None)
            done += m
        return n

    def update_raw(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        ret = lib.bpf_map_update_elem(self.fd, bytes(key), bytes(value), flags)
        if ret < 0:
            raise kernel_error(f"update map '{self.name}'", -ret)

    def delete_batch(self, keys: Sequence | bytes, *, chunk: int = 65536) -> int:
        """Delete many entries (absent keys are an error, as in the kernel)."""
        kb = keys if isinstance(keys, (bytes, bytearray)) else \
            b"".join(self.key_codec.encode(k) for k in keys)
        n = len(kb) // self.key_size
        done = 0
        while done < n:
            m = min(chunk, n - done)
            count = ctypes.c_uint32(m)
            kbuf = ctypes.create_string_buffer(bytes(kb[done * self.key_size:(done + m) * self.key_size]))
            ret = lib.bpf_map_delete_batch(self.fd, kbuf, ctypes.byref(count),
                                           ctypes.byref(self._batch_opts()))
            if ret < 0:
                if -ret == errno.ENOENT:
                    raise KeyNotFound(f"batch delete in map '{self.name}': key "
                                      f"{done + count.value} of {n} not found")
                raise kernel_error(f"batch delete in map '{self.name}'", -ret)
            done += m
        return n

    def clear(self) -> int:
        """Delete every entry (not for arrays: they cannot lose entries)."""
        keys = b"".join(self.raw_keys())
        return self.delete_batch(keys) if keys else 0


_barrier: tuple[Map, Map] | None = None


def prepare_rcu_barrier() -> tuple[Map, Map]:
    """Create the maps :func:`rcu_barrier` updates, if not yet done.  A change that must
    wait for a grace period calls this before it writes anything: without the privileges
    to create a map it then fails (PermissionDenied) before the first write, not after a
    half-made change."""
    global _barrier
    if _barrier is None:
        inner = Map.create("array", 4, 4, 1, name="ebp_rcu_inner")
        outer = Map.create("array_of_maps", 4, 4, 1, name="ebp_rcu_outer", inner_map_fd=inner.fd)
        _barrier = (inner, outer)
    return _barrier


def rcu_barrier() -> None:
    """Wait until every BPF program that might have read a map before this call has finished.

    The kernel calls synchronize_rcu() after an update of a map-in-map (so that userspace
    knows no program still uses the inner map it replaced); updating a private one-slot
    ARRAY_OF_MAPS is the cheapest way to ask for exactly that grace period.
    """
    inner, outer = prepare_rcu_barrier()
    outer.update_raw((0).to_bytes(4, "little"), inner.fd.to_bytes(4, "little"))
