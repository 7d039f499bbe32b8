"""The token cache: a corpus encoded once into flat token files that training reads through ``numpy.memmap``.

A cache directory holds, per split (``train``, ``val``):

- ``<split>.bin``: the tokens, ``uint16`` (``uint32`` when the vocabulary has more than 65536 ids), each
  document followed by EOS (or preceded by BOS, ``data.separator``);
- ``<split>.offsets.npy``: document boundaries (``offsets[i]`` is where document ``i`` starts, its separator
  included; the last entry is the token count), saved without pickle;

plus ``train.counts.npy`` (unigram counts of the training tokens, for the baseline loss) and ``cache.json``,
the header: format, dtype, counts, byte sizes and the *key* (tokenizer and source fingerprints, split and
separator settings). A cache whose key matches is reused; anything else is rebuilt.

Crash safety: everything is written under temporary names (``*.tmp``) and fsync'd, then renamed into place;
the old header is removed before any data file is replaced and the new header is written LAST (atomically,
:func:`gptrs.files.atomic_write_text`), so a cache that has a header is complete, and an interrupted build
leaves none. A failed write (a full disk) is one ``OSError`` naming the file, and leaves the previous cache
whole unless it failed while the files were being renamed into place. A file lock serialises builders sharing a directory (DDP ranks,
or runs sharing ``data.cache_dir``): the first builds, the others wait and reuse.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from gptrs import faults
from gptrs.files import CACHE_HEADER, atomic_write_text, fsync_path, write_error

CACHE_FORMAT = 1
SPLITS = ("train", "val")
ENCODE_CHUNK_BYTES = 4 << 20  # text per encode_batch call: big enough for parallelism, small for overlap
ENCODE_CHUNK_DOCS = 8192

T = TypeVar("T")
Encoder = Callable[[list[str]], list[np.ndarray]]


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype holding every id of a vocabulary."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


@dataclass
class SplitTokens:
    """One split of the cache: flat tokens (a read-only memmap) and document boundaries."""

    tokens: np.ndarray
    offsets: np.ndarray  # int64, len = documents + 1
    bytes: int  # UTF-8 bytes of the documents' text

    @property
    def documents(self) -> int:
        return len(self.offsets) - 1


@dataclass
class TokenCache:
    directory: Path
    header: dict[str, Any]
    train: SplitTokens
    val: SplitTokens
    unigram_counts: np.ndarray  # int64 [vocab_size]: token counts over the training split
    reused: bool


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), released on exit or when the process dies."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent builders are then not serialised
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------- loading


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if n == 0:  # mmap cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def load_cache(directory: Path, key: dict[str, Any]) -> tuple[TokenCache | None, str]:
    """The cache in ``directory`` if it is complete and its key equals ``key``; else ``(None, why not)``."""
    header_path = directory / CACHE_HEADER
    if not header_path.exists():
        return None, "no cache yet"
    try:
        header = json.loads(header_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return None, f"unreadable header ({e})"
    old = header.get("key", {})
    if old != key:
        changed = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
        return None, "changed: " + ", ".join(changed)
    dtype = np.dtype(header["dtype"])
    splits = {}
    for name in SPLITS:
        info = header[name]
        data = directory / info["file"]
        if not data.exists() or data.stat().st_size != info["tokens"] * dtype.itemsize:
            return None, f"{data.name} is missing or has the wrong size"
        try:
            offsets = np.load(directory / info["offsets"], allow_pickle=False)
        except (OSError, ValueError) as e:
            return None, f"unreadable {info['offsets']} ({e})"
        if len(offsets) != info["documents"] + 1:
            return None, f"{info['offsets']} does not match the header"
        splits[name] = SplitTokens(_memmap(data, dtype, info["tokens"]), offsets, info["bytes"])
    try:
        counts = np.load(directory / header["unigram_counts"], allow_pickle=False)
    except (OSError, ValueError) as e:
        return None, f"unreadable unigram counts ({e})"
    return TokenCache(directory, header, splits["train"], splits["val"], counts, reused=True), "reused"


# --------------------------------------------------------------------------------------------------- building


def _prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate ``items`` in a background thread, ``depth`` items ahead: reading and splitting documents (Python)
    overlaps with encoding the previous chunk (Rust, GIL released). Exceptions are re-raised here."""
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, done))
        except BaseException as e:  # handed to the consumer, which re-raises it
            put((False, e))

    thread = threading.Thread(target=work, name="gptrs-data-reader", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _utf8_len(text: str) -> int:
    # str.isascii() is O(1) in CPython (a flag on the object), so the common case costs nothing.
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _chunks(docs: Iterable[tuple[str, bool]]) -> Iterator[tuple[list[str], list[bool], list[int]]]:
    texts: list[str] = []
    flags: list[bool] = []
    sizes: list[int] = []
    total = 0
    for text, is_val in docs:
        n = _utf8_len(text)
        texts.append(text)
        flags.append(is_val)
        sizes.append(n)
        total += n
        if total >= ENCODE_CHUNK_BYTES or len(texts) >= ENCODE_CHUNK_DOCS:
            yield texts, flags, sizes
            texts, flags, sizes, total = [], [], [], 0
    if texts:
        yield texts, flags, sizes


class _SplitWriter:
    """Appends encoded documents (with separators) of one split to a temporary token file (``target`` with
    ``.tmp`` added), renamed to ``target`` when the whole cache is written."""

    def __init__(self, target: Path, dtype: np.dtype, separator_id: int, sep_first: bool, count: int | None):
        self.target = target
        self.path = _staged(target)
        self.file = open(self.path, "wb")  # closed in finish() or abort()
        self.dtype = dtype
        self.sep = np.array([separator_id], dtype=dtype)
        self.sep_first = sep_first
        self.lengths: list[np.ndarray] = []
        self.tokens = 0
        self.bytes = 0
        self.counts = np.zeros(count, dtype=np.int64) if count is not None else None

    def add(self, arrays: list[np.ndarray], nbytes: int) -> None:
        if not arrays:
            return
        pieces: list[np.ndarray] = [self.sep] * (2 * len(arrays))
        pieces[1 if self.sep_first else 0 :: 2] = arrays
        flat = np.concatenate(pieces).astype(self.dtype, copy=False)
        try:
            faults.point("cache:write", path=self.path)
            flat.tofile(self.file)
        except OSError as e:
            raise write_error(e, self.target) from e
        self.lengths.append(np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays)) + 1)
        self.tokens += len(flat)
        self.bytes += nbytes
        if self.counts is not None:
            self.counts += np.bincount(flat, minlength=len(self.counts))

    def finish(self) -> np.ndarray:
        """Flush to disk and return the document offsets."""
        try:
            self.file.close()
            faults.point("write", path=self.target)
            fsync_path(self.path)
        except OSError as e:
            raise write_error(e, self.target) from e
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def abort(self) -> None:
        self.file.close()


def _staged(target: Path) -> Path:
    """The temporary name a cache file is written under until the whole cache is renamed into place."""
    return target.with_name(target.name + ".tmp")


def _save_npy(target: Path, array: np.ndarray) -> None:
    """``array`` (no pickle) under the staged name of ``target``, on disk before the commit renames it in."""
    path = _staged(target)
    try:
        with open(path, "wb") as f:
            np.save(f, array, allow_pickle=False)
        faults.point("write", path=target)
        fsync_path(path)
    except OSError as e:
        raise write_error(e, target) from e


def _commit(directory: Path, header: dict[str, Any]) -> None:
    """Rename the staged files into place, then write the header: the cache exists from that moment on."""
    # The old header goes first: from here until the new one lands, the directory holds no complete cache.
    (directory / CACHE_HEADER).unlink(missing_ok=True)
    for name in _cache_files():
        target = directory / name
        try:
            faults.point("rename", path=target)
            os.replace(_staged(target), target)
        except OSError as e:
            raise write_error(e, target) from e
    fsync_path(directory)
    atomic_write_text(directory / CACHE_HEADER, json.dumps(header, indent=1))


def _cache_files() -> list[str]:
    """The data files of a cache (the header aside), in the order they are renamed in."""
    return [*(f for name in SPLITS for f in (f"{name}.bin", f"{name}.offsets.npy")), "train.counts.npy"]


def build_cache(
    directory: Path,
    key: dict[str, Any],
    documents: Iterable[tuple[str, bool]],
    encode: Encoder,
    *,
    vocab_size: int,
    separator: str,
    separator_id: int,
    progress: bool = False,
    total_bytes: int | None = None,
) -> TokenCache:
    """Encode ``(text, is_validation)`` documents into a new cache in ``directory`` and return it.

    ``encode`` maps a list of texts to one token array each (``BPETokenizer.encode_batch(..., as_numpy=True)``).
    On any exception (or interrupt) the temporary files are removed and no header is written.
    """
    if separator not in ("eos", "bos"):
        raise ValueError(f"separator must be 'eos' or 'bos', got {separator!r}")
    directory.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    writers: dict[str, _SplitWriter] = {}
    bar = tqdm(
        total=total_bytes,
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc="tokenizing",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for name in SPLITS:
            counts_size = vocab_size if name == "train" else None
            writers[name] = _SplitWriter(
                directory / f"{name}.bin", dtype, separator_id, separator == "bos", counts_size
            )
        for texts, flags, sizes in _prefetch(_chunks(documents)):
            encoded = encode(texts)
            for name, want_val in (("train", False), ("val", True)):
                picked = [i for i, f in enumerate(flags) if f == want_val]
                writers[name].add([encoded[i] for i in picked], sum(sizes[i] for i in picked))
            bar.update(sum(sizes))
        offsets = {name: writers[name].finish() for name in SPLITS}
        for name in SPLITS:
            _save_npy(directory / f"{name}.offsets.npy", offsets[name])
        counts = writers["train"].counts
        assert counts is not None
        _save_npy(directory / "train.counts.npy", counts)

        header: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "key": key,
        }
        for name in SPLITS:
            w = writers[name]
            header[name] = {
                "file": f"{name}.bin",
                "offsets": f"{name}.offsets.npy",
                "tokens": w.tokens,
                "documents": len(offsets[name]) - 1,
                "bytes": w.bytes,
            }
        header["unigram_counts"] = "train.counts.npy"
        _commit(directory, header)
    except BaseException:
        for w in writers.values():
            w.abort()
        for name in _cache_files():
            _staged(directory / name).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    cache, why = load_cache(directory, key)
    if cache is None:
        raise RuntimeError(f"the token cache just written to {directory} does not load: {why}")
    cache.reused = False
    return cache
