#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv in .venv with gptrs (release build of the Rust tokenizer) and the
# test/dev extras. Needs only CPython >= 3.10 with pip, and cargo/rustc. Safe to run again.
#
# PyTorch: pip's default torch wheel on Linux is the CUDA build, which pulls ~3 GB of nvidia-* packages
# (the whole .venv is then ~6 GB). On a machine with no GPU, a CPU-only torch (~1.3 GB .venv) is enough:
#     GPTRS_TORCH=cpu bash scripts/setup.sh
# installs torch from PyTorch's CPU wheel index first (https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
if [ ! -x .venv/bin/python ]; then
    step "creating .venv with $("$PY" --version)"
    "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
step "upgrading pip"
"${PIP[@]}" install --upgrade pip | sed -u "/^Requirement already satisfied/d"
if [ "${GPTRS_TORCH:-}" = "cpu" ]; then
    step "installing CPU-only torch (GPTRS_TORCH=cpu)"
    "${PIP[@]}" install --index-url https://download.pytorch.org/whl/cpu torch
fi
# The editable install builds gptrs_tok with maturin in release mode (about a minute of Rust compilation)
# and links python/ into the venv. The first run downloads torch, transformers and the test tools.
step "installing gptrs and its test/dev extras (pip shows each download; the Rust build is quiet)"
"${PIP[@]}" install --progress-bar on -e ".[dev]" 2>&1 | sed -u "/^Requirement already satisfied/d"
.venv/bin/python -c "import gptrs_tok, gptrs; print('gptrs', gptrs.__version__, 'ready in .venv')"
step "done: $(du -sh .venv 2>/dev/null | cut -f1) in .venv"
