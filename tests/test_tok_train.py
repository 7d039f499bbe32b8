"""Training: merges equal rustbpe's (the oracle), are thread-count independent, and bad input is refused."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rustbpe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gptrs_tok
from corpus import stdlib_texts
from gptrs_tok import GPT2_PATTERN, GPT4_PATTERN, Tokenizer


def rustbpe_ranks(texts: list[str], vocab_size: int, pattern: str) -> dict[bytes, int]:
    r = rustbpe.Tokenizer()
    r.train_from_iterator(iter(texts), vocab_size, pattern=pattern)
    return {bytes(k): v for k, v in r.get_mergeable_ranks()}


@pytest.mark.parametrize("pattern", [GPT4_PATTERN, GPT2_PATTERN, r"\w+|\s+|[^\w\s]+"])
def test_merges_equal_rustbpe_on_stdlib(pattern: str) -> None:
    texts = list(stdlib_texts(2_000_000))
    tok = Tokenizer.train(texts, 3000, pattern=pattern)
    assert tok.n_vocab == 3000
    assert tok.mergeable_ranks() == rustbpe_ranks(texts, 3000, pattern)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(st.text(alphabet="ab c\n'1é", max_size=40), min_size=1, max_size=8),
    extra=st.integers(1, 40),
)
def test_merges_equal_rustbpe_on_hypothesis_text(texts: list[str], extra: int) -> None:
    tok = Tokenizer.train(texts, 256 + extra)
    assert tok.mergeable_ranks() == rustbpe_ranks(texts, 256 + extra, GPT4_PATTERN)


_THREADS_SCRIPT = """
import sys, gptrs_tok
texts = [open(p, encoding="utf-8", errors="replace").read() for p in sys.argv[1:]]
big = "".join(texts)  # one 4 MB text: exercises the cutting of long texts into segments
tok = gptrs_tok.Tokenizer.train([big] + texts[:5], 1500)
print(tok.merges())
"""


def test_one_or_many_threads_give_identical_merges(tmp_path: Path) -> None:
    paths = []
    for i, text in enumerate(stdlib_texts(2_000_000)):
        p = tmp_path / f"{i}.txt"
        p.write_text(text, encoding="utf-8")
        paths.append(str(p))
    outputs = set()
    for threads in ("1", "2", "3"):
        env = {**os.environ, "RAYON_NUM_THREADS": threads}
        run = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, *paths], env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        outputs.add(run.stdout)
    assert len(outputs) == 1


def test_train_files_equals_train(tmp_path: Path) -> None:
    texts = list(stdlib_texts(500_000))
    paths = []
    for i, text in enumerate(texts):
        p = tmp_path / f"{i}.py"
        p.write_text(text, encoding="utf-8")
        paths.append(p)
    a = Tokenizer.train(iter(texts), 1000, special_tokens=["<|eot|>"])
    b = Tokenizer.train_files(paths, 1000, special_tokens=["<|eot|>"])
    assert a.merges() == b.merges()
    assert isinstance(b, Tokenizer)


def test_vocab_size_counts_specials_and_specials_follow_merges() -> None:
    specials = ["<|bos|>", "<|eos|>", "<|pad|>"]
    tok = Tokenizer.train(stdlib_texts(300_000), 700, special_tokens=specials)
    assert tok.n_vocab == 700
    assert len(tok.merges()) == 700 - 256 - 3
    assert tok.special_tokens == {s: 697 + i for i, s in enumerate(specials)}
    assert tok.token_bytes(698) == b"<|eos|>"


def test_merge_k_is_token_256_plus_k() -> None:
    tok = Tokenizer.train(stdlib_texts(300_000), 600)
    for k, (a, b) in enumerate(tok.merges()):
        assert max(a, b) < 256 + k
        assert tok.token_bytes(256 + k) == tok.token_bytes(a) + tok.token_bytes(b)


def test_min_frequency_stops_early_with_a_prefix_of_the_merges() -> None:
    texts = stdlib_texts(300_000)
    full = Tokenizer.train(texts, 5000).merges()
    some = Tokenizer.train(texts, 5000, min_frequency=50).merges()
    assert 0 < len(some) < len(full)
    assert some == full[: len(some)]


def test_progress_reports_and_can_cancel() -> None:
    calls: list[tuple[str, int, int]] = []
    Tokenizer.train(stdlib_texts(300_000), 800, progress=lambda *a: calls.append(a))
    stages = {c[0] for c in calls}
    assert stages == {"count", "merge"}
    merges = [c for c in calls if c[0] == "merge"]
    assert merges[-1][1] == merges[-1][2] == 800 - 256
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(merges))

    def stop(stage: str, done: int, total: int) -> None:
        if stage == "merge":
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        Tokenizer.train(stdlib_texts(300_000), 800, progress=stop)


def test_tiny_and_empty_corpora() -> None:
    assert Tokenizer.train([], 300).n_vocab == 256
    tok = Tokenizer.train(["aaaa"], 300, special_tokens=["<s>"])
    assert tok.n_vocab == 259  # two merges (aa, aaaa), then the special
    assert tok.special_tokens == {"<s>": 258}


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["x"], 257, special_tokens=["<a>", "<b>"])
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(["x"], -1)
    with pytest.raises(TypeError, match="single str"):
        Tokenizer.train("some text", 300)
    with pytest.raises(TypeError, match="must be str"):
        Tokenizer.train(["ok", b"bytes"], 300)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="pattern"):
        Tokenizer.train(["x"], 300, pattern="(unclosed")
    with pytest.raises(ValueError, match="twice"):
        Tokenizer.train(["x"], 300, special_tokens=["<a>", "<a>"])
    with pytest.raises(ValueError, match="at least one path"):
        Tokenizer.train_files([], 300)


def test_train_files_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        Tokenizer.train_files([missing], 300)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*UTF-8"):
        Tokenizer.train_files([latin1], 300)


def test_module_exports() -> None:
    assert gptrs_tok.GPT4_PATTERN == Tokenizer().pattern
    assert Tokenizer(pattern="gpt2").pattern == GPT2_PATTERN
    assert "".join(gptrs_tok.pretokenize("Hello world!\n")) == "Hello world!\n"
