"""clang -> BPF ELF: objects, compile errors that point at the C line, the content-hash cache."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ebplane.errors import CompileError
from ebplane.toolchain.clang import cache_dir, compile_c, compile_file

BPF_DIR = Path(__file__).parent / "bpf"
EM_BPF = 247

SOURCE = """\
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int verdict(struct xdp_md *ctx)
{
\treturn VERDICT;
}

char LICENSE[] SEC("license") = "GPL";
"""


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """Every test gets an empty compile cache of its own."""
    d = tmp_path / "cache"
    monkeypatch.setenv("EBPLANE_CACHE_DIR", str(d))
    return d


def _is_bpf_elf(elf: bytes) -> bool:
    return elf[:4] == b"\x7fELF" and struct.unpack_from("<H", elf, 18)[0] == EM_BPF


def test_compile_file_gives_a_bpf_object_named_after_the_file(cache):
    res = compile_file(BPF_DIR / "xdp_swap.bpf.c")
    assert _is_bpf_elf(res.elf)
    assert not res.cached
    assert res.path.parent == cache == cache_dir()
    assert res.path.name.startswith("xdp_swap-") and res.path.read_bytes() == res.elf


def test_second_compile_is_served_from_the_cache():
    first = compile_c(SOURCE, name="v", defines={"VERDICT": 2})
    second = compile_c(SOURCE, name="v", defines={"VERDICT": 2})
    assert (first.cached, second.cached) == (False, True)
    assert second.key == first.key and second.elf == first.elf


def test_changing_source_or_defines_misses_the_cache():
    base = compile_c(SOURCE, name="v", defines={"VERDICT": 2})
    other_define = compile_c(SOURCE, name="v", defines={"VERDICT": 1})
    other_source = compile_c(SOURCE.replace("return VERDICT;", "return VERDICT + 0;"), name="v",
                             defines={"VERDICT": 2})
    assert not other_define.cached and not other_source.cached
    assert len({base.key, other_define.key, other_source.key}) == 3
    assert other_define.elf != base.elf
    # the first one is still there: the cache keeps every variant
    assert compile_c(SOURCE, name="v", defines={"VERDICT": 2}).cached


def test_use_cache_false_recompiles():
    compile_c(SOURCE, name="v", defines={"VERDICT": 2})
    assert not compile_c(SOURCE, name="v", defines={"VERDICT": 2}, use_cache=False).cached


def test_compile_error_names_file_line_and_source_line():
    src = SOURCE.replace("return VERDICT;", "return undefined_thing + 1;")
    with pytest.raises(CompileError) as ei:
        compile_c(src, name="broken")
    e = ei.value
    line = src.splitlines().index("\treturn undefined_thing + 1;") + 1
    assert (e.file, e.line) == ("broken.bpf.c", line)
    assert e.source_line == "return undefined_thing + 1;"
    first, second = str(e).splitlines()
    assert first.startswith(f"broken.bpf.c:{line}:") and "undefined_thing" in first
    assert second.strip() == "return undefined_thing + 1;"
    assert "error:" in e.diagnostics and "/tmp/" not in str(e)
    assert e.exit_code == 3


def test_missing_header_is_a_compile_error():
    with pytest.raises(CompileError) as ei:
        compile_c('#include "no_such_header.h"\n' + SOURCE, name="nohdr", defines={"VERDICT": 2})
    assert ei.value.line == 1 and "no_such_header.h" in str(ei.value)


def test_failed_compile_leaves_nothing_in_the_cache(cache):
    with pytest.raises(CompileError):
        compile_c("int broken(", name="broken")
    assert not cache.exists() or not list(cache.iterdir())


def test_the_same_spec_at_two_paths_compiles_once(tmp_path):
    """The generated C names the pipeline, not the spec's path: a copy of a spec elsewhere
    (another checkout, a temporary directory) is a cache hit."""
    from ebplane.codegen.pipeline import generate
    from ebplane.spec import load_spec
    text = Path(__file__).parent.parent.joinpath("examples", "edge.yaml").read_text()
    paths = [tmp_path / d / "edge.yaml" for d in ("one", "two")]
    for p in paths:
        p.parent.mkdir()
        p.write_text(text)
    a, b = (generate(load_spec(p)).source for p in paths)
    assert a == b and str(tmp_path) not in a
    first, second = (compile_c(src, name="edge") for src in (a, b))
    assert (first.cached, second.cached) == (False, True)
