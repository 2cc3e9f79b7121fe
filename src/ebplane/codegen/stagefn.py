"""Pieces of C that every stage kind's generator writes the same way: the stage's function
(``stage_<idx>_<kind>``, the signature ``StageGen`` promises), its per-outcome counters map,
and the ending that counts the outcome in ``slot`` and names it in the trace record."""

from __future__ import annotations

from typing import Sequence

from ebplane.codegen.pipeline import Emit


def stage_function(idx: int, stage, comment: str, body: Sequence[str]) -> str:
    """``stage_<idx>_<kind>(EBP_CTX *ctx, struct ebp_pkt *pkt, int malformed)`` with
    ``body`` (lines, tab-indented), after the comment ``<kind> '<name>': <comment>``."""
    return "\n".join([
        f"/* {stage.kind} '{stage.name}': {comment} */",
        f"static __always_inline int stage_{idx}_{stage.kind}(EBP_CTX *ctx, struct ebp_pkt *pkt, int malformed)",
        "{", *body, "}"])


def count_and_return(idx: int, counters: str, action: str = "act") -> list[str]:
    """Count the packet in slot ``slot`` of ``counters``; when ``action`` decides (is not
    EBP_NEXT), the trace record names the stage and that slot; return ``action``."""
    return [f"\tebp_count(&{counters}, slot, pkt->len);",
            f"\tif ({action} != EBP_NEXT)",
            f"\t\tEBP_TRACE_SET({idx}, slot);",
            f"\treturn {action};"]


def counters_map(out: Emit, cname: str, stage, slots: Sequence[str],
                 comment: str | None = None) -> str:
    """Declare the stage's per-CPU counters ``cname``: a ``struct ebp_count`` per slot, the
    slots named in the manifest; the comment says ``<kind> '<name>': <slots>`` unless
    given.  Returns ``cname``."""
    out.map(cname, "BPF_MAP_TYPE_PERCPU_ARRAY", "__u32", "struct ebp_count", len(slots),
            comment if comment is not None
            else f"{stage.kind} '{stage.name}': {', '.join(slots)}",
            stage=stage.name, role="counters", slots=tuple(slots))
    return cname
