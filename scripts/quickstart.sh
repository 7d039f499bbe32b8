#!/usr/bin/env bash
# Quick start: set up .venv, then train the small model on the built-in corpus (the Python standard library's
# source files, no download) and print a sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m gptrs.train "$@"
