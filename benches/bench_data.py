"""Data pipeline benchmark: how fast the token cache builds, and what drawing batches costs a training step.

1. **Token cache build, end to end**: ``prepare_data`` with an already-trained tokenizer on a fresh cache
   directory (read the files through ``datasets``, split, encode with the parallel batch encoder, write the
   cache, compute the statistics), in MB of source text per second. Next to it, in the same run and on the
   same documents: ``tiktoken.Encoding(...same merges...).encode_ordinary_batch`` on the texts already in memory,
   and our ``encode_batch`` alone. Goal: >= 50 MB/s end to end on a 2-core machine.
2. **Batch drawing**: the mean time of ``next(RandomBatches)`` against one training step of the small preset
   (``configs/small.yaml``) as the ``Trainer`` takes it (``Trainer.step_fn``: forward, backward, clipping,
   AdamW). Goal: under 2% of the step.

Corpus: ``../shared/corpora/books`` (56 MB of Project Gutenberg) when present, else the built-in stdlib corpus.

    python benches/bench_data.py [--quick] [--json OUT.json]

``--quick`` uses about a fifth of the corpus and fewer repeats (well under 30 s). ``run(quick) -> dict`` is what
the benchmark suite calls.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))  # run from a checkout without installing

from gptrs.config import Config, DataConfig, TokenizerConfig, TrainingConfig  # noqa: E402
from gptrs.data import RandomBatches, iter_documents, prepare_data, stdlib_paths  # noqa: E402

BOOKS = REPO.parent / "shared" / "corpora" / "books"


def _corpus(quick: bool) -> tuple[str, DataConfig]:
    if BOOKS.is_dir() and any(BOOKS.glob("*.txt")):
        files = sorted(BOOKS.glob("*.txt"))
        if quick:
            files = files[: max(2, len(files) // 5)]
        return f"books ({len(files)} files)", DataConfig(source="files", paths=[str(p) for p in files])
    cap = len(stdlib_paths()) // 5 if quick else None
    return "stdlib" + (f" (first {cap} files)" if cap else ""), DataConfig(num_training_samples=cap)


def _best(fn, repeats: int) -> float:
    return _best_with_cpu(fn, repeats)[0]


def _best_with_cpu(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds over all threads) of the fastest of ``repeats`` runs. CPU time shows
    the work done even when other processes share the cores: on an idle 2-core machine, wall >= cpu / 2."""
    runs = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(runs)


def bench_cache(quick: bool) -> dict:
    from gptrs.tokenizer import BPETokenizer

    name, data_cfg = _corpus(quick)
    docs = list(iter_documents(data_cfg))
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    tok_cfg = TokenizerConfig()
    tok = BPETokenizer(
        vocab_size=tok_cfg.vocab_size, special_tokens=dict(tok_cfg.special_tokens), pattern="gpt4"
    )
    # The tokenizer is trained beforehand (not timed) on the first few MB: enough for realistic merges.
    sample, size = [], 0
    for d in docs:
        sample.append(d)
        size += len(d)
        if size > (3_000_000 if quick else 8_000_000):
            break
    t0 = time.perf_counter()
    tok.train(sample)
    train_s = time.perf_counter() - t0

    repeats = 1 if quick else 3
    config = Config(data=data_cfg, tokenizer=tok_cfg, training=TrainingConfig())
    with tempfile.TemporaryDirectory() as tmp:

        def build() -> None:
            run_dir = Path(tempfile.mkdtemp(dir=tmp))
            bundle = prepare_data(config, run_dir, tok, progress=False, log=lambda s: None)
            assert not bundle.stats["cache_reused"]

        build()  # warm-up: page cache, imports, thread pools
        build_s, build_cpu = _best_with_cpu(build, repeats)

    ours_s, ours_cpu = _best_with_cpu(lambda: tok.encode_batch(docs, as_numpy=True), repeats)
    enc = tok.tok.to_tiktoken()
    tiktoken_s, tiktoken_cpu = _best_with_cpu(lambda: enc.encode_ordinary_batch(docs), repeats)
    mb = n_bytes / 1e6
    return {
        "corpus": name,
        "documents": len(docs),
        "megabytes": round(mb, 2),
        "vocab_size": tok.get_vocab_size(),
        "tokenizer_train_s": round(train_s, 2),
        "cache_build_s": round(build_s, 3),
        "cache_build_cpu_s": round(build_cpu, 3),
        "cache_build_mb_s": round(mb / build_s, 1),
        "encode_batch_mb_s": round(mb / ours_s, 1),
        "encode_batch_cpu_s": round(ours_cpu, 3),
        "tiktoken_batch_mb_s": round(mb / tiktoken_s, 1),
        "tiktoken_batch_cpu_s": round(tiktoken_cpu, 3),
        "cache_build_vs_tiktoken": round(tiktoken_s / build_s, 2),
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def bench_batches(quick: bool) -> dict:
    try:
        from gptrs.config import load_config
        from gptrs.model import GPT
        from gptrs.training import Trainer

        config = load_config(REPO / "configs" / "small.yaml")
    except ImportError as e:
        return {"skipped": f"model or config loader not available ({e})"}
    vocab = config.tokenizer.vocab_size
    b, t = config.training.batch_size, config.model.max_seq_len
    tokens = np.random.default_rng(0).integers(0, vocab, 4_000_000).astype(np.uint16)
    batches = RandomBatches(tokens, b, t, seed=0)
    n = 200 if quick else 2000
    for _ in range(10):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(n):
        next(batches)
    draw_s = (time.perf_counter() - t0) / n

    torch.manual_seed(0)
    config = replace(config, training=replace(config.training, peak_flops=1e12))  # no peak timing at start
    model = GPT.from_config(replace(config, model=replace(config.model, dropout=0.0)), vocab_size=vocab)
    x, y = next(batches)
    step = Trainer(model, None, config, "cpu", log_level="WARNING").step_fn(itertools.repeat((x, y)))
    step()  # warm-up
    steps = [_best(step, 1) for _ in range(2 if quick else 8)]
    step_s = statistics.median(steps)
    return {
        "batch": [b, t],
        "draw_ms": round(draw_s * 1e3, 4),
        "step_ms": round(step_s * 1e3, 1),
        "draw_pct_of_step": round(100 * draw_s / step_s, 3),
    }


def run(quick: bool = False) -> dict:
    """Both measurements, as a JSON-able dict (what the benchmark suite records)."""
    return {"cache": bench_cache(quick), "batches": bench_batches(quick)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the corpus, fewer repeats (< 30 s)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args()
    results = run(args.quick)
    c, bt = results["cache"], results["batches"]
    print(f"corpus: {c['corpus']}, {c['documents']} documents, {c['megabytes']} MB, vocab {c['vocab_size']}")
    print(f"{'what':<46} {'MB/s':>8} {'CPU s':>8}")
    print(
        f"{'token cache build, end to end (prepare_data)':<46} {c['cache_build_mb_s']:>8} {c['cache_build_cpu_s']:>8}"
    )
    print(
        f"{'gptrs_tok encode_batch (texts in memory)':<46} {c['encode_batch_mb_s']:>8} {c['encode_batch_cpu_s']:>8}"
    )
    print(
        f"{'tiktoken encode_ordinary_batch (in memory)':<46} {c['tiktoken_batch_mb_s']:>8} {c['tiktoken_batch_cpu_s']:>8}"
    )
    print(
        f"({c['cpu_count']} CPUs, 1-minute load average {c['load_average_1min']}: MB/s is wall clock, shared cores)"
    )
    print(
        f"cache build vs tiktoken batch encode: {c['cache_build_vs_tiktoken']}x  (goal: >= 50 MB/s end to end)"
    )
    if "skipped" in bt:
        print(f"batch drawing: skipped, {bt['skipped']}")
    else:
        print(
            f"batch drawing: {bt['draw_ms']} ms per batch {tuple(bt['batch'])} vs {bt['step_ms']} ms per "
            f"forward+backward of the small preset = {bt['draw_pct_of_step']}% (goal: < 2%)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
