"""Train, use and try out a BPE tokenizer from the command line: ``python -m gptrs.tokenizer``.

    python -m gptrs.tokenizer train --input data/*.txt --vocab-size 8192 --output tok.json
    python -m gptrs.tokenizer encode --tokenizer tok.json --text "Hello world"
    python -m gptrs.tokenizer decode --tokenizer tok.json --ids 15496 995
    python -m gptrs.tokenizer demo      # train on the built-in corpus, show speed and an exact round trip

The library side is ``gptrs.tokenizer.BPETokenizer``; this module only adds the commands and the demo.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm import tqdm

from gptrs.cli import bounded_int, make_parser, run_main, setup_logging, summary
from gptrs.data.sources import coverage_problem, special_file_kind, stdlib_paths
from gptrs.tokenizer import DEFAULT_SPECIAL_TOKENS, BPETokenizer

PROG = "python -m gptrs.tokenizer"


def demo(vocab_size: int = 4096, out: Any = None) -> dict[str, Any]:
    """Train on the built-in corpus (the standard library's ``.py`` files), then print the training time and
    speed, a sample encoding, and an exact round trip of the whole corpus. Returns the figures."""
    out = out or sys.stdout
    paths = stdlib_paths()
    n_bytes = sum(p.stat().st_size for p in paths)
    print(f"corpus: {len(paths)} standard-library .py files, {n_bytes / 1e6:.1f} MB", file=out)
    tok = BPETokenizer(vocab_size=vocab_size)
    t0 = time.perf_counter()
    tok.train_files(paths)
    train_s = time.perf_counter() - t0
    print(
        f"trained a {tok.get_vocab_size()}-token BPE (gpt4 pattern) in {train_s:.2f} s "
        f"({n_bytes / 1e6 / train_s:.1f} MB/s)",
        file=out,
    )
    sample = "def greet(name):\n    return f'Hello, {name}!'  # 👋\n"
    ids = tok.encode(sample)
    pieces = [tok.tok.decode_bytes([i]) for i in ids]
    print(f"sample: {sample!r}\n  -> {len(ids)} ids {ids}\n  -> pieces {pieces}", file=out)
    texts = [p.read_text(encoding="utf-8") for p in paths]
    t0 = time.perf_counter()
    encoded = tok.encode_batch(texts)
    encode_s = time.perf_counter() - t0
    exact = tok.tok.decode_batch(encoded) == texts
    n_tokens = sum(len(e) for e in encoded)
    print(
        f"round trip: {n_tokens:,} tokens ({n_bytes / n_tokens:.2f} bytes/token), batch-encoded in "
        f"{encode_s:.2f} s ({n_bytes / 1e6 / encode_s:.1f} MB/s); decode(encode(text)) == text for every "
        f"file: {exact}",
        file=out,
    )
    if not exact:
        raise RuntimeError("round trip mismatch")  # a bug, not a user error
    return {
        "files": len(paths),
        "bytes": n_bytes,
        "vocab_size": tok.get_vocab_size(),
        "train_seconds": train_s,
        "encode_seconds": encode_s,
        "tokens": n_tokens,
        "exact_round_trip": exact,
    }


MAX_VOCAB_SIZE = 2**32  # ids are u32 in gptrs_tok (the config's tokenizer.vocab_size has the same bound)


def _parse_specials(items: list[str] | None) -> dict[str, str]:
    if items is None:
        return dict(DEFAULT_SPECIAL_TOKENS)
    roles: dict[str, str] = {}
    for item in items:
        role, sep, s = item.partition("=")
        if not sep or not role or not s:
            raise ValueError(f"--special expects ROLE=STRING (e.g. eos='<|endoftext|>'), got {item!r:.80}")
        if role in roles:
            raise ValueError(f"--special {item!r:.80}: the role {role!r:.40} is given twice")
        same = next((r for r, t in roles.items() if t == s), None)
        if same is not None:
            raise ValueError(f"--special {item!r:.80}: {s!r:.40} is also the {same!r:.40} token")
        roles[role] = s
    return roles


class _Bar:
    """tqdm bar fed by gptrs_tok's ``progress(stage, done, total)``: one bar per stage (count, merge)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self.bar: Any = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self.stage:
            self.close()
            self.stage = stage
            unit, desc = ("B", "reading") if stage == "count" else ("merge", stage + "s")
            self.bar = tqdm(
                total=total or None, unit=unit, unit_scale=stage == "count", desc=desc, file=sys.stderr
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = make_parser(prog, summary(__doc__))
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, metavar="PATH", help="UTF-8 text files")
    t.add_argument(
        "--vocab-size",
        type=bounded_int(None, MAX_VOCAB_SIZE),
        required=True,
        help="total tokens: 256 bytes + merges + specials",
    )
    t.add_argument("--output", required=True, help="tokenizer JSON to write")
    t.add_argument("--pattern", default="gpt4", help="'gpt4' (default), 'gpt2' or a regex")
    t.add_argument(
        "--special",
        nargs="*",
        metavar="ROLE=STRING",
        help="special tokens by role (default: bos=<|bos|> eos=<|endoftext|> pad=<|pad|>; none if empty)",
    )
    t.add_argument("--min-frequency", type=int, default=1, help="minimum pair count for a merge")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser("encode", help="print the token ids of a text")
    e.add_argument("--tokenizer", required=True, help="tokenizer JSON")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to encode")
    src.add_argument("--file", help="UTF-8 file to encode")
    e.add_argument("--no-special", action="store_true", help="no BOS; special-token strings are plain text")

    d = sub.add_parser("decode", help="print the text of token ids")
    d.add_argument("--tokenizer", required=True, help="tokenizer JSON")
    d.add_argument("--ids", type=bounded_int(0, 2**32 - 1), nargs="+", required=True, help="token ids")
    d.add_argument("--keep-special", action="store_true", help="keep special tokens in the text")

    m = sub.add_parser("demo", help="train on the built-in corpus and show speed and a round trip")
    m.add_argument("--vocab-size", type=bounded_int(None, MAX_VOCAB_SIZE), default=4096)
    return p


def _check_regular(flag: str, path: str) -> None:
    """A file to read must be a regular file: a FIFO or a device is named, never opened (it could block)."""
    if os.path.isfile(path):
        return
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a directory; pass files (e.g. DIR/*.txt)")
    what = special_file_kind(path)
    raise ValueError(f"{flag} {path}: " + (f"is {what}, not a regular file" if what else "not found"))


def _read_utf8(flag: str, path: str) -> str:
    _check_regular(flag, path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{flag} {path}: not UTF-8 text (byte 0x{data[e.start]:02x} at byte offset {e.start:,})"
        ) from None


def _heads(paths: list[str], size: int = 1 << 20) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read(size)


def _train(args: argparse.Namespace) -> None:
    for path in args.input:
        _check_regular("--input", path)
    tok = BPETokenizer(
        vocab_size=args.vocab_size,
        special_tokens=_parse_specials(args.special),
        pattern=args.pattern,
        min_frequency=args.min_frequency,
    )
    bar = _Bar(enabled=not args.no_progress)
    t0 = time.perf_counter()
    try:
        tok.train_files(args.input, progress=bar)
    finally:
        bar.close()
    tok.save(args.output)
    problem = coverage_problem(_heads(args.input), tok.pattern, "--input")
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    print(
        f"trained {tok.get_vocab_size()} tokens in {time.perf_counter() - t0:.2f} s -> {args.output}",
        file=sys.stderr,
    )


def _run(args: argparse.Namespace) -> None:
    if args.command == "train":
        _train(args)
    elif args.command == "encode":
        tok = BPETokenizer.load(args.tokenizer)
        text = _read_utf8("--file", args.file) if args.file is not None else args.text
        ids = tok.encode_ordinary(text) if args.no_special else tok.encode(text)
        what = f"--file {args.file}" if args.file is not None else "--text"
        problem = coverage_problem([text], tok.pattern, what)
        if problem:
            print(f"warning: {problem}", file=sys.stderr)
        print(" ".join(map(str, ids)))
    elif args.command == "decode":
        tok = BPETokenizer.load(args.tokenizer)
        print(tok.decode(args.ids, skip_special_tokens=not args.keep_special))
    elif args.command == "demo":
        demo(vocab_size=args.vocab_size)


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Entry point of ``python -m gptrs.tokenizer``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.log_level)
    return run_main(lambda: _run(args), log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
