"""The capture hooks of ``ebplane trace``: C added to a pipeline's program only while a trace
runs (the trace-free program has none of it).

At the verdict point of the program (``out:`` in the main function) the capture hook reads
which stage and counter slot decided (the ``ebp_trace`` record that replay uses), keeps the
packets the trace selects (stage, verdict, rule: compiled in as constants; a tcpdump filter
translated from classic BPF into C), applies a per-CPU rate limit and copies a record and the
first ``snaplen`` bytes of the frame into a BPF ring buffer.  Every packet it does not
deliver is counted by reason in ``ebp_cap_cnt`` (``CAPTURE_COUNTERS``), never lost silently.

The filter: ``tcpdump -ddd`` compiles a pcap-filter expression into classic BPF (an
accumulator machine with forward jumps only); :func:`cbpf_to_c` writes it as straight-line C,
one labelled statement per instruction, packet loads through ``bpf_xdp_load_bytes`` /
``bpf_skb_load_bytes`` (bounds-checked by the kernel: a load past the frame rejects the
packet, as classic BPF does).  Forward ``goto`` only: the verifier sees a DAG, no loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ebplane.codegen.layout import Field, Layout
from ebplane.errors import UsageError

CAPTURE_COUNTERS = ("selected", "filtered_out", "rate_limited", "ring_full", "captured",
                    "copy_failed")
# role -> C name of the maps of the capture hooks (the one place these names are made)
CAPTURE_MAPS: dict[str, str] = {"capture": "ebp_cap_ring", "capture-counters": "ebp_cap_cnt",
                                "capture-rate": "ebp_cap_rate"}
RING_MIN_BYTES = 1 << 20
SNAPLEN_MAX = 9216


@dataclass(frozen=True)
class CaptureSpec:
    """What a running trace selects; compiled into the program as constants."""
    snaplen: int = 256
    rate: int = 0                  # packets per second per CPU (0: no limit)
    stage: int | None = None       # index of the deciding stage
    slot: int | None = None        # counter slot (a filter rule's id) that decided
    verdict: int | None = None     # the hook's action value
    filter: tuple = ()             # classic BPF: (code, jt, jf, k) instructions
    filter_text: str = ""          # the pcap-filter expression, for the comment

    def __post_init__(self) -> None:
        if not 1 <= self.snaplen <= SNAPLEN_MAX:
            raise UsageError(f"snaplen {self.snaplen} is out of range (1..{SNAPLEN_MAX})")
        if self.rate < 0:
            raise UsageError(f"rate {self.rate} is negative", hint="0 means no limit")
        object.__setattr__(self, "filter", tuple(tuple(i) for i in self.filter))

    @property
    def ring_bytes(self) -> int:
        """A power of two holding at least 256 full records."""
        need = 256 * (REC_HEADER + self.snaplen + 8)
        size = RING_MIN_BYTES
        while size < need:
            size <<= 1
        return size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["filter"] = [list(i) for i in self.filter]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CaptureSpec":
        return cls(**{**d, "filter": tuple(tuple(i) for i in d.get("filter", ()))})


# one captured frame in the ring (ebplane.runtime.trace reads it); REC_HEADER bytes before
# the frame
CAP_REC = Layout("ebp_cap_rec", [
    Field("ts", "__u64", comment="bpf_ktime_get_ns"),
    Field("ifindex", "__u32"),
    Field("pkt_len", "__u32", comment="length of the frame"),
    Field("cap_len", "__u32", comment="bytes of it in data[]"),
    Field("stage", "__u32", comment="deciding stage, 0xff: none"),
    Field("slot", "__u32", comment="its counter slot: rule id, default, malformed, outcome"),
    Field("action", "__s32", comment="the verdict returned"),
    Field("cpu", "__u32"),
    Field("pad", "__u32"),
    Field("data", "__u8", "EBP_CAP_SNAPLEN")],
    "one captured frame (ebplane.runtime.trace reads it)")
REC_HEADER = CAP_REC.size
CAP_RATE = Layout("ebp_cap_rate", [Field("window", "__u64"), Field("n", "__u64")],
                  "frames captured in the current second, per CPU (rate limit)")


_SIZE = {0x00: ("w", 4), 0x08: ("h", 2), 0x10: ("b", 1)}
_ALU = {0x00: "+", 0x10: "-", 0x20: "*", 0x30: "/", 0x40: "|", 0x50: "&", 0x60: "<<",
        0x70: ">>", 0x90: "%", 0xa0: "^"}
_JMP = {0x10: "==", 0x20: ">", 0x30: ">="}


def cbpf_to_c(insns, name: str = "ebp_cap_match") -> str:
    """Classic BPF (as ``tcpdump -ddd`` prints it) -> a C function
    ``__u32 name(EBP_CTX *ctx, __u32 wirelen)`` returning the filter's result (0: reject)."""
    n = len(insns)
    if not 0 < n <= 4096:
        raise UsageError(f"a capture filter of {n} classic BPF instructions (1..4096)")
    targets: set[int] = set()
    body: list[str] = []

    def target(i: int, off: int) -> str:
        t = i + 1 + off
        if t >= n:
            raise UsageError(f"capture filter: instruction {i} jumps past the end")
        targets.add(t)
        return f"L{t}"

    for i, (code, jt, jf, k) in enumerate(insns):
        code, jt, jf, k = int(code), int(jt), int(jf), int(k) & 0xffffffff
        cls, size, mode, op, src = code & 7, code & 0x18, code & 0xe0, code & 0xf0, code & 0x08
        kx = "X" if src else f"{k}u"
        if cls in (0, 1) and mode in (0x20, 0x40, 0xa0) and k >= 0x80000000:
            raise UsageError("capture filter: Linux-specific classic BPF extensions (negative "
                             "offsets such as vlan_tci) are not supported",
                             hint="write the filter without them (tcpdump compiles for "
                                  "Ethernet, EN10MB)")
        if cls == 0:  # LD
            if mode == 0x00:
                s = f"A = {k}u;"
            elif mode in (0x20, 0x40):
                sz, nb = _SIZE.get(size, (None, 0))
                if sz is None:
                    raise UsageError(f"capture filter: bad load size in instruction {i}")
                off = f"{k}u" if mode == 0x20 else f"X + {k}u"
                s = f"if (ebp_cap_ld{nb}(ctx, {off}, &A)) return 0;"
            elif mode == 0x60:
                s = f"A = M[{k & 15}];"
            elif mode == 0x80:
                s = "A = wirelen;"
            else:
                raise UsageError(f"capture filter: unsupported load in instruction {i}")
        elif cls == 1:  # LDX
            if mode == 0x00:
                s = f"X = {k}u;"
            elif mode == 0x60:
                s = f"X = M[{k & 15}];"
            elif mode == 0x80:
                s = "X = wirelen;"
            elif mode == 0xa0:
                s = f"if (ebp_cap_ld1(ctx, {k}u, &X)) return 0; X = (X & 0xf) << 2;"
            else:
                raise UsageError(f"capture filter: unsupported ldx in instruction {i}")
        elif cls == 2:
            s = f"M[{k & 15}] = A;"
        elif cls == 3:
            s = f"M[{k & 15}] = X;"
        elif cls == 4:  # ALU
            if op == 0x80:
                s = "A = -A;"
            elif op not in _ALU:
                raise UsageError(f"capture filter: unsupported ALU op in instruction {i}")
            elif op in (0x30, 0x90) and src:
                s = f"if (X == 0) return 0; A = A {_ALU[op]} X;"
            elif op in (0x30, 0x90) and k == 0:
                s = "return 0;"
            elif op in (0x60, 0x70) and src:
                s = f"A = X < 32 ? A {_ALU[op]} X : 0;"
            elif op in (0x60, 0x70):
                s = f"A = {'0' if k >= 32 else f'A {_ALU[op]} {k}u'};"
            else:
                s = f"A = A {_ALU[op]} {kx};"
        elif cls == 5:  # JMP
            if op == 0x00:
                s = f"goto {target(i, k)};"
            elif op in _JMP:
                s = f"if (A {_JMP[op]} {kx}) goto {target(i, jt)}; goto {target(i, jf)};"
            elif op == 0x40:
                s = f"if (A & {kx}) goto {target(i, jt)}; goto {target(i, jf)};"
            else:
                raise UsageError(f"capture filter: unsupported jump in instruction {i}")
        elif cls == 6:  # RET
            rv = code & 0x18
            s = "return A;" if rv == 0x10 else "return X;" if rv == 0x08 else f"return {k}u;"
        else:  # MISC
            s = "X = A;" if (code & 0xf8) == 0x00 else "A = X;"
        body.append(s)
    lines = [f"/* the capture filter, classic BPF translated instruction by instruction */",
             f"static __always_inline __u32 {name}(EBP_CTX *ctx, __u32 wirelen)", "{",
             "\t__u32 A = 0, X = 0;", "\t__u32 M[16] = {};", ""]
    for i, s in enumerate(body):
        lines.append(f"L{i}:\t{s}" if i in targets else f"\t{s}")
    lines += ["\treturn 0;", "}"]
    return "\n".join(lines)


def capture_c(cap: CaptureSpec, hook: str) -> str:
    """The capture hook ``ebp_capture(ctx, pkt, action)`` and its helpers."""
    xdp = hook == "xdp"
    load = "bpf_xdp_load_bytes" if xdp else "bpf_skb_load_bytes"
    ifindex = "ctx->ingress_ifindex" if xdp else "ctx->ifindex"
    out = ["/* packet loads of the capture filter: big-endian, like classic BPF */"]
    for nb, conv in ((1, "b[0]"), (2, "(__u32)b[0] << 8 | b[1]"),
                     (4, "(__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3]")):
        out.append("\n".join([
            f"static __always_inline int ebp_cap_ld{nb}(EBP_CTX *ctx, __u32 off, __u32 *v)",
            "{", "\t__u8 b[4] = {};", "",
            f"\tif ({load}(ctx, off, b, {nb}))", "\t\treturn -1;",
            f"\t*v = {conv};", "\treturn 0;", "}"]))
    if cap.filter:
        out.append(cbpf_to_c(cap.filter))
    conds = []
    if cap.stage is not None:
        conds.append(f"stage != {cap.stage}")
    if cap.slot is not None:
        conds.append(f"slot != {cap.slot}")
    if cap.verdict is not None:
        conds.append(f"action != {cap.verdict}")
    body = [
        "/* the capture hook: at the verdict point, while `ebplane trace` runs */",
        "static __always_inline void ebp_capture(EBP_CTX *ctx, struct ebp_pkt *pkt, int action)",
        "{",
        "\t__u32 z = 0, stage = 0xff, slot = 0, len;",
        "\tstruct ebp_trace *t = bpf_map_lookup_elem(&ebp_trace, &z);",
        "\tstruct ebp_cap_rec *rec;",
        "",
        "\tif (t) {", "\t\tstage = t->stage;", "\t\tslot = t->slot;", "\t}",
    ]
    if conds:
        body += [f"\tif ({' || '.join(conds)})", "\t\treturn;"]
    body.append(f"\tebp_count(&{CAPTURE_MAPS['capture-counters']}, {CAPTURE_COUNTERS.index('selected')}, pkt->len);")
    if cap.filter:
        body += ["\tif (!ebp_cap_match(ctx, pkt->len)) {",
                 f"\t\tebp_count(&{CAPTURE_MAPS['capture-counters']}, {CAPTURE_COUNTERS.index('filtered_out')}, pkt->len);",
                 "\t\treturn;", "\t}"]
    if cap.rate:
        body += [f"\tstruct ebp_cap_rate *r = bpf_map_lookup_elem(&{CAPTURE_MAPS['capture-rate']}, &z);",
                 "\tif (r) {",
                 "\t\t__u64 now = bpf_ktime_get_ns();",
                 "\t\tif (now - r->window >= 1000000000ull) {",
                 "\t\t\tr->window = now;", "\t\t\tr->n = 0;", "\t\t}",
                 f"\t\tif (r->n >= {cap.rate}) {{",
                 f"\t\t\tebp_count(&{CAPTURE_MAPS['capture-counters']}, {CAPTURE_COUNTERS.index('rate_limited')}, pkt->len);",
                 "\t\t\treturn;", "\t\t}", "\t\tr->n++;", "\t}"]
    body += [
        f"\trec = bpf_ringbuf_reserve(&{CAPTURE_MAPS['capture']}, sizeof(*rec), 0);",
        "\tif (!rec) {",
        f"\t\tebp_count(&{CAPTURE_MAPS['capture-counters']}, {CAPTURE_COUNTERS.index('ring_full')}, pkt->len);",
        "\t\treturn;", "\t}",
        "\trec->ts = bpf_ktime_get_ns();",
        f"\trec->ifindex = {ifindex};",
        "\trec->pkt_len = pkt->len;",
        "\trec->stage = stage;", "\trec->slot = slot;", "\trec->action = action;",
        "\trec->cpu = bpf_get_smp_processor_id();", "\trec->pad = 0;",
        "\tlen = pkt->len < EBP_CAP_SNAPLEN ? pkt->len : EBP_CAP_SNAPLEN;",
        f"\tif (len < 1 || len > EBP_CAP_SNAPLEN || {load}(ctx, 0, rec->data, len)) {{",
        f"\t\tebp_count(&{CAPTURE_MAPS['capture-counters']}, {CAPTURE_COUNTERS.index('copy_failed')}, pkt->len);",
        "\t\tlen = 0;", "\t}",
        "\trec->cap_len = len;",
        "\tbpf_ringbuf_submit(rec, 0);",
        f"\tebp_count(&{CAPTURE_MAPS['capture-counters']}, {CAPTURE_COUNTERS.index('captured')}, pkt->len);",
        "}",
    ]
    out.append("\n".join(body))
    return "\n\n".join(out)
