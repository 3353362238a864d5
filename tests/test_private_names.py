"""No private name (``_x``) is imported from a module of another raymatch package (CONTRIBUTING.md, "Layers")."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted((ROOT / "raymatch").rglob("*.py"))


def _package(module: str) -> str:
    """``raymatch.<package>`` of a dotted module name (``raymatch`` itself for the root modules)."""
    return ".".join(module.split(".")[:2])


def _private_imports_across_packages(path: Path) -> list[str]:
    """``from X import _name`` statements of ``path`` whose X is a raymatch module of another package."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        base = base[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
            if node.level else (node.module or "")
        if not source.startswith("raymatch") or _package(source) == _package(module):
            continue
        found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name} from {source}"
                  for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    return found


def test_no_private_name_is_imported_from_another_package():
    found = [line for path in MODULES for line in _private_imports_across_packages(path)]
    assert not found, "private names imported across packages (CONTRIBUTING.md, \"Layers\"):\n" + "\n".join(found)
