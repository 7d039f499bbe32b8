"""Tokenizer benchmark: gptrs_tok against rustbpe, Hugging Face ``tokenizers`` and ``tiktoken``.

1. **Training**, same corpus, pattern (tiktoken's GPT-4 ``pat_str``) and vocabulary, each trainer in its own
   fresh process (so peak RSS is its own): ``gptrs_tok`` from files (read and split in Rust) and from a Python
   iterator, ``rustbpe`` (iterator; its merges must equal ours), and HF ``tokenizers`` (``BpeTrainer`` behind
   a ``Split`` pre-tokenizer with the same regex plus ``ByteLevel(use_regex=False)``, from files). Seconds,
   MB/s, peak RSS, and how many times faster gptrs_tok (files) is. Goals (2 cores, vocab 32768): >= 2x rustbpe
   and >= 4x HF, peak RSS no higher than rustbpe's.
2. **Encoding** with the trained merges: ``gptrs_tok.encode_ordinary`` against ``tiktoken``'s (an Encoding
   built from our merges) on one big string, one thread, runs alternated, medians; ids must be identical.
   Then batch encoding of the documents on 2 threads. Goals: >= 2x tiktoken single-thread; our 2-thread batch
   >= 1.8x our single-thread MB/s.

Corpus: ``../shared/corpora/books`` when present, else the built-in corpus (the stdlib ``.py`` files).

    python benches/bench_tokenizer.py [--quick] [--vocab-size N] [--json OUT.json]

``--quick`` takes ~4 MB of the corpus and vocab 4096 (well under 30 s). ``run(quick) -> dict`` is what the
benchmark suite calls; results also go to ``benches/results/tokenizer[_quick].json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BOOKS = REPO.parent / "shared" / "corpora" / "books"
RESULTS = REPO / "benches" / "results"
# tiktoken's cl100k_base pat_str (kept literal so the child processes need not import gptrs_tok to know it).
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
QUICK_BYTES = 4_000_000
TRAINERS = ("gptrs_tok", "gptrs_tok_iter", "rustbpe", "hf_tokenizers")


# ----------------------------------------------------------------------------------------------- corpus


def _corpus(quick: bool) -> tuple[str, list[Path]]:
    if BOOKS.is_dir() and any(BOOKS.glob("*.txt")):
        name, files = "books", sorted(BOOKS.glob("*.txt"))
    else:
        sys.path.insert(0, str(REPO / "python"))  # run from a checkout without installing
        from gptrs.data import stdlib_paths

        name, files = "stdlib", stdlib_paths()
    if quick:  # a spread of files adding up to about QUICK_BYTES
        step = max(1, round(sum(p.stat().st_size for p in files) / QUICK_BYTES))
        files = files[::step]
    return name, files


def _texts(paths: list[Path]) -> Iterator[str]:
    for p in paths:
        yield p.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------- training


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _ranks_digest(ranks: Any) -> str:
    h = hashlib.sha256()
    for rank, token in sorted((int(r), bytes(t)) for t, r in ranks):
        h.update(f"{rank}:".encode() + token + b"\n")
    return h.hexdigest()


def _child(trainer: str, paths: list[Path], vocab_size: int, save: str | None) -> dict[str, Any]:
    """Runs inside a fresh process: train once, report seconds, peak RSS and a digest of the merges."""
    digest = None
    if trainer in ("gptrs_tok", "gptrs_tok_iter"):
        import gptrs_tok

        t0 = time.perf_counter()
        if trainer == "gptrs_tok":
            tok = gptrs_tok.Tokenizer.train_files([str(p) for p in paths], vocab_size, pattern=GPT4_PATTERN)
        else:
            tok = gptrs_tok.Tokenizer.train(_texts(paths), vocab_size, pattern=GPT4_PATTERN)
        seconds = time.perf_counter() - t0
        n_vocab = tok.n_vocab
        digest = _ranks_digest(tok.mergeable_ranks().items())
        if save:
            tok.save(save)
    elif trainer == "rustbpe":
        import rustbpe

        r = rustbpe.Tokenizer()
        t0 = time.perf_counter()
        r.train_from_iterator(_texts(paths), vocab_size, pattern=GPT4_PATTERN)
        seconds = time.perf_counter() - t0
        n_vocab = r.vocab_size
        digest = _ranks_digest(r.get_mergeable_ranks())
    elif trainer == "hf_tokenizers":
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer_ = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        t0 = time.perf_counter()
        hf.train([str(p) for p in paths], trainer_)
        seconds = time.perf_counter() - t0
        n_vocab = hf.get_vocab_size()
    else:
        raise ValueError(f"unknown trainer {trainer!r}")
    return {"seconds": seconds, "peak_rss_mb": _peak_rss_mb(), "n_vocab": n_vocab, "merges_digest": digest}


def _train_in_subprocess(trainer: str, paths: list[Path], vocab_size: int, save: str | None = None) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([str(p) for p in paths], f)
        paths_file = f.name
    try:
        cmd = [sys.executable, __file__, "--child", trainer, "--paths-file", paths_file]
        cmd += ["--vocab-size", str(vocab_size)] + (["--save", save] if save else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(paths_file)
    if r.returncode != 0:
        raise RuntimeError(f"{trainer} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- encoding


def _alternate(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the runs interleaved so drift on a busy machine hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _encode(tok_path: str, docs: list[str], repeats: int) -> dict[str, Any]:
    import gptrs_tok

    tok = gptrs_tok.Tokenizer.load(tok_path)
    enc = tok.to_tiktoken()
    text = "".join(docs)
    mb = len(text.encode("utf-8")) / 1e6
    ids = tok.encode_ordinary(text)
    identical = ids == enc.encode_ordinary(text)
    single = _alternate(
        {"gptrs_tok": lambda: tok.encode_ordinary(text), "tiktoken": lambda: enc.encode_ordinary(text)},
        repeats,
    )
    batch = _alternate(
        {
            "gptrs_tok": lambda: tok.encode_batch(docs, num_threads=2),
            "tiktoken": lambda: enc.encode_ordinary_batch(docs, num_threads=2),
            # numpy output: the data pipeline's path. Lists are built under the GIL, one int object per
            # token, which caps list output's scaling for every library (tiktoken's included).
            "gptrs_tok_numpy": lambda: tok.encode_batch(docs, num_threads=2, as_numpy=True),
            "gptrs_tok_numpy_1": lambda: tok.encode_batch(docs, num_threads=1, as_numpy=True),
        },
        repeats,
    )
    return {
        "mb": mb,
        "tokens": len(ids),
        "ids_identical_to_tiktoken": identical,
        "single_thread_mb_s": {k: mb / s for k, s in single.items()},
        "batch_2_threads_mb_s": {k: mb / s for k, s in batch.items()},
    }


# ----------------------------------------------------------------------------------------------- driver


def run(quick: bool = False, vocab_size: int | None = None) -> dict[str, Any]:
    corpus, paths = _corpus(quick)
    vocab_size = vocab_size or (4096 if quick else 32768)
    mb = sum(p.stat().st_size for p in paths) / 1e6
    repeats = 1 if quick else 2
    results: dict[str, Any] = {
        "corpus": corpus,
        "files": len(paths),
        "mb": mb,
        "vocab_size": vocab_size,
        "pattern": "gpt4 (tiktoken cl100k_base pat_str)",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "train": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-tok-") as d:
        tok_path = os.path.join(d, "tok.json")
        for trainer in TRAINERS:
            runs = [
                _train_in_subprocess(trainer, paths, vocab_size, tok_path if trainer == "gptrs_tok" else None)
                for _ in range(repeats)
            ]
            best = min(runs, key=lambda r: r["seconds"])
            best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
            best["mb_s"] = mb / best["seconds"]
            results["train"][trainer] = best
        ours = results["train"]["gptrs_tok"]
        for r in results["train"].values():
            r["gptrs_tok_speedup"] = r["seconds"] / ours["seconds"]
        results["merges_equal_rustbpe"] = (
            ours["merges_digest"] == results["train"]["rustbpe"]["merges_digest"]
        )
        docs = list(_texts(paths))
        results["encode"] = _encode(tok_path, docs, repeats=3 if quick else 5)
    enc = results["encode"]
    results["goals"] = {
        "train_2x_rustbpe": results["train"]["rustbpe"]["gptrs_tok_speedup"] >= 2,
        "train_4x_hf": results["train"]["hf_tokenizers"]["gptrs_tok_speedup"] >= 4,
        "rss_le_rustbpe": ours["peak_rss_mb"] <= results["train"]["rustbpe"]["peak_rss_mb"],
        "encode_2x_tiktoken": enc["single_thread_mb_s"]["gptrs_tok"]
        >= 2 * enc["single_thread_mb_s"]["tiktoken"],
        # Scaling of the batch encoder itself: 2 threads against 1, numpy output (see _encode).
        "batch_1_8x_single": enc["batch_2_threads_mb_s"]["gptrs_tok_numpy"]
        >= 1.8 * enc["batch_2_threads_mb_s"]["gptrs_tok_numpy_1"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("tokenizer_quick.json" if quick else "tokenizer.json")
    out.write_text(json.dumps(results, indent=1) + "\n")
    results["json"] = str(out)
    return results


def _print(r: dict[str, Any]) -> None:
    print(
        f"corpus: {r['corpus']} ({r['files']} files, {r['mb']:.1f} MB), vocab {r['vocab_size']}, {r['pattern']}"
    )
    print(f"\n{'training':<22}{'seconds':>9}{'MB/s':>9}{'peak RSS MB':>13}{'gptrs_tok faster':>18}")
    for name, t in r["train"].items():
        print(
            f"{name:<22}{t['seconds']:>9.2f}{t['mb_s']:>9.1f}{t['peak_rss_mb']:>13.0f}"
            f"{t['gptrs_tok_speedup']:>17.2f}x"
        )
    print(f"merges identical to rustbpe's: {r['merges_equal_rustbpe']}")
    e = r["encode"]
    s, b = e["single_thread_mb_s"], e["batch_2_threads_mb_s"]
    print(f"\n{'encoding (MB/s)':<22}{'1 thread':>10}{'2 threads':>11}{'vs tiktoken':>13}")
    for name in ("gptrs_tok", "tiktoken"):
        print(f"{name:<22}{s[name]:>10.1f}{b[name]:>11.1f}{s[name] / s['tiktoken']:>12.2f}x")
    print(
        f"ids identical to tiktoken: {e['ids_identical_to_tiktoken']}; our 2-thread batch / 1 thread: "
        f"{b['gptrs_tok'] / s['gptrs_tok']:.2f}x (lists)"
    )
    print(
        f"batch with numpy output: {b['gptrs_tok_numpy_1']:.1f} MB/s on 1 thread, {b['gptrs_tok_numpy']:.1f} on 2 "
        f"({b['gptrs_tok_numpy'] / b['gptrs_tok_numpy_1']:.2f}x; {b['gptrs_tok_numpy'] / s['gptrs_tok']:.2f}x our "
        "single-string encode_ordinary)"
    )
    print("\ngoals: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in r["goals"].items()))
    print(f"results: {r['json']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="~4 MB of the corpus, vocab 4096 (< 30 s)")
    p.add_argument("--vocab-size", type=int, help="override the vocabulary size")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--child", choices=TRAINERS, help=argparse.SUPPRESS)
    p.add_argument("--paths-file", help=argparse.SUPPRESS)
    p.add_argument("--save", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        paths = [Path(x) for x in json.loads(Path(args.paths_file).read_text())]
        print(json.dumps(_child(args.child, paths, args.vocab_size, args.save)))
        return
    results = run(args.quick, args.vocab_size)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
