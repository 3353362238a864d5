"""No module of the package is over 500 lines (CONTRIBUTING.md, "Module size"): a module holds one idea."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raymatch"
MAX_LINES = 500
MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_modules():
    assert len(MODULES) > 50 and PACKAGE / "match" / "inputs.py" in MODULES


@pytest.mark.parametrize("module", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_module_is_at_most_500_lines(module):
    lines = len(module.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (f"module-size rule broken: {module.relative_to(ROOT)} has {lines} lines, over the "
                                f"limit of {MAX_LINES} lines per module in raymatch/ (CONTRIBUTING.md, \"Module "
                                f"size\"): split it by idea")

