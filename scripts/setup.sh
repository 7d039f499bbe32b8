#!/usr/bin/env bash
# Sets up a fresh machine: a virtualenv in .venv with gptrs (release build of the Rust tokenizer) and the
# test/dev extras. Needs only CPython >= 3.10 with pip, and cargo/rustc. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The editable install builds gptrs_tok with maturin in release mode and links python/ into the venv.
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import gptrs_tok, gptrs; print('gptrs', gptrs.__version__, 'ready in .venv')"
