"""Text sources: the built-in stdlib corpus, local files and Hugging Face Hub datasets, as streams of documents.

Everything here yields plain ``str`` documents, one at a time, in a deterministic order:

- ``stdlib``: the running interpreter's standard library ``.py`` files (sorted, one document per file). Files
  that are not valid UTF-8 (a few deliberately mis-encoded test modules) are skipped, so the corpus is the
  same on every machine with the same Python.
- ``files``: ``.txt`` (one document per file; a file over ``LARGE_TEXT_BYTES``, or the only file given, is
  split at blank lines), ``.jsonl``/``.json`` (``data.text_field``) and ``.parquet`` (column
  ``data.text_field``), all read through ``datasets.load_dataset(..., streaming=True)``, so nothing is copied
  into the Hugging Face cache.
- ``hub``: ``datasets.load_dataset(name, subset, split=..., streaming=True)`` at a pinned revision.

``split_documents`` assigns each document to the training or validation split, deterministically for a seed,
while streaming. ``source_fingerprint`` describes a source (paths, sizes, mtimes; or dataset revision) so the
token cache can tell when it is stale.
"""

from __future__ import annotations

import glob
import hashlib
import os
import stat
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from gptrs.config import DataConfig
from gptrs.config.schema import fields_of
from gptrs.errors import DataError

SOURCES: tuple[str, ...] = fields_of(DataConfig)["source"].metadata["choices"]  # stdlib, files, hub
TEXT_SUFFIXES = (".txt",)
JSON_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES
LARGE_TEXT_BYTES = 8 << 20  # a .txt file above this is a collection of documents separated by blank lines
SPLIT_BLOCK_DOCS = 1024  # the validation split is drawn block by block: bounded memory, and small blocks
SPLIT_BLOCK_BYTES = 8 << 20  # let encoding start (and overlap with reading) after the first few MB
SPLIT_METHOD = "block-v1"  # recorded in the cache key: change it when split_documents changes
_ROW_BATCH = 1024  # rows per datasets batch: batched iteration is much faster than row by row


# ---------------------------------------------------------------------------------------------- stdlib corpus


@lru_cache(maxsize=1)
def _stdlib_paths() -> tuple[Path, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune third-party code and bytecode; sort so the walk order never depends on the file system.
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")
        )
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath) / name
                try:
                    path.read_bytes().decode("utf-8")
                except (OSError, UnicodeDecodeError):
                    continue  # unreadable, or a test module written in latin-1/koi8-r on purpose
                paths.append(path)
    return tuple(sorted(paths))


def stdlib_paths() -> list[Path]:
    """The built-in corpus: sorted ``.py`` files of this interpreter's standard library that decode as UTF-8.

    ``site-packages``/``dist-packages`` are excluded; the handful of stdlib test files that are deliberately not
    UTF-8 are skipped (not replaced), so every document is real source text.
    """
    paths = list(_stdlib_paths())
    if not paths:
        raise DataError(f"the built-in corpus is empty: no .py files under {sysconfig.get_paths()['stdlib']}")
    return paths


# ------------------------------------------------------------------------------------------------ local files


def special_file_kind(path: str | os.PathLike[str]) -> str | None:
    """What a path that exists but is no regular file or directory is ("a FIFO (named pipe)", ...), from
    its metadata alone; None when it does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, what in (
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return what
    return None


def pattern_coverage(docs: Iterable[str], pattern: str, limit: int = 1 << 20) -> float | None:
    """The fraction of the text's bytes that a split pattern's pieces cover, over the first ``limit`` bytes of
    ``docs`` (None for no text). Text between its matches is dropped by encoding, so a custom pattern that
    covers little makes most of a corpus vanish."""
    import gptrs_tok

    total = covered = 0
    for doc in docs:
        covered += sum(
            len(piece.encode("utf-8", "surrogatepass")) for piece in gptrs_tok.pretokenize(doc, pattern)
        )
        total += len(doc.encode("utf-8", "surrogatepass"))
        if total >= limit:
            break
    return covered / total if total else None


def coverage_problem(docs: Iterable[str], pattern: str, what: str) -> str | None:
    """One line when ``pattern`` (a custom split pattern) covers less than half of ``what``'s text."""
    import gptrs_tok

    if pattern in (gptrs_tok.GPT4_PATTERN, gptrs_tok.GPT2_PATTERN):
        return None  # they match every byte
    share = pattern_coverage(docs, pattern)
    if share is None or share >= 0.5:
        return None
    shown = pattern if len(pattern) <= 80 else pattern[:77] + "..."
    return (
        f"the split pattern {shown!r} matched only {share:.0%} of {what}'s bytes: encoding drops the text it "
        "does not match"
    )


def resolve_paths(patterns: Iterable[str]) -> list[Path]:
    """Expand ``data.paths`` (files or globs, ``~`` allowed) into existing files: each glob sorted, duplicates
    dropped, the order of the patterns kept. Anything missing or unsupported is a ``DataError`` naming it."""
    out: list[Path] = []
    seen: set[Path] = set()
    patterns = list(patterns)
    if not patterns:
        raise DataError(
            "data.source is 'files' but data.paths is empty; list files or globs, e.g. data/*.txt"
        )
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
            matches = [m for m in matches if os.path.isfile(m)]
            if not matches:
                raise DataError(f"data.paths: {pattern!r} matched no files")
        else:
            if os.path.isdir(expanded):
                raise DataError(
                    f"data.paths: {pattern!r} is a directory; give files or a glob like {pattern}/*.txt"
                )
            if not os.path.isfile(expanded):
                what = special_file_kind(expanded)  # never opened: reading a FIFO would block
                if what:
                    raise DataError(f"data.paths: {pattern} is {what}, not a regular file")
                raise DataError(f"data.paths: file not found: {pattern}")
            matches = [expanded]
        for match in matches:
            path = Path(match).resolve()
            if not path.name.endswith(SUPPORTED_SUFFIXES):
                raise DataError(
                    f"data.paths: unsupported file type: {match} (supported: {', '.join(SUPPORTED_SUFFIXES)})"
                )
            if path not in seen:
                seen.add(path)
                out.append(path)
    return out


def _loader_for(path: Path, n_files: int, field: str) -> tuple[str, dict[str, Any]]:
    """The ``datasets`` builder and its options for one file."""
    name = path.name
    if name.endswith(TEXT_SUFFIXES):
        # One document per file, except a huge file (or a lone file, which could not otherwise give a
        # validation split): it is taken as documents separated by blank lines.
        split = n_files == 1 or path.stat().st_size > LARGE_TEXT_BYTES
        return "text", {"sample_by": "paragraph" if split else "document"}
    if name.endswith(JSON_SUFFIXES):
        return "json", {}
    import pyarrow.parquet as pq  # a dependency of datasets

    try:
        columns = pq.read_schema(path).names
    except Exception as e:  # not a parquet file, truncated footer, ...
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}".splitlines()[0]) from e
    if field not in columns:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(columns)}); set data.text_field")
    return "parquet", {"columns": [field]}  # read only the text column of a wide table


def _texts_from_batch(batch: dict[str, list[Any]], field: str, where: str) -> Iterator[str]:
    if field not in batch:
        columns = ", ".join(sorted(batch)) or "none"
        raise DataError(f"{where}: no field {field!r} (fields: {columns}); set data.text_field")
    for value in batch[field]:
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: field {field!r} holds {type(value).__name__}, not text")
        if value:
            yield value


def _stream_group(files: list[Path], builder: str, kwargs: dict[str, Any], field: str) -> Iterator[str]:
    import datasets  # deferred: importing datasets takes a moment and the stdlib corpus never needs it

    where = str(files[0]) if len(files) == 1 else f"{files[0]} (and {len(files) - 1} more files)"
    try:
        ds = datasets.load_dataset(
            builder, data_files=[str(p) for p in files], split="train", streaming=True, **kwargs
        )
        for batch in ds.iter(batch_size=_ROW_BATCH):
            yield from _texts_from_batch(batch, "text" if builder == "text" else field, where)
    except (
        DataError,
        datasets.exceptions.DatasetsError,
        UnicodeDecodeError,
        ValueError,
        OSError,
        KeyError,
    ) as e:
        if len(files) > 1:
            # Re-read the files one by one so the error names the file at fault (error path only).
            for path in files:
                for _ in _stream_group([path], builder, kwargs, field):
                    pass
        if isinstance(e, DataError):
            raise
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise DataError(f"cannot read {where}: {reason}") from e


def _file_documents(cfg: DataConfig) -> Iterator[str]:
    paths = resolve_paths(cfg.paths)
    # Consecutive .txt files that share a loader go through one load_dataset call (a call costs tens of
    # milliseconds); .jsonl/.json/.parquet files get a call each, so each file has its own schema.
    group: list[Path] = []
    group_loader: tuple[str, dict[str, Any]] | None = None
    for path in paths:
        loader = _loader_for(path, len(paths), cfg.text_field)
        if group and (loader != group_loader or loader[0] != "text"):
            assert group_loader is not None
            yield from _stream_group(group, group_loader[0], group_loader[1], cfg.text_field)
            group = []
        group.append(path)
        group_loader = loader
    if group:
        assert group_loader is not None
        yield from _stream_group(group, group_loader[0], group_loader[1], cfg.text_field)


# ------------------------------------------------------------------------------------------ Hugging Face Hub


def _truthy_env(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


_HUB_HINT = (
    "to train on local files instead, set data.source: files and data.paths: [your .txt/.jsonl/.parquet]"
)


@lru_cache(maxsize=16)
def _hub_revision_cached(name: str) -> str:
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(name, timeout=10)
    return str(info.sha)


def hub_revision(cfg: DataConfig) -> str:
    """The commit of ``data.dataset_name`` on the Hub, checked *before* streaming so that being offline fails at
    once (``datasets`` would retry for half a minute) with a message saying how to use local files instead."""
    name = cfg.dataset_name
    if not name:
        raise DataError("data.source is 'hub' but data.dataset_name is not set")
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if _truthy_env(var):
            raise DataError(f"cannot stream Hub dataset {name!r}: {var} is set (offline); {_HUB_HINT}")
    try:
        return _hub_revision_cached(name)
    except Exception as e:  # no network, DNS failure, 404, gated repo: all mean "cannot use it now"
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise DataError(f"cannot reach Hub dataset {name!r} ({reason}); {_HUB_HINT}") from e


def _hub_documents(cfg: DataConfig) -> Iterator[str]:
    revision = hub_revision(cfg)
    import datasets

    name = cfg.dataset_name
    where = f"Hub dataset {name!r}" + (f" ({cfg.dataset_subset})" if cfg.dataset_subset else "")
    try:
        ds = datasets.load_dataset(
            name, cfg.dataset_subset, split=cfg.dataset_split, streaming=True, revision=revision
        )
        for batch in ds.iter(batch_size=_ROW_BATCH):
            yield from _texts_from_batch(batch, cfg.text_field, where)
    except DataError:
        raise
    except (ConnectionError, OSError, ValueError, datasets.exceptions.DatasetsError) as e:  # e.g. a bad split
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise DataError(f"cannot stream {where}: {reason}; {_HUB_HINT}") from e


# ------------------------------------------------------------------------------------------------- public API


def _stdlib_documents() -> Iterator[str]:
    for path in stdlib_paths():
        text = path.read_text(encoding="utf-8")  # stdlib_paths() checked it decodes
        if text:
            yield text


def iter_documents(data_cfg: DataConfig) -> Iterator[str]:
    """Yield the documents of ``data_cfg``'s source, one ``str`` each, in a deterministic order, stopping after
    ``num_training_samples`` documents. Empty documents are skipped. Problems are ``DataError``s."""
    source = data_cfg.source
    if source == "stdlib":
        docs: Iterator[str] = _stdlib_documents()
    elif source == "files":
        docs = _file_documents(data_cfg)
    elif source == "hub":
        docs = _hub_documents(data_cfg)
    else:
        raise DataError(f"data.source: unknown source {source!r} (expected one of {', '.join(SOURCES)})")
    cap = data_cfg.num_training_samples
    if cap is None:
        yield from docs
        return
    for i, doc in enumerate(docs):
        if i >= cap:
            break
        yield doc


def source_bytes(data_cfg: DataConfig) -> int | None:
    """Approximate text size of the source in bytes (for a progress bar total), or None when unknown."""
    if data_cfg.num_training_samples is not None:
        return None
    if data_cfg.source == "stdlib":
        return sum(p.stat().st_size for p in stdlib_paths())
    if data_cfg.source == "files":
        paths = resolve_paths(data_cfg.paths)
        if all(p.name.endswith(TEXT_SUFFIXES) for p in paths):
            return sum(p.stat().st_size for p in paths)
    return None


def _files_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def source_fingerprint(data_cfg: DataConfig) -> dict[str, Any]:
    """What the documents depend on: for files their paths, sizes and mtimes (as a digest); for the Hub the
    dataset, subset, split and resolved revision; plus the document cap and the text field."""
    fp: dict[str, Any] = {"source": data_cfg.source, "num_training_samples": data_cfg.num_training_samples}
    if data_cfg.source == "stdlib":
        paths = stdlib_paths()
        fp.update(python=sys.version.split()[0], root=str(sysconfig.get_paths()["stdlib"]), files=len(paths))
        fp["digest"] = _files_digest(paths)
    elif data_cfg.source == "files":
        paths = resolve_paths(data_cfg.paths)
        fp.update(files=len(paths), first=str(paths[0]), digest=_files_digest(paths))
        fp.update(text_field=data_cfg.text_field, large_text_bytes=LARGE_TEXT_BYTES)
    elif data_cfg.source == "hub":
        fp.update(
            dataset=data_cfg.dataset_name,
            subset=data_cfg.dataset_subset,
            split=data_cfg.dataset_split,
            revision=hub_revision(data_cfg),
            text_field=data_cfg.text_field,
        )
    else:
        raise DataError(
            f"data.source: unknown source {data_cfg.source!r} (expected one of {', '.join(SOURCES)})"
        )
    return fp


# --------------------------------------------------------------------------------------------- the val split


def split_documents(docs: Iterable[str], validation_split: float, seed: int) -> Iterator[tuple[str, bool]]:
    """Yield ``(document, is_validation)`` for each document, in order, holding out ``validation_split`` of them.

    Documents are taken in blocks (``SPLIT_BLOCK_DOCS`` documents or ``SPLIT_BLOCK_BYTES``, whichever comes
    first); block ``b`` covering documents ``[start, end)`` holds out ``round(end*f) - round(start*f)`` of them,
    chosen by a generator seeded with ``(seed, b)``. So exactly ``round(N*f)`` of ``N`` documents are held out,
    at random within blocks, deterministically for the seed, streaming with bounded memory. If rounding would
    leave the validation split empty (and ``N >= 2``), the last block gives it one document.
    """
    if not 0.0 < validation_split < 1.0:
        raise DataError(f"data.validation_split must be in (0, 1), got {validation_split}")
    block: list[str] = []
    block_bytes = 0
    start = 0
    n_val = 0
    block_index = 0

    def flush(last: bool) -> list[tuple[str, bool]]:
        nonlocal start, n_val, block_index
        end = start + len(block)
        k = int(end * validation_split + 0.5) - int(start * validation_split + 0.5)
        if last and n_val + k == 0 and end >= 2:
            k = 1
        rng = np.random.default_rng([seed % 2**64, block_index])  # seeds must be >= 0
        chosen = set(rng.choice(len(block), size=k, replace=False).tolist()) if k else set()
        out = [(doc, i in chosen) for i, doc in enumerate(block)]
        n_val += k
        start = end
        block_index += 1
        return out

    for doc in docs:
        # A full block is flushed only once another document arrives, so when the stream ends the block in
        # hand is known to be the last one (and is never empty).
        if block and (len(block) >= SPLIT_BLOCK_DOCS or block_bytes >= SPLIT_BLOCK_BYTES):
            yield from flush(last=False)
            block, block_bytes = [], 0
        block.append(doc)
        block_bytes += len(doc)
    if block:
        yield from flush(last=True)
