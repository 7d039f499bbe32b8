"""The tokenizer as people know it (``BPETokenizer``), a thin layer over the Rust ``gptrs_tok.Tokenizer``.

``gptrs_tok`` does the work (training, encoding, files); this adds special tokens by *role* (``bos``, ``eos``,
``pad``, ``unk``, or any other name), the ``add_special_tokens``/``skip_special_tokens`` conventions, and a
fingerprint for caches. Its command line (train, encode, decode, demo) is ``python -m gptrs.tokenizer``
(``__main__.py``).

Roles are not stored in the tokenizer file (its format belongs to ``gptrs_tok``): ``load`` reads a ``"roles"``
object when the file has one, else recognises the usual spellings (``<|bos|>``, ``<BOS>``, ``<s>``,
``<|endoftext|>``, ``[PAD]``, ...; see ``_infer_roles``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

import gptrs_tok
from gptrs.files import TOKENIZER_FILE, atomic_path

__all__ = ["DEFAULT_SPECIAL_TOKENS", "BPETokenizer"]

DEFAULT_SPECIAL_TOKENS: dict[str, str] = {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>"}

StrPath = str | os.PathLike[str]
ProgressFn = Callable[[str, int, int], object]  # gptrs_tok's progress(stage, done, total)
_BUILTIN_PATTERNS = {"gpt4": gptrs_tok.GPT4_PATTERN, "gpt2": gptrs_tok.GPT2_PATTERN}

# Names that special-token strings commonly use for each role, after stripping <| |>, < >, [ ] and case.
_ROLE_ALIASES = {
    "bos": ("bos", "s", "startoftext", "start_of_text", "begin_of_text", "cls"),
    "eos": ("eos", "/s", "endoftext", "end_of_text", "eot", "sep"),
    "pad": ("pad", "padding"),
    "unk": ("unk", "unknown"),
}


def _infer_roles(special_tokens: Iterable[str]) -> dict[str, str]:
    """Roles of special-token strings spelled the usual ways (first match per role wins)."""
    roles: dict[str, str] = {}
    for s in special_tokens:
        core = re.sub(r"^(<\|?|\[)|(\|?>|\])$", "", s).strip().lower()
        for role, names in _ROLE_ALIASES.items():
            if role not in roles and core in names:
                roles[role] = s
    return roles


class BPETokenizer:
    """Byte-level BPE with named special tokens; train it, or ``BPETokenizer.load`` a saved one.

    ``special_tokens`` maps a role to its string, e.g. ``{"bos": "<|bos|>", "eos": "<|endoftext|>"}``; several
    roles may share one string (GPT-2 uses ``<|endoftext|>`` for both). ``vocab_size`` counts everything: the
    256 byte tokens, the merges and the special tokens. ``pattern`` is ``"gpt4"`` (tiktoken's cl100k_base
    split), ``"gpt2"`` (r50k_base) or any regex; ``.pattern`` is the exact string.
    """

    def __init__(
        self,
        vocab_size: int = 4096,
        special_tokens: dict[str, str] | None = None,
        pattern: str = "gpt4",
        min_frequency: int = 1,
    ) -> None:
        if special_tokens is None:
            special_tokens = dict(DEFAULT_SPECIAL_TOKENS)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
        if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
            raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}")
        if not isinstance(special_tokens, dict):
            raise ValueError(f"special_tokens must be a dict of role -> string, got {special_tokens!r}")
        for role, s in special_tokens.items():
            if not isinstance(role, str) or not role or not isinstance(s, str) or not s:
                raise ValueError(
                    f"special_tokens: role and string must be non-empty str, got {role!r}: {s!r}"
                )
        if not isinstance(pattern, str):
            raise ValueError(f"pattern must be a str, got {pattern!r}")
        gptrs_tok.pretokenize("", pattern)  # a bad regex fails here, not after reading the corpus
        n_special = len(set(special_tokens.values()))
        if vocab_size < 256 + n_special:
            raise ValueError(
                f"vocab_size {vocab_size} is too small: it counts the 256 byte tokens and the "
                f"{n_special} special tokens, so it must be >= {256 + n_special}"
            )
        self.vocab_size = vocab_size
        # The exact pattern string, as gptrs_tok reports it ("gpt4"/"gpt2" name tiktoken's pat_str).
        self.pattern: str = _BUILTIN_PATTERNS.get(pattern, pattern)
        self.min_frequency = min_frequency
        self._roles = dict(special_tokens)
        self._tok: gptrs_tok.Tokenizer | None = None
        self._special_ids: dict[str, int] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------------------------------- training

    def _special_list(self) -> list[str]:
        return list(dict.fromkeys(self._roles.values()))  # unique, in role order: ids follow this order

    def train(self, texts: Iterable[str], progress: ProgressFn | None = None) -> BPETokenizer:
        """Learn the merges from an iterable of ``str`` (streamed; the Rust side counts without the GIL).

        ``progress(stage, done, total)``, if given, is called as the work advances. Returns ``self``.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be an iterable of str, not a single str (wrap it in a list)")
        return self._train(gptrs_tok.Tokenizer.train, texts, progress)

    def train_files(self, paths: Iterable[StrPath], progress: ProgressFn | None = None) -> BPETokenizer:
        """Learn the merges from UTF-8 text files, read and split in parallel in Rust. Returns ``self``."""
        paths = [str(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        if not paths:
            raise ValueError("train_files needs at least one path")
        for p in paths:
            if os.path.isdir(p):
                raise ValueError(f"{p} is a directory; pass files (e.g. {p}/*.txt)")
        return self._train(gptrs_tok.Tokenizer.train_files, paths, progress)

    def _train(
        self, trainer: Callable[..., gptrs_tok.Tokenizer], source: object, progress: ProgressFn | None
    ) -> BPETokenizer:
        """Run one of the Rust trainers (texts or files) with this tokenizer's settings, and adopt the result."""
        self._set(
            trainer(
                source,
                self.vocab_size,
                pattern=self.pattern,
                special_tokens=self._special_list(),
                min_frequency=self.min_frequency,
                progress=progress,
            )
        )
        return self

    def _set(self, tok: gptrs_tok.Tokenizer) -> None:
        self._tok = tok
        self._special_ids = dict(tok.special_tokens)
        self._fingerprint = None

    # ------------------------------------------------------------------------------------------- properties

    @property
    def tok(self) -> gptrs_tok.Tokenizer:
        """The underlying ``gptrs_tok.Tokenizer`` (to_tiktoken, save_hf, merges, ...)."""
        if self._tok is None:
            raise ValueError(
                "the tokenizer is not trained yet: call train(), train_files() or BPETokenizer.load()"
            )
        return self._tok

    @property
    def is_trained(self) -> bool:
        return self._tok is not None

    @property
    def special_tokens(self) -> dict[str, str]:
        """Role -> special-token string (a copy)."""
        return dict(self._roles)

    def _role_id(self, role: str) -> int | None:
        s = self._roles.get(role)
        return None if s is None else self._special_ids.get(s)

    @property
    def bos_token_id(self) -> int | None:
        return self._role_id("bos")

    @property
    def eos_token_id(self) -> int | None:
        return self._role_id("eos")

    @property
    def pad_token_id(self) -> int | None:
        return self._role_id("pad")

    @property
    def unk_token_id(self) -> int | None:
        """Byte-level BPE never needs it (every byte has a token); the id is here when the role is defined."""
        return self._role_id("unk")

    def token_to_id(self, token: str) -> int | None:
        """Id of a special-token string, or None."""
        return self._special_ids.get(token)

    def get_vocab_size(self) -> int:
        """Tokens in the trained vocabulary (bytes + merges + specials); may be below ``vocab_size`` when the
        corpus ran out of pairs to merge."""
        return int(self.tok.n_vocab)

    def __len__(self) -> int:
        return self.get_vocab_size()

    def __repr__(self) -> str:
        size = self.get_vocab_size() if self._tok is not None else f"{self.vocab_size} (untrained)"
        return f"BPETokenizer(vocab_size={size}, pattern={self.pattern!r}, special_tokens={self._roles!r})"

    # ------------------------------------------------------------------------------------------- encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``. Special-token strings in ``text`` become their ids (as in Hugging Face);
        with ``add_special_tokens`` a BOS id is prepended when a ``bos`` role is defined (no EOS is appended:
        the data pipeline places separators itself). Use ``encode_ordinary`` to treat everything as text."""
        ids = list(self.tok.encode(text, allowed_special="all"))
        bos = self.bos_token_id
        if add_special_tokens and bos is not None:
            ids.insert(0, bos)
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of ``text`` with special-token strings encoded as ordinary text."""
        return list(self.tok.encode_ordinary(text))

    def encode_batch(
        self,
        texts: Sequence[str],
        as_numpy: bool = False,
        num_threads: int | None = None,
        add_special_tokens: bool = False,
    ) -> list[Any]:
        """Encode many texts in parallel (Rust threads, GIL released): a list of id lists, or of numpy arrays
        (``uint16`` when the vocabulary fits, else ``uint32``) with ``as_numpy``.

        This is the bulk path for training data, so by default each text is *ordinary* text
        (like ``encode_ordinary``); ``add_special_tokens=True`` gives exactly ``encode(text)`` for each.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of str, not a single str (wrap it in a list)")
        raw: Any = self.tok  # the stub's overloads need a literal as_numpy
        if not add_special_tokens:
            return list(
                raw.encode_batch(
                    texts,
                    num_threads=num_threads,
                    as_numpy=as_numpy,
                    allowed_special=(),
                    disallowed_special=(),
                )
            )
        out = list(raw.encode_batch(texts, num_threads=num_threads, as_numpy=as_numpy, allowed_special="all"))
        bos = self.bos_token_id
        if bos is not None:
            if as_numpy:
                out = [np.concatenate([np.array([bos], dtype=a.dtype), a]) for a in out]
            else:
                out = [[bos, *ids] for ids in out]
        return out

    def decode(self, ids: Iterable[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or a numpy integer array). Bytes that are not valid UTF-8 (a sequence cut
        inside a character) become U+FFFD; an id outside the vocabulary is a ``ValueError``."""
        if isinstance(ids, str):
            raise ValueError("ids must be a sequence of int, not a str")
        items = None if isinstance(ids, np.ndarray) else list(ids)
        if items is not None:
            # Python ints are unbounded: name an id beyond int64 as given, before numpy wraps or boxes it.
            n_vocab = self.tok.n_vocab
            for v in items:
                if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v < n_vocab:
                    raise ValueError(f"token id {v} is out of range (n_vocab = {n_vocab})")
        arr: np.ndarray = np.asarray(items) if items is not None else np.asarray(ids)
        if arr.size == 0:
            return ""
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= self.tok.n_vocab:
            bad = int(arr[arr >= self.tok.n_vocab][0])  # uint64 would wrap in the int64 cast below
            raise ValueError(f"token id {bad} is out of range (n_vocab = {self.tok.n_vocab})")
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise ValueError(
                f"ids must be a flat sequence of int, got an array of {arr.dtype} with shape {arr.shape}"
            )
        if skip_special_tokens and self._special_ids:
            arr = arr[~np.isin(arr, np.fromiter(self._special_ids.values(), dtype=np.int64))]
        # int64 keeps negative ids, so gptrs_tok reports them as out of range rather than wrapping them.
        return str(self.tok.decode(arr.astype(np.int64, copy=False)))

    # ------------------------------------------------------------------------------------------- files

    def save(self, path: StrPath) -> None:
        """Write the tokenizer as one JSON file (``gptrs_tok``'s format), atomically and durably
        (``gptrs.files.atomic_path``)."""
        tok = self.tok  # an untrained tokenizer fails here, before any file is touched
        with atomic_path(path) as tmp:
            tok.save(str(tmp))

    @classmethod
    def load(cls, path: StrPath) -> BPETokenizer:
        """Read a file written by ``save`` (or by ``gptrs_tok.Tokenizer.save``). A corrupt, truncated or
        wrong-version file is a ``ValueError`` naming it; a missing one ``FileNotFoundError``."""
        tok = gptrs_tok.Tokenizer.load(str(path))  # validates the file (size, format, version) first
        specials = list(tok.special_tokens)
        roles: Any = None
        try:
            with open(path, encoding="utf-8") as f:
                roles = json.load(f).get("roles")
        except (OSError, ValueError, AttributeError):
            roles = None
        if not (
            isinstance(roles, dict) and all(isinstance(v, str) and v in specials for v in roles.values())
        ):
            roles = _infer_roles(specials)
        self = cls.__new__(cls)
        self.vocab_size = int(tok.n_vocab)
        self.pattern = str(tok.pattern)
        self.min_frequency = 1  # not stored in the file; only training uses it
        self._roles = {str(k): str(v) for k, v in roles.items()}
        self._tok = None
        self._special_ids = {}
        self._fingerprint = None
        self._set(tok)
        return self

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the saved JSON: equal for tokenizers that encode identically, stable across
        save/load, so caches of token ids can be keyed on it."""
        if self._fingerprint is None:
            with tempfile.TemporaryDirectory(prefix="gptrs-tok-") as d:
                path = os.path.join(d, TOKENIZER_FILE)
                self.tok.save(path)  # a scratch copy: no need for atomic_path's fsyncs
                with open(path, "rb") as f:
                    self._fingerprint = hashlib.sha256(f.read()).hexdigest()
        return self._fingerprint
