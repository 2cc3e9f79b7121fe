"""BPF objects and programs: open an ELF (file or memory), load it with the verifier log
captured, run programs on packets (BPF_PROG_TEST_RUN), read their statistics.

The description is separate from the loaded object: :class:`BpfObject` is opened (maps and
programs can still be tuned: sizes, pin paths, reuse of existing maps), then :meth:`load`
puts it into the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from dataclasses import dataclass
from pathlib import Path

from ebplane.errors import NotFound, UsageError, VerifierError, kernel_error
from ebplane.kernel import bpffs
from ebplane.kernel.libbpf import (PROG_TYPE_NAMES, ProgInfo, TestRunOpts, check, check_ptr,
                                   close_fd, lib, obj_info)
from ebplane.kernel.maps import Map

LOG_BUF_SIZE = 16 * 1024 * 1024

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


class XdpMd(ctypes.Structure):
    """struct xdp_md, the XDP context (for ctx_in/ctx_out)."""
    _fields_ = [("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("ingress_ifindex", ctypes.c_uint32),
                ("rx_queue_index", ctypes.c_uint32), ("egress_ifindex", ctypes.c_uint32)]


class SkBuff(ctypes.Structure):
    """struct __sk_buff (the fields test_run lets a caller set, and the rest as padding)."""
    _fields_ = [("len", ctypes.c_uint32), ("pkt_type", ctypes.c_uint32), ("mark", ctypes.c_uint32),
                ("queue_mapping", ctypes.c_uint32), ("protocol", ctypes.c_uint32),
                ("vlan_present", ctypes.c_uint32), ("vlan_tci", ctypes.c_uint32),
                ("vlan_proto", ctypes.c_uint32), ("priority", ctypes.c_uint32),
                ("ingress_ifindex", ctypes.c_uint32), ("ifindex", ctypes.c_uint32),
                ("tc_index", ctypes.c_uint32), ("cb", ctypes.c_uint32 * 5),
                ("hash", ctypes.c_uint32), ("tc_classid", ctypes.c_uint32),
                ("data", ctypes.c_uint32), ("data_end", ctypes.c_uint32),
                ("napi_id", ctypes.c_uint32), ("family", ctypes.c_uint32),
                ("remote_ip4", ctypes.c_uint32), ("local_ip4", ctypes.c_uint32),
                ("remote_ip6", ctypes.c_uint32 * 4), ("local_ip6", ctypes.c_uint32 * 4),
                ("remote_port", ctypes.c_uint32), ("local_port", ctypes.c_uint32),
                ("data_meta", ctypes.c_uint32), ("flow_keys", ctypes.c_uint64),
                ("tstamp", ctypes.c_uint64), ("wire_len", ctypes.c_uint32),
                ("gso_segs", ctypes.c_uint32), ("sk", ctypes.c_uint64),
                ("gso_size", ctypes.c_uint32), ("tstamp_type", ctypes.c_uint8),
                ("_pad", ctypes.c_uint8 * 3), ("hwtstamp", ctypes.c_uint64)]


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
    """A loaded program, by fd.  Owned by its object, or standalone (from a pin or id)."""

    def __init__(self, fd: int, name: str | None = None, *, owns_fd: bool = False):
        self.fd = fd
        info = obj_info(fd, ProgInfo)
        self.id = info.id
        self.type = info.type
        self.type_name = PROG_TYPE_NAMES.get(info.type, str(info.type))
        self.name = name or info.name.decode()
        self._owns = owns_fd

    @classmethod
    def from_pin(cls, path: str | Path) -> "Program":
        return cls(bpffs.get_pinned(path), owns_fd=True)

    @classmethod
    def from_id(cls, prog_id: int) -> "Program":
        fd = lib.bpf_prog_get_fd_by_id(prog_id)
        if fd < 0:
            raise kernel_error(f"open program id {prog_id}", -fd)
        return cls(fd, owns_fd=True)

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
        if self._owns and self.fd >= 0:
            close_fd(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"<Program {self.name} {self.type_name} id={self.id}>"


class BpfObject:
    """A BPF ELF object: opened (maps and programs described), then loaded.

    >>> with BpfObject.open(path) as obj:          # doctest: +SKIP
    ...     obj.load()
    ...     obj.programs["xdp_main"].test_run(pkt)
    """

    def __init__(self, ptr: int, name: str, buf=None):
        self._ptr = ptr
        self._buf = buf  # open_mem: libbpf keeps pointing at the caller's bytes until load
        self.name = name
        self.loaded = False
        self._logs: dict[str, ctypes.Array] = {}
        self.program_ptrs: dict[str, int] = {}
        p = None
        while True:
            p = lib.bpf_object__next_program(ptr, p)
            if not p:
                break
            self.program_ptrs[lib.bpf_program__name(p).decode()] = p
        self.map_ptrs: dict[str, int] = {}
        m = None
        while True:
            m = lib.bpf_object__next_map(ptr, m)
            if not m:
                break
            self.map_ptrs[lib.bpf_map__name(m).decode()] = m
        self.programs: dict[str, Program] = {}
        self.maps: dict[str, Map] = {}

    @classmethod
    def open(cls, path: str | Path) -> "BpfObject":
        path = Path(path)
        if not path.exists():
            raise NotFound(f"BPF object {path} does not exist")
        ptr = check_ptr(lib.bpf_object__open_file(str(path).encode(), None), f"open {path}",
                        hint="is it a BPF ELF object (clang -target bpf)?")
        return cls(ptr, path.stem)

    @classmethod
    def open_bytes(cls, elf: bytes, name: str = "obj") -> "BpfObject":
        buf = ctypes.create_string_buffer(elf, len(elf))
        # bpf_object_open_opts: sz, object_name (the name libbpf gives maps' prefix)
        class OpenOpts(ctypes.Structure):
            _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p)]
        opts = OpenOpts(sz=ctypes.sizeof(OpenOpts), object_name=name.encode())
        ptr = check_ptr(lib.bpf_object__open_mem(buf, len(elf), ctypes.byref(opts)),
                        f"open BPF object '{name}' from memory")
        return cls(ptr, name, buf)

    # -- tuning before load -------------------------------------------------------------
    def set_max_entries(self, map_name: str, n: int) -> None:
        check(lib.bpf_map__set_max_entries(self._map_ptr(map_name), n),
              f"set max_entries of map '{map_name}'")

    def reuse_map(self, map_name: str, fd: int) -> None:
        """Use an existing map (e.g. from a pin) instead of creating one at load."""
        check(lib.bpf_map__reuse_fd(self._map_ptr(map_name), fd),
              f"reuse fd {fd} for map '{map_name}'")

    def set_program_type(self, prog_name: str, prog_type: int) -> None:
        check(lib.bpf_program__set_type(self.program_ptrs[prog_name], prog_type),
              f"set type of program '{prog_name}'")

    def set_autoload(self, prog_name: str, autoload: bool) -> None:
        check(lib.bpf_program__set_autoload(self.program_ptrs[prog_name], autoload),
              f"set autoload of program '{prog_name}'")

    def _map_ptr(self, name: str) -> int:
        if name not in self.map_ptrs:
            raise NotFound(f"object '{self.name}' has no map '{name}' "
                           f"(maps: {', '.join(sorted(self.map_ptrs)) or 'none'})")
        return self.map_ptrs[name]

    # -- load --------------------------------------------------------------------------
    def load(self) -> "BpfObject":
        """Load all maps and programs; a verifier rejection raises VerifierError with the log."""
        for name, p in self.program_ptrs.items():
            buf = ctypes.create_string_buffer(LOG_BUF_SIZE)
            self._logs[name] = buf
            lib.bpf_program__set_log_buf(p, buf, LOG_BUF_SIZE)
        ret = lib.bpf_object__load(self._ptr)
        if ret < 0:
            for name, buf in self._logs.items():
                text = buf.value.decode(errors="replace")
                if text.strip() and lib.bpf_program__fd(self.program_ptrs[name]) < 0:
                    raise VerifierError(name, text, err=-ret)
            raise kernel_error(f"load BPF object '{self.name}'", -ret,
                               hint="set EBPLANE_LOG=debug to see libbpf's own messages")
        self._logs.clear()  # 16 MiB each: do not keep them past a successful load
        self.loaded = True
        for name, p in self.program_ptrs.items():
            fd = lib.bpf_program__fd(p)
            if fd >= 0:
                self.programs[name] = Program(fd, name)
        for name, m in self.map_ptrs.items():
            fd = lib.bpf_map__fd(m)
            if fd >= 0:
                self.maps[name] = Map(fd, name=name, owns_fd=False)
        return self

    def close(self) -> None:
        if self._ptr:
            lib.bpf_object__close(self._ptr)
            self._ptr = 0
            self.programs.clear()
            self.maps.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
