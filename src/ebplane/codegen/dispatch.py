"""C for pipelines that compose on one interface and hook (``priority:``, docs/composition.md).

At XDP one hook holds one program, so ebplane attaches a small *root* program per interface
(once, through a bpf_link) and keeps the member pipelines in one PROG_ARRAY per network
namespace: interface number ``b`` (its *base*) owns slots ``b*SLOTS .. b*SLOTS+SLOTS-1``, and a
pipeline of priority ``p`` sits in slot ``b*SLOTS+p``.  The root tail-calls the slots in order;
a member that lets a packet pass tail-calls the slots after its own, so the next member (if
any) decides.  A tail call to an empty slot falls through to the next statement: adding,
replacing or removing a member is one map update, atomic for every other member.

A member tries only the slots whose bit is set in the interface's ``mask`` (its value in
``ebp_chain_base``): the control plane sets a member's bit after filling its slot and clears
it before emptying the slot, so a member that stays always has its bit, and a tail call to a
slot emptied meanwhile falls through to the next candidate.  (Scanning every later slot
instead costs about 2 ns per empty slot: measured in docs/composition.md.)

The kernel allows 33 tail calls per packet and counts the attempts, empty slots included; a
packet makes at most SLOTS attempts on its way through the chain (root and members together
try each slot once) plus one per member in parser mode separate, so SLOTS = 16 keeps within
the limit.

At TC, tcx runs several programs per hook itself (bpf_mprog): a member returns TCX_NEXT
(TC_ACT_UNSPEC) instead of TC_ACT_OK, and the next program runs.

Every name and size of the chain is defined here once; the control plane
(``ebplane.runtime.dispatch``) creates the maps with the same definitions.
"""

from __future__ import annotations

from ebplane.codegen.layout import Field, Layout

CHAIN_MAP = "ebp_chain"        # PROG_ARRAY: the members, slot = base * SLOTS + priority
BASE_MAP = "ebp_chain_base"    # HASH ifindex -> struct ebp_chain_if {base, mask}
SLOTS = 16                     # priorities 0..SLOTS-1 (spec.pipeline.PRIORITY_MAX + 1)
MAX_INTERFACES = 64            # interfaces with composed XDP pipelines per network namespace
CHAIN_ENTRIES = SLOTS * MAX_INTERFACES
ROOT_NAME = "ebp_dispatch"
# the value of BASE_MAP (the control plane packs it with kernel.codec.Packed(CHAIN_IF))
CHAIN_IF = Layout("ebp_chain_if", [
    Field("base", "__u32"),
    Field("mask", "__u32", comment=f"bit p: slot base*{SLOTS}+p")],
    "composition: interface index -> its slots (base*SLOTS ..) and which are used")


def chain_maps_c() -> str:
    """The declarations of the two shared maps (members and roots reuse the pinned ones)."""
    return "\n".join([
        f"/* composition: the members of every interface, slot = base * {SLOTS} + priority */",
        "struct {", "\t__uint(type, BPF_MAP_TYPE_PROG_ARRAY);",
        f"\t__uint(max_entries, {CHAIN_ENTRIES});", "\t__type(key, __u32);",
        "\t__type(value, __u32);", f"}} {CHAIN_MAP} SEC(\".maps\");", "",
        CHAIN_IF.c(), "struct {", "\t__uint(type, BPF_MAP_TYPE_HASH);",
        f"\t__uint(max_entries, {MAX_INTERFACES});", "\t__type(key, __u32);",
        "\t__type(value, struct ebp_chain_if);", f"}} {BASE_MAP} SEC(\".maps\");"])


def member_next_c(priority: int, base: int | None = None) -> str:
    """``ebp_chain_next(ctx)``: go on with the members after ``priority`` on the interface the
    packet came in through (returns only when none follows, or outside a chain: test runs).
    ``base``: the pipeline has one interface, whose base is known when it is built: constant
    slots, which the kernel turns into direct jumps (patched when a slot changes); else the
    interface's base and mask are looked up per packet and the tail calls are indirect
    (retpolines on this machine: measured in docs/composition.md)."""
    if base is not None:
        calls = [f"\tbpf_tail_call(ctx, &{CHAIN_MAP}, {base * SLOTS + j});"
                 for j in range(priority + 1, SLOTS)]
        return "\n".join([
            f"/* composition (priority {priority}, interface base {base}): a passed packet "
            f"goes on to the next member */",
            "static __always_inline void ebp_chain_next(struct xdp_md *ctx)", "{",
            *calls, "}"])
    calls = [f"\tif (m & {1 << j:#x})\n\t\tbpf_tail_call(ctx, &{CHAIN_MAP}, b + {j});"
             for j in range(priority + 1, SLOTS)]
    return "\n".join([
        f"/* composition (priority {priority}): a passed packet goes on to the next member */",
        "static __always_inline void ebp_chain_next(struct xdp_md *ctx)", "{",
        "\t__u32 ifindex = ctx->ingress_ifindex;",
        f"\tstruct ebp_chain_if *ci = bpf_map_lookup_elem(&{BASE_MAP}, &ifindex);", "",
        "\tif (!ci)", "\t\treturn;",
        f"\t__u32 b = ci->base * {SLOTS}, m = ci->mask;",
        *calls, "}"])


def root_c(base: int) -> str:
    """The root program of the interface with ``base``: the members in priority order."""
    calls = [f"\tbpf_tail_call(ctx, &{CHAIN_MAP}, {base * SLOTS + j});" for j in range(SLOTS)]
    return "\n".join([
        "// SPDX-License-Identifier: GPL-2.0",
        f"/* ebplane's dispatcher root for interface base {base}: runs the member pipelines",
        " * of the interface in priority order (docs/composition.md). Generated; do not edit. */",
        "#include <linux/bpf.h>", "#include <bpf/bpf_helpers.h>", "",
        chain_maps_c(), "",
        'SEC("xdp.frags")', f"int {ROOT_NAME}(struct xdp_md *ctx)", "{",
        *calls,
        "\treturn XDP_PASS; /* no member: the kernel has the packet */", "}", "",
        'char LICENSE[] SEC("license") = "GPL";', ""])
