"""The README's Python examples run as written: every ```python block, each in a fresh interpreter.

Blocks run in order in one temporary directory (so files one block writes are there for the next), with
``configs/`` of the checkout linked in so relative paths such as ``configs/small.yaml`` work. A block
fenced as ```python is run; use another info string (```pycon, ```text) for code that is not meant to run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    if not README.is_file():
        return []
    return FENCE.findall(README.read_text(encoding="utf-8"))


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("readme")
    if (ROOT / "configs").is_dir():
        (d / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    return d


@pytest.mark.skipif(not BLOCKS, reason="README.md has no ```python blocks")
@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i + 1}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(index: int, workdir: Path) -> None:
    code = BLOCKS[index]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": "2"}
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, (
        f"README python block {index + 1} failed:\n{code}\n--- stderr ---\n{r.stderr[-4000:]}"
    )


def test_fence_pattern_finds_blocks() -> None:
    text = "intro\n```python\nprint(1)\n```\n```text\nnot code\n```\n```python\nx = 2\nprint(x)\n```\n"
    assert FENCE.findall(text) == ["print(1)\n", "x = 2\nprint(x)\n"]
