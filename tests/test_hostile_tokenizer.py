"""Hostile tokenizer files and inputs: the tables of ``tests/reliability/hostile_cases.py`` (each case its error type and
one-line message, or the right result), plus properties: any text round-trips, any id list either decodes or
raises ValueError, never a Rust panic.

Cases that run inside the Rust extension are isolated in a child process with a capped address space, so a
crash or an allocation failure fails the case instead of the test run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.reliability import hostile_cases as hc


@pytest.mark.parametrize("case", hc.cases_for("tokenizer file"), ids=lambda c: c.name)
def test_tokenizer_file(case: hc.Case, hostile_tokenizer_dir: Path) -> None:
    out = hc.run_case(case, hostile_tokenizer_dir)
    assert out.ok, out.detail


@pytest.mark.parametrize("case", hc.cases_for("tokenizer input"), ids=lambda c: c.name)
def test_tokenizer_input(case: hc.Case, hostile_tokenizer_dir: Path) -> None:
    out = hc.run_case(case, hostile_tokenizer_dir)
    assert out.ok, out.detail


def test_tables_cover_the_issue() -> None:
    """The cases the reliability issue names are all in the tables."""
    names = " | ".join(c.name for c in hc.all_cases())
    for needed in (
        "truncated",
        "wrong version",
        "unknown id",
        "duplicate merge",
        "over u32",
        "collides with a merge",
        "1 GiB",
        "lone surrogates",
        "NUL bytes",
        "10 MB without whitespace",
        "1 million special-token strings",
        "decode id == n_vocab",
        "empty strings and empty batches",
    ):
        assert needed in names, needed


# --------------------------------------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def tok(hostile_tokenizer_dir: Path):
    import gptrs_tok

    return gptrs_tok.Tokenizer.load(hostile_tokenizer_dir / "tokenizer.json")


# Any code point, lone surrogates included (Hypothesis' default text strategy leaves them out).
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=200)
EXAMPLES = settings.default.max_examples


def _without_surrogates(s: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in s)


def check_round_trip(tok, text: str) -> None:
    ids = tok.encode_ordinary(text)
    clean = _without_surrogates(text)
    assert tok.decode(ids) == clean  # exact for every str; a lone surrogate reads back as U+FFFD
    assert ids == tok.encode_ordinary(clean)
    assert tok.encode_batch([text, ""], allowed_special=(), disallowed_special=()) == [ids, []]


def check_decode(tok, ids: list[int]) -> None:
    n = tok.n_vocab
    try:
        text = tok.decode(ids)
    except ValueError as e:
        assert any(not 0 <= i < n for i in ids), f"valid ids refused: {e}"
        assert "\n" not in str(e)
        return
    assert all(0 <= i < n for i in ids), "an id out of range was accepted"
    assert text == tok.decode_bytes(ids).decode("utf-8", errors="replace")


IDS = st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers(-5, 400), max_size=50)


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(text=ANY_TEXT)
def test_any_text_round_trips(tok, text: str) -> None:
    check_round_trip(tok, text)


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(ids=IDS)
def test_any_ids_decode_or_raise_value_error(tok, ids: list[int]) -> None:
    check_decode(tok, ids)


@pytest.mark.slow
@settings(max_examples=50 * EXAMPLES, deadline=None)
@given(text=ANY_TEXT, ids=IDS)
def test_fuzz_many_examples(tok, text: str, ids: list[int]) -> None:
    """The same properties with many more examples (``-m slow``; ``HYPOTHESIS_PROFILE=slow`` for more)."""
    check_round_trip(tok, text)
    check_decode(tok, ids)
