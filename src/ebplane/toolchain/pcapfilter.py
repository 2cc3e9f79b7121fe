"""tcpdump/pcap-filter expressions -> classic BPF, through libpcap's compiler (``tcpdump -ddd``).

``tcpdump -y EN10MB -ddd EXPR`` compiles for Ethernet without opening a device or a capture
(the program ebplane's capture hook runs sees Ethernet frames at XDP and TC alike).  The
instructions come back as ``(code, jt, jf, k)``; :func:`ebplane.codegen.capture.cbpf_to_c`
turns them into the C of the capture hook.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from ebplane.errors import ToolchainError, UsageError


def compile_filter(expr: str) -> list[tuple[int, int, int, int]]:
    """The classic BPF program of a pcap-filter expression (UsageError if it is not one)."""
    tcpdump = shutil.which("tcpdump") or next(
        (p for p in ("/usr/sbin/tcpdump", "/usr/bin/tcpdump") if os.path.exists(p)), None)
    if tcpdump is None:
        raise ToolchainError("a capture filter needs tcpdump (libpcap's filter compiler)",
                            hint="install Debian's tcpdump package (scripts/setup does)")
    proc = subprocess.run([tcpdump, "-y", "EN10MB", "-ddd", "--", expr], capture_output=True,
                          text=True, timeout=30)
    if proc.returncode != 0:
        msg = " ".join(l for l in proc.stderr.splitlines() if not l.startswith("Running as"))
        raise UsageError(f"capture filter {expr!r}: {msg.strip() or 'tcpdump refused it'}",
                         hint="a tcpdump/pcap-filter expression, e.g. 'udp port 53' "
                              "(see man pcap-filter)")
    lines = proc.stdout.split()
    try:
        n = int(lines[0])
        nums = [int(x) for x in lines[1:]]
    except (IndexError, ValueError):
        raise UsageError(f"capture filter {expr!r}: unexpected tcpdump output") from None
    if len(nums) != 4 * n:
        raise UsageError(f"capture filter {expr!r}: unexpected tcpdump output")
    return [tuple(nums[i:i + 4]) for i in range(0, len(nums), 4)]
