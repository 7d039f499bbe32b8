"""Interactive generation (``python -m gptrs.generate --interactive``): ``/set NAME=VALUE`` and ``/set NAME
VALUE`` apply a setting and confirm it, a bad value is refused in one line and the old one kept, and the
start-up help and ``/help`` list ``/set`` and every key. Driven through stdin, as a user types."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import tiny_gpt
from gptrs.generate import _SETTABLE, Sampling, _command, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny GPT (weights scaled so its greedy text depends on the prompt) beside a real tokenizer."""
    from gptrs.data import stdlib_paths
    from gptrs.tokenizer import BPETokenizer

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_paths()[:6]]
    tok = BPETokenizer(vocab_size=320).train(texts)
    d = tmp_path_factory.mktemp("interactive") / "model"
    tiny_gpt(1, weight_std=2.0, vocab_size=tok.get_vocab_size(), max_seq_len=64).save_pretrained(d)
    tok.save(d / "tokenizer.json")
    return d


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(["=", " ", " = "]))
def test_both_forms_set_and_confirm(value: float, sep: str) -> None:
    import io
    from contextlib import redirect_stderr

    s, err = Sampling(), io.StringIO()
    with redirect_stderr(err):
        assert _command(f"/set temperature{sep}{value!r}", s)
    assert s.temperature == value
    assert err.getvalue() == f"temperature={value!r} (was 0.8)\n"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/set temperature=-0.5", "error: --temperature must be a number >= 0, got -0.5; temperature stays 0.8"),
        ("/set temperature warm", "error: /set temperature=warm: not a number"),
        ("/set top_k=2.5", "error: /set top_k=2.5: not an integer or none"),
        ("/set top_p 0", "error: --top-p must be in (0, 1], got 0.0; top_p stays none"),
        ("/set max_new_tokens=0", "error: --max-new-tokens must be >= 1, got 0; max_new_tokens stays 200"),
        ("/set heat=1", "error: /set heat: no such setting (settings: max_new_tokens, temperature, top_k, top_p, seed)"),
        ("/set temperature", "error: /set needs NAME=VALUE, e.g. /set temperature=0.5 (settings: max_new_tokens, temperature, top_k, top_p, seed)"),
    ],
)  # fmt: skip
def test_a_bad_value_is_one_line_and_changes_nothing(
    line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    s = Sampling()
    assert _command(line, s)
    assert capsys.readouterr().err == message + "\n"
    assert s == Sampling()


def test_interactive_session_through_stdin(model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A session typed on stdin: help at start-up and on /help lists /set and its keys; both /set forms are
    confirmed; a bad value is refused; after /set temperature=0 a prompt continues greedily, exactly as
    ``--prompt ... --temperature 0`` does."""
    prompt, n = "def parse(", "12"
    assert main(["--model-path", str(model_dir), "--device", "cpu", "--prompt", prompt,
                 "--temperature", "0", "--max-new-tokens", n]) == 0  # fmt: skip
    greedy = capsys.readouterr().out
    assert greedy.startswith(prompt) and len(greedy) > len(prompt) + 1
    stdin = (
        "/help\n/set temperature=0\n/set top_k 5\n/set top_p=2\n/settings\n"
        f"/set max_new_tokens {n}\n{prompt}\n/quit\nnever read\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'python'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(
        [sys.executable, "-m", "gptrs.generate", "--model-path", str(model_dir), "--device", "cpu",
         "--interactive", "--log-level", "WARNING"],
        input=stdin, capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [line.removeprefix(">>> ") for line in r.stderr.splitlines()]
    helps = [line for line in lines if "/set NAME=VALUE (or /set NAME VALUE)" in line]
    assert len(helps) == 2 and all(all(k in h for k in _SETTABLE) for h in helps)  # start-up and /help
    assert "temperature=0.0 (was 0.8)" in lines and "top_k=5 (was 50)" in lines
    assert "error: --top-p must be in (0, 1], got 2.0; top_p stays none" in lines
    assert "max_new_tokens=200 temperature=0.0 top_k=5 top_p=none seed=none" in lines
    assert f"max_new_tokens={n} (was 200)" in lines
    assert r.stdout == greedy[len(prompt) :]  # greedy: top_k does not change the argmax
