"""Files: save/load round trip, clear errors on bad files, and tiktoken / HF tokenizer.json exports."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken.load import load_tiktoken_bpe

from corpus import stdlib_text
from gptrs_tok import Tokenizer


@cache
def trained(pattern: str = "gpt4") -> Tokenizer:
    return Tokenizer.train(
        [stdlib_text(800_000)], 2048, pattern=pattern, special_tokens=["<|eot|>", "<|pad|>"]
    )


def test_save_load_round_trip(tmp_path: Path) -> None:
    tok = trained()
    path = tmp_path / "tok.json"
    tok.save(path)
    back = Tokenizer.load(str(path))
    assert isinstance(back, Tokenizer)
    assert back.merges() == tok.merges()
    assert back.special_tokens == tok.special_tokens
    assert back.pattern == tok.pattern
    text = stdlib_text(100_000, skip=500)
    assert back.encode(text) == tok.encode(text)
    data = json.loads(path.read_text())
    assert (data["format"], data["version"]) == ("gptrs_tok", 1)
    assert repr(back) == repr(tok)


def _edit(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], object]:
    def write(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return write


CORRUPTIONS: dict[str, tuple[Callable[[Path], object], str]] = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:1000]), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "invalid or truncated JSON"),
    "binary": (lambda p: p.write_bytes(bytes(range(256)) * 4), "invalid or truncated JSON"),
    "not an object": (lambda p: p.write_text("[1, 2]"), "not a gptrs_tok tokenizer file"),
    "other format": (_edit(lambda d: d.update(format="tiktoken")), "not a gptrs_tok tokenizer file"),
    "future version": (_edit(lambda d: d.update(version=2)), "unsupported version 2"),
    "missing merges": (_edit(lambda d: d.pop("merges")), "merges"),
    "merge uses later id": (_edit(lambda d: d["merges"].__setitem__(0, [300, 1])), "not defined before"),
    "negative id": (_edit(lambda d: d["merges"].__setitem__(0, [-1, 1])), "invalid value"),
    "duplicate merge": (_edit(lambda d: d["merges"].append(d["merges"][0])), "repeats merge 0"),
    "special collides with merge": (
        _edit(lambda d: d["special_tokens"].update({"<|eot|>": 300})),
        "special ids",
    ),
    "special ids with a gap": (_edit(lambda d: d["special_tokens"].update({"<|pad|>": 5000})), "special ids"),
    "bad pattern": (_edit(lambda d: d.update(pattern="(oops")), "pattern"),
    "token length doubling": (
        _edit(lambda d: d.update(merges=[[97, 97]] + [[255 + k, 255 + k] for k in range(1, 42)])),
        "MiB",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_bad_files_raise_value_error_naming_the_file(tmp_path: Path, name: str) -> None:
    corrupt, message = CORRUPTIONS[name]
    path = tmp_path / "my-tokenizer.json"
    trained().save(path)
    corrupt(path)
    with pytest.raises(ValueError, match=message) as err:
        Tokenizer.load(path)
    assert "my-tokenizer.json" in str(err.value)


def test_extra_top_level_keys_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    trained().save(path)
    _edit(lambda d: d.update(roles={"eos": "<|eot|>"}))(path)
    assert Tokenizer.load(path).merges() == trained().merges()


def test_huge_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GB on paper, nothing on disk
    with pytest.raises(ValueError, match=r"huge\.json.*larger than"):
        Tokenizer.load(path)


def test_missing_file_and_unwritable_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        Tokenizer.load(tmp_path / "nope.json")
    with pytest.raises(OSError, match="no-such-dir"):
        trained().save(tmp_path / "no-such-dir" / "tok.json")


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_tiktoken_exports(tmp_path: Path, pattern: str) -> None:
    tok = trained(pattern)
    path = tmp_path / "tok.tiktoken"
    tok.save_tiktoken(path)
    assert load_tiktoken_bpe(str(path)) == tok.mergeable_ranks()
    enc = tok.to_tiktoken()
    text = stdlib_text(300_000, skip=700) + "<|eot|>"
    assert enc.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    assert enc.n_vocab == tok.n_vocab


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2"])
def test_hf_tokenizer_json_gives_the_same_ids(tmp_path: Path, pattern: str) -> None:
    tok = trained(pattern)
    path = tmp_path / "tokenizer.json"
    tok.save_hf(path)
    hf = tokenizers.Tokenizer.from_file(str(path))
    text = stdlib_text(300_000, skip=700) + " café 😀\n\n  <|eot|> end"
    ids = tok.encode(text, allowed_special="all")
    assert hf.encode(text).ids == ids
    assert hf.decode(ids, skip_special_tokens=False) == text
    assert hf.get_vocab_size() == tok.n_vocab


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tokenizers.Tokenizer:
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    trained().save_hf(path)
    return tokenizers.Tokenizer.from_file(str(path))


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_hf_tokenizer_json_matches_on_any_text(hf_tokenizer: tokenizers.Tokenizer, text: str) -> None:
    assert hf_tokenizer.encode(text).ids == trained().encode_ordinary(text)
