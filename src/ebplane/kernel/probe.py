"""What this kernel allows, found by trying (libbpf's probes load tiny programs and create
tiny maps), never by comparing version numbers."""

from __future__ import annotations

import ctypes
import os
import struct
import platform
from pathlib import Path

from ebplane.errors import kernel_error
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import MAP_TYPES, PROG_TYPES, VERSION, ProgLoadOpts, lib

PROBED_PROG_TYPES = ["xdp", "sched_cls", "sched_act", "socket_filter", "cgroup_skb", "sk_skb",
                     "sk_msg", "flow_dissector", "sk_lookup", "lwt_in"]
PROBED_MAP_TYPES = ["hash", "array", "percpu_hash", "percpu_array", "lru_hash", "lru_percpu_hash",
                    "lpm_trie", "array_of_maps", "hash_of_maps", "prog_array", "devmap",
                    "devmap_hash", "cpumap", "xskmap", "sockmap", "sockhash", "ringbuf",
                    "queue", "stack", "bloom_filter"]
# helper ids (uapi bpf.h __BPF_FUNC_MAPPER order)
HELPERS = {"map_lookup_elem": 1, "tail_call": 12, "redirect": 23, "perf_event_output": 25,
           "skb_load_bytes": 26, "csum_diff": 28, "skb_change_head": 43,
           "xdp_adjust_head": 44, "redirect_map": 51, "xdp_adjust_meta": 54,
           "xdp_adjust_tail": 65, "fib_lookup": 69, "sk_lookup_tcp": 84, "sk_lookup_udp": 85,
           "skc_lookup_tcp": 99, "ringbuf_output": 130, "xdp_get_buff_len": 188,
           "xdp_load_bytes": 189, "loop": 181, "ktime_get_ns": 5, "get_smp_processor_id": 8}
HELPER_PROG_TYPES = ["xdp", "sched_cls"]


def _probe(ret: int) -> bool | None:
    if ret == 1:
        return True
    if ret == 0:
        return False
    return None  # the probe itself failed (e.g. EPERM): unknown


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


_HELPER_REFUSED = ("invalid func", "unknown func", "cannot use helper", "not supported by")


def probe_helper(prog_type: str, helper_id: int) -> bool:
    """Load ``call helper; r0 = 0; exit`` and read why the verifier refuses it: argument
    errors mean the helper exists for this program type, "unknown/invalid func" or "cannot
    use helper" mean it does not.  (libbpf 1.1's own probe misses this kernel's wording.)"""
    insns = (struct.pack("<BBhi", 0x85, 0, 0, helper_id) + struct.pack("<BBhi", 0xB7, 0, 0, 0)
             + struct.pack("<BBhi", 0x95, 0, 0, 0))
    log = ctypes.create_string_buffer(4096)
    opts = ProgLoadOpts(sz=ctypes.sizeof(ProgLoadOpts), log_level=1, log_size=len(log),
                         log_buf=ctypes.cast(log, ctypes.c_void_p))
    fd = lib.bpf_prog_load(PROG_TYPES[prog_type], b"ebp_probe", b"GPL", insns, 3, ctypes.byref(opts))
    if fd >= 0:
        os.close(fd)
        return True
    text = log.value.decode(errors="replace")
    return not any(m in text for m in _HELPER_REFUSED)


def load_trivial(prog_type: str, retval: int) -> FD:
    """Load a two-instruction program (``return retval``) without clang; returns its fd
    (the caller owns it: ``with load_trivial("xdp", 2) as fd: ...``)."""
    insns = struct.pack("<BBhi", 0xB7, 0, 0, retval) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    fd = lib.bpf_prog_load(PROG_TYPES[prog_type], b"ebp_probe", b"GPL", insns, 2, None)
    if fd < 0:
        raise kernel_error(f"load a trivial {prog_type} program", -fd)
    return FD(fd)


def probe_kernel() -> dict:
    """Kernel version, JIT, BTF and the program/map types and helpers this kernel allows."""
    jit = _read("/proc/sys/net/core/bpf_jit_enable")
    prog_types = {t: _probe(lib.libbpf_probe_bpf_prog_type(PROG_TYPES[t], None))
                  for t in PROBED_PROG_TYPES}
    map_types = {t: _probe(lib.libbpf_probe_bpf_map_type(MAP_TYPES[t], None))
                 for t in PROBED_MAP_TYPES}
    helpers = {pt: {h: probe_helper(pt, hid) for h, hid in sorted(HELPERS.items())}
               for pt in HELPER_PROG_TYPES}
    return {
        "kernel": {"release": platform.release(), "version": platform.version(),
                   "machine": platform.machine()},
        "libbpf": f"{VERSION[0]}.{VERSION[1]}",
        "jit": {"enabled": jit not in (None, "0"), "value": jit,
                "harden": _read("/proc/sys/net/core/bpf_jit_harden")},
        "btf": {"vmlinux": Path("/sys/kernel/btf/vmlinux").exists()},
        "bpffs": {"mounted": os.path.ismount("/sys/fs/bpf")},
        "unprivileged_bpf_disabled": _read("/proc/sys/kernel/unprivileged_bpf_disabled"),
        "program_types": prog_types,
        "map_types": map_types,
        "helpers": helpers,
    }
