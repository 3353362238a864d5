"""Every ```python block of README.md, CONTRIBUTING.md and docs/*.md runs, as written.

The blocks of one file run in order in one namespace (a later block may use an earlier one's names), in a
temporary working directory. A block whose first line is ``# needs: cluster``, ``# needs: gpu`` or
``# needs: hub-cache`` (Hugging Face Hub weights in the local cache) is checked for its imports only: every
``import`` / ``from … import`` in it must resolve (CONTRIBUTING.md, "Docs").
Other languages (bash, yaml, plain) are not run.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = re.compile(r"#\s*needs:\s*(cluster|gpu|hub-cache)\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its file, its position among the file's Python blocks, its first line and its code."""

    path: Path
    index: int
    line: int
    code: str

    @property
    def needs(self) -> str | None:
        first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
        match = NEEDS.match(first)
        return match.group(1) if match else None

    @property
    def name(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of ``path`` (indented ones in lists too), dedented, in file order."""
    blocks: list[Block] = []
    lang, body, start = None, [], 0  # lang: the open block's language ("" for a plain fence), None outside
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if fence is None:
            body.append(line)
        elif lang is None:
            lang, body, start = fence.group("lang"), [], number
        else:
            if lang == "python":
                blocks.append(Block(path, len(blocks), start, textwrap.dedent("\n".join(body)) + "\n"))
            lang = None
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in python_blocks(path)]


def test_the_docs_have_python_blocks_and_the_readme_runs_some():
    readme = [block for block in ALL_BLOCKS if block.path.name == "README.md"]
    assert len(readme) >= 3 and any(block.needs is None for block in readme)


def check_imports(block: Block) -> None:
    """Every import statement of ``block`` resolves: the module imports and each imported name exists."""
    for node in ast.walk(ast.parse(block.code, filename=block.name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{block.name}: a relative import in the docs"
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or ImportError


class FileRun:
    """The namespace of one file's blocks, run up to some block, in the file's own working directory."""

    def __init__(self, folder: Path):
        self.folder, self.namespace, self.done = folder, {"__name__": "__docs__"}, 0

    def run_through(self, blocks: list[Block], index: int) -> None:
        for block in blocks[self.done: index + 1]:
            if block.needs:
                check_imports(block)
            else:
                exec(compile(block.code, block.name, "exec"), self.namespace)
            self.done = block.index + 1


_runs: dict[Path, FileRun] = {}


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.name)
def test_python_block_runs(block, tmp_path_factory):
    run = _runs.get(block.path)
    if run is None or run.done > block.index:  # first block of the file, or the file rerun from its start
        run = _runs[block.path] = FileRun(tmp_path_factory.mktemp(block.path.stem))
    cwd = os.getcwd()
    os.chdir(run.folder)
    try:
        run.run_through(python_blocks(block.path), block.index)
    finally:
        os.chdir(cwd)


def test_a_block_that_needs_a_cluster_is_checked_for_its_imports(tmp_path):
    good = Block(tmp_path / "x.md", 0, 1, "# needs: cluster\nimport raymatch\nfrom raymatch.match import factor\n"
                 "ray.init(address='auto')\n")
    check_imports(good)
    missing = Block(tmp_path / "x.md", 0, 1, "# needs: gpu\nfrom raymatch.extract.pool import extract_population\n")
    with pytest.raises(ImportError):
        check_imports(missing)
    assert good.needs == "cluster" and missing.needs == "gpu"


def test_blocks_are_read_from_indented_fences_and_other_languages_are_skipped(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n```bash\nexit 1\n```\n- item\n\n  ```python\n  x = 1\n  ```\n```\nplain\n```\n"
                   "```python\ny = x + 1\n```\n", encoding="utf-8")
    blocks = python_blocks(doc)
    assert [block.code for block in blocks] == ["x = 1\n", "y = x + 1\n"]
    assert [block.line for block in blocks] == [7, 13]
