#!/usr/bin/env bash
# Quick start: set up .venv, then train the modern recipe's small model (nanochat-small: nanochat architecture,
# Muon; the recipe that won the race in README "A modern recipe") on the built-in corpus (the Python standard
# library's source files, no download) and print a sample: what `python -m gptrs.train` trains with no arguments.
# Arguments go to gptrs.train (e.g. --config small for the GPT-2 recipe).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m gptrs.train "$@"
