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


def test_tokenizer_found_in_model_dir_is_exported(tmp_path: Path, trained_tokenizer: Path) -> None:
    """The model directory's tokenizer.json is exported (as HF's tokenizer.json, its vocab and merges)."""
    import shutil

    from gptrs.tokenizer import BPETokenizer

    tok = BPETokenizer.load(trained_tokenizer)
    tiny(vocab_size=tok.get_vocab_size()).save_pretrained(tmp_path / "m")
    shutil.copy(trained_tokenizer, tmp_path / "m" / "tokenizer.json")
    assert main(["--model-path", str(tmp_path / "m"), "--out", str(tmp_path / "o")]) == 0
    tok.tok.save_hf(str(tmp_path / "plain.json"))
    plain = json.loads((tmp_path / "plain.json").read_text())
    exported = json.loads((tmp_path / "o" / "tokenizer.json").read_text())
    assert exported["model"] == plain["model"] and exported["added_tokens"] == plain["added_tokens"]
    assert json.loads((tmp_path / "o" / "config.json").read_text())["eos_token_id"] == tok.eos_token_id


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


# ---------------------------------------------------------------------------------------------------------
# transformers gives gptrs's greedy tokens and text for the same prompt (tokenizer, prefix, eos, both families)

PROMPTS = ["def main(", "import os\nclass Parser:\n    "]
NEW = 24


@pytest.fixture(scope="module")
def trained_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real BPE tokenizer (400 tokens, the default specials) trained on a few standard-library files."""
    from gptrs.data import stdlib_paths
    from gptrs.tokenizer import BPETokenizer

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_paths()[:8]]
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    BPETokenizer(vocab_size=400).train(texts).save(path)
    return path


def _model_dir(tmp_path: Path, arch: str, separator: str, tok_path: Path) -> Path:
    """A model directory as training leaves a checkpoint: weights, tokenizer.json and config.yaml (whose
    data.separator decides the token gptrs puts before a prompt). Fixed random weights, scaled so the
    greedy choice is never a near-tie."""
    from gptrs.config import Config, apply_overrides, save_config
    from gptrs.model import NanoChat
    from gptrs.tokenizer import BPETokenizer

    tok = BPETokenizer.load(tok_path)
    size = tok.get_vocab_size()
    if arch == "gpt2":
        m: torch.nn.Module = tiny_gpt(3, weight_std=2.0, perturb=0.05, vocab_size=size, max_seq_len=64)
    else:
        torch.manual_seed(3)
        m = NanoChat(vocab_size=size, embed_dim=32, num_layers=2, heads=4, max_seq_len=64)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.3)
    d = tmp_path / "model"
    m.eval().save_pretrained(d)
    tok.save(d / "tokenizer.json")
    save_config(apply_overrides(Config(), [f"data.separator={separator}"]), d / "config.yaml")
    return d


@pytest.mark.parametrize(("arch", "separator"), [("gpt2", "eos"), ("nanochat", "eos"), ("nanochat", "bos")])
def test_transformers_generates_what_gptrs_generates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trained_tokenizer: Path, arch: str, separator: str
) -> None:
    """AutoTokenizer + AutoModelForCausalLM.generate and pipeline('text-generation') on an export give the
    token ids and text of ``gptrs.generate`` (greedy on both sides) for the same prompt."""
    from gptrs.generate import Sampling
    from gptrs.generate import main as generate_main
    from gptrs.model import load_model
    from gptrs.tokenizer import BPETokenizer

    src = _model_dir(tmp_path, arch, separator, trained_tokenizer)
    out = tmp_path / "hf"
    assert main(["--model-path", str(src), "--out", str(out)]) == 0
    capsys.readouterr()
    tok = BPETokenizer.load(trained_tokenizer)
    prefix_id = tok.eos_token_id if separator == "eos" else tok.bos_token_id
    config = json.loads((out / "config.json").read_text())
    generation = json.loads((out / "generation_config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        prefix_id, tok.eos_token_id, tok.pad_token_id,
    )  # fmt: skip
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (prefix_id, tok.eos_token_id)
    default = Sampling()  # transformers' default sampling is gptrs.generate's
    assert (generation["do_sample"], generation["temperature"], generation["top_k"]) == (
        True, default.temperature, default.top_k,
    )  # fmt: skip
    added = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    assert added == {s: tok.token_to_id(s) for s in tok.special_tokens.values()}

    ours = load_model(src).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=hf_tok, device="cpu")
    news = []
    for prompt in PROMPTS:
        ids = [prefix_id, *tok.encode_ordinary(prompt)]
        enc = hf_tok(prompt, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == ids  # the same prefix, the same pieces
        with torch.no_grad():
            want = ours.generate(torch.tensor([ids]), NEW, temperature=0.0, eos_token_id=tok.eos_token_id)
            got = hf.generate(**enc, max_new_tokens=NEW, do_sample=False)
        assert got[0].tolist() == want[0].tolist()
        news.append(want[0, len(ids) :].tolist())
        with torch.no_grad():  # the premise: no greedy step was a near-tie that rounding could flip
            top2 = ours(want[:, :-1])[0][0, len(ids) - 1 :].topk(2).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4
        assert generate_main(
            ["--model-path", str(src), "--device", "cpu", "--prompt", prompt, "--temperature", "0",
             "--max-new-tokens", str(NEW)]
        ) == 0  # fmt: skip
        printed = capsys.readouterr().out
        text = hf_tok.decode(got[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        assert printed == prompt + text + "\n"
        piped = pipe(prompt, max_new_tokens=NEW, do_sample=False)[0]["generated_text"]
        assert piped == prompt + text
    # a batch, left-padded with the pad token (tokenizer_config's padding_side), continues each prompt alike
    enc = hf_tok(PROMPTS, return_tensors="pt", padding=True)
    assert enc["attention_mask"].min() == 0  # the prompts differ in length: padding is exercised
    batch = hf.generate(**enc, max_new_tokens=NEW, do_sample=False)[:, enc["input_ids"].shape[1] :]
    assert batch.tolist() == news


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_export_files_follow_the_umask(
    tmp_path: Path, trained_tokenizer: Path, umask: int, mode: int
) -> None:
    """model.safetensors gets the mode the umask gives every other file (safetensors itself makes 0600)."""
    import os

    src = _model_dir(tmp_path, "gpt2", "eos", trained_tokenizer)
    old = os.umask(umask)
    try:
        assert main(["--model-path", str(src), "--out", str(tmp_path / "hf")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "hf").iterdir()}
    assert set(modes) >= {"model.safetensors", "config.json", "tokenizer.json", "generation_config.json"}
    assert set(modes.values()) == {mode}, modes
