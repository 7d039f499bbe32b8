"""The token cache and ``prepare_data``: contents equal per-document encodings plus separators, reuse and
invalidation, crash safety of an interrupted build, split determinism, and the too-small/empty corpus errors.

The cache-format tests use a byte-level encoder (ids 0..255, EOS 256, BOS 257); the ``prepare_data`` tests
train a small real tokenizer on a slice of the stdlib corpus or on files made here.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gptrs.config import Config, DataConfig, ModelConfig, TokenizerConfig, TrainingConfig
from gptrs.data import iter_documents, prepare_data, split_documents, token_cache
from gptrs.data.token_cache import build_cache, load_cache
from gptrs.errors import DataError
from gptrs.files import CACHE_HEADER as HEADER

EOS, BOS, VOCAB = 256, 257, 258


def byte_encode(texts: list[str]) -> list[np.ndarray]:
    return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.uint16) for t in texts]


def _docs(n: int) -> list[tuple[str, bool]]:
    rng = np.random.default_rng(0)
    return [
        (f"document {i} " + "é" * int(rng.integers(0, 5)) + "x" * int(rng.integers(0, 300)), i % 4 == 1)
        for i in range(n)
    ]


def _build(
    directory: Path, docs: list[tuple[str, bool]], key: dict, separator: str = "eos", vocab: int = VOCAB
):
    sep = EOS if separator == "eos" else BOS
    return build_cache(
        directory, key, docs, byte_encode, vocab_size=vocab, separator=separator, separator_id=sep
    )


def _expected(docs: list[tuple[str, bool]], want_val: bool, separator: str) -> tuple[np.ndarray, np.ndarray]:
    pieces, lengths = [], []
    for text, is_val in docs:
        if is_val != want_val:
            continue
        ids = list(text.encode("utf-8"))
        ids = [*ids, EOS] if separator == "eos" else [BOS, *ids]
        pieces.extend(ids)
        lengths.append(len(ids))
    return np.array(pieces), np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])


def _tmp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp" in p.name)


@pytest.mark.parametrize("separator", ["eos", "bos"])
def test_cache_holds_documents_with_separators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, separator: str
):
    monkeypatch.setattr(token_cache, "ENCODE_CHUNK_BYTES", 1000)  # many chunks
    docs = _docs(60)
    cache = _build(tmp_path, docs, {"k": 1}, separator)
    assert not cache.reused and cache.train.tokens.dtype == np.uint16
    for split, want_val in ((cache.train, False), (cache.val, True)):
        tokens, offsets = _expected(docs, want_val, separator)
        assert np.array_equal(split.tokens, tokens)
        assert np.array_equal(split.offsets, offsets)
        assert split.documents == sum(v == want_val for _, v in docs)
        assert split.bytes == sum(len(t.encode()) for t, v in docs if v == want_val)
    assert np.array_equal(cache.unigram_counts, np.bincount(cache.train.tokens, minlength=VOCAB))
    header = json.loads((tmp_path / HEADER).read_text())
    assert header["dtype"] == "uint16" and header["train"]["tokens"] == len(cache.train.tokens)
    assert _tmp_files(tmp_path) == []


def test_wide_vocabulary_uses_uint32(tmp_path: Path) -> None:
    cache = _build(tmp_path, [("a", False), ("b", True)], {"k": 1}, vocab=70_000)
    assert cache.train.tokens.dtype == np.uint32
    assert cache.train.tokens.tolist() == [ord("a"), EOS]


def test_cache_reuse_and_key_mismatch(tmp_path: Path) -> None:
    docs = _docs(20)
    built = _build(tmp_path, docs, {"tokenizer": "t1", "source": "s1"})
    again, why = load_cache(tmp_path, {"tokenizer": "t1", "source": "s1"})
    assert again is not None and again.reused and why == "reused"
    assert np.array_equal(again.train.tokens, built.train.tokens)
    assert np.array_equal(again.val.offsets, built.val.offsets)
    stale, why = load_cache(tmp_path, {"tokenizer": "t2", "source": "s1"})
    assert stale is None and why == "changed: tokenizer"
    # A data file that does not match its header is not trusted.
    with open(tmp_path / "train.bin", "r+b") as f:
        f.truncate(4)
    broken, why = load_cache(tmp_path, {"tokenizer": "t1", "source": "s1"})
    assert broken is None and "train.bin is missing or has the wrong size" in why


def test_interrupted_build_leaves_no_complete_looking_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(token_cache, "ENCODE_CHUNK_BYTES", 500)
    docs = _docs(40)
    _build(tmp_path, docs, {"v": "old"})  # a complete cache from an earlier run
    (tmp_path / "val.bin.tmp").write_bytes(b"stale partial file from a killed build")

    calls = 0

    def failing_encode(texts: list[str]) -> list[np.ndarray]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-build
        return byte_encode(texts)

    with pytest.raises(KeyboardInterrupt):
        build_cache(
            tmp_path, {"v": "new"}, docs, failing_encode, vocab_size=VOCAB, separator="eos", separator_id=EOS
        )
    assert _tmp_files(tmp_path) == []
    assert load_cache(tmp_path, {"v": "new"})[0] is None
    assert load_cache(tmp_path, {"v": "old"})[0] is not None  # the old cache was never touched

    # Fail during the renames: the old header must already be gone, so nothing looks complete.
    real_replace = os.replace
    renames = 0

    def failing_replace(src, dst) -> None:
        nonlocal renames
        renames += 1
        if renames == 2:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(token_cache.os, "replace", failing_replace)
    with pytest.raises(OSError, match=r"cannot write .*train\.offsets\.npy: no space left on device"):
        _build(tmp_path, docs, {"v": "new"})
    monkeypatch.setattr(token_cache.os, "replace", real_replace)
    assert not (tmp_path / HEADER).exists()
    assert load_cache(tmp_path, {"v": "old"})[0] is None and load_cache(tmp_path, {"v": "new"})[0] is None
    assert _tmp_files(tmp_path) == []

    cache = _build(tmp_path, docs, {"v": "new"})  # the next build works
    assert np.array_equal(cache.train.tokens, _expected(docs, False, "eos")[0])


# --------------------------------------------------------------------------------------- prepare_data (real)


def _config(data: DataConfig, vocab: int = 300, seed: int = 1337, seq_len: int = 32) -> Config:
    return Config(
        data=data,
        tokenizer=TokenizerConfig(vocab_size=vocab),
        model=ModelConfig(max_seq_len=seq_len),
        training=TrainingConfig(batch_size=4, seed=seed),
    )


STDLIB_SLICE = DataConfig(num_training_samples=40, validation_split=0.1, max_eval_tokens=2000)


def test_prepare_data_trains_tokenizer_builds_then_reuses(tmp_path: Path) -> None:
    cfg = _config(STDLIB_SLICE)
    logs: list[str] = []
    first = prepare_data(cfg, tmp_path, log=logs.append, progress=False)
    assert (tmp_path / "tokenizer.json").exists() and (tmp_path / "data" / HEADER).exists()
    assert first.tokenizer.get_vocab_size() == 300
    assert first.stats["cache_reused"] is False
    assert first.stats["train_docs"] + first.stats["val_docs"] == 40 and first.stats["val_docs"] == 4

    # Token counts: the cache is exactly each training document's encoding followed by EOS.
    tok = first.tokenizer
    split = list(split_documents(iter_documents(cfg.data), cfg.data.validation_split, cfg.training.seed))
    for tokens, want_val in ((first.train_tokens, False), (first.val_tokens, True)):
        expected = [t for d, v in split if v == want_val for t in [*tok.encode_ordinary(d), tok.eos_token_id]]
        assert tokens.tolist() == expected

    # Baselines the trainer prints, recomputed independently from the tokens.
    targets = first.val.targets().astype(np.int64)
    counts = np.bincount(first.train_tokens, minlength=300)
    unigram = -np.mean(np.log((counts[targets] + 1) / (counts.sum() + 300)))
    assert first.stats["unigram_loss"] == pytest.approx(unigram)
    text_bytes = len(tok.tok.decode_bytes([t for t in targets.tolist() if t != tok.eos_token_id]))
    assert first.stats["val_bytes_per_token"] == pytest.approx(text_bytes / len(targets))

    second = prepare_data(cfg, tmp_path, log=logs.append, progress=False)
    assert second.stats["cache_reused"] is True
    assert np.array_equal(second.train_tokens, first.train_tokens)
    assert second.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert any("reusing" in line for line in logs)


def test_changed_tokenizer_or_touched_file_rebuilds(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = [
        "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(2, 9)))) for _ in range(400)
    ]
    for i in range(12):
        text = " ".join(rng.choice(words, 300)) + "\n"
        (corpus / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    cfg = _config(DataConfig(source="files", paths=[str(corpus / "*.txt")], validation_split=0.2), seq_len=16)
    run = tmp_path / "run"
    assert prepare_data(cfg, run, progress=False).stats["cache_reused"] is False
    assert prepare_data(cfg, run, progress=False).stats["cache_reused"] is True

    # A different tokenizer (more merges) invalidates the cache.
    other = prepare_data(
        replace(cfg, tokenizer=TokenizerConfig(vocab_size=320)), tmp_path / "run2", progress=False
    )
    assert other.tokenizer.fingerprint() != prepare_data(cfg, run, progress=False).tokenizer.fingerprint()
    bundle = prepare_data(cfg, run, other.tokenizer, progress=False)
    assert bundle.stats["cache_reused"] is False
    assert bundle.tokenizer.get_vocab_size() == 320

    # Touching a source file (same content, new mtime) invalidates it too.
    assert prepare_data(cfg, run, other.tokenizer, progress=False).stats["cache_reused"] is True
    st = (corpus / "03.txt").stat()
    os.utime(corpus / "03.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert prepare_data(cfg, run, other.tokenizer, progress=False).stats["cache_reused"] is False


def test_split_is_deterministic_for_the_seed(tmp_path: Path) -> None:
    tok = prepare_data(_config(STDLIB_SLICE), tmp_path / "t", progress=False).tokenizer
    a = prepare_data(_config(STDLIB_SLICE), tmp_path / "a", tok, progress=False)
    b = prepare_data(_config(STDLIB_SLICE), tmp_path / "b", tok, progress=False)
    c = prepare_data(_config(STDLIB_SLICE, seed=7), tmp_path / "c", tok, progress=False)
    assert not b.stats["cache_reused"]
    assert np.array_equal(a.val_tokens, b.val_tokens) and np.array_equal(a.train_tokens, b.train_tokens)
    assert not np.array_equal(a.val_tokens, c.val_tokens)
    assert len(a.train_tokens) + len(a.val_tokens) == len(c.train_tokens) + len(c.val_tokens)


def test_interrupted_prepare_data_then_next_run_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(token_cache, "ENCODE_CHUNK_BYTES", 20_000)
    real_add = token_cache._SplitWriter.add
    calls = 0

    def failing_add(self, arrays, nbytes) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("simulated crash mid-build")
        real_add(self, arrays, nbytes)

    monkeypatch.setattr(token_cache._SplitWriter, "add", failing_add)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_data(_config(STDLIB_SLICE), tmp_path, progress=False)
    assert not (tmp_path / "data" / HEADER).exists() and _tmp_files(tmp_path / "data") == []
    monkeypatch.setattr(token_cache._SplitWriter, "add", real_add)
    bundle = prepare_data(_config(STDLIB_SLICE), tmp_path, progress=False)
    assert bundle.stats["cache_reused"] is False and bundle.stats["docs"] == 40


def test_too_small_and_empty_corpus_errors(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    for i in range(3):
        (small / f"{i}.txt").write_text(f"tiny document {i}", encoding="utf-8")
    cfg = _config(DataConfig(source="files", paths=[str(small / "*.txt")]), seq_len=64)
    with pytest.raises(
        DataError, match=r"corpus too small: 2 training documents .*model\.max_seq_len \+ 1 = 65 tokens"
    ):
        prepare_data(cfg, tmp_path / "run", progress=False)

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("", encoding="utf-8")
    (empty / "b.jsonl").write_text('{"text": ""}\n', encoding="utf-8")
    cfg = _config(DataConfig(source="files", paths=[str(empty / "*")]))
    with pytest.raises(DataError, match="data source 'files' produced no documents"):
        prepare_data(cfg, tmp_path / "run2", progress=False)


def test_epochs_sampling_and_missing_tokenizer_path(tmp_path: Path) -> None:
    cfg = _config(replace(STDLIB_SLICE, sampling="epochs"))
    cfg.training.epochs = 1
    bundle = prepare_data(cfg, tmp_path, progress=False)
    assert bundle.train.__class__.__name__ == "EpochBatches"
    assert sum(1 for _ in bundle.train) == len(bundle.train)
    cfg.tokenizer.path = str(tmp_path / "nope.json")
    with pytest.raises(DataError, match=r"tokenizer file not found: .*nope\.json"):
        prepare_data(cfg, tmp_path / "other", progress=False)


def test_source_errors_surface_through_tokenizer_training(tmp_path: Path) -> None:
    good = "".join(f'{{"text": "document number {i} with some text"}}\n' for i in range(50))
    (tmp_path / "a.jsonl").write_text(good, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"body": "no text here"}\n' * 5, encoding="utf-8")
    cfg = _config(DataConfig(source="files", paths=[str(tmp_path / "*.jsonl")]))
    with pytest.raises(DataError, match=r"b\.jsonl: no field 'text'"):
        prepare_data(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tokenizer.json").exists()
