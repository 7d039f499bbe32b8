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
# The Rust tokenizer is built first, on its own, with pip -v so that maturin's and cargo's progress lines
# (each crate as it compiles; a few minutes on 2 cores) show; then the dependencies, where pip shows each
# download and the build is a no-op (cargo finds it done in rust/target). --no-build-isolation builds with
# the maturin installed here rather than in a throwaway environment of its own.
step "installing maturin (the Rust extension's build tool)"
"${PIP[@]}" install --progress-bar on "maturin>=1.5,<2" | sed -u "/^Requirement already satisfied/d"
step "building the Rust tokenizer gptrs_tok in release mode (cargo lists each crate as it compiles)"
"${PIP[@]}" install -v --no-deps --no-build-isolation -e . 2>&1 \
    | sed -u -e "/^Requirement already satisfied/d" -e "/^  *Link requires a different Python/d"
step "installing gptrs's dependencies and its test/dev extras (pip shows each download)"
"${PIP[@]}" install --progress-bar on --no-build-isolation -e ".[dev]" 2>&1 | sed -u "/^Requirement already satisfied/d"
.venv/bin/python -c "import gptrs_tok, gptrs; print('gptrs', gptrs.__version__, 'ready in .venv')"
step "done: $(du -sh .venv 2>/dev/null | cut -f1) in .venv"
