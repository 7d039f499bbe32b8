#!/usr/bin/env bash
# The whole test suite: Rust unit tests, lint (cargo fmt, clippy, ruff, mypy), then pytest.
# Assumes scripts/setup.sh has run. Long tests (-m slow) are excluded here; run them with: pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
echo "== cargo fmt --check"; cargo fmt --all -- --check
echo "== cargo clippy"; cargo clippy --all-targets --features python -- -D warnings
echo "== cargo test"; cargo test --release
echo "== ruff"; ruff check python tests benches; ruff format --check python tests benches
echo "== mypy"; mypy
echo "== pytest"; python -m pytest -m "not slow" -q -p no:cacheprovider --durations=15 "$@"
