"""The data pipeline: text source -> tokenizer -> token cache -> train/validation batches.

``prepare_data(config, run_dir)`` is the one call that builds a run's data, for ``python -m gptrs.train``
and for ``Trainer.train()`` without loaders alike. In order:

1. **Tokenizer**: the one passed in; else ``tokenizer.path`` from the config; else ``<run_dir>/tokenizer.json``
   from an earlier run; else a new one trained with ``gptrs_tok`` on the *training split* of the source and
   saved to ``<run_dir>/tokenizer.json`` (atomically).
2. **Split**: documents go to train or validation by ``data.validation_split``, deterministically for
   ``training.seed`` (``sources.split_documents``).
3. **Token cache** (``data.cache_dir``, default ``<run_dir>/data``): both splits encoded with the parallel
   batch encoder into flat ``uint16``/``uint32`` files, reused while the tokenizer, source and split settings
   are unchanged (``token_cache``).
4. **Batches**: ``RandomBatches`` (or ``EpochBatches`` with ``data.sampling: epochs``) for training, seeded by
   ``training.seed`` and the DDP rank, and a fixed ``EvalBatches`` for validation (``batches``).

It returns a ``DataBundle`` with the samplers, the token arrays and corpus statistics, including the unigram
baseline loss the trainer prints next to its validation loss. Fault points (``gptrs.faults``): ``tokenizer``
and ``tokenizer_done`` around training the tokenizer, ``cache`` and ``cache_done`` around building the cache.
"""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gptrs import faults
from gptrs.config import Config
from gptrs.data.batches import EpochBatches, EvalBatches, RandomBatches
from gptrs.data.sources import (
    LARGE_TEXT_BYTES,
    SPLIT_METHOD,
    coverage_problem,
    iter_documents,
    source_bytes,
    source_fingerprint,
    split_documents,
)
from gptrs.data.token_cache import CACHE_FORMAT, TokenCache, build_cache, file_lock, load_cache
from gptrs.errors import ConfigError, DataError
from gptrs.files import TOKENIZER_FILE
from gptrs.tokenizer import BPETokenizer

__all__ = ["DataBundle", "prepare_data"]

DATA_DIR = "data"  # the token cache's directory under a run directory, unless data.cache_dir says otherwise
Log = Callable[[str], Any]
_logger = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """What ``prepare_data`` returns. ``stats`` holds: ``docs``/``train_docs``/``val_docs``, ``train_tokens``/
    ``val_tokens`` (separators included), ``bytes``/``train_bytes``/``val_bytes`` (UTF-8 text), ``eval_tokens``
    (targets in the fixed validation windows), ``val_bytes_per_token`` over those targets (bits per byte =
    loss / ln 2 / bytes per token), ``unigram_loss`` (nats, same targets: the add-one-smoothed unigram model of
    the training tokens, the baseline to beat), ``cache_dir`` and ``cache_reused``."""

    tokenizer: BPETokenizer
    train: RandomBatches | EpochBatches
    val: EvalBatches
    train_tokens: np.ndarray
    val_tokens: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def _as_log(log: Log | logging.Logger | None) -> Log:
    if log is None:
        return _logger.info
    if isinstance(log, logging.Logger):
        return log.info
    return log


def _train_tokenizer(config: Config, log: Log, progress: bool) -> BPETokenizer:
    tc, dc = config.tokenizer, config.data
    try:
        tok = BPETokenizer(
            vocab_size=tc.vocab_size,
            special_tokens=dict(tc.special_tokens),
            pattern=tc.pattern,
            min_frequency=tc.min_frequency,
        )
    except ValueError as e:
        raise ConfigError(f"tokenizer: {e}") from e
    bar = tqdm(
        total=source_bytes(dc),
        unit="B",
        unit_scale=True,
        unit_divisor=1000,
        desc="training tokenizer",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    )

    def training_split() -> Iterator[str]:
        for doc, is_val in split_documents(iter_documents(dc), dc.validation_split, config.training.seed):
            bar.update(len(doc))  # validation documents are read too, so the bar reaches 100%
            if not is_val:
                yield doc

    with bar:
        docs = training_split()
        first = next(docs, None)  # an empty source is a clear error, not a tokenizer with no merges
        if first is None:
            raise DataError(f"data source {dc.source!r} produced no documents")
        log(
            f"training a {tc.vocab_size}-token BPE tokenizer on the training split of the {dc.source!r} source"
        )
        try:
            tok.train(itertools.chain([first], docs))
        except DataError:  # raised by the source while the tokenizer was reading it
            raise
        except ValueError as e:
            raise DataError(
                f"cannot train a tokenizer on the {dc.source!r} source: {e}".splitlines()[0]
            ) from e
    return tok


def _resolve_tokenizer(
    config: Config, run_dir: Path, tokenizer: BPETokenizer | None, log: Log, progress: bool
) -> BPETokenizer:
    if tokenizer is not None:
        return tokenizer
    path = config.tokenizer.path
    if path is None and (run_dir / TOKENIZER_FILE).exists():
        path = str(run_dir / TOKENIZER_FILE)
    if path is not None:
        if not Path(path).expanduser().is_file():
            raise DataError(f"tokenizer file not found: {path}")
        log(f"tokenizer: {path}")
        try:
            return BPETokenizer.load(str(Path(path).expanduser()))
        except (OSError, ValueError) as e:  # corrupt, truncated or wrong version: the message names the file
            raise DataError(f"cannot load tokenizer {path}: {e}".splitlines()[0]) from e
    faults.point("tokenizer")
    tok = _train_tokenizer(config, log, progress)
    faults.point("tokenizer_done")
    run_dir.mkdir(parents=True, exist_ok=True)
    tok.save(run_dir / TOKENIZER_FILE)  # atomic: a crash leaves no tokenizer, never half of one
    log(f"tokenizer: trained, saved to {run_dir / TOKENIZER_FILE}")
    return tok


def _separator_id(tok: BPETokenizer, separator: str) -> int:
    if separator not in ("eos", "bos"):
        raise DataError(f"data.separator must be 'eos' or 'bos', got {separator!r}")
    sep = tok.eos_token_id if separator == "eos" else tok.bos_token_id
    if sep is None:
        raise DataError(
            f"data.separator is {separator!r} but the tokenizer has no {separator} special token "
            f"(add tokenizer.special_tokens.{separator})"
        )
    return int(sep)


def _token_byte_lengths(tok: BPETokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes each token stands for (0 for special tokens), to turn losses per token into bits per byte."""
    raw = tok.tok
    specials = set(raw.special_tokens.values())
    return np.array(
        [0 if i in specials else len(raw.token_bytes(i)) for i in range(vocab_size)], dtype=np.int64
    )


def _stats(cache: TokenCache, val: EvalBatches, tok: BPETokenizer) -> dict[str, Any]:
    targets = val.targets().astype(np.int64)
    counts = cache.unigram_counts
    vocab = len(counts)
    # Unigram model of the training tokens with add-one smoothing: the loss a model that ignores context gets.
    log_p = np.log(counts + 1.0) - np.log(float(counts.sum()) + vocab)
    byte_lengths = _token_byte_lengths(tok, vocab)
    return {
        "docs": cache.train.documents + cache.val.documents,
        "train_docs": cache.train.documents,
        "val_docs": cache.val.documents,
        "train_tokens": len(cache.train.tokens),
        "val_tokens": len(cache.val.tokens),
        "bytes": cache.train.bytes + cache.val.bytes,
        "train_bytes": cache.train.bytes,
        "val_bytes": cache.val.bytes,
        "eval_tokens": len(targets),
        "val_bytes_per_token": float(byte_lengths[targets].sum() / len(targets)),
        "unigram_loss": float(-log_p[targets].mean()),
        "cache_dir": str(cache.directory),
        "cache_reused": cache.reused,
    }


def _load_or_build_cache(
    config: Config, cache_dir: Path, tok: BPETokenizer, source_fp: dict[str, Any], say: Log, progress: bool
) -> TokenCache:
    """The token cache for this tokenizer, source and split: reused when its key matches, else rebuilt."""
    dc, seed = config.data, config.training.seed
    separator_id = _separator_id(tok, dc.separator)
    key = {
        "format": CACHE_FORMAT,
        "tokenizer": tok.fingerprint(),
        "source": source_fp,
        "validation_split": dc.validation_split,
        "seed": seed,
        "split_method": SPLIT_METHOD,
        "separator": dc.separator,
        "separator_id": separator_id,
    }
    cache, why = load_cache(cache_dir, key)
    if cache is not None:
        say(f"token cache: reusing {cache_dir}")
        return cache
    say(f"token cache: building in {cache_dir} ({why})")
    docs = split_documents(iter_documents(dc), dc.validation_split, seed)

    def encode(texts: list[str]) -> list[np.ndarray]:
        try:
            return tok.encode_batch(texts, as_numpy=True)
        except ValueError as e:  # e.g. a lone surrogate the tokenizer refuses
            raise DataError(f"cannot tokenize the {dc.source!r} source: {e}") from e

    faults.point("cache")
    try:
        cache = build_cache(
            cache_dir,
            key,
            docs,
            encode,
            vocab_size=tok.get_vocab_size(),
            separator=dc.separator,
            separator_id=separator_id,
            progress=progress,
            total_bytes=source_bytes(dc),
        )
    except OSError as e:  # a full disk, a read-only cache_dir, a file that vanished mid-read
        raise DataError(f"building the token cache in {cache_dir} failed: {e}") from e
    faults.point("cache_done")
    return cache


def _too_few_documents(cache: TokenCache, config: Config) -> str:
    """Why a corpus of one document (a 200 MB text without a blank line) cannot be split, and the way out."""
    n = cache.train.documents + cache.val.documents
    tokens = len(cache.train.tokens) + len(cache.val.tokens)
    how = (
        "a .txt file is split into documents at blank lines when it is the only file or over "
        f"{LARGE_TEXT_BYTES >> 20} MB (else each file is one document), a .jsonl/.json/.parquet file has one per record"
        if config.data.source == "files"
        else "documents are the records of the source"
    )
    return (
        f"data: the corpus is {n} document{'s' if n != 1 else ''} ({tokens} tokens), too few to split into "
        f"training and validation by document (data.validation_split {config.data.validation_split} holds out "
        f"{cache.val.documents}); {how}: separate documents with blank lines, or give several files"
    )


def _check_sizes(cache: TokenCache, config: Config) -> None:
    """Each split must hold at least one training window."""
    source, seq_len = config.data.source, config.model.max_seq_len
    n_train, n_val = len(cache.train.tokens), len(cache.val.tokens)
    if cache.train.documents + cache.val.documents == 0:
        raise DataError(f"data source {source!r} produced no documents")
    if cache.train.documents == 0 or cache.val.documents == 0:  # however many tokens: one huge document
        raise DataError(_too_few_documents(cache, config))
    if n_train < seq_len + 1 or n_val < seq_len + 1:
        raise DataError(
            f"corpus too small: {cache.train.documents} training documents ({n_train} tokens) and "
            f"{cache.val.documents} validation documents ({n_val} tokens), but each split needs at least one "
            f"window of model.max_seq_len + 1 = {seq_len + 1} tokens; add data, change data.validation_split "
            f"or lower model.max_seq_len"
        )


def _samplers(
    config: Config, cache: TokenCache, rank: int, world_size: int, device: str | torch.device
) -> tuple[RandomBatches | EpochBatches, EvalBatches]:
    """Training batches (random windows, or epochs of shuffled windows) and the fixed validation windows."""
    dc, seed = config.data, config.training.seed
    seq_len, batch_size = config.model.max_seq_len, config.training.batch_size
    train: RandomBatches | EpochBatches
    if dc.sampling == "random":
        train = RandomBatches(cache.train.tokens, batch_size, seq_len, seed=seed, rank=rank, device=device)
    else:
        train = EpochBatches(
            cache.train.tokens,
            batch_size,
            seq_len,
            seed=seed,
            epochs=config.training.epochs,
            rank=rank,
            world_size=world_size,
            device=device,
        )
    val = EvalBatches(cache.val.tokens, batch_size, seq_len, max_tokens=dc.max_eval_tokens, device=device)
    return train, val


def prepare_data(
    config: Config,
    run_dir: str | Path,
    tokenizer: BPETokenizer | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device = "cpu",
    log: Log | logging.Logger | None = None,
    progress: bool | None = None,
) -> DataBundle:
    """Tokenizer, token cache, samplers and statistics for ``config`` (see the module docstring).

    ``tokenizer`` is used as it is when given. ``rank``/``world_size`` shard the training batches under DDP
    (every rank may call this: a file lock lets the first build the tokenizer and cache while the others wait
    and reuse them); the validation windows are the same on every rank (``val.shard`` splits them).
    ``progress`` shows tqdm bars on stderr (default: when stderr is a terminal). User problems raise
    ``DataError``.
    """
    dc = config.data
    run_dir = Path(run_dir)
    cache_dir = Path(dc.cache_dir).expanduser() if dc.cache_dir else run_dir / DATA_DIR
    say = _as_log(log)
    if progress is None:
        progress = sys.stderr.isatty()
    if dc.sampling not in ("random", "epochs"):
        raise DataError(f"data.sampling must be 'random' or 'epochs', got {dc.sampling!r}")
    source_fp = source_fingerprint(dc)  # fails early on missing files or an unreachable Hub

    with file_lock(cache_dir / ".lock"):
        tok = _resolve_tokenizer(config, run_dir, tokenizer, say, progress)
        cache = _load_or_build_cache(config, cache_dir, tok, source_fp, say, progress)
    vanished = coverage_problem(iter_documents(dc), tok.pattern, "the corpus") if dc.source != "hub" else None
    try:
        _check_sizes(cache, config)
    except DataError as e:
        raise DataError(f"{e}; {vanished}" if vanished else str(e)) from None
    if vanished:
        _logger.warning("%s", vanished)
    train, val = _samplers(config, cache, rank, world_size, device)
    stats = _stats(cache, val, tok)
    say(
        f"data: {stats['docs']} documents ({stats['train_docs']} train / {stats['val_docs']} val), "
        f"{stats['train_tokens']:,} train and {stats['val_tokens']:,} val tokens, "
        f"{stats['val_bytes_per_token']:.2f} bytes/token, unigram baseline loss {stats['unigram_loss']:.3f}"
    )
    return DataBundle(tok, train, val, cache.train.tokens, cache.val.tokens, stats)
