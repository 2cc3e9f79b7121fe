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
KINDS_PACKAGE = "stages"


def doc_stage_roles() -> dict[str, str]:
    """The table of docs/architecture.md's "Modules of a stage kind": module name of a kind
    package (``spec``, ``gen``, ...; ``*`` for any other) -> the package whose layer it
    sits at."""
    text = DOC.read_text()
    section = text.split("## Modules of a stage kind", 1)[1].split("\n## ", 1)[0]
    roles = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[1].startswith("`ebplane."):
            continue
        layer = re.fullmatch(r"`ebplane\.(\w+)`", cells[1]).group(1)
        for mod in re.findall(r"`([\w*]+)(?:\.py)?`", cells[0]):
            roles[mod] = layer
    return roles


STAGE_ROLES = doc_stage_roles()


def layer_of(module: str) -> str:
    """The package whose layer ``module`` sits at: its own package, except inside
    ``ebplane.stages``, where each module has the layer of its role (docs/architecture.md):
    the registry and each kind's ``__init__`` and ``spec`` at the description layer, ``gen``
    at code generation, the rest at the stage-kinds layer."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] != KINDS_PACKAGE:
        return package_of(module)
    if len(parts) == 2:
        return STAGE_ROLES["__init__"]
    if len(parts) == 3:  # a kind package's __init__, or a module of ebplane.stages itself
        return STAGE_ROLES["__init__"] if (SRC / KINDS_PACKAGE / parts[2]).is_dir() \
            else STAGE_ROLES.get(parts[2], STAGE_ROLES["*"])
    return STAGE_ROLES.get(parts[3], STAGE_ROLES["*"])


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["ebplane", *parts])


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
            # from ebplane import kernel -> ebplane.kernel (a module imported from its package)
            base = SRC.joinpath(*node.module.split(".")[1:])
            if node.module == "ebplane" or node.module.startswith("ebplane."):
                names = [f"{node.module}.{a.name}" if (base / a.name).is_dir()
                         or (base / f"{a.name}.py").exists() else node.module
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
    """Outside ``ebplane.stages`` a module imports its own package or a lower layer; a module
    of a stage kind (or an import of one) is ranked by its role, and may import what sits at
    its own layer or below (a kind's ``spec`` imports ``ebplane.spec``; a ``gen`` imports
    ``codegen``, never the ``control`` beside it)."""
    wrong = []
    for path in modules():
        me = own_package(path)
        my_layer = layer_of(module_name(path)) if me == KINDS_PACKAGE else me
        for line, name, text in imports(path):
            target = package_of(name)
            if EXCEPTION_MARK in text:
                continue
            if KINDS_PACKAGE not in (me, target):
                if target == me:
                    continue
                target_layer = target
            else:
                target_layer = layer_of(name)
            assert target_layer in RANK, \
                f"{path.relative_to(SRC)}:{line}: unknown package {name}"
            if RANK[target_layer] < RANK[my_layer] or (
                    KINDS_PACKAGE in (me, target) and RANK[target_layer] == RANK[my_layer]):
                continue
            wrong.append(f"{path.relative_to(SRC)}:{line}: {module_name(path)} (layer of "
                         f"{my_layer}) imports {name} (layer of {target_layer}, not below)")
    assert not wrong, "imports against the layer order of docs/architecture.md:\n" + \
        "\n".join(wrong)


def test_no_exception_to_the_layering_is_left_unexplained():
    for path in modules():
        for n, text in enumerate(path.read_text().splitlines(), 1):
            if EXCEPTION_MARK in text:
                reason = text.split(EXCEPTION_MARK, 1)[1].strip()
                assert len(reason) > 10, f"{path.relative_to(SRC)}:{n}: say why ({text!r})"


def test_stage_kind_modules_have_documented_roles():
    """Every module of a kind package is named in the roles table or falls under ``*``; the
    roles name layers of the Layers table."""
    assert {"__init__", "spec", "gen", "control", "*"} <= set(STAGE_ROLES)
    assert set(STAGE_ROLES.values()) <= set(RANK), STAGE_ROLES
    assert STAGE_ROLES["spec"] == "spec" and STAGE_ROLES["gen"] == "codegen"


def test_every_stage_kind_is_one_registered_package():
    """Every kind package declares its kinds (so the registry finds it) and the registry
    lists nothing else; each kind's package exports its parser, its generator and (when it
    has a control.py) its control under the kind."""
    from ebplane.stages import KINDS, ROLES, kind_module
    on_disk = {p.name for p in (SRC / KINDS_PACKAGE).iterdir()
               if (p / "__init__.py").exists()}
    assert set(KINDS.values()) == on_disk
    for kind, pkg in KINDS.items():
        for role, table in ROLES.items():
            mod = kind_module(kind, role)
            if role == "control" and mod is None:
                continue
            assert mod is not None, f"stage kind {kind}: no {pkg}/{role}.py"
            assert kind in getattr(mod, table), f"{pkg}/{role}.py: {table} lacks '{kind}'"
        assert getattr(kind_module(kind, "gen"), "GENERATORS")[kind].kind == kind


def test_no_isinstance_on_a_kind_outside_its_package():
    """The classes of a kind's spec model are tested for only inside the kind's package."""
    pattern = re.compile(r"isinstance\([^)]*\b(\w+Stage)\b")
    owner = {}
    for spec_mod in (SRC / KINDS_PACKAGE).glob("*/spec.py"):
        for cls in re.findall(r"^class (\w+Stage)\(", spec_mod.read_text(), re.M):
            owner[cls] = spec_mod.parent
    found = [f"{path.relative_to(SRC)}:{n}: {text.strip()}"
             for path in modules()
             for n, text in enumerate(path.read_text().splitlines(), 1)
             for cls in pattern.findall(text)
             if cls in owner and owner[cls] not in path.parents]
    assert not found, "isinstance on a stage kind outside its package:\n" + "\n".join(found)


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
