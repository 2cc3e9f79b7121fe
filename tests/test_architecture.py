"""The layering of docs/architecture.md, checked against the code.

Every import of an ebplane module is read from the source (``ast``: top-level imports and
the lazy ones inside functions alike) and must go to the same package or to a layer below
the importer's.  A lazy import that breaks the order is allowed only with a comment
``# layering: <why>`` on its line, and this file lists none today.  The layer list is read
from the table in docs/architecture.md, so the document and the check cannot drift apart.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "ebplane"
DOC = ROOT / "docs" / "architecture.md"

# what a module of the package root (ebplane/__init__.py: the version) counts as
ROOT_LAYER = "errors"
# the one module allowed to declare ctypes prototypes and structures
FFI_MODULE = "kernel/libbpf.py"
EXCEPTION_MARK = "# layering:"


def doc_layers() -> list[tuple[str, ...]]:
    """The Layers table of docs/architecture.md, bottom up: the ``ebplane.*`` packages of
    each row."""
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    layers = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`ebplane."):
            continue
        layers.append(tuple(re.findall(r"`ebplane\.(\w+)`", cells[1])))
    return layers


LAYERS = doc_layers()
RANK = {pkg: i for i, row in enumerate(LAYERS) for pkg in row}


def package_of(module: str) -> str:
    """``ebplane.kernel.maps`` -> ``kernel``; ``ebplane`` (the root) -> ROOT_LAYER."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_LAYER


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported ebplane module, source line) of every import in ``path``."""
    source = path.read_text()
    lines = source.splitlines()
    out = []
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "ebplane":  # from ebplane import kernel -> ebplane.kernel
                names = [f"ebplane.{a.name}" if (SRC / a.name).is_dir()
                         or (SRC / f"{a.name}.py").exists() else "ebplane"
                         for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path}:{node.lineno}: relative import; ebplane imports "
                                 f"absolutely so that this check sees every edge")
        else:
            continue
        for name in names:
            if name == "ebplane" or name.startswith("ebplane."):
                out.append((node.lineno, name, lines[node.lineno - 1]))
    return out


def own_package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.name != "__init__.py" \
        else ROOT_LAYER


def test_the_documented_layers_name_every_package_once():
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    packages |= {p.stem for p in SRC.glob("*.py") if p.name != "__init__.py"}
    listed = [pkg for row in LAYERS for pkg in row]
    assert len(listed) == len(set(listed)), f"a package is in two rows: {listed}"
    assert set(listed) == packages, (
        f"docs/architecture.md lists {sorted(listed)}, the source has {sorted(packages)}")


def test_every_import_goes_down_the_layers():
    wrong = []
    for path in modules():
        me = own_package(path)
        for line, name, text in imports(path):
            target = package_of(name)
            if target == me or EXCEPTION_MARK in text:
                continue
            assert target in RANK, f"{path.relative_to(SRC)}:{line}: unknown package {name}"
            if RANK[target] >= RANK[me]:
                wrong.append(f"{path.relative_to(SRC)}:{line}: {me} imports {name} "
                             f"({target} is not below {me})")
    assert not wrong, "imports against the layer order of docs/architecture.md:\n" + \
        "\n".join(wrong)


def test_no_exception_to_the_layering_is_left_unexplained():
    for path in modules():
        for n, text in enumerate(path.read_text().splitlines(), 1):
            if EXCEPTION_MARK in text:
                reason = text.split(EXCEPTION_MARK, 1)[1].strip()
                assert len(reason) > 10, f"{path.relative_to(SRC)}:{n}: say why ({text!r})"


# a ctypes declaration: a Structure/Union subclass, a prototype, a library handle
_DECLARATION = re.compile(r"class \w+\((ctypes\.)?(Structure|Union|LittleEndianStructure)\)"
                          r"|\.argtypes\s*=|\.restype\s*=|CFUNCTYPE\(|ctypes\.CDLL\(|cdll\.")


def test_ctypes_is_declared_in_one_module():
    found = [f"{path.relative_to(SRC)}:{n}: {text.strip()}"
             for path in modules() if str(path.relative_to(SRC)) != FFI_MODULE
             for n, text in enumerate(path.read_text().splitlines(), 1)
             if _DECLARATION.search(text)]
    assert not found, f"ctypes declarations outside {FFI_MODULE}:\n" + "\n".join(found)


@pytest.mark.parametrize("layer", ["errors", "protocols", "spec"])
def test_low_layers_import_without_the_kernel(layer):
    """errors, protocols and spec load without libbpf: a fresh interpreter imports them
    and has no ebplane.kernel module afterwards (importing spec must not parse the P4
    library either: that is done on first use)."""
    import subprocess
    import sys
    code = (f"import sys, ebplane.{layer}; "
            "assert not [m for m in sys.modules if m.startswith('ebplane.kernel')]; "
            "L = sys.modules.get('ebplane.protocols.library'); "
            "assert L is None or L.load_library.cache_info().currsize == 0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
