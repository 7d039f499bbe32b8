"""gptrs_tok: fast, exact byte-level BPE training and encoding (Rust core, PyO3 bindings).

Ids 0..255 are the bytes, merge k has id 256 + k, special tokens follow the merges, so the vocabulary is a
valid tiktoken ``mergeable_ranks`` table and encoding gives exactly tiktoken's ids.

    >>> tok = Tokenizer.train(["hello world"] * 10, vocab_size=260)
    >>> tok.decode(tok.encode("hello world"))
    'hello world'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptrs_tok import _core
from gptrs_tok._core import GPT2_PATTERN, GPT4_PATTERN, pretokenize

if TYPE_CHECKING:
    import tiktoken

__all__ = ["GPT2_PATTERN", "GPT4_PATTERN", "Tokenizer", "pretokenize"]


class Tokenizer(_core.Tokenizer):
    """A byte-level BPE tokenizer; see ``gptrs_tok._core.Tokenizer`` for the methods implemented in Rust."""

    def to_tiktoken(self, name: str = "gptrs") -> tiktoken.Encoding:
        """The same tokenizer as a ``tiktoken.Encoding`` (needs the optional package ``tiktoken``)."""
        try:
            import tiktoken
        except ImportError as e:
            raise ImportError(
                "to_tiktoken() needs the optional package tiktoken: pip install tiktoken"
            ) from e
        return tiktoken.Encoding(
            name=name,
            pat_str=self.pattern,
            mergeable_ranks=self.mergeable_ranks(),
            special_tokens=self.special_tokens,
        )
