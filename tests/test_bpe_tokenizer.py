"""``gptrs.tokenizer``: BPETokenizer (roles, special tokens, round trips, files, fingerprint) and its CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptrs.data import stdlib_paths
from gptrs.tokenizer import DEFAULT_SPECIAL_TOKENS, BPETokenizer, _infer_roles
from gptrs.tokenizer.__main__ import demo, main

VOCAB = 600
# Text without the special-token strings: every code point but surrogates (not encodable as UTF-8).
TEXT = st.text(st.characters(exclude_categories=["Cs"])).filter(lambda s: "<|" not in s)


@cache
def corpus_files(n: int = 40) -> tuple[Path, ...]:
    """A deterministic slice of the built-in corpus (stdlib .py files)."""
    paths = stdlib_paths()
    return tuple(paths[:: max(1, len(paths) // n)][:n])


@cache
def trained(pattern: str = "gpt4") -> BPETokenizer:
    tok = BPETokenizer(vocab_size=VOCAB, pattern=pattern)
    return tok.train(p.read_text(encoding="utf-8") for p in corpus_files())


@settings(deadline=None)
@given(TEXT)
def test_round_trip_any_text(text: str) -> None:
    tok = trained()
    assert tok.decode(tok.encode_ordinary(text)) == text
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id and tok.bos_token_id not in ids[1:]
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=False) == "<|bos|>" + text
    assert tok.encode(text, add_special_tokens=False) == ids[1:]


@settings(deadline=None, max_examples=max(10, settings.default.max_examples // 3))
@given(st.lists(TEXT, max_size=8))
def test_encode_batch_equals_encode(texts: list[str]) -> None:
    tok = trained()
    ordinary = [tok.encode_ordinary(t) for t in texts]
    assert tok.encode_batch(texts) == ordinary
    assert tok.encode_batch(texts, num_threads=1) == tok.encode_batch(texts, num_threads=2)
    arrays = tok.encode_batch(texts, as_numpy=True)
    assert all(a.dtype == np.uint16 for a in arrays)
    assert [a.tolist() for a in arrays] == ordinary
    with_specials = tok.encode_batch(texts, add_special_tokens=True, as_numpy=True)
    assert [a.tolist() for a in with_specials] == [tok.encode(t) for t in texts]
    assert [tok.decode(a) for a in arrays] == texts


def test_special_tokens_by_role() -> None:
    tok = trained()
    assert tok.special_tokens == DEFAULT_SPECIAL_TOKENS
    n = tok.get_vocab_size()
    assert n == VOCAB
    # Specials come after the merges, in role order.
    assert [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id] == [n - 3, n - 2, n - 1]
    assert tok.unk_token_id is None
    assert tok.token_to_id("<|endoftext|>") == tok.eos_token_id
    text = "x = 1<|endoftext|>y<|pad|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.eos_token_id in ids and tok.pad_token_id in ids
    assert tok.decode(ids) == "x = 1y"
    assert tok.decode(ids, skip_special_tokens=False) == text
    ordinary = tok.encode_ordinary(text)
    assert not {tok.eos_token_id, tok.pad_token_id} & set(ordinary)
    assert tok.decode(ordinary) == text
    # A token split on purpose by ordinary text stays text.
    assert tok.eos_token_id not in tok.encode("<|endof" + "text|>"[:3])


def test_roles_may_share_a_string_and_none_at_all() -> None:
    files = [str(p) for p in corpus_files(5)]
    gpt2_style = BPETokenizer(300, special_tokens={"bos": "<|endoftext|>", "eos": "<|endoftext|>"})
    gpt2_style.train_files(files)
    assert gpt2_style.bos_token_id == gpt2_style.eos_token_id == 299
    assert gpt2_style.pad_token_id is None
    bare = BPETokenizer(300, special_tokens={}).train_files(files)
    assert bare.get_vocab_size() == 300 and bare.bos_token_id is None
    assert bare.encode("hi") == bare.encode_ordinary("hi")


def test_save_load_keeps_ids_roles_and_fingerprint(tmp_path: Path) -> None:
    tok = trained()
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.special_tokens == tok.special_tokens
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    assert loaded.pattern == tok.pattern == tok.tok.pattern
    assert loaded.get_vocab_size() == tok.get_vocab_size()
    text = corpus_files()[0].read_text(encoding="utf-8")
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.fingerprint() == tok.fingerprint()
    assert len(tok.fingerprint()) == 64


def test_fingerprint_tracks_content() -> None:
    assert trained("gpt4").fingerprint() != trained("gpt2").fingerprint()
    files = [str(p) for p in corpus_files(5)]
    a = BPETokenizer(400).train_files(files)
    b = BPETokenizer(400).train_files(files)
    c = BPETokenizer(401).train_files(files)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_roles_are_read_from_the_file_or_inferred(tmp_path: Path) -> None:
    assert _infer_roles(["<s>", "</s>", "[PAD]", "<UNK>", "<|mask|>"]) == {
        "bos": "<s>",
        "eos": "</s>",
        "pad": "[PAD]",
        "unk": "<UNK>",
    }
    tok = BPETokenizer(300, special_tokens={"bos": "<start>", "eos": "<stop>"})
    tok.train_files([str(p) for p in corpus_files(3)])
    path = tmp_path / "tok.json"
    tok.save(path)
    assert BPETokenizer.load(path).special_tokens == {}  # unusual spellings are not guessed
    data = json.loads(path.read_text())
    data["roles"] = {"bos": "<start>", "eos": "<stop>"}
    path.write_text(json.dumps(data))
    try:
        loaded = BPETokenizer.load(path)
    except ValueError:
        pytest.skip("this gptrs_tok does not accept a 'roles' object in its file yet")
    assert loaded.special_tokens == {"bos": "<start>", "eos": "<stop>"}
    assert loaded.bos_token_id == tok.bos_token_id


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vocab_size": 100}, "vocab_size 100 is too small"),
        ({"vocab_size": "4096"}, "vocab_size must be an int"),
        ({"vocab_size": True}, "vocab_size must be an int"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"special_tokens": {"bos": ""}}, "non-empty"),
        ({"special_tokens": ["<s>"]}, "dict of role"),
        ({"pattern": "("}, "pattern"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BPETokenizer(**kwargs)


def test_bad_use_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not trained"):
        BPETokenizer().encode("x")
    tok = trained()
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, VOCAB])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode(np.array([-1]))
    with pytest.raises(ValueError, match="not a str"):
        tok.decode("1 2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="single str"):
        tok.encode_batch("abc")
    with pytest.raises(ValueError, match="single str"):
        BPETokenizer().train("abc")
    assert tok.decode([]) == ""
    assert tok.encode_batch([]) == []
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "gptrs_tok", "version": 1, "pattern": "gpt4", "merg')
    with pytest.raises(ValueError, match=r"bad\.json"):
        BPETokenizer.load(bad)
    with pytest.raises(FileNotFoundError):
        BPETokenizer.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_train_encode_decode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tok.json"
    files = [str(p) for p in corpus_files(5)]
    argv = ["train", "--input", *files, "--vocab-size", "400", "--output", str(out), "--no-progress"]
    assert main([*argv, "--special", "eos=<|endoftext|>"]) == 0
    tok = BPETokenizer.load(out)
    assert tok.get_vocab_size() == 400 and tok.special_tokens == {"eos": "<|endoftext|>"}
    capsys.readouterr()
    text = "def f(x):\n    return x  # é<|endoftext|>"
    assert main(["encode", "--tokenizer", str(out), "--text", text]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == tok.encode(text)
    assert main(["decode", "--tokenizer", str(out), "--keep-special", "--ids", *map(str, ids)]) == 0
    assert capsys.readouterr().out == text + "\n"
    assert main(["decode", "--tokenizer", str(out), "--ids", *map(str, ids)]) == 0
    assert capsys.readouterr().out == text.replace("<|endoftext|>", "") + "\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--input", "missing.txt", "--vocab-size", "300", "--output", "t.json"], "not found"),
        (["train", "--input", ".", "--vocab-size", "300", "--output", "t.json"], "is a directory"),
        (["train", "--input", "corpus.txt", "--vocab-size", "10", "--output", "t.json"], "too small"),
        (["train", "--input", "corpus.txt", "--vocab-size", "x", "--output", "t.json"], "invalid int"),
        (
            ["train", "--input", "corpus.txt", "--vocab-size", "300", "--output", "t.json", "--pattern", "("],
            "(",
        ),
        (
            [
                "train",
                "--input",
                "corpus.txt",
                "--vocab-size",
                "300",
                "--output",
                "t.json",
                "--special",
                "eos",
            ],
            "ROLE",
        ),
        (["encode", "--tokenizer", "corrupt.json", "--text", "x"], "corrupt.json"),
        (["encode", "--tokenizer", "missing.json", "--text", "x"], "missing.json"),
        (["decode", "--tokenizer", "tok.json", "--ids", "1", "99999"], "out of range"),
        (["decode", "--tokenizer", "tok.json", "--ids", "one"], "invalid int"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text(corpus_files()[0].read_text(encoding="utf-8"))
    (tmp_path / "corrupt.json").write_text("{not json")
    trained().save(tmp_path / "tok.json")
    try:
        code = main(argv)
    except SystemExit as e:  # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_cli_as_module_with_progress_bar(tmp_path: Path) -> None:
    out = tmp_path / "tok.json"
    files = [str(p) for p in corpus_files(5)]
    cmd = [sys.executable, "-m", "gptrs.tokenizer", "train", "--input", *files, "--vocab-size", "300"]
    r = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "merges" in r.stderr and out.is_file()
    r = subprocess.run(
        [*cmd[:3], "decode", "--tokenizer", str(out), "--ids", "-5"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "out of range" in r.stderr


def test_demo_round_trips(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("gptrs.tokenizer.__main__.stdlib_paths", lambda: list(corpus_files(20)))
    figures = demo(vocab_size=512)
    out = capsys.readouterr().out
    assert figures["exact_round_trip"] is True and figures["vocab_size"] == 512
    assert "for every file: True" in out and "MB/s" in out


@pytest.mark.parametrize("bad_id", [2**63, 2**64, 2**70, -(2**63) - 1])
def test_decode_names_a_huge_id_as_given(bad_id: int) -> None:
    """An id beyond int64 is reported as given, not wrapped by a numpy cast (-1, -2^63) or boxed."""
    tok = BPETokenizer(vocab_size=260)
    tok.train(["hello world"] * 10)
    with pytest.raises(ValueError, match=rf"token id {bad_id} is out of range"):
        tok.decode([1, bad_id])
    if 0 <= bad_id < 2**64:
        with pytest.raises(ValueError, match=rf"token id {bad_id} is out of range"):
            tok.decode(np.array([1, bad_id], dtype=np.uint64))
