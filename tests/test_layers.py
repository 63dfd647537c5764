"""The import layers: kernels <- backends <- ops <- blocks, with the op list below the backends.

Every module of fused_resnet imports on its own, in a fresh interpreter (an import loop fails
there for the module imported first), and, read from the sources: fused_resnet.backends never
imports the layers above it (ops, blocks, convert), the op list imports neither the backends
nor ops, and the Triton kernels (kernels/) never import fused_resnet.
"""
from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import fused_resnet

ROOT = Path(fused_resnet.__file__).resolve().parent.parent
PACKAGE = ROOT / "fused_resnet"

# Each module imported in a child forked from an interpreter that has imported only torch,
# torchvision and triton (each child pays for fused_resnet's imports, not theirs again); the
# child's exit status says how it went.
_IMPORT_EACH = """
import importlib, os, sys, traceback
import torch, torchvision
try:
    import triton, triton.language
except ImportError:
    pass
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name)
print("failed:", failed)
sys.exit(1 if failed else 0)
"""


def _modules() -> list[str]:
    """Every module of the fused_resnet package (the command-line entry point aside: it runs)."""
    names = [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "fused_resnet.")]
    return ["fused_resnet"] + [n for n in names if n != "fused_resnet.__main__"]


def test_every_module_imports_on_its_own():
    modules = _modules()
    assert "fused_resnet.op_list" in modules and "fused_resnet.backends.cuda" in modules
    out = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-6000:]


def _imports(path: Path, package: str) -> set[str]:
    """The absolute names every import statement of ``path`` (a module of ``package``) names,
    those inside functions too; ``from X import y`` names X and X.y."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            module = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def _package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts if path.name == "__init__.py" else parts[:-1]).removesuffix(".__init__")


def _forbidden(paths, banned: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        hits = sorted(n for n in _imports(path, _package_of(path)) if any(n == b or n.startswith(b + ".")
                                                                           for b in banned))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    return found


def test_backends_import_no_layer_above_them():
    paths = sorted((PACKAGE / "backends").rglob("*.py"))
    assert paths
    assert _forbidden(paths, ("fused_resnet.ops", "fused_resnet.blocks", "fused_resnet.convert")) == {}


def test_op_list_imports_neither_backends_nor_ops():
    banned = ("fused_resnet.backends", "fused_resnet.ops", "fused_resnet.blocks", "fused_resnet.convert")
    assert _forbidden([PACKAGE / "op_list.py"], banned) == {}


def test_kernels_import_no_fused_resnet():
    paths = sorted((ROOT / "kernels").rglob("*.py"))
    assert paths
    assert _forbidden(paths, ("fused_resnet",)) == {}


def test_the_checker_sees_relative_imports(tmp_path):
    """``from .. import ops`` in a backend module is fused_resnet.ops."""
    path = PACKAGE / "backends" / "cuda.py"
    names = _imports(path, _package_of(path))
    assert _package_of(path) == "fused_resnet.backends"
    assert {"fused_resnet._ext", "fused_resnet.op_list", "fused_resnet.backends.choice"} <= names
