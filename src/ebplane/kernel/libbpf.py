"""ctypes binding of libbpf.so.1 and the few libc calls ebplane makes: the functions, their
prototypes, every C struct ebplane passes to them (opts structs with ``sz`` always set,
program contexts, info structs), and libbpf's log messages routed to Python ``logging``.

This is the only module of ebplane that declares ctypes prototypes or structures
(``tests/test_architecture.py`` checks it); the rest of ``ebplane.kernel`` wraps them in
objects, and ``ebplane.net`` / ``ebplane.xsk`` use the libc prototypes declared here.  libbpf 1.x returns ``-errno`` from int functions and NULL (errno set) from pointer
functions; :func:`check` and :func:`check_ptr` turn both into ebplane errors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as _errno
import logging
from ctypes import (CFUNCTYPE, POINTER, Structure, c_char_p, c_int, c_size_t, c_uint8,
                    c_uint32, c_uint64, c_void_p)

from ebplane.errors import NotSupported, kernel_error

log = logging.getLogger("ebplane.libbpf")

MIN_VERSION = (1, 1)

# enum bpf_prog_type / bpf_map_type / bpf_attach_type values used by ebplane (uapi bpf.h)
PROG_TYPES = {
    "socket_filter": 1, "kprobe": 2, "sched_cls": 3, "sched_act": 4, "tracepoint": 5, "xdp": 6,
    "perf_event": 7, "cgroup_skb": 8, "lwt_in": 10, "sk_skb": 14, "sk_msg": 16,
    "raw_tracepoint": 17,
    "flow_dissector": 22, "sk_lookup": 30,
}
PROG_TYPE_NAMES = {v: k for k, v in PROG_TYPES.items()}
MAP_TYPES = {
    "hash": 1, "array": 2, "prog_array": 3, "perf_event_array": 4, "percpu_hash": 5,
    "percpu_array": 6, "lru_hash": 9, "lru_percpu_hash": 10, "lpm_trie": 11, "array_of_maps": 12,
    "hash_of_maps": 13, "devmap": 14, "sockmap": 15, "cpumap": 16, "xskmap": 17, "sockhash": 18,
    "queue": 22, "stack": 23, "devmap_hash": 25, "ringbuf": 27, "bloom_filter": 30,
}
MAP_TYPE_NAMES = {v: k for k, v in MAP_TYPES.items()}
PERCPU_MAP_TYPES = {5, 6, 10}
ATTACH_TYPES = {"xdp": 37, "tcx_ingress": 46, "tcx_egress": 47}

# XDP flags (uapi if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_HW_MODE = 1 << 3
XDP_FLAGS_REPLACE = 1 << 4

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2
BPF_F_NO_PREALLOC = 1


class TestRunOpts(Structure):
    """struct bpf_test_run_opts (80 bytes on x86-64)."""
    _fields_ = [("sz", c_size_t), ("data_in", c_void_p), ("data_out", c_void_p),
                ("data_size_in", c_uint32), ("data_size_out", c_uint32),
                ("ctx_in", c_void_p), ("ctx_out", c_void_p),
                ("ctx_size_in", c_uint32), ("ctx_size_out", c_uint32),
                ("retval", c_uint32), ("repeat", c_int), ("duration", c_uint32),
                ("flags", c_uint32), ("cpu", c_uint32), ("batch_size", c_uint32)]


class TcHook(Structure):
    """struct bpf_tc_hook (24 bytes)."""
    _fields_ = [("sz", c_size_t), ("ifindex", c_int), ("attach_point", c_int),
                ("parent", c_uint32), ("_pad", c_uint32)]


class TcOpts(Structure):
    """struct bpf_tc_opts (32 bytes)."""
    _fields_ = [("sz", c_size_t), ("prog_fd", c_int), ("flags", c_uint32),
                ("prog_id", c_uint32), ("handle", c_uint32), ("priority", c_uint32),
                ("_pad", c_uint32)]


class XdpAttachOpts(Structure):
    """struct bpf_xdp_attach_opts (16 bytes)."""
    _fields_ = [("sz", c_size_t), ("old_prog_fd", c_int), ("_pad", c_int)]


class XdpQueryOpts(Structure):
    """struct bpf_xdp_query_opts as of libbpf 1.1 (no feature_flags yet)."""
    _fields_ = [("sz", c_size_t), ("prog_id", c_uint32), ("drv_prog_id", c_uint32),
                ("hw_prog_id", c_uint32), ("skb_prog_id", c_uint32), ("attach_mode", c_uint8),
                ("_pad", c_uint8 * 7)]


class LinkCreateOpts(Structure):
    """The head of struct bpf_link_create_opts: sz and flags are all ebplane sets."""
    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("_pad", c_uint32)]


class TcxLinkCreateAttr(Structure):
    """union bpf_attr as BPF_LINK_CREATE reads it for tcx (kernel >= 6.6): libbpf 1.1 has no
    tcx options, so ebplane passes the relative position itself (``bpf_syscall``)."""
    _fields_ = [("prog_fd", c_uint32), ("target_ifindex", c_uint32), ("attach_type", c_uint32),
                ("flags", c_uint32), ("relative_fd", c_uint32), ("_pad", c_uint32),
                ("expected_revision", c_uint64)]


# bpf(2) on x86-64, its BPF_LINK_CREATE command, and bpf_mprog's position flags (uapi bpf.h)
SYS_BPF = 321
BPF_LINK_CREATE = 28
BPF_F_BEFORE = 1 << 3
BPF_F_AFTER = 1 << 4
BPF_F_LINK = 1 << 13


class LinkUpdateOpts(Structure):
    """struct bpf_link_update_opts."""
    _fields_ = [("sz", c_size_t), ("flags", c_uint32), ("old_prog_fd", c_uint32)]


class MapBatchOpts(Structure):
    """struct bpf_map_batch_opts."""
    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class MapCreateOpts(Structure):
    """struct bpf_map_create_opts (libbpf 1.1: up to map_ifindex)."""
    _fields_ = [("sz", c_size_t), ("btf_fd", c_uint32), ("btf_key_type_id", c_uint32),
                ("btf_value_type_id", c_uint32), ("btf_vmlinux_value_type_id", c_uint32),
                ("inner_map_fd", c_uint32), ("map_flags", c_uint32), ("map_extra", c_uint64),
                ("numa_node", c_uint32), ("map_ifindex", c_uint32)]


class ObjectOpenOpts(Structure):
    """The head of struct bpf_object_open_opts: the object name (what libbpf prefixes
    internal maps with)."""
    _fields_ = [("sz", c_size_t), ("object_name", c_char_p)]


class ProgLoadOpts(Structure):
    """struct bpf_prog_load_opts (libbpf 1.1), for bpf_prog_load's log buffer."""
    _fields_ = [("sz", c_size_t), ("attempts", c_int),
                ("expected_attach_type", c_uint32), ("prog_btf_fd", c_uint32),
                ("prog_flags", c_uint32), ("prog_ifindex", c_uint32),
                ("kern_version", c_uint32), ("attach_btf_id", c_uint32),
                ("attach_btf_obj_fd", c_uint32), ("attach_prog_fd", c_int),
                ("fd_array", c_void_p), ("func_info", c_void_p),
                ("func_info_cnt", c_uint32), ("func_info_rec_size", c_uint32),
                ("line_info", c_void_p), ("line_info_cnt", c_uint32),
                ("line_info_rec_size", c_uint32), ("log_level", c_uint32),
                ("log_size", c_uint32), ("log_buf", c_void_p)]


class XdpMd(Structure):
    """struct xdp_md, the XDP context (for test_run's ctx_in/ctx_out)."""
    _fields_ = [("data", c_uint32), ("data_end", c_uint32),
                ("data_meta", c_uint32), ("ingress_ifindex", c_uint32),
                ("rx_queue_index", c_uint32), ("egress_ifindex", c_uint32)]


class SkBuff(Structure):
    """struct __sk_buff (the fields test_run lets a caller set, and the rest as padding)."""
    _fields_ = [("len", c_uint32), ("pkt_type", c_uint32), ("mark", c_uint32),
                ("queue_mapping", c_uint32), ("protocol", c_uint32),
                ("vlan_present", c_uint32), ("vlan_tci", c_uint32),
                ("vlan_proto", c_uint32), ("priority", c_uint32),
                ("ingress_ifindex", c_uint32), ("ifindex", c_uint32),
                ("tc_index", c_uint32), ("cb", c_uint32 * 5),
                ("hash", c_uint32), ("tc_classid", c_uint32),
                ("data", c_uint32), ("data_end", c_uint32),
                ("napi_id", c_uint32), ("family", c_uint32),
                ("remote_ip4", c_uint32), ("local_ip4", c_uint32),
                ("remote_ip6", c_uint32 * 4), ("local_ip6", c_uint32 * 4),
                ("remote_port", c_uint32), ("local_port", c_uint32),
                ("data_meta", c_uint32), ("flow_keys", c_uint64),
                ("tstamp", c_uint64), ("wire_len", c_uint32),
                ("gso_segs", c_uint32), ("sk", c_uint64),
                ("gso_size", c_uint32), ("tstamp_type", c_uint8),
                ("_pad", c_uint8 * 3), ("hwtstamp", c_uint64)]


class StatFs(Structure):
    """struct statfs: only f_type is read (is a path on bpffs?)."""
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_long * 15)]


class ProgInfo(Structure):
    """The head of struct bpf_prog_info, as far as ebplane reads it."""
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("tag", c_uint8 * 8),
                ("jited_prog_len", c_uint32), ("xlated_prog_len", c_uint32),
                ("jited_prog_insns", c_uint64), ("xlated_prog_insns", c_uint64),
                ("load_time", c_uint64), ("created_by_uid", c_uint32),
                ("nr_map_ids", c_uint32), ("map_ids", c_uint64), ("name", ctypes.c_char * 16),
                ("ifindex", c_uint32), ("gpl_compatible", c_uint32), ("netns_dev", c_uint64),
                ("netns_ino", c_uint64), ("nr_jited_ksyms", c_uint32),
                ("nr_jited_func_lens", c_uint32), ("jited_ksyms", c_uint64),
                ("jited_func_lens", c_uint64), ("btf_id", c_uint32),
                ("func_info_rec_size", c_uint32), ("func_info", c_uint64),
                ("nr_func_info", c_uint32), ("nr_line_info", c_uint32), ("line_info", c_uint64),
                ("jited_line_info", c_uint64), ("nr_jited_line_info", c_uint32),
                ("line_info_rec_size", c_uint32), ("jited_line_info_rec_size", c_uint32),
                ("nr_prog_tags", c_uint32), ("prog_tags", c_uint64), ("run_time_ns", c_uint64),
                ("run_cnt", c_uint64), ("recursion_misses", c_uint64),
                ("verified_insns", c_uint32)]


class MapInfo(Structure):
    """The head of struct bpf_map_info."""
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("key_size", c_uint32),
                ("value_size", c_uint32), ("max_entries", c_uint32), ("map_flags", c_uint32),
                ("name", ctypes.c_char * 16)]


class LinkInfo(Structure):
    """The head of struct bpf_link_info plus room for the union."""
    _fields_ = [("type", c_uint32), ("id", c_uint32), ("prog_id", c_uint32), ("_pad", c_uint32),
                ("u", c_uint64 * 8)]


PRINT_FN = CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
RINGBUF_SAMPLE_FN = CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)


def _find_library() -> ctypes.CDLL:
    for name in ("libbpf.so.1", ctypes.util.find_library("bpf")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise NotSupported("libbpf.so.1 not found",
                       hint="install it: apt-get install libbpf1 (or run scripts/setup)")


lib = _find_library()
libc = ctypes.CDLL(None, use_errno=True)

_PROTOS = {
    # library
    "libbpf_major_version": (ctypes.c_uint32, []),
    "libbpf_minor_version": (ctypes.c_uint32, []),
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_probe_bpf_prog_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_map_type": (c_int, [c_int, c_void_p]),
    "libbpf_probe_bpf_helper": (c_int, [c_int, c_int, c_void_p]),
    # objects
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__open_mem": (c_void_p, [c_void_p, c_size_t, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    # programs
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__type": (c_int, [c_void_p]),
    "bpf_program__set_type": (c_int, [c_void_p, c_int]),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
    "bpf_program__set_log_buf": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_program__set_log_level": (c_int, [c_void_p, c_uint32]),
    # maps
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__map_flags": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__set_pin_path": (c_int, [c_void_p, c_char_p]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__is_internal": (ctypes.c_bool, [c_void_p]),
    "bpf_map_create": (c_int, [c_int, c_char_p, c_uint32, c_uint32, c_uint32, c_void_p]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (c_int, [c_int, c_void_p, c_void_p, c_void_p, c_void_p,
                                     POINTER(c_uint32), c_void_p]),
    "bpf_map_update_batch": (c_int, [c_int, c_void_p, c_void_p, POINTER(c_uint32), c_void_p]),
    "bpf_map_delete_batch": (c_int, [c_int, c_void_p, POINTER(c_uint32), c_void_p]),
    # fds, pins, info
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_prog_get_fd_by_id": (c_int, [c_uint32]),
    "bpf_map_get_fd_by_id": (c_int, [c_uint32]),
    "bpf_prog_load": (c_int, [c_int, c_char_p, c_char_p, c_char_p, c_size_t, c_void_p]),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(TestRunOpts)]),
    "bpf_enable_stats": (c_int, [c_int]),
    "bpf_prog_query": (c_int, [c_int, c_int, c_uint32, POINTER(c_uint32), POINTER(c_uint32),
                               POINTER(c_uint32)]),
    # attach
    "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
    "bpf_link_update": (c_int, [c_int, c_int, c_void_p]),
    "bpf_link_detach": (c_int, [c_int]),
    "bpf_xdp_attach": (c_int, [c_int, c_int, c_uint32, c_void_p]),
    "bpf_xdp_detach": (c_int, [c_int, c_uint32, c_void_p]),
    "bpf_xdp_query": (c_int, [c_int, c_int, POINTER(XdpQueryOpts)]),
    "bpf_tc_hook_create": (c_int, [POINTER(TcHook)]),
    "bpf_tc_hook_destroy": (c_int, [POINTER(TcHook)]),
    "bpf_tc_attach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_detach": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    "bpf_tc_query": (c_int, [POINTER(TcHook), POINTER(TcOpts)]),
    # ring buffer
    "ring_buffer__new": (c_void_p, [c_int, RINGBUF_SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
}

for _name, (_res, _args) in _PROTOS.items():
    _fn = getattr(lib, _name)
    _fn.restype = _res
    _fn.argtypes = _args

VERSION = (lib.libbpf_major_version(), lib.libbpf_minor_version())
if VERSION < MIN_VERSION:
    raise NotSupported(f"libbpf {VERSION[0]}.{VERSION[1]} is too old; ebplane needs "
                       f">= {MIN_VERSION[0]}.{MIN_VERSION[1]}",
                       hint="install Debian 12's libbpf1 (1.1.2) or newer")

libc.vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
libc.vsnprintf.restype = c_int
libc.syscall.restype = ctypes.c_long


def bpf_syscall(cmd: int, attr: Structure) -> int:
    """bpf(cmd, &attr, sizeof attr): the result, or -errno."""
    ret = libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), ctypes.byref(attr),
                       ctypes.c_uint(ctypes.sizeof(attr)))
    return ret if ret >= 0 else -ctypes.get_errno()
libc.statfs.argtypes = [c_char_p, POINTER(StatFs)]
libc.statfs.restype = c_int
libc.setns.argtypes = [c_int, c_int]
libc.setns.restype = c_int
libc.bind.argtypes = [c_int, c_char_p, c_uint32]
libc.bind.restype = c_int
libc.sendto.argtypes = [c_int, c_void_p, c_size_t, c_int, c_void_p, c_uint32]
libc.sendto.restype = ctypes.c_ssize_t

_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


@PRINT_FN
def _print(level: int, fmt: bytes, args: int) -> int:
    buf = ctypes.create_string_buffer(4096)
    libc.vsnprintf(buf, len(buf), fmt, args)
    text = buf.value.decode(errors="replace").rstrip()
    if text:
        # libbpf's warnings are mostly what a failing load already reports as an exception;
        # keep them on DEBUG unless the caller asked for libbpf's own voice.
        log.log(_LEVELS.get(level, logging.DEBUG) if log.isEnabledFor(logging.DEBUG)
                else logging.DEBUG, "%s", text)
    return 0


lib.libbpf_set_print(_print)


def num_possible_cpus() -> int:
    n = lib.libbpf_num_possible_cpus()
    if n < 0:
        raise kernel_error("count possible CPUs", -n)
    return n


def check(ret: int, what: str, *, hint: str | None = None) -> int:
    """Raise the matching ebplane error for a libbpf int return of -errno."""
    if ret < 0:
        raise kernel_error(what, -ret, hint=hint)
    return ret


def check_ptr(ptr: int | None, what: str, *, hint: str | None = None) -> int:
    """Raise for a NULL pointer return (errno says why)."""
    if not ptr:
        raise kernel_error(what, ctypes.get_errno() or _errno.EINVAL, hint=hint)
    return ptr


def obj_info(fd: int, cls):
    """bpf_obj_get_info_by_fd into a ctypes structure of type ``cls``."""
    info = cls()
    size = c_uint32(ctypes.sizeof(info))
    check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
          f"get info of fd {fd}")
    return info


def get_errno() -> int:
    """errno of the last libc call made through :data:`libc` in this thread."""
    return ctypes.get_errno()
