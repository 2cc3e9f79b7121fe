"""The kernel layer against the real kernel: load, BPF_PROG_TEST_RUN, the verifier, maps of
every kind the pipelines use, pins that outlive their process, and ring buffers."""

from __future__ import annotations

import errno
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pins import private_root

from ebplane.errors import KernelError, KeyNotFound, NotFound, UsageError, VerifierError
from ebplane.kernel import bpffs
from ebplane.kernel import programs as _programs
from ebplane.kernel.codec import U32, U64, Struct
from ebplane.kernel.fd import FD
from ebplane.kernel.libbpf import num_possible_cpus
from ebplane.kernel.maps import Map, MapSpec
from ebplane.kernel.programs import (BPF_F_TEST_RUN_ON_CPU, BpfObject, ObjectSpec, Program,
                                     SkBuff, XdpMd)
from ebplane.kernel.ringbuf import RingBuffer
from ebplane.net import attach
from ebplane.net import netns as _netns
from ebplane.net.iface import ifindex
from ebplane.toolchain.clang import compile_file

BPF_DIR = Path(__file__).parent / "bpf"
SRC_MAC, DST_MAC = bytes.fromhex("020000000002"), bytes.fromhex("020000000001")
PKT = DST_MAC + SRC_MAC + b"\x08\x00" + bytes(range(50))

Flow = Struct("Flow", [("addr", "I"), ("port", "H"), ("proto", "B"), ("pad", "B")])
Stats = Struct("Stats", [("packets", "Q"), ("flags", "I")])
BPF_F_ZERO_SEED = 1 << 6
Counter = Struct("Counter", [("packets", "Q"), ("bytes", "Q")])


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """A private compile cache and a private bpffs pin root, removed afterwards."""
    pin_root = private_root("ebplane-test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EBPLANE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("EBPLANE_BPFFS_ROOT", str(pin_root))
        yield
    bpffs.unpin(pin_root)
    assert not pin_root.exists(), f"pins left behind under {pin_root}"


@pytest.fixture(scope="module")
def load():
    """``load("xdp_swap")``: a fresh object (own maps) from tests/bpf/xdp_swap.bpf.c, loaded;
    all closed at the end of the module."""
    objects: list[BpfObject] = []

    def _load(name: str) -> BpfObject:
        res = compile_file(BPF_DIR / f"{name}.bpf.c")
        obj = BpfObject.open_bytes(res.elf, name)
        objects.append(obj)
        return obj.load()

    yield _load
    for obj in objects:
        obj.close()


# -- BPF_PROG_TEST_RUN ---------------------------------------------------------------------

def test_xdp_swap_returns_tx_and_rewrites_the_frame(load):
    obj = load("xdp_swap")
    res = obj.programs["xdp_swap"].test_run(PKT)
    assert (res.retval, res.verdict) == (3, "XDP_TX")
    assert res.data == SRC_MAC + DST_MAC + PKT[12:]
    assert obj.maps["seen"].with_codecs(U32, U64)[0] == 1


def test_repeat_reports_a_duration(load, netns):
    """Attached somewhere (generic XDP on a namespace's lo), repeated runs skip the ~20 ms
    dispatcher update per call (platform notes)."""
    obj = load("xdp_swap")
    prog = obj.programs["xdp_swap"]
    seen = obj.maps["seen"].with_codecs(U32, U64)
    before = seen[0]
    with _netns.enter(netns):
        link = attach.attach_xdp(prog.fd, "lo", mode="generic").link
        try:
            t0 = time.perf_counter_ns()
            res = prog.test_run(PKT, repeat=1001)
            wall = time.perf_counter_ns() - t0
        finally:
            link.close()
    # every run rewrites the same buffer: 1001 swaps leave the MACs swapped
    assert res.verdict == "XDP_TX" and res.data == SRC_MAC + DST_MAC + PKT[12:]
    assert 0 < res.duration_ns * 1001 <= wall
    assert seen[0] - before == 1001
    info = prog.info()
    assert info["verified_insns"] > 0 and info["xlated_bytes"] > 0


def test_xdp_ctx_in_and_out(load, netns):
    """ctx_in sets ingress_ifindex/rx_queue_index (resolved in the caller's namespace);
    ctx_out reflects the program's bpf_xdp_adjust_tail."""
    _netns.run(netns, ["ip", "link", "add", "vq0", "numrxqueues", "4", "type", "veth",
                       "peer", "name", "vq1"])
    obj = load("xdp_ctx")
    prog = obj.programs["xdp_ctx"]
    info = obj.maps["ctxinfo"].with_codecs(U32, Struct("CtxInfo", [("ingress_ifindex", "I"),
                                                                  ("rx_queue_index", "I"),
                                                                  ("len", "I")]))
    with _netns.enter(netns):
        idx = ifindex("vq0")
        res = prog.test_run(PKT, ctx=XdpMd(data_end=len(PKT), ingress_ifindex=idx,
                                           rx_queue_index=3))
        with pytest.raises(KernelError) as bad_queue:
            prog.test_run(PKT, ctx=XdpMd(data_end=len(PKT), ingress_ifindex=idx,
                                         rx_queue_index=4))
    assert res.verdict == "XDP_PASS"
    assert info[0] == (idx, 3, len(PKT))
    out = XdpMd.from_buffer_copy(res.ctx)
    assert (out.data, out.data_end) == (0, len(PKT) - 4)
    assert res.data == PKT[:-4]
    assert bad_queue.value.errno == errno.EINVAL
    # the namespace's interface is unknown out here
    with pytest.raises(KernelError) as no_dev:
        prog.test_run(PKT, ctx=XdpMd(data_end=len(PKT), ingress_ifindex=99999))
    assert no_dev.value.errno == errno.ENODEV and "namespace" in no_dev.value.hint


def test_tc_program_with_sk_buff_ctx(load):
    prog = load("tc_mark").programs["tc_mark"]
    assert prog.type_name == "sched_cls"
    res = prog.test_run(PKT, ctx=SkBuff(mark=41, priority=1))
    assert (res.retval, res.verdict) == (2, "TC_ACT_SHOT")
    out = SkBuff.from_buffer_copy(res.ctx)
    assert (out.mark, out.priority, out.cb[0]) == (42, 7, len(PKT))
    assert res.data == b"\x02" + PKT[1:]


def test_test_run_errors_are_explained(load):
    prog = load("xdp_swap").programs["xdp_pass"]
    with pytest.raises(UsageError):
        prog.test_run(b"\0" * 13)
    with pytest.raises(KernelError) as ei:
        prog.test_run(PKT, out_size=20)
    assert ei.value.errno == errno.ENOSPC and "out_size" in ei.value.hint


# -- verifier ------------------------------------------------------------------------------

def test_verifier_rejection_points_at_the_c_line(load):
    src = (BPF_DIR / "bad_access.bpf.c").read_text().splitlines()
    line = next(i for i, text in enumerate(src, 1) if "data[20]" in text)
    with pytest.raises(VerifierError) as ei:
        load("bad_access")
    e = ei.value
    text = str(e)
    assert "\n" not in text
    assert "'bad_access'" in text and "invalid access to packet" in text
    assert f"bad_access.bpf.c:{line}:" in text and "data[20]" in text
    assert e.source.startswith(f"bad_access.bpf.c:{line}:")
    # .log is the whole log: the instruction trace and the statistics line too
    assert "R1 offset is outside of the packet" in e.log
    assert "processed " in e.log and "0: R1=ctx()" in e.log
    assert e.exit_code == 3 and e.hint and not e.truncated


def test_verifier_log_grows_until_the_whole_log_fits():
    """A log of about 1.7 MB: the retry's 256 KiB buffer is too small, the kernel says so
    (ENOSPC), and the buffer grows until the whole log, statistics included, fits."""
    res = compile_file(BPF_DIR / "long_log.bpf.c")
    with pytest.raises(VerifierError) as ei:
        BpfObject.open_bytes(res.elf, "long_log").load()
    e = ei.value
    assert not e.truncated and len(e.log) > _programs.LOG_SIZE_FIRST
    assert e.log.startswith("func#0") or e.log.startswith("0:")  # the head is there
    assert "processed " in e.log and "invalid access to packet" in e.summary
    assert e.source and "data[sum & 7]" in e.source


def test_verifier_log_past_the_cap_is_flagged_truncated(monkeypatch):
    """With the cap at 256 KiB the same log does not fit: the kernel keeps its last part,
    which still holds the reason, and the error says that the log is cut."""
    monkeypatch.setattr(_programs, "LOG_SIZE_MAX", 256 * 1024)
    res = compile_file(BPF_DIR / "long_log.bpf.c")
    with pytest.raises(VerifierError) as ei:
        BpfObject.open_bytes(res.elf, "long_log").load()
    e = ei.value
    assert e.truncated and 200_000 < len(e.log) < 256 * 1024
    assert "invalid access to packet" in e.summary and "data[sum & 7]" in (e.source or "")
    assert "last part" in e.hint


# -- object specs and fds ------------------------------------------------------------------

def test_object_spec_describes_maps_and_programs_before_load():
    res = compile_file(BPF_DIR / "maps.bpf.c")
    with ObjectSpec.from_bytes(res.elf, "maps") as spec:
        flows = spec.maps["flows"]
        assert (flows.type_name, flows.key_size, flows.value_size) == ("hash", 8, 16)
        assert flows.flags == 0
        assert spec.maps["slots"] == MapSpec("slots", 2, 4, 8, 8, 0)
        assert spec.programs["use_inner"].type_name == "xdp"
    obj = BpfObject.open_bytes(res.elf, "maps")
    try:
        obj.set_max_entries("slots", 16)
        assert obj.map_specs["slots"].max_entries == 16
        obj.load()
        assert obj.maps["slots"].max_entries == 16
        assert obj.map_specs["flows"].compatible(obj.maps["flows"]) is None
        with pytest.raises(UsageError):  # loaded: the spec no longer changes
            obj.set_max_entries("slots", 32)
    finally:
        obj.close()


def test_map_spec_refuses_a_map_with_other_flags():
    """A pinned map is reused only when it is the same map: type, sizes, capacity and
    flags; a hash of the same shape made with BPF_F_NO_PREALLOC is refused, with the reason."""
    res = compile_file(BPF_DIR / "maps.bpf.c")
    with ObjectSpec.from_bytes(res.elf, "maps") as spec:
        want = spec.maps["flows"]
        with Map.create("hash", 8, 16, want.max_entries, flags=1) as same_shape:
            why = want.compatible(same_shape)
        assert why == "flags no_prealloc -> 0"
        with Map.create("hash", 8, 16, want.max_entries) as same:
            assert want.compatible(same) is None
        with Map.create("lru_hash", 8, 8, 4, flags=BPF_F_ZERO_SEED) as other:
            why = want.compatible(other)
        assert why == (f"type lru_hash -> hash, value size 8 -> 16, capacity 4 -> "
                       f"{want.max_entries}, flags zero_seed -> 0")


def test_fd_closes_once_dups_and_hands_over():
    fd = FD(os.open("/dev/null", os.O_RDONLY))
    twin = fd.dup()
    assert int(twin) != int(fd) and os.fstat(twin).st_ino == os.fstat(fd).st_ino
    n = int(fd)
    fd.close()
    fd.close()  # closes once
    assert fd.closed and int(fd) == -1
    with pytest.raises(OSError):
        os.fstat(n)
    with twin:
        taken = twin.take()
    assert twin.closed
    os.fstat(taken)  # taken is still open: the FD let go of it without closing
    os.close(taken)
    with pytest.raises(ValueError):
        FD(-1)


def test_object_maps_and_programs_close_with_the_object(load):
    res = compile_file(BPF_DIR / "xdp_swap.bpf.c")
    obj = BpfObject.open_bytes(res.elf, "xdp_swap").load()
    seen, prog = obj.maps["seen"], obj.programs["xdp_swap"]
    assert seen.fd >= 0 and prog.fd >= 0
    kept = Program.from_id(prog.id)  # an owner of its own: outlives the object
    obj.close()
    assert seen.fd == -1 and prog.fd == -1 and not obj.maps
    try:
        assert kept.test_run(PKT).verdict == "XDP_TX"
    finally:
        kept.close()


# -- maps ----------------------------------------------------------------------------------

def test_hash_map_lookup_update_delete_iterate(load):
    flows = load("maps").maps["flows"].with_codecs(Flow, Stats)
    assert flows.type_name == "hash" and (flows.key_size, flows.value_size) == (8, 16)
    a, b = Flow.type(0xC6120001, 80, 6, 0), Flow.type(0xC6120002, 53, 17, 0)
    flows[a] = Stats.type(1, 0x10)
    flows.update(b, {"packets": 2, "flags": 0x20})
    assert flows[a] == (1, 0x10) and flows.lookup(b).flags == 0x20
    assert set(flows.keys()) == {a, b} and len(flows) == 2 and a in flows
    assert dict(flows.items()) == {a: Stats.type(1, 0x10), b: Stats.type(2, 0x20)}
    del flows[a]
    assert a not in flows and flows.get(a, "absent") == "absent"
    with pytest.raises(KeyNotFound) as ei:
        flows.lookup(a)
    assert isinstance(ei.value, KeyError) and "flows" in str(ei.value)
    with pytest.raises(KeyNotFound):
        flows.delete(a)
    assert flows.clear() == 1 and len(flows) == 0


def test_array_map(load):
    slots = load("maps").maps["slots"].with_codecs(U32, U64)
    assert slots.type_name == "array" and slots.max_entries == 8
    slots[3] = 2**40 + 7
    assert slots[3] == 2**40 + 7 and slots[0] == 0
    assert dict(slots.items()) == {i: (2**40 + 7 if i == 3 else 0) for i in range(8)}
    with pytest.raises(KeyNotFound):
        slots.lookup(8)
    with pytest.raises(KernelError) as ei:
        slots.delete(3)  # array entries cannot be deleted
    assert ei.value.errno == errno.EINVAL


def test_full_map_says_so():
    with Map.create("hash", 4, 8, 2, name="full", key=U32, value=U64) as m:
        m[1], m[2] = 1, 2
        with pytest.raises(KernelError) as ei:
            m[3] = 3
        assert ei.value.errno == errno.E2BIG and "capacity" in ei.value.hint
        m[2] = 20  # replacing an existing key still works
        assert dict(m.items()) == {1: 1, 2: 20}


def test_codecs_check_sizes():
    assert (Flow.size, Stats.size, U32.size) == (8, 16, 4)
    assert Stats.encode((1, 2)) == (1).to_bytes(8, "little") + (2).to_bytes(4, "little") + bytes(4)
    with Map.create("hash", 4, 8, 4, name="codec_t") as m:
        with pytest.raises(ValueError):
            m.with_codecs(U64, U64)  # 8-byte codec on a 4-byte key


def test_batch_update_lookup_delete_of_10000_entries(load):
    flows = load("maps").maps["flows"].with_codecs(Flow, Stats)
    keys = [Flow.type(0xC6120000 + i, i % 65536, 6 if i % 2 else 17, 0) for i in range(10_000)]
    values = [Stats.type(i, i % 7) for i in range(10_000)]
    assert flows.update_batch(keys, values) == 10_000
    assert len(flows) == 10_000
    got = dict(flows.lookup_batch(chunk=777))  # odd chunk size: several partial batches
    assert got == dict(zip(keys, values))
    assert flows.delete_batch(keys[::2]) == 5_000
    assert set(flows.keys()) == set(keys[1::2])
    with pytest.raises(KeyNotFound):
        flows.delete_batch([keys[0]])
    assert flows.clear() == 5_000


def test_batch_on_a_standalone_array():
    with Map.create("array", 4, 8, 10_000, name="batch_arr", key=U32, value=U64) as arr:
        arr.update_batch(range(10_000), [i * 3 for i in range(10_000)])
        assert dict(arr.lookup_batch()) == {i: i * 3 for i in range(10_000)}


def test_lookup_batch_grows_past_a_bucket_larger_than_the_chunk():
    """8 entries in 8 buckets of a zero-seeded hash share buckets; a 1-entry chunk cannot
    hold a whole bucket (the kernel says ENOSPC), so the batch must grow."""
    with Map.create("hash", 4, 8, 8, name="buckets", flags=BPF_F_ZERO_SEED,
                    key=U32, value=U64) as m:
        m.update_batch(range(8), range(100, 108))
        assert dict(m.lookup_batch(chunk=1)) == {i: 100 + i for i in range(8)}


def test_percpu_values_from_programs_run_on_each_cpu(load):
    cpus = sorted(os.sched_getaffinity(0))[:2]
    assert len(cpus) == 2, "this test needs two CPUs"
    obj = load("percpu_count")
    counts = obj.maps["counts"].with_codecs(U32, Counter)
    prog = obj.programs["percpu_count"]
    assert counts.percpu and counts.ncpus == num_possible_cpus()
    affinity = os.sched_getaffinity(0)
    for _ in range(3):
        prog.test_run(PKT, flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpus[0])
    for _ in range(2):
        prog.test_run(PKT[:20], flags=BPF_F_TEST_RUN_ON_CPU, cpu=cpus[1])
    assert os.sched_getaffinity(0) == affinity  # restored
    per_cpu = counts[0]
    assert len(per_cpu) == counts.ncpus
    assert per_cpu[cpus[0]] == (3, 3 * len(PKT))
    assert per_cpu[cpus[1]] == (2, 40)
    assert counts.lookup_sum(0) == (5, 3 * len(PKT) + 40)
    with pytest.raises(UsageError):
        prog.test_run(PKT, flags=BPF_F_TEST_RUN_ON_CPU, cpu=4096)


def test_percpu_values_from_userspace():
    with Map.create("percpu_hash", 4, 8, 16, name="pcpu_t", key=U32, value=U64) as m:
        n = m.ncpus
        m[1] = list(range(10, 10 + n))
        assert m[1] == list(range(10, 10 + n))
        assert m.lookup_sum(1) == sum(range(10, 10 + n))
        m[2] = 5  # one value for every CPU
        assert m[2] == [5] * n and m.lookup_sum(2) == 5 * n
        m.update_batch([3, 4], [[1] * n, [2] * n])
        assert dict(m.items())[4] == [2] * n


def test_map_in_map_with_inner_maps_from_map_create(load):
    obj = load("maps")
    prog = obj.programs["use_inner"]
    outer = obj.maps["outer"].with_codecs(U32, U32)
    assert outer.type_name == "array_of_maps"
    with Map.create("hash", 4, 4, 64, name="inner_a", key=U32, value=U32) as inner_a, \
            Map.create("hash", 4, 4, 64, name="inner_b", key=U32, value=U32) as inner_b:
        inner_a[0x11] = 1  # XDP_DROP
        inner_a[0x22] = 3  # XDP_TX
        inner_b[0x11] = 2  # XDP_PASS
        assert prog.test_run(b"\x11" + PKT[1:]).verdict == "XDP_ABORTED"  # no inner map yet
        outer[0] = inner_a.fd
        assert outer[0] == inner_a.id  # the kernel answers with the inner map's id
        assert prog.test_run(b"\x11" + PKT[1:]).verdict == "XDP_DROP"
        assert prog.test_run(b"\x22" + PKT[1:]).verdict == "XDP_TX"
        assert prog.test_run(b"\x33" + PKT[1:]).verdict == "XDP_ABORTED"
        outer[0] = inner_b.fd  # swap the whole table with one write
        assert prog.test_run(b"\x11" + PKT[1:]).verdict == "XDP_PASS"
        assert prog.test_run(b"\x22" + PKT[1:]).verdict == "XDP_ABORTED"
        with Map.create("hash", 4, 8, 64, name="inner_bad") as wrong:
            with pytest.raises(KernelError) as ei:
                outer[1] = wrong.fd  # value size differs from the template
        assert ei.value.errno == errno.EINVAL
        del outer[0]
        assert prog.test_run(b"\x11" + PKT[1:]).verdict == "XDP_ABORTED"


def test_standalone_array_of_maps():
    with Map.create("hash", 4, 4, 8, name="tmpl") as tmpl, \
            Map.create("array_of_maps", 4, 4, 2, name="aom", inner_map_fd=tmpl.fd,
                       key=U32, value=U32) as aom, \
            Map.create("hash", 4, 4, 8, name="in1") as in1:
        aom[1] = in1.fd
        assert aom[1] == in1.id
        with Map.from_id(in1.id) as again:
            assert again.type_name == "hash" and again.id == in1.id


# -- pins ----------------------------------------------------------------------------------

PIN_SCRIPT = r"""
import sys
from ebplane.kernel import bpffs
from ebplane.kernel.codec import U32, U64
from ebplane.kernel.programs import BpfObject
from ebplane.toolchain.clang import compile_file

root = bpffs.ensure_mounted()
obj = BpfObject.open_bytes(compile_file(sys.argv[1]).elf, "pinned").load()
seen = obj.maps["seen"].with_codecs(U32, U64)
seen[0] = int(sys.argv[2])
seen.pin(root / "t" / "seen")
obj.programs["xdp_swap"].pin(root / "t" / "xdp_swap")
print(seen.id, obj.programs["xdp_swap"].id)
"""


def test_pin_outlives_the_process_and_unpin_removes_it():
    root = bpffs.root()
    value = secrets.randbelow(2**40)
    proc = subprocess.run([sys.executable, "-c", PIN_SCRIPT, str(BPF_DIR / "xdp_swap.bpf.c"),
                           str(value)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    map_id, prog_id = map(int, proc.stdout.split())
    assert (root / "t" / "seen").exists()
    with Map.from_pin(root / "t" / "seen", key=U32, value=U64) as seen:
        assert seen.id == map_id and seen[0] == value
        prog = Program.from_pin(root / "t" / "xdp_swap")
        try:
            assert prog.id == prog_id and prog.test_run(PKT).verdict == "XDP_TX"
        finally:
            prog.close()
        assert seen[0] == value + 1  # the pinned program still uses the pinned map
        bpffs.unpin(root / "t")
        assert not (root / "t").exists()
        with pytest.raises(NotFound):
            Map.from_pin(root / "t" / "seen")
    # the last reference is gone: so is the map
    deadline = time.monotonic() + 2
    while True:
        try:
            Map.from_id(map_id).close()
        except KernelError as e:
            assert e.errno == errno.ENOENT
            break
        assert time.monotonic() < deadline, "the unpinned map still exists"
        time.sleep(0.01)


# -- ring buffer ---------------------------------------------------------------------------

Event = Struct("Event", [("seq", "Q"), ("len", "I"), ("pad", "I"), ("head", "8s")])


def _emit(obj, n: int) -> list[bytes]:
    pkts = [bytes([i]) * 8 + PKT[8:8 + 20 + i] for i in range(n)]
    for p in pkts:
        assert obj.programs["emit"].test_run(p).verdict == "XDP_PASS"
    return pkts


def test_ringbuf_delivers_exactly_the_records_written(load):
    obj = load("ringbuf")
    got: list = []
    with RingBuffer(obj.maps["events"], lambda data: got.append(Event.decode(data))) as rb:
        assert rb.consume() == 0
        pkts = _emit(obj, 10)
        assert rb.poll(100) == 10
        assert rb.consume() == 0
    assert [(e.seq, e.len, e.head) for e in got] == [(i, len(p), p[:8]) for i, p in enumerate(pkts)]


def test_ringbuf_callback_can_stop_and_its_exceptions_propagate(load):
    obj = load("ringbuf")
    seen: list[int] = []

    def on_event(data: bytes):
        ev = Event.decode(data)
        seen.append(ev.len)
        if len(seen) == 3:
            raise ValueError("boom")
        return len(seen) == 5  # stop early after the fifth

    with RingBuffer(obj.maps["events"], on_event) as rb:
        pkts = _emit(obj, 8)
        with pytest.raises(ValueError, match="boom"):
            rb.consume()
        assert len(seen) == 3
        assert rb.consume() == 2 and len(seen) == 5  # stopped by the callback
        assert rb.consume() == 3
    assert seen == [len(p) for p in pkts]


def test_ringbuf_refuses_other_maps(load):
    with pytest.raises(TypeError):
        RingBuffer(load("maps").maps["slots"], print)
