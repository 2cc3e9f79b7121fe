"""Restricted C -> BPF ELF with clang, cached by content hash.

The cache key covers the source, every header it can include from ebplane's own include
directory, the flags and the compiler's version, so a changed header or compiler never
serves a stale object.  Cache: ``$EBPLANE_CACHE_DIR`` or ``$XDG_CACHE_HOME/ebplane`` (default
``~/.cache/ebplane``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ebplane.errors import CompileError, ToolchainError

INCLUDE_DIR = Path(__file__).resolve().parent.parent / "codegen" / "bpf"
# each stage kind keeps its reviewed C header in its own package
STAGE_DIRS = sorted(p.parent for p in (INCLUDE_DIR.parent.parent / "stages").glob("*/*.h"))
INCLUDE_DIRS = [INCLUDE_DIR, *dict.fromkeys(STAGE_DIRS)]
CLANG_CANDIDATES = ("clang-19", "clang")


@functools.lru_cache(maxsize=1)
def find_clang() -> tuple[str, str]:
    """Path and version line of the clang that ebplane uses."""
    env = os.environ.get("EBPLANE_CLANG")
    for cand in ([env] if env else []) + list(CLANG_CANDIDATES):
        path = shutil.which(cand)
        if path:
            out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
            return path, out.splitlines()[0] if out else cand
    raise ToolchainError("clang-19 not found",
                         hint="install it: apt-get install clang-19 llvm-19 (or run scripts/setup)")


def _arch_include() -> list[str]:
    # Debian's multiarch layout keeps asm/types.h under /usr/include/<triplet>
    triplet = f"{platform.machine()}-linux-gnu"
    d = Path("/usr/include") / triplet
    return [f"-I{d}"] if d.is_dir() else []


def cache_dir() -> Path:
    d = os.environ.get("EBPLANE_CACHE_DIR")
    if d:
        return Path(d)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ebplane"


@dataclass
class CompileResult:
    elf: bytes
    path: Path
    cached: bool
    key: str


def _headers_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(q for d in INCLUDE_DIRS for q in d.glob("*.h")):
        h.update(str(p.relative_to(INCLUDE_DIR.parent.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


_DIAG = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<kind>error|fatal error): "
                   r"(?P<msg>.*)$", re.M)


def compile_c(source: str, *, name: str = "prog", defines: dict[str, str | int] | None = None,
              extra_flags: list[str] | None = None, use_cache: bool = True) -> CompileResult:
    """Compile one translation unit of restricted C to a BPF object.

    ``name`` becomes the file name clang sees (``name.bpf.c``), so diagnostics and BTF line
    info point at it.  Raises CompileError with file:line and the offending source line.
    """
    clang, version = find_clang()
    flags = ["-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-function",
             "-Wno-unused-variable", "-Werror=implicit-function-declaration",
             *(f"-I{d}" for d in INCLUDE_DIRS), *_arch_include()]
    for k, v in sorted((defines or {}).items()):
        flags.append(f"-D{k}={v}")
    flags += extra_flags or []
    h = hashlib.sha256()
    for part in (version, " ".join(flags), _headers_digest(), name, source):
        h.update(part.encode())
        h.update(b"\0")
    key = h.hexdigest()[:32]
    cdir = cache_dir()
    cached = cdir / f"{name}-{key}.bpf.o"
    if use_cache and cached.exists():
        return CompileResult(cached.read_bytes(), cached, True, key)

    with tempfile.TemporaryDirectory(prefix="ebplane-cc-") as tmp:
        src = Path(tmp) / f"{name}.bpf.c"
        src.write_text(source)
        out = Path(tmp) / f"{name}.bpf.o"
        # a relative source path: diagnostics and BTF line info (hence verifier messages)
        # then name ``name.bpf.c``, not a temporary directory that is gone afterwards
        res = subprocess.run([clang, *flags, "-c", src.name, "-o", out.name],
                             capture_output=True, text=True, cwd=tmp)
        if res.returncode != 0:
            raise _compile_error(res.stderr, source, src.name)
        elf = out.read_bytes()
    cdir.mkdir(parents=True, exist_ok=True)
    tmpf = cdir / f".{cached.name}.{os.getpid()}"
    tmpf.write_bytes(elf)
    os.replace(tmpf, cached)  # atomic: concurrent compiles never see half a file
    return CompileResult(elf, cached, False, key)


def compile_file(path: str | Path, **kw) -> CompileResult:
    path = Path(path)
    name = path.name.removesuffix(".c").removesuffix(".bpf")
    return compile_c(path.read_text(), name=name, **kw)


def _compile_error(stderr: str, source: str, filename: str) -> CompileError:
    m = _DIAG.search(stderr)
    if not m:
        return CompileError(f"clang failed: {stderr.strip().splitlines()[-1] if stderr.strip() else '?'}",
                            diagnostics=stderr)
    line = int(m["line"])
    src_line = None
    if Path(m["file"]).name == filename:
        lines = source.splitlines()
        if 0 < line <= len(lines):
            src_line = lines[line - 1].strip()
    where = f"{Path(m['file']).name}:{line}:{m['col']}"
    text = f"{where}: {m['msg']}"
    if src_line:
        text += f"\n    {src_line}"
    return CompileError(text, diagnostics=stderr, file=m["file"], line=line, source_line=src_line)
