"""Type stubs for the Rust extension module gptrs_tok._core."""

from collections.abc import Callable, Collection, Iterable, Sequence
from os import PathLike
from typing import Literal, TypeVar, overload

import numpy as np
import numpy.typing as npt

GPT4_PATTERN: str
GPT2_PATTERN: str

_T = TypeVar("_T", bound=Tokenizer)
_Path = str | PathLike[str]
_Ids = Sequence[int] | npt.NDArray[np.integer]
_Progress = Callable[[str, int, int], object]
_Specials = Collection[str] | Literal["all"]

def pretokenize(text: str, pattern: str = "gpt4") -> list[str]:
    """Split text into pre-tokenization pieces; they concatenate back to text."""

class Tokenizer:
    """Byte-level BPE: ids 0..255 are bytes, merge k is id 256 + k, special tokens follow the merges.

    Strings with lone surrogates are encoded as if each were U+FFFD (as tiktoken does).
    """

    def __init__(self, pattern: str = "gpt4") -> None:
        """A tokenizer with the 256 byte tokens only; use ``train`` or ``load`` for a real one."""
    @classmethod
    def train(
        cls: type[_T],
        texts: Iterable[str],
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (),
        min_frequency: int = 1,
        progress: _Progress | None = None,
    ) -> _T:
        """Train on a (streamed) iterable of str. ``vocab_size`` counts 256 bytes + merges + specials.

        ``progress(stage, done, total)``: stage "count" (texts done, total = len(texts) or 0 if unknown),
        then "merge" (merges done, merges wanted). An exception raised by it stops training.
        """
    @classmethod
    def train_files(
        cls: type[_T],
        paths: Sequence[_Path],
        vocab_size: int,
        *,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (),
        min_frequency: int = 1,
        progress: _Progress | None = None,
    ) -> _T:
        """Train on UTF-8 files (each file is one text), read and split in parallel in Rust.

        ``progress`` stage "count" reports bytes read of the total size.
        """
    @classmethod
    def load(cls: type[_T], path: _Path) -> _T:
        """Load a file written by ``save``; a bad file raises ValueError naming it."""
    def save(self, path: _Path) -> None: ...
    def save_tiktoken(self, path: _Path) -> None:
        """Write tiktoken's rank file (base64 token bytes and rank per line; no special tokens)."""
    def save_hf(self, path: _Path) -> None:
        """Write a Hugging Face ``tokenizer.json`` that gives the same ids."""
    def encode_ordinary(self, text: str) -> list[int]:
        """Encode, treating special-token strings as ordinary text."""
    def encode(
        self, text: str, *, allowed_special: _Specials = ..., disallowed_special: _Specials = "all"
    ) -> list[int]:
        """tiktoken's ``encode``: a disallowed special token in the text raises ValueError."""
    @overload
    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        num_threads: int | None = None,
        as_numpy: Literal[False] = False,
        allowed_special: _Specials = ...,
        disallowed_special: _Specials = "all",
    ) -> list[list[int]]:
        """``encode`` of each text, in parallel without the GIL."""
    @overload
    def encode_batch(
        self,
        texts: Iterable[str],
        *,
        num_threads: int | None = None,
        as_numpy: Literal[True],
        allowed_special: _Specials = ...,
        disallowed_special: _Specials = "all",
    ) -> list[npt.NDArray[np.unsignedinteger]]:
        """As 1-D arrays: uint16 when ``n_vocab <= 65536``, else uint32."""
    def decode(self, ids: _Ids) -> str:
        """Text of the ids; bytes that are not valid UTF-8 become U+FFFD."""
    def decode_bytes(self, ids: _Ids) -> bytes: ...
    def decode_batch(self, batch: Iterable[_Ids]) -> list[str]: ...
    def token_bytes(self, id: int) -> bytes: ...
    def merges(self) -> list[tuple[int, int]]:
        """Merge k (a pair of ids) made token 256 + k."""
    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> rank for the 256 bytes and every merge (tiktoken's table)."""
    @property
    def special_tokens(self) -> dict[str, int]: ...
    @property
    def pattern(self) -> str:
        """The exact pre-tokenization regex."""
    @property
    def n_vocab(self) -> int: ...
