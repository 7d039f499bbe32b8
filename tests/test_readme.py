"""The README's examples run as written: every ```python block, and every command of every ```bash block.

Python blocks run in order in one temporary directory (so files one block writes are there for the next),
with ``configs/`` of the checkout linked in so relative paths such as ``configs/small.yaml`` work. A block
fenced as ```python is run; use another info string (```pycon, ```text) for code that is not meant to run.

Shell blocks (```bash, ```sh, ```shell) run as a user runs them after the Quick start, in order, in one
scratch directory laid out like a checkout after ``bash scripts/quickstart.sh``:

- ``configs/``, ``scripts/``, ``python/`` and ``README.md`` are links to the checkout; ``.venv`` is a
  stand-in whose ``bin/`` is first on PATH (as after ``. .venv/bin/activate``, which works too): ``python``,
  ``python3``, ``torchrun``, ``gptrs-train`` and ``gptrs-generate`` run this interpreter on the checkout.
- ``runs/nanochat-small`` (what the Quick start trains) is there already: a tiny run made first.
- Every training command (``python -m gptrs.train``, ``gptrs-train``, ``torchrun ... -m gptrs.train``) is
  shortened: the stand-in appends a tiny model and data and ``--max-steps 2`` (``TINY`` below) to it.
- Each command (a line, with ``\\`` continuations joined) is checked for exit status 0; standard input is
  empty (so ``--interactive`` ends at EOF).

Not run: install and whole-suite commands (``bash scripts/*.sh``, ``pip install``, ``python -m venv``,
``maturin develop``: they would install into the machine or run the suite inside itself), a line whose
comment says ``readme-test: skip``, and a block preceded by the line ``<!-- readme-test: skip -->`` (an HTML
comment: invisible on the rendered page). The marker rule, for whoever edits the README: prefer commands that
run as written; mark only what cannot run here, and say why next to it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
SHELL_FENCE = re.compile(
    r"^(?P<before>[^\n]*)\n```(?:bash|sh|shell)[ \t]*\n(?P<body>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE
)
SKIP_BLOCK = "<!-- readme-test: skip -->"
SKIP_LINE = "readme-test: skip"
NOT_RUN = re.compile(
    r"^(\w+=\S*\s+)*(bash\s+scripts/\S+\.sh|(python3?\s+-m\s+)?pip3?\s+install|python3?\s+-m\s+venv|maturin\s+develop)\b"
)
TINY = [
    "--max-steps", "2", "--set", "data.num_training_samples=40", "--set", "data.max_eval_tokens=256",
    "--set", "tokenizer.vocab_size=300", "--set", "model.embed_dim=32", "--set", "model.ff_dim=64",
    "--set", "model.num_layers=1", "--set", "model.heads=2", "--set", "model.kv_heads=null",
    "--set", "model.max_seq_len=32", "--set", "training.batch_size=2", "--set", "training.warmup_steps=1",
    "--set", "training.eval_interval=2", "--set", "training.peak_flops=1e11", "--set", "training.sample_tokens=8",
]  # fmt: skip


def python_blocks() -> list[str]:
    if not README.is_file():
        return []
    return FENCE.findall(README.read_text(encoding="utf-8"))


def shell_commands(text: str) -> list[list[str]]:
    """The commands of each shell block to run (``\\`` continuations joined; comment lines, skipped blocks
    and lines, and install commands left out); a block with nothing to run is left out too."""
    blocks = []
    for m in SHELL_FENCE.finditer("\n" + text):
        if m["before"].strip() == SKIP_BLOCK:
            continue
        commands = []
        for line in re.sub(r"[ \t]*\\\n\s*", " ", m["body"]).splitlines():
            line = line.strip()
            if line and not line.startswith("#") and SKIP_LINE not in line and not NOT_RUN.match(line):
                commands.append(line)
        if commands:
            blocks.append(commands)
    return blocks


BLOCKS = python_blocks()
SHELL_BLOCKS = shell_commands(README.read_text(encoding="utf-8")) if README.is_file() else []


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


def test_shell_blocks_are_parsed_by_the_documented_rule() -> None:
    text = (
        "```bash\nbash scripts/quickstart.sh   # set up\nGPTRS_TORCH=cpu bash scripts/setup.sh\n```\n"
        "Then:\n```bash\n# a comment line\npython -m gptrs.train --out runs/a \\\n    --max-steps 5  # train\n"
        "pip install -e .\npython -m venv .venv && . .venv/bin/activate\ncurl x  # readme-test: skip (network)\n"
        "python -m gptrs.generate --model-path runs/a --prompt 'x'\n```\n"
        f"{SKIP_BLOCK}\n```sh\nrm -rf /\n```\n```text\nnot a command\n```\n```shell\nls\n```\n"
    )
    assert shell_commands(text) == [
        ["python -m gptrs.train --out runs/a --max-steps 5  # train",
         "python -m gptrs.generate --model-path runs/a --prompt 'x'"],
        ["ls"],
    ]  # fmt: skip


def _stand_in_venv(d: Path) -> dict[str, str]:
    """``d/.venv/bin``: python, torchrun and the console scripts on this interpreter, training shortened
    (``TINY`` appended); returns the environment the commands run in."""
    bin_dir = d / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    py, tiny = shlex.quote(sys.executable), shlex.join(TINY)
    train_check = 'case " $* " in *" gptrs.train "*) set -- "$@" ' + tiny + ";; esac\n"
    scripts = {
        "python": f'#!/bin/bash\n{train_check}exec {py} "$@"\n',
        "torchrun": f'#!/bin/bash\n{train_check}exec {py} -m torch.distributed.run "$@"\n',
        "gptrs-train": f'#!/bin/bash\nexec {py} -m gptrs.train "$@" {tiny}\n',
        "gptrs-generate": f'#!/bin/bash\nexec {py} -m gptrs.generate "$@"\n',
        "activate": f'export VIRTUAL_ENV={shlex.quote(str(d / ".venv"))}\nexport PATH="$VIRTUAL_ENV/bin:$PATH"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "python3").symlink_to("python")
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT / "python"),
        "OMP_NUM_THREADS": "1",
        "VIRTUAL_ENV": str(d / ".venv"),
    }


@pytest.fixture(scope="module")
def after_quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A scratch checkout after the Quick start: links to the checkout, the stand-in .venv, and a tiny
    ``runs/nanochat-small``."""
    d = tmp_path_factory.mktemp("readme_shell")
    for name in ("configs", "scripts", "python", "README.md"):
        if (ROOT / name).exists():
            (d / name).symlink_to(ROOT / name)
    env = _stand_in_venv(d)
    r = subprocess.run(
        ["python", "-m", "gptrs.train", "--config", "nanochat-small"],
        cwd=d, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 0, f"the tiny stand-in for the Quick start failed:\n{r.stderr[-3000:]}"
    return d, env


@pytest.mark.skipif(not SHELL_BLOCKS, reason="README.md has no shell commands to run")
@pytest.mark.parametrize(
    "index", range(len(SHELL_BLOCKS)), ids=[f"shell{i + 1}" for i in range(len(SHELL_BLOCKS))]
)
def test_readme_shell_commands_run(index: int, after_quickstart: tuple[Path, dict[str, str]]) -> None:
    """Each command of the block exits 0 (the first that does not fails the test, named with its output)."""
    d, env = after_quickstart
    for command in SHELL_BLOCKS[index]:
        r = subprocess.run(
            ["bash", "-c", command], cwd=d, env=env, capture_output=True, text=True, timeout=600,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert r.returncode == 0, (
            f"README command failed (exit {r.returncode}): {command}\n--- stderr ---\n{r.stderr[-3000:]}"
        )
