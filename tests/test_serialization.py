"""save_pretrained / from_pretrained: exact round trip, safetensors + JSON only, clear errors for bad dirs."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_gpt
from gptrs.errors import CheckpointError
from gptrs.model import GPT, load_model
from gptrs.model.serialization import FORMAT_VERSION


def tiny(**kw: object) -> GPT:
    return tiny_gpt(0, perturb=0.1, **{**dict(vocab_size=40, ff_dim=48, pad_token_id=3), **kw})


@pytest.mark.parametrize(
    "kw",
    [
        {},
        dict(bias=False, activation="gelu_tanh", attention="reference"),
        dict(arch="nanochat", kv_heads=2),
        dict(arch="nanochat", positions="learned", bias=True, tie_embeddings=True, logit_softcap=5.0),
    ],
)
def test_round_trip_is_exact(tmp_path: Path, kw: dict) -> None:
    m = tiny(**kw)
    with torch.no_grad():
        for p in m.parameters():  # move every tensor off its init value so nothing passes by accident
            p.add_(torch.randn_like(p))
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]
    back = GPT.from_pretrained(tmp_path)
    assert back.config == m.config and back.pad_token_id == m.pad_token_id
    assert back.state_dict().keys() == m.state_dict().keys()
    for name, t in m.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    tied = back.lm_head.weight is back.transformer.wte.weight  # still tied: training updates both
    assert tied == m.config.tie_embeddings
    assert all(p.requires_grad and p.device.type == "cpu" for p in back.parameters())
    x = torch.randint(0, 40, (2, 16))
    assert torch.equal(back(x)[0], m(x)[0])  # type: ignore[arg-type]


def test_files_are_safetensors_and_json_with_the_tied_weight_once(tmp_path: Path) -> None:
    m = tiny()
    m.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in tensors and "transformer.wte.weight" in tensors
    assert len(tensors) == len(m.state_dict()) - 1
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["format"] == "gptrs-model" and meta["format_version"] == FORMAT_VERSION
    assert meta["pad_token_id"] == 3 and meta["config"]["vocab_size"] == 40
    assert meta["config"]["embed_dim"] == 32


def test_saving_over_a_model_replaces_it(tmp_path: Path) -> None:
    m = tiny()
    m.save_pretrained(tmp_path)
    m2 = tiny(num_layers=1)
    m2.save_pretrained(tmp_path)  # overwriting a directory replaces both files
    assert GPT.from_pretrained(tmp_path).config.num_layers == 1
    assert not list(tmp_path.glob("*.tmp"))


def _edit_json(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        meta = json.loads((d / "model.json").read_text())
        fn(meta)
        (d / "model.json").write_text(json.dumps(meta))

    return edit


def _edit_tensors(fn: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        tensors = load_file(d / "model.safetensors")
        fn(tensors)
        save_file(tensors, d / "model.safetensors")

    return edit


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(data)


def _truncate(d: Path) -> None:
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])


def _torch_pickle(d: Path) -> None:
    torch.save({"x": torch.zeros(1)}, d / "model.safetensors")


def _huge_header(d: Path) -> None:
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")


BAD = [
    ("missing dir", lambda d: __import__("shutil").rmtree(d), r"model directory not found: .*"),
    ("no model.json", lambda d: (d / "model.json").unlink(), r"model\.json: missing"),
    ("bad json", _write("model.json", b"{not json"), r"model\.json: invalid JSON \(.* at line 1\)"),
    ("json list", _write("model.json", b"[]"), r"model\.json: not a gptrs-model file"),
    ("wrong format", _edit_json(lambda m: m.update(format="other")), r"not a gptrs-model file"),
    (
        "future version",
        _edit_json(lambda m: m.update(format_version=99)),
        r"format_version 99 is not supported \(this gptrs reads up to 2\)",
    ),
    (
        "unknown key",
        _edit_json(lambda m: m["config"].update(foo=1)),
        r"model\.json: unknown config keys: foo",
    ),
    (
        "bad shape config",
        _edit_json(lambda m: m["config"].update(heads=3)),
        r"model\.json: model\.heads: 3 does not divide model\.embed_dim \(32\)",
    ),
    ("no vocab", _edit_json(lambda m: m["config"].update(vocab_size=None)), r"config\.vocab_size is missing"),
    ("bad pad", _edit_json(lambda m: m.update(pad_token_id="x")), r"pad_token_id must be an integer or null"),
    ("no weights", lambda d: (d / "model.safetensors").unlink(), r"model\.safetensors: missing"),
    (
        "garbage",
        _write("model.safetensors", b"\x00garbage" * 4),
        r"model\.safetensors: not a readable safetensors",
    ),
    ("empty", _write("model.safetensors", b""), r"model\.safetensors: not a readable safetensors file"),
    ("truncated", _truncate, r"model\.safetensors: not a readable safetensors file"),
    ("huge header", _huge_header, r"model\.safetensors: not a readable safetensors file"),
    ("pickle", _torch_pickle, r"model\.safetensors: not a readable safetensors file"),
    (
        "missing tensor",
        _edit_tensors(lambda t: t.pop("transformer.h.1.ln_2.bias")),
        r"model\.safetensors: missing tensors: transformer\.h\.1\.ln_2\.bias$",
    ),
    (
        "unexpected tensor",
        _edit_tensors(lambda t: t.update({"extra.weight": torch.zeros(2)})),
        r"model\.safetensors: unexpected tensors: extra\.weight$",
    ),
    (
        "missing and unexpected",
        _edit_tensors(lambda t: t.update({"h.0.w": t.pop("transformer.wpe.weight")})),
        r"missing tensors: transformer\.wpe\.weight; unexpected tensors: h\.0\.w$",
    ),
    (
        "wrong shape",
        _edit_tensors(lambda t: t.update({"transformer.wpe.weight": torch.zeros(8, 32)})),
        r"tensor transformer\.wpe\.weight has shape \(8, 32\), expected \(16, 32\)$",
    ),
    (
        "int tensor",
        _edit_tensors(lambda t: t.update({"transformer.ln_f.bias": torch.zeros(32, dtype=torch.int64)})),
        r"tensor transformer\.ln_f\.bias has non-float dtype torch\.int64",
    ),
]


@pytest.mark.parametrize(("name", "damage", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_checkpoints(tmp_path: Path, name: str, damage: Callable[[Path], None], message: str) -> None:
    d = tmp_path / "model"
    tiny().save_pretrained(d)
    damage(d)
    with pytest.raises(CheckpointError, match=message) as info:
        GPT.from_pretrained(d)
    text = str(info.value)
    assert "\n" not in text and str(d) in text  # one line naming the file


def test_missing_tensor_list_is_capped(tmp_path: Path) -> None:
    tiny().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    save_file({"transformer.wte.weight": tensors["transformer.wte.weight"]}, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors: .*\(and \d+ more\)$"):
        GPT.from_pretrained(tmp_path)


LEGACY = Path(__file__).parent / "data" / "legacy_v1"


@pytest.mark.parametrize("arch", ["gpt2", "nanochat"])
def test_models_saved_before_the_one_gpt_load_with_the_same_logits(arch: str) -> None:
    """Model directories written by gptrs before the two families became one GPT (format version 1; the
    nanochat one kept q, k and v apart) load as what they describe: the logits and greedy tokens saved
    with them by the old code (greedy runs past the 16-token context: the window slides)."""
    directory = LEGACY / arch
    assert json.loads((directory / "model.json").read_text())["format_version"] == 1
    model = load_model(directory).eval()
    assert model.config.arch == arch
    expected = load_file(str(directory / "expected.safetensors"))
    # (with autograd on, as the old code computed them: the no-grad CPU fast paths round differently)
    logits, _ = model(expected["input_ids"], attention_mask=expected["attention_mask"])
    real = expected["attention_mask"].bool()
    assert logits is not None
    logits = logits.detach()
    if arch == "gpt2":  # the same code path as before: bitwise
        assert torch.equal(logits[real], expected["logits"][real])
    torch.testing.assert_close(logits[real], expected["logits"][real], rtol=1e-5, atol=2e-5)
    greedy = model.generate(expected["input_ids"][:1], 24, temperature=0)
    assert torch.equal(greedy, expected["greedy"])
