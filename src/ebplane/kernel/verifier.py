"""Reading verifier logs: find the line that says why, and the C line it refers to."""

from __future__ import annotations

import re

# lines that carry no verdict: statistics at the end of every log
_NOISE = (
    re.compile(r"^processed \d+ insns"),
    re.compile(r"^verification time"),
    re.compile(r"^stack depth"),
    re.compile(r"^-- (BEGIN|END) PROG LOAD LOG --"),
    re.compile(r"^Validating .* func#"),
)
# an instruction trace line ("12: (61) r2 = ...") or a register state dump ("12: R1=ctx()")
_INSN = re.compile(r"^\d+: (\(|R\d|frame)")
# BTF line info printed by the verifier: "; <source code> @ file.c:42"
_SOURCE = re.compile(r"^; (?P<code>.*?)\s*@ (?P<file>[^:\s]+):(?P<line>\d+)\s*$")


def summarize(log: str) -> tuple[str, str | None]:
    """Return (the verifier's last meaningful line, "file:line: code" or None)."""
    lines = [ln.rstrip() for ln in log.splitlines()]
    reason_idx = None
    for i in range(len(lines) - 1, -1, -1):
        ln = lines[i].strip()
        if not ln or ln.startswith(";") or _INSN.match(ln) or any(p.match(ln) for p in _NOISE):
            continue
        reason_idx = i
        break
    if reason_idx is None:
        return ("no verifier log (the kernel refused before verification)", None)
    reason = lines[reason_idx].strip()
    # several messages often lead up to the last one ("invalid access to packet ..." then
    # "R2 offset is outside of the packet"): keep the first of a run of non-trace lines
    j = reason_idx
    while j > 0:
        prev = lines[j - 1].strip()
        if not prev or prev.startswith(";") or _INSN.match(prev) or any(p.match(prev) for p in _NOISE):
            break
        j -= 1
    if j != reason_idx:
        reason = lines[j].strip() + " -- " + reason
    source = None
    for k in range(j - 1, -1, -1):
        m = _SOURCE.match(lines[k].strip())
        if m:
            source = f"{m['file']}:{m['line']}: {m['code'].strip()}"
            break
    return reason, source
