"""Encoding: ids equal tiktoken's on our merges, round trips, special-token semantics, batch, decoding."""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus import stdlib_text
from gptrs_tok import Tokenizer

SPECIALS = ["<|endoftext|>", "<|fim|>", "<|fim|>x"]


@cache
def trained(pattern: str = "gpt4") -> tuple[Tokenizer, tiktoken.Encoding]:
    tok = Tokenizer.train([stdlib_text(1_500_000)], 4096, pattern=pattern, special_tokens=SPECIALS)
    return tok, tok.to_tiktoken()


@pytest.mark.parametrize("pattern", ["gpt4", "gpt2", r"\w+|\s+|[^\w\s]+"])
def test_ids_equal_tiktoken_on_unseen_stdlib_text(pattern: str) -> None:
    tok, enc = trained(pattern)
    text = stdlib_text(1_000_000, skip=400)  # files the tokenizer was not trained on
    ids = tok.encode_ordinary(text)
    assert ids == enc.encode_ordinary(text)
    assert tok.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_ids_equal_tiktoken_and_round_trip_on_any_text(text: str) -> None:
    tok, enc = trained()
    ids = tok.encode_ordinary(text)
    assert ids == enc.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet="abcdefgh_=.", min_size=100, max_size=3000))
def test_long_pieces_use_the_heap_merge_and_still_match_tiktoken(text: str) -> None:
    tok, enc = trained()
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)


def test_a_long_run_without_whitespace_round_trips() -> None:
    tok, _ = trained()
    text = "".join(c for c in stdlib_text(300_000) if c.isalpha())[:200_000]  # a single 200 kB piece
    assert tok.decode(tok.encode_ordinary(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*SPECIALS, "<|", "|>", "fim", " x", "hello", "\n", "  "]), max_size=12))
def test_special_token_semantics_match_tiktoken(parts: list[str]) -> None:
    tok, enc = trained()
    text = "".join(parts)
    allowed_sets: list[Literal["all"] | set[str]] = ["all", set(), {"<|fim|>"}, {"<|endoftext|>", "<|fim|>x"}]
    disallowed_sets: list[Literal["all"] | set[str]] = ["all", set(), {"<|endoftext|>"}]
    for allowed in allowed_sets:
        for disallowed in disallowed_sets:
            try:
                want = enc.encode(text, allowed_special=allowed, disallowed_special=disallowed)
            except ValueError:
                with pytest.raises(ValueError, match="disallowed special token"):
                    tok.encode(text, allowed_special=allowed, disallowed_special=disallowed)
                continue
            if "<|fim|>x" in text and allowed in ("all", {"<|endoftext|>", "<|fim|>x"}):
                continue  # overlapping specials: tiktoken's choice depends on its hash order
            assert tok.encode(text, allowed_special=allowed, disallowed_special=disallowed) == want


def test_special_tokens_defaults() -> None:
    tok, _ = trained()
    eot = tok.special_tokens["<|endoftext|>"]
    with pytest.raises(ValueError, match="disallowed special token"):
        tok.encode("a<|endoftext|>b")
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [*tok.encode("a"), eot, *tok.encode("b")]
    assert tok.encode("a<|endoftext|>b", disallowed_special=()) == tok.encode_ordinary("a<|endoftext|>b")
    with pytest.raises(ValueError, match="allowed_special"):
        tok.encode("x", allowed_special="some")


def test_lone_surrogates_become_replacement_characters_everywhere() -> None:
    tok, _ = trained()
    bad, fixed = "a\ud800b \udfff", "a\ufffdb \ufffd"
    assert tok.encode_ordinary(bad) == tok.encode_ordinary(fixed)
    assert tok.encode(bad) == tok.encode(fixed)
    assert tok.encode_batch([bad]) == [tok.encode(fixed)]


def test_encode_batch_equals_per_item() -> None:
    tok, _ = trained()
    texts = stdlib_text(400_000, skip=600).split("\n\n")
    want = [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts) == want
    assert tok.encode_batch(texts, num_threads=1) == want
    arrays = tok.encode_batch(texts, num_threads=2, as_numpy=True)
    assert all(a.dtype == np.uint16 and a.ndim == 1 for a in arrays)
    assert [a.tolist() for a in arrays] == want
    assert tok.encode_batch(["<|fim|>"], allowed_special="all") == [[tok.special_tokens["<|fim|>"]]]
    with pytest.raises(ValueError, match="disallowed"):
        tok.encode_batch(["ok", "<|fim|>"])
    with pytest.raises(ValueError, match="num_threads"):
        tok.encode_batch(texts, num_threads=0)
    with pytest.raises(TypeError):
        tok.encode_batch("not a list")


def test_numpy_dtype_is_uint32_past_65536_tokens() -> None:
    tok = Tokenizer.train([], 70_000, special_tokens=[f"<{i}>" for i in range(70_000 - 256)])
    assert tok.n_vocab == 70_000
    (arr,) = tok.encode_batch(["hi"], as_numpy=True, disallowed_special=())
    assert arr.dtype == np.uint32
    assert arr.tolist() == [104, 105]


def test_decoding() -> None:
    tok, _ = trained()
    ids = tok.encode("héllo wörld")
    assert tok.decode(np.array(ids, dtype=np.uint16)) == "héllo wörld"
    assert tok.decode_batch([ids, ids[:1]]) == ["héllo wörld", tok.decode(ids[:1])]
    assert tok.decode([0xC3]) == "\ufffd"  # half a character: replaced, never raises
    assert tok.decode_bytes([0xC3]) == b"\xc3"
    assert tok.token_bytes(104) == b"h"
    for bad in (-1, tok.n_vocab, 2**40, 2**70):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode([bad])
        with pytest.raises(ValueError, match="out of range"):
            tok.token_bytes(bad)
    with pytest.raises(TypeError):
        tok.decode("abc")  # type: ignore[arg-type]
