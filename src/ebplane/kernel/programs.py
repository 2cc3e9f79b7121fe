"""BPF objects and programs: open an ELF (file or memory), load it, run programs on packets
(BPF_PROG_TEST_RUN), read their statistics.

The description is separate from the loaded object, as libbpf's open/load split has it:
an :class:`ObjectSpec` is an opened ELF (its maps as :class:`~ebplane.kernel.maps.MapSpec`,
its programs as :class:`ProgramSpec`), still adjustable (capacities, program types,
autoload, pin paths, reuse of existing maps); :meth:`BpfObject.load` puts it into the
kernel.  ``BpfObject.open(path)`` / ``open_bytes(elf)`` wrap a fresh spec.

Loads ask for no verifier log: building one costs time and memory on every load.  Only
when a load fails is the spec opened again and loaded with a log buffer (256 KiB, grown
while the kernel says the log did not fit, up to 16 MiB), so that :class:`VerifierError`
can say why; a log that did not fit even then is flagged ``truncated``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass, replace
from pathlib import Path

from ebplane.errors import NotFound, UsageError, VerifierError, kernel_error
from ebplane.kernel import bpffs
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import (PROG_TYPE_NAMES, ObjectOpenOpts, ProgInfo, SkBuff,
                                   TestRunOpts, XdpMd, check, check_ptr, lib, obj_info)
from ebplane.kernel.maps import Map, MapSpec
from ebplane.kernel.verifier import summarize

__all__ = ["BpfObject", "ObjectSpec", "Program", "ProgramSpec", "RunResult", "SkBuff", "XdpMd",
           "BPF_F_TEST_RUN_ON_CPU", "BPF_F_TEST_XDP_LIVE_FRAMES"]

LOG_SIZE_FIRST = 256 * 1024        # the first log buffer of a failed load's retry
LOG_SIZE_MAX = 16 * 1024 * 1024    # the largest: libbpf's own cap (UINT32_MAX >> 8)

# return codes, by program type
XDP_ACTIONS = {0: "XDP_ABORTED", 1: "XDP_DROP", 2: "XDP_PASS", 3: "XDP_TX", 4: "XDP_REDIRECT"}
TC_ACTIONS = {-1: "TC_ACT_UNSPEC", 0: "TC_ACT_OK", 1: "TC_ACT_RECLASSIFY", 2: "TC_ACT_SHOT",
              3: "TC_ACT_PIPE", 4: "TC_ACT_STOLEN", 5: "TC_ACT_QUEUED", 6: "TC_ACT_REPEAT",
              7: "TC_ACT_REDIRECT"}

BPF_F_TEST_RUN_ON_CPU = 1
BPF_F_TEST_XDP_LIVE_FRAMES = 2


@dataclass
class RunResult:
    """What one BPF_PROG_TEST_RUN returned."""
    retval: int
    verdict: str
    data: bytes
    duration_ns: int
    ctx: bytes | None = None


@contextlib.contextmanager
def _on_cpu(cpu: int):
    """Pin the calling thread to ``cpu`` for the ``with`` body, then restore its affinity."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {cpu})
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot run on CPU {cpu}: {e}",
                         hint=f"usable CPUs: {sorted(before)}") from None
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Program:
    """A loaded program, owning its fd (an :class:`FD`, or an int it takes over): from an
    object (a dup of libbpf's fd, closed with the object), a pin or an id."""

    def __init__(self, fd: int | FD, name: str | None = None):
        self._fd = fd if isinstance(fd, FD) else FD(fd)
        info = obj_info(self.fd, ProgInfo)
        self.id = info.id
        self.type = info.type
        self.type_name = PROG_TYPE_NAMES.get(info.type, str(info.type))
        self.name = name or info.name.decode()

    @property
    def fd(self) -> int:
        """The fd number (-1 once closed)."""
        return self._fd._fd

    @classmethod
    def from_pin(cls, path: str | Path) -> "Program":
        return cls(bpffs.get_pinned(path))

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise kernel_error(f"open program id {prog_id}", -fd)
        return cls(fd)

    def info(self) -> dict:
        """Kernel facts: ids, sizes, verified instructions, run statistics (when enabled)."""
        i = obj_info(self.fd, ProgInfo)
        return {"id": i.id, "name": i.name.decode(), "type": self.type_name,
                "tag": bytes(i.tag).hex(), "xlated_bytes": i.xlated_prog_len,
                "jited_bytes": i.jited_prog_len, "insns": i.xlated_prog_len // 8,
                "verified_insns": i.verified_insns, "run_cnt": i.run_cnt,
                "run_time_ns": i.run_time_ns}

    def pin(self, path: str | Path) -> Path:
        return bpffs.pin_fd(self.fd, path)

    def verdict_name(self, retval: int) -> str:
        if self.type_name == "xdp":
            return XDP_ACTIONS.get(retval, f"XDP_{retval}")
        if self.type_name in ("sched_cls", "sched_act"):
            return TC_ACTIONS.get(ctypes.c_int32(retval).value, f"TC_{retval}")
        return str(retval)

    def test_run(self, data: bytes, *, repeat: int = 1, ctx: bytes | ctypes.Structure | None = None,
                 out_size: int | None = None, flags: int = 0, cpu: int = 0,
                 batch_size: int = 0) -> RunResult:
        """Run the program on one packet with BPF_PROG_TEST_RUN.

        ``repeat`` > 1 gives a stable ``duration_ns`` (kernel-measured, per run); every run
        sees the packet as the previous run left it (the kernel does not restore it, so
        rewrites accumulate).  ``ctx`` is an ``XdpMd`` / ``SkBuff`` (or raw bytes) passed as
        ctx_in, and read back as ctx_out.
        ``flags=BPF_F_TEST_RUN_ON_CPU`` runs on CPU ``cpu``: the kernel takes that flag only
        for raw tracepoints, and runs the other types on the calling thread's CPU, so for
        them the thread is pinned to ``cpu`` for the call (per-CPU maps see that CPU's slot).
        """
        if len(data) < 14:
            raise UsageError(f"test_run needs at least an Ethernet header (14 bytes), "
                             f"got {len(data)}", hint="pad the packet to 14 bytes or more")
        data = bytes(data)
        pin_cpu = None
        if flags & BPF_F_TEST_RUN_ON_CPU and self.type_name != "raw_tracepoint":
            # only raw tracepoints take the flag; XDP, TC... run on the caller's CPU
            flags &= ~BPF_F_TEST_RUN_ON_CPU
            pin_cpu, cpu = cpu, 0
        out = ctypes.create_string_buffer(out_size or (len(data) + 256))
        inb = ctypes.create_string_buffer(data, len(data))
        opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.cast(inb, ctypes.c_void_p),
                           data_out=ctypes.cast(out, ctypes.c_void_p), data_size_in=len(data),
                           data_size_out=len(out), repeat=repeat, flags=flags, cpu=cpu,
                           batch_size=batch_size)
        ctx_out = None
        if flags & BPF_F_TEST_XDP_LIVE_FRAMES:
            opts.data_out = None
            opts.data_size_out = 0
        if ctx is not None:
            raw = bytes(ctx)
            ctx_in = ctypes.create_string_buffer(raw, len(raw))
            ctx_out = ctypes.create_string_buffer(len(raw))
            opts.ctx_in = ctypes.cast(ctx_in, ctypes.c_void_p)
            opts.ctx_size_in = len(raw)
            if not flags & BPF_F_TEST_XDP_LIVE_FRAMES:
                opts.ctx_out = ctypes.cast(ctx_out, ctypes.c_void_p)
                opts.ctx_size_out = len(raw)
        if pin_cpu is None:
            ret = lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        else:
            with _on_cpu(pin_cpu):
                ret = lib.bpf_prog_test_run_opts(self.fd, ctypes.byref(opts))
        if ret < 0:
            hint = None
            if -ret == errno.ENOSPC:
                hint = "the output buffer is smaller than the packet: pass a larger out_size"
            elif -ret == errno.ENODEV:
                hint = "ctx ingress_ifindex must name an interface of the caller's namespace"
            raise kernel_error(f"test_run of program '{self.name}'", -ret, hint=hint)
        got_ctx = None
        if ctx is not None and opts.ctx_size_out:
            got_ctx = ctx_out.raw[: opts.ctx_size_out]
        return RunResult(retval=opts.retval, verdict=self.verdict_name(opts.retval),
                         data=out.raw[: opts.data_size_out], duration_ns=opts.duration, ctx=got_ctx)

    def close(self) -> None:
        self._fd.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.type_name} id={self.id}>"


@dataclass(frozen=True)
class ProgramSpec:
    """A program of an opened object: its name, ELF section, type and whether it loads."""
    name: str
    section: str
    type: int
    autoload: bool = True

    @property
    def type_name(self) -> str:
        return PROG_TYPE_NAMES.get(self.type, str(self.type))


class _Closing:
    """Closed as a context manager, or when garbage-collected (close() is idempotent)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class ObjectSpec(_Closing):
    """An opened BPF ELF object: what it will create (``maps``, ``programs``) and the
    adjustments made before loading it.

    libbpf keeps the opened object until it is loaded (:meth:`BpfObject.load` takes it
    over).  The spec remembers its source and every adjustment, so it can be opened again
    as it stands (a failed load is retried that way, with a verifier log).
    """

    def __init__(self, source: Path | bytes, name: str):
        self.source = source
        self.name = name
        self._reuse: dict[str, FD] = {}        # map name -> fd of the map to use instead
        self._unpinned: set[str] = set()       # maps whose pin path is cleared
        self._ptr, self._buf = self._open()
        self.maps: dict[str, MapSpec] = {}
        self.programs: dict[str, ProgramSpec] = {}
        for m in self._each("map"):
            name = lib.bpf_map__name(m).decode()
            self.maps[name] = MapSpec(name, lib.bpf_map__type(m), lib.bpf_map__key_size(m),
                                      lib.bpf_map__value_size(m), lib.bpf_map__max_entries(m),
                                      lib.bpf_map__map_flags(m))
        for p in self._each("program"):
            name = lib.bpf_program__name(p).decode()
            self.programs[name] = ProgramSpec(name, lib.bpf_program__section_name(p).decode(),
                                              lib.bpf_program__type(p))

    @classmethod
    def open(cls, path: str | Path) -> "ObjectSpec":
        path = Path(path)
        if not path.exists():
            raise NotFound(f"BPF object {path} does not exist")
        return cls(path, path.stem)

    @classmethod
    def from_bytes(cls, elf: bytes, name: str = "obj") -> "ObjectSpec":
        return cls(bytes(elf), name)

    # -- libbpf's opened object ------------------------------------------------------
    def _open(self) -> tuple[int, ctypes.Array | None]:
        """A fresh libbpf object of the source (not yet adjusted); (pointer, buffer)."""
        if isinstance(self.source, Path):
            ptr = check_ptr(lib.bpf_object__open_file(str(self.source).encode(), None),
                            f"open {self.source}", hint="is it a BPF ELF object (clang -target bpf)?")
            return ptr, None
        # open_mem: libbpf keeps pointing at the caller's bytes until load
        buf = ctypes.create_string_buffer(self.source, len(self.source))
        opts = ObjectOpenOpts(sz=ctypes.sizeof(ObjectOpenOpts), object_name=self.name.encode())
        ptr = check_ptr(lib.bpf_object__open_mem(buf, len(self.source), ctypes.byref(opts)),
                        f"open BPF object '{self.name}' from memory",
                        hint="is it a BPF ELF object (clang -target bpf)?")
        return ptr, buf

    def _each(self, kind: str, ptr: int | None = None):
        nxt = lib.bpf_object__next_map if kind == "map" else lib.bpf_object__next_program
        ptr = ptr or self._ptr
        cur = None
        while True:
            cur = nxt(ptr, cur)
            if not cur:
                return
            yield cur

    def _find(self, kind: str, name: str, ptr: int | None = None) -> int:
        names = self.maps if kind == "map" else self.programs
        if name not in names:
            raise NotFound(f"object '{self.name}' has no {kind} '{name}' "
                           f"({kind}s: {', '.join(sorted(names)) or 'none'})")
        get_name = lib.bpf_map__name if kind == "map" else lib.bpf_program__name
        for p in self._each(kind, ptr):
            if get_name(p).decode() == name:
                return p
        raise NotFound(f"object '{self.name}' lost its {kind} '{name}'")

    def _require_open(self) -> int:
        if not self._ptr:
            raise UsageError(f"object '{self.name}' is loaded (or closed): its spec can no "
                             f"longer be adjusted", hint="adjust the spec before load()")
        return self._ptr

    def _apply(self, ptr: int) -> None:
        """Make the libbpf object ``ptr`` match the adjustments of this spec."""
        for name, ms in self.maps.items():
            m = self._find("map", name, ptr)
            if lib.bpf_map__max_entries(m) != ms.max_entries:
                check(lib.bpf_map__set_max_entries(m, ms.max_entries),
                      f"set max_entries of map '{name}'")
            if name in self._unpinned:
                check(lib.bpf_map__set_pin_path(m, None), f"clear pin path of map '{name}'")
            if name in self._reuse:
                check(lib.bpf_map__reuse_fd(m, int(self._reuse[name])),
                      f"reuse fd {int(self._reuse[name])} for map '{name}'")
        for name, ps in self.programs.items():
            p = self._find("program", name, ptr)
            if lib.bpf_program__type(p) != ps.type:
                check(lib.bpf_program__set_type(p, ps.type), f"set type of program '{name}'")
            check(lib.bpf_program__set_autoload(p, ps.autoload),
                  f"set autoload of program '{name}'")

    # -- adjustments before load -----------------------------------------------------
    def set_max_entries(self, map_name: str, n: int) -> None:
        ptr = self._require_open()
        check(lib.bpf_map__set_max_entries(self._find("map", map_name, ptr), n),
              f"set max_entries of map '{map_name}'")
        self.maps[map_name] = replace(self.maps[map_name], max_entries=n)

    def reuse_map(self, map_name: str, fd: int | FD) -> None:
        """Use an existing map (e.g. from a pin) instead of creating one at load.  The spec
        keeps its own dup of ``fd`` until it is loaded or closed; the caller keeps ``fd``."""
        ptr = self._require_open()
        mine = FD(os.dup(int(fd)))
        try:
            check(lib.bpf_map__reuse_fd(self._find("map", map_name, ptr), int(mine)),
                  f"reuse fd {int(fd)} for map '{map_name}'")
        except BaseException:
            mine.close()
            raise
        old = self._reuse.pop(map_name, None)
        if old is not None:
            old.close()
        self._reuse[map_name] = mine

    def clear_pin_path(self, map_name: str | None = None) -> None:
        """Do not pin (nor reuse a pin of) ``map_name``, or of every map when None."""
        ptr = self._require_open()
        for name in [map_name] if map_name else list(self.maps):
            check(lib.bpf_map__set_pin_path(self._find("map", name, ptr), None),
                  f"clear pin path of map '{name}'")
            self._unpinned.add(name)

    def set_program_type(self, prog_name: str, prog_type: int) -> None:
        ptr = self._require_open()
        check(lib.bpf_program__set_type(self._find("program", prog_name, ptr), prog_type),
              f"set type of program '{prog_name}'")
        self.programs[prog_name] = replace(self.programs[prog_name], type=prog_type)

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        ptr = self._require_open()
        check(lib.bpf_program__set_autoload(self._find("program", prog_name, ptr), autoload),
              f"set autoload of program '{prog_name}'")
        self.programs[prog_name] = replace(self.programs[prog_name], autoload=autoload)

    # -- load ------------------------------------------------------------------------
    def _take(self) -> tuple[int, ctypes.Array | None]:
        """Hand libbpf's opened object to the loader (the spec can then not change)."""
        ptr, buf = self._require_open(), self._buf
        self._ptr, self._buf = 0, None
        return ptr, buf

    def verifier_error(self, err: int) -> VerifierError | None:
        """Open the spec again, load it with a verifier log, and return the error that says
        why the load fails (None when it fails without a program to blame, or loads).

        The log buffer starts at 256 KiB and grows fourfold while the kernel answers ENOSPC
        (the log did not fit) up to 16 MiB; past that the kernel's rotating log holds the
        last part, and the error is flagged ``truncated``."""
        size = LOG_SIZE_FIRST
        while True:
            ptr, _buf = self._open()
            try:
                self._apply(ptr)
                logs: dict[str, ctypes.Array] = {}
                for p in self._each("program", ptr):
                    name = lib.bpf_program__name(p).decode()
                    if self.programs[name].autoload:
                        logs[name] = ctypes.create_string_buffer(size)
                        lib.bpf_program__set_log_buf(p, logs[name], size)
                        lib.bpf_program__set_log_level(p, 1)
                ret = lib.bpf_object__load(ptr)
                if ret >= 0:
                    return None  # loads now: nothing to blame (a transient failure)
                failed = [n for n in logs
                          if lib.bpf_program__fd(self._find("program", n, ptr)) < 0
                          and logs[n].value.strip()]
            finally:
                lib.bpf_object__close(ptr)
            if not failed:
                return None  # refused before any program reached the verifier (maps...)
            if -ret == errno.ENOSPC and size < LOG_SIZE_MAX:
                size = min(size * 4, LOG_SIZE_MAX)
                continue
            name = failed[0]
            text = logs[name].value.decode(errors="replace")
            summary, source = summarize(text)
            return VerifierError(name, text, err=err, summary=summary, source=source,
                                 truncated=-ret == errno.ENOSPC)

    def close(self) -> None:
        """Free libbpf's opened object (when not loaded) and the fds of reused maps."""
        if self._ptr:
            lib.bpf_object__close(self._ptr)
            self._ptr, self._buf = 0, None
        for fd in self._reuse.values():
            fd.close()
        self._reuse.clear()


class BpfObject(_Closing):
    """A BPF ELF object: opened (its :class:`ObjectSpec` can still be adjusted), then loaded.

    The loaded object's ``programs`` and ``maps`` own dups of libbpf's fds and are closed
    with the object.

    >>> with BpfObject.open(path) as obj:          # doctest: +SKIP
    ...     obj.load()
    ...     obj.programs["xdp_main"].test_run(pkt)
    """

    def __init__(self, spec: ObjectSpec):
        self.spec = spec
        self.name = spec.name
        self.loaded = False
        self._ptr = 0
        self._buf = None
        self.programs: dict[str, Program] = {}
        self.maps: dict[str, Map] = {}

    @classmethod
    def open(cls, path: str | Path) -> "BpfObject":
        return cls(ObjectSpec.open(path))

    @classmethod
    def open_bytes(cls, elf: bytes, name: str = "obj") -> "BpfObject":
        return cls(ObjectSpec.from_bytes(elf, name))

    # -- the spec, before load ------------------------------------------------------
    @property
    def map_specs(self) -> dict[str, MapSpec]:
        return self.spec.maps

    @property
    def program_specs(self) -> dict[str, ProgramSpec]:
        return self.spec.programs

    def set_max_entries(self, map_name: str, n: int) -> None:
        self.spec.set_max_entries(map_name, n)

    def reuse_map(self, map_name: str, fd: int | FD) -> None:
        """Use an existing map (e.g. from a pin) instead of creating one at load."""
        self.spec.reuse_map(map_name, fd)

    def clear_pin_path(self, map_name: str | None = None) -> None:
        self.spec.clear_pin_path(map_name)

    def set_program_type(self, prog_name: str, prog_type: int) -> None:
        self.spec.set_program_type(prog_name, prog_type)

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        self.spec.set_autoload(prog_name, autoload)

    # -- load --------------------------------------------------------------------------
    def load(self) -> "BpfObject":
        """Load all maps and programs; a verifier rejection raises VerifierError with the log."""
        ptr, buf = self.spec._take()
        ret = lib.bpf_object__load(ptr)
        if ret < 0:
            lib.bpf_object__close(ptr)
            try:
                verr = self.spec.verifier_error(-ret)
            finally:
                self.spec.close()
            if verr is not None:
                raise verr
            raise kernel_error(f"load BPF object '{self.name}'", -ret,
                               hint="set EBPLANE_LOG=debug to see libbpf's own messages")
        self._ptr, self._buf = ptr, buf
        self.spec.close()  # libbpf dup()ed the fds of reused maps
        self.loaded = True
        try:
            for p in self.spec._each("program", ptr):
                fd = lib.bpf_program__fd(p)
                if fd >= 0:
                    name = lib.bpf_program__name(p).decode()
                    self.programs[name] = Program(FD(os.dup(fd)), name)
            for m in self.spec._each("map", ptr):
                fd = lib.bpf_map__fd(m)
                if fd >= 0:
                    name = lib.bpf_map__name(m).decode()
                    self.maps[name] = Map(FD(os.dup(fd)), name=name)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for x in [*self.programs.values(), *self.maps.values()]:
            x.close()
        self.programs.clear()
        self.maps.clear()
        if self._ptr:
            lib.bpf_object__close(self._ptr)
            self._ptr, self._buf = 0, None
        self.spec.close()


BPF_STATS_RUN_TIME = 0


def enable_run_stats() -> FD:
    """Turn on the kernel's BPF run statistics (run_cnt, run_time_ns of every program) for as
    long as the returned FD stays open (BPF_ENABLE_STATS): unlike ``sysctl
    kernel.bpf_stats_enabled=1`` nothing is left switched on when the holder exits."""
    return FD(check(lib.bpf_enable_stats(BPF_STATS_RUN_TIME), "enable BPF run statistics",
                    hint="needs CAP_SYS_ADMIN (run as root)"))
