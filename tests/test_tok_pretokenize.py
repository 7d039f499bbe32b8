"""Pre-tokenization: the Rust scanners for "gpt4"/"gpt2" give exactly the pieces of tiktoken's patterns.

The reference is the Python ``regex`` module (``regex.findall(pat_str, text)``, as tiktoken's own tests do),
an engine independent of the ``fancy-regex`` the Rust tests compare against. The two engines ship different
Unicode versions, so characters that Python's ``unicodedata`` does not know (assigned only recently) are
left to the Rust tests, which check every code point against ``fancy-regex``, tiktoken's engine.
"""

from __future__ import annotations

import sysconfig
from functools import cache
from pathlib import Path

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

import gptrs_tok
from gptrs_tok import GPT2_PATTERN, GPT4_PATTERN, pretokenize

# Scales with the active Hypothesis profile (a `slow` profile with more examples runs these longer).
EXAMPLES = settings.default.max_examples
PATTERNS = {"gpt4": GPT4_PATTERN, "gpt2": GPT2_PATTERN}
COMPILED = {name: regex.compile(p) for name, p in PATTERNS.items()}

# Code points the stdlib's Unicode database knows (no surrogates: a str with one is not valid UTF-8).
ASSIGNED = st.characters(exclude_categories=["Cs", "Cn"])
# The characters the patterns treat specially: every kind of whitespace (and look-alikes that are not \s),
# newlines, apostrophes with every (?i) fold of the contraction letters, letters, marks, digits, punctuation.
TRICKY = st.sampled_from(
    list("   \t\n\r\x0b\x0c\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000\u200b\ufeff\x1c\x00")
    + list("''sSſdDmMtTlLvVeErRkKÅaéßǅʰ中𐌀07٣𝟘Ⅻ½\u0301\u0903!.,-_\"$😀")
)


def check(text: str) -> None:
    for name, compiled in COMPILED.items():
        pieces = pretokenize(text, name)
        assert pieces == compiled.findall(text), name
        assert "".join(pieces) == text


def test_patterns_are_tiktokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *a, **k: {})  # no download
    assert GPT4_PATTERN == openai_public.cl100k_base()["pat_str"]
    assert GPT2_PATTERN == openai_public.r50k_base()["pat_str"]
    for name, pattern in PATTERNS.items():
        assert gptrs_tok.Tokenizer(name).pattern == pattern
        assert gptrs_tok.Tokenizer(pattern).pattern == pattern
        assert pretokenize("it's 42 ok", pattern) == pretokenize("it's 42 ok", name)


@settings(max_examples=5 * EXAMPLES, deadline=None)
@given(st.text(ASSIGNED))
def test_pieces_equal_regex_on_any_text(text: str) -> None:
    check(text)


@settings(max_examples=5 * EXAMPLES, deadline=None)
@given(st.text(TRICKY, max_size=60))
def test_pieces_equal_regex_on_tricky_text(text: str) -> None:
    check(text)


@settings(max_examples=2 * EXAMPLES, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.from_regex(r"[a-zA-Z]{1,9}", fullmatch=True),
            st.from_regex(r"[0-9]{1,7}", fullmatch=True),
            st.from_regex(r"[ \t]{0,4}[\r\n]{0,3}[ \t]{0,4}", fullmatch=True),
            st.from_regex(r"'(s|t|ll|LL|Re|ve|d|m|x)", fullmatch=True),
            st.text(ASSIGNED, max_size=3),
        ),
        max_size=15,
    ).map("".join)
)
def test_pieces_equal_regex_on_word_like_text(text: str) -> None:
    check(text)


@cache
def stdlib_files() -> tuple[Path, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not {"site-packages", "dist-packages"} & set(p.parts)]
    return tuple(sorted(files))


def test_pieces_equal_regex_on_real_text() -> None:
    files = stdlib_files()[::25]  # ~70 files, ~1.5 MB: deterministic spread over the built-in corpus
    assert files
    for path in files:
        check(path.read_text(encoding="utf-8", errors="replace"))


@pytest.mark.slow
def test_pieces_equal_regex_on_the_whole_built_in_corpus() -> None:
    for path in stdlib_files():
        check(path.read_text(encoding="utf-8", errors="replace"))


def test_trailing_whitespace_and_spellings() -> None:
    # The cases where cl100k_base's exact spelling matters (minbpe/rustbpe's older GPT-4 pattern lacks \s++$).
    for text in ["a  ", "a \n", "a\n\n  ", "x   y", "x \n\n y", "I'M HE'LL", "'ſ", "\u00a0x", "1234567"]:
        check(text)


def test_custom_pattern_matches_findall() -> None:
    pattern = r"\w+|[^\w\s]+"
    text = "Hello, wörld!  (x_1)"
    # Custom patterns keep only the matches, as tiktoken does (the spaces here are dropped).
    assert pretokenize(text, pattern) == regex.findall(pattern, text)
    with pytest.raises(ValueError, match="pattern"):
        pretokenize("x", "(")
