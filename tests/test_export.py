"""Export to the Hugging Face formats (GPT-2, NanoChat): transformers loads them and computes the same logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_gpt
from gptrs.export import ExportError, hf_gpt2_config, main
from gptrs.model import GPT

transformers = pytest.importorskip("transformers")


def tiny(**kw) -> GPT:
    # non-trivial biases and norms (perturb), so a mixed-up tensor cannot go unnoticed
    args: dict = dict(vocab_size=50, ff_dim=72, pad_token_id=1)
    args.update(kw)
    return tiny_gpt(perturb=0.1, **args)


@pytest.mark.parametrize(
    "kw", [{}, dict(activation="gelu_tanh"), dict(bias=False), dict(attention="reference", dropout=0.1)]
)
def test_transformers_gives_the_same_logits(tmp_path: Path, kw: dict) -> None:
    m = tiny(**kw).eval()
    m.save_pretrained(tmp_path / "ours")
    assert (
        main(["--model-path", str(tmp_path / "ours"), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    )
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    expected = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16, "n_inner": 72, "vocab_size": 50}
    assert {k: config[k] for k in expected} == expected
    assert config["activation_function"] == {"gelu": "gelu", "gelu_tanh": "gelu_new"}[m.config.activation]
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, _ = m(x)
        theirs = hf(input_ids=x).logits
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    assert not (tmp_path / "hf" / "tokenizer.json").exists()  # none given and none in the model dir


def test_refuses_what_gpt2_cannot_express() -> None:
    m = tiny()
    m._cfg.activation = "swiglu"  # as if a future model option
    with pytest.raises(ExportError, match=r"model\.activation='swiglu' cannot be exported: GPT2LMHeadModel"):
        hf_gpt2_config(m)


def test_user_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-path", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model directory not found" in err and "Traceback" not in err
    tiny().save_pretrained(tmp_path / "m")
    args = ["--model-path", str(tmp_path / "m"), "--out", str(tmp_path / "o"), "--tokenizer", "missing.json"]
    assert main(args) == 2
    assert "tokenizer file not found: missing.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on error


def test_module_entry_point(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "gptrs.export", "--model-path", str(tmp_path), "--format", "hf", "--out", "x"],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and r.stderr.strip()
        == f"error: {tmp_path}/model.json: missing (not a model directory written by save_pretrained?)"
    )


class _FakeTokenizer:
    """Stands in for gptrs_tok.Tokenizer: records what the export asks of it."""

    saved: list[str] = []  # noqa: RUF012

    def __init__(self, path: str) -> None:
        self.path = path
        self.eos_token_id = 7

    @classmethod
    def load(cls, path: str) -> _FakeTokenizer:
        return cls(path)

    def save_hf(self, out: str) -> None:
        type(self).saved.append(self.path)
        Path(out).write_text(json.dumps({"model": {"type": "BPE"}}))


def test_tokenizer_found_in_model_dir_is_exported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = type(sys)("gptrs_tok")
    fake.Tokenizer = _FakeTokenizer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gptrs_tok", fake)
    _FakeTokenizer.saved.clear()
    tiny().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "tokenizer.json").write_text("{}")
    assert main(["--model-path", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 0
    assert _FakeTokenizer.saved == [str(tmp_path / "m" / "tokenizer.json")]
    assert json.loads((tmp_path / "o" / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    assert json.loads((tmp_path / "o" / "config.json").read_text())["eos_token_id"] == 7


@pytest.mark.parametrize("kw", [{}, dict(kv_heads=2, logit_softcap=None, rope_theta=500.0)])
def test_nanochat_exports_as_nanochat_for_causal_lm(tmp_path: Path, kw: dict) -> None:
    """A model.arch nanochat directory becomes a NanoChatForCausalLM (AutoModelForCausalLM picks it) with
    the same logits; GPT-2 directories keep exporting as GPT2LMHeadModel."""
    from gptrs.model import NanoChat

    torch.manual_seed(0)
    m = NanoChat(vocab_size=50, embed_dim=32, num_layers=2, heads=4, max_seq_len=16, pad_token_id=1, **kw)
    with torch.no_grad():  # random weights: nanochat's init zeroes the head and the residual projections
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    m.eval().save_pretrained(tmp_path / "ours")
    assert main(["--model-path", str(tmp_path / "ours"), "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["NanoChatForCausalLM"] and config["tie_word_embeddings"] is False
    assert config["num_key_value_heads"] == kw.get("kv_heads", 4)
    assert config["final_logit_softcapping"] == kw.get("logit_softcap", 15.0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "NanoChatForCausalLM"
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, _ = m(x)
        theirs = hf(input_ids=x).logits
    torch.testing.assert_close(theirs, ours, atol=2e-5, rtol=1e-5)
    tiny().save_pretrained(tmp_path / "gpt")
    assert main(["--model-path", str(tmp_path / "gpt"), "--out", str(tmp_path / "hf2")]) == 0
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]


@pytest.mark.parametrize(
    ("switches", "message"),
    [
        (
            dict(arch="nanochat", bias=True),
            r"model\.bias=True cannot be exported: NanoChatForCausalLM needs false",
        ),
        (
            dict(arch="gpt2", qk_norm=True),
            r"model\.qk_norm=True cannot be exported: GPT2LMHeadModel needs false",
        ),
        (dict(arch="gpt2", positions="rotary"), r"model\.norm='layernorm' cannot be exported"),
    ],
)
def test_export_refuses_what_no_transformers_class_expresses(
    tmp_path: Path, switches: dict, message: str
) -> None:
    """A combination of switches neither GPT2LMHeadModel nor NanoChatForCausalLM computes is refused with
    one line naming the switch, before anything is written."""
    from gptrs.export import export_hf
    from gptrs.model import GPT

    GPT(50, 32, 64, 1, 4, 16, **switches).save_pretrained(tmp_path / "ours")
    with pytest.raises(ExportError, match=message):
        export_hf(tmp_path / "ours", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
