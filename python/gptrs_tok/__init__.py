"""gptrs_tok: fast, exact byte-level BPE training and encoding (Rust core, PyO3 bindings)."""

from gptrs_tok._core import *  # noqa: F403
