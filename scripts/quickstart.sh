#!/usr/bin/env bash
# Quick start: set up .venv, then train the modern recipe's small model (nanochat-small: nanochat architecture,
# Muon; the recipe that won the race in README "A modern recipe") on the built-in corpus (the Python standard
# library's source files, no download) and print a sample. Arguments go to gptrs.train (a later --config wins).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m gptrs.train --config nanochat-small "$@"
