"""Tests for gptrs.convert_config: legacy JSON configs (flat, sectioned, GPT-2/nanoGPT spellings) mapped onto the
YAML schema, and the refusals (unknown keys, conflicts, invalid results), through the API and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import gptrs
from gptrs.config import SECTIONS, Config, load_config
from gptrs.config.schema import fields_of
from gptrs.convert_config import ALIASES, HARMLESS, SPECIAL, convert, convert_file
from gptrs.errors import ConfigError

SEED_STYLE = {  # the layout of the project this one grew from
    "data": {
        "dataset_name": "HuggingFaceFW/fineweb",
        "num_training_samples": 10000,
        "max_block_size": 256,
        "validation_split": 0.1,
    },
    "tokenizer": {
        "vocab_size": 8000,
        "special_tokens": {"bos": "<BOS>", "eos": "<EOS>", "pad": "<PAD>", "unk": "<UNK>"},
    },
    "model": {
        "embed_dim": 256,
        "ff_dim": 1024,
        "num_layers": 4,
        "heads": 4,
        "max_seq_len": 256,
        "dropout": 0.1,
    },
    "training": {
        "batch_size": 16,
        "learning_rate": 3e-4,
        "num_epochs": 3,
        "warmup_steps": 100,
        "weight_decay": 0.01,
    },
}

NANOGPT_STYLE = {  # flat, nanoGPT's train_shakespeare_char.py spellings
    "n_layer": 6,
    "n_head": 6,
    "n_embd": 384,
    "block_size": 256,
    "dropout": 0.2,
    "bias": False,
    "batch_size": 64,
    "learning_rate": 1e-3,
    "max_iters": 5000,
    "lr_decay_iters": 5000,
    "min_lr": 1e-4,
    "beta2": 0.99,
    "warmup_iters": 100,
    "grad_clip": 1.0,
    "dtype": "bfloat16",
    "eval_interval": 250,
    "eval_iters": 200,
    "log_interval": 10,
    "always_save_checkpoint": True,
    "init_from": "scratch",
    "wandb_log": False,
    "compile": False,
    "vocab_size": 8192,
    "gradient_accumulation_steps": 1,
}


def test_sectioned_seed_config() -> None:
    cfg = convert(SEED_STYLE, "seed.json")
    assert cfg.data.source == "hub"  # inferred from dataset_name
    assert cfg.data.dataset_name == "HuggingFaceFW/fineweb"
    assert cfg.data.num_training_samples == 10000
    assert cfg.data.validation_split == 0.1
    assert cfg.data.sampling == "epochs" and cfg.training.epochs == 3  # num_epochs
    assert cfg.tokenizer.vocab_size == 8000
    assert cfg.tokenizer.special_tokens == {"bos": "<BOS>", "eos": "<EOS>", "pad": "<PAD>", "unk": "<UNK>"}
    m = cfg.model
    assert (m.embed_dim, m.ff_dim, m.num_layers, m.heads, m.max_seq_len, m.dropout) == (
        256,
        1024,
        4,
        4,
        256,
        0.1,
    )
    t = cfg.training
    assert (t.batch_size, t.learning_rate, t.warmup_steps, t.weight_decay) == (16, 3e-4, 100, 0.01)
    assert cfg.training.seed == Config().training.seed  # untouched keys keep their defaults


def test_flat_nanogpt_config() -> None:
    cfg = convert(NANOGPT_STYLE, "train.json")
    m, t = cfg.model, cfg.training
    assert (m.num_layers, m.heads, m.embed_dim, m.ff_dim, m.max_seq_len) == (6, 6, 384, 1536, 256)
    assert m.dropout == 0.2 and m.bias is False and m.compile is False
    assert (t.batch_size, t.max_steps, t.warmup_steps, t.eval_batches, t.eval_interval) == (
        64,
        5000,
        100,
        200,
        250,
    )
    assert (t.learning_rate, t.min_lr, t.beta2, t.max_grad_norm) == (1e-3, 1e-4, 0.99, 1.0)
    assert t.mixed_precision == "bf16"
    assert cfg.tokenizer.vocab_size == 8192
    assert cfg.data.source == "stdlib"


@pytest.mark.parametrize(
    ("legacy", "check"),
    [
        ({"num_train_epochs": 2}, lambda c: c.training.epochs == 2 and c.data.sampling == "epochs"),
        ({"data_files": "corpus.txt"}, lambda c: c.data.source == "files" and c.data.paths == ["corpus.txt"]),
        ({"data_files": {"train": ["a.txt", "b.txt"]}}, lambda c: c.data.paths == ["a.txt", "b.txt"]),
        ({"betas": [0.8, 0.9]}, lambda c: (c.training.beta1, c.training.beta2) == (0.8, 0.9)),
        ({"fp16": True}, lambda c: c.training.mixed_precision == "fp16"),
        ({"fp16": False, "bf16": False}, lambda c: c.training.mixed_precision is False),
        ({"fp16": False, "bf16": True}, lambda c: c.training.mixed_precision == "bf16"),
        ({"use_amp": True}, lambda c: c.training.mixed_precision is True),
        ({"activation_function": "gelu_new"}, lambda c: c.model.activation == "gelu_tanh"),
        ({"attn_implementation": "eager"}, lambda c: c.model.attention == "reference"),
        ({"decay_lr": False, "lr": 0.01, "min_lr": 0.001}, lambda c: c.training.min_lr == 0.01),
        ({"pad_token": "<PAD>"}, lambda c: c.tokenizer.special_tokens["pad"] == "<PAD>"),
        (
            {"special_tokens": {"bos_token": "<s>", "eos_token": "</s>"}},
            lambda c: c.tokenizer.special_tokens == {"bos": "<s>", "eos": "</s>"},
        ),
        (
            {"model": {"vocab_size": 5000}},
            lambda c: c.tokenizer.vocab_size == 5000 and c.model.vocab_size is None,
        ),
        ({"resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1}, lambda c: c.model.dropout == 0.1),
        ({"block_size": 128, "max_seq_len": 128.0}, lambda c: c.model.max_seq_len == 128),
        ({"optimizer": {"lr": 0.002, "weight_decay": 0.0}}, lambda c: c.training.learning_rate == 0.002),
        ({"model": None, "seed": 7}, lambda c: c.training.seed == 7),
    ],
)
def test_mappings(legacy: dict[str, object], check: object) -> None:
    cfg = convert(legacy, "c.json")
    assert callable(check) and check(cfg)


@pytest.mark.parametrize(
    ("legacy", "expected"),
    [
        (
            {"n_layer": 6, "device": "cuda"},
            "c.json: device: cannot map this key: pass --device to python -m gptrs.train (or --ignore device to drop it)",
        ),
        (
            {"hiden_size": 8},
            "c.json: hiden_size: cannot map this key; did you mean hidden_size? (or --ignore hiden_size to drop it)",
        ),
        (
            {"model": {"n_layer": 6, "zzz": 1}},
            "c.json: model.zzz: cannot map this key to the gptrs schema (--ignore model.zzz to drop it)",
        ),
        (
            {"n_layer": 6, "n_layers": 8},
            "c.json: n_layers: 8 conflicts with n_layer: 6 (both set model.num_layers)",
        ),
        (
            {"max_iters": 5000, "lr_decay_iters": 6000},
            "c.json: lr_decay_iters: 6000 conflicts with max_iters: 5000 (both set training.max_steps)",
        ),
        (
            {"resid_pdrop": 0.1, "attn_pdrop": 0.0},
            "c.json: attn_pdrop: 0.0 conflicts with resid_pdrop: 0.1 (both set model.dropout)",
        ),
        (
            {"bias": True, "use_bias": 1},
            "c.json: use_bias: 1 conflicts with bias: true (both set model.bias)",
        ),
        (
            {"init_from": "gpt2-xl"},
            "c.json: init_from: cannot map 'gpt2-xl' (or --ignore init_from to drop it)",
        ),
        (
            {"dtype": "int8"},
            "c.json: dtype: cannot map 'int8' (known: bfloat16, bf16, float16, fp16, half, float32, fp32, float, auto)",
        ),
        ({"betas": [0.9]}, "c.json: betas: expected [beta1, beta2], got [0.9]"),
        ({"fp16": "yes"}, "c.json: fp16: expected true or false, got 'yes'"),
        ({"model": [1, 2]}, "c.json: model: expected an object of model settings, got [1, 2]"),
        (
            {"data_files": {"train": "a.txt", "validation": "b.txt"}},
            "c.json: data_files: only a 'train' split can be mapped; gptrs holds out data.validation_split",
        ),
        (
            {"dataset_name": "x/y", "data_files": ["a.txt"]},
            "c.json: data_files: both files and a Hub dataset given; set source to choose",
        ),
        (
            {"special_tokens": ["<s>"]},
            "c.json: special_tokens: expected a mapping of role (bos, eos, pad, unk) to token string",
        ),
        # valid mapping, invalid result: the message names the legacy key and the schema key
        (
            {"n_embd": 384, "n_head": 5},
            "c.json: n_head (model.heads): 5 does not divide model.embed_dim (384)",
        ),
        (
            {"activation_function": "relu"},
            "c.json: activation_function (model.activation): 'relu' is not one of 'gelu', 'gelu_tanh', 'relu2'; "
            "did you mean 'relu2'?",
        ),
        ({"model": {"num_layers": "6"}}, "c.json: model.num_layers: expected an integer, got the string '6'"),
        (
            {"vocab_size": 100},
            "c.json: vocab_size (tokenizer.vocab_size): 100 is too small: needs at least 260 (256 bytes + 3 special tokens + 1 merge)",
        ),
        ([1, 2], "c.json: expected a JSON object at the top, got list"),
    ],
)
def test_refusals(legacy: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert(legacy, "c.json")
    assert str(info.value) == expected


def test_ignore_drops_keys() -> None:
    cfg = convert(
        {"n_layer": 3, "device": "cuda", "train": {"out_dir": "x"}},
        "c.json",
        ignore=["device", "train.out_dir"],
    )
    assert cfg.model.num_layers == 3


@pytest.mark.parametrize(
    ("legacy", "message"),
    [
        ({"dataset": {1: "x"}}, "c.json: dataset.1: keys must be strings, got 1"),
        ({None: 4}, "c.json: null: keys must be strings, got null"),
    ],
)
def test_non_string_keys_are_refused(legacy: dict, message: str) -> None:
    """JSON keys are strings, but convert() may be given any mapping from Python: one line, no traceback."""
    with pytest.raises(ConfigError) as info:
        convert(legacy, "c.json")
    assert str(info.value) == message


def test_alias_table_is_consistent() -> None:
    seen: set[str] = set()
    for target, aliases in ALIASES.items():
        section, key = target.split(".")
        assert key in fields_of(SECTIONS[section]), target
        if target != "tokenizer.path":  # a flat "path" could mean anything
            assert key in aliases, f"{target}: the schema's own name must map too"
        for alias in aliases:
            assert alias not in seen, f"{alias} maps to two settings"
            seen.add(alias)
    assert not seen & set(SPECIAL) and not seen & set(HARMLESS)
    # every schema key can be converted from its own (flat) name
    every = {f"{s}.{k}" for s, cls in SECTIONS.items() for k in fields_of(cls)} - {"model.vocab_size"}
    assert every <= set(ALIASES)


def test_convert_file_and_cli(tmp_path: Path) -> None:
    src = tmp_path / "config.json"
    src.write_text(json.dumps(SEED_STYLE), encoding="utf-8")
    out = tmp_path / "config.yaml"
    cfg = convert_file(src, out)
    assert load_config(out) == cfg
    assert (
        out.read_text(encoding="utf-8").splitlines()[1]
        == "# converted from config.json by python -m gptrs.convert_config"
    )
    with pytest.raises(ConfigError, match=r"config\.yaml: already exists \(use --force to overwrite it\)$"):
        convert_file(src, out)
    convert_file(src, out, force=True)

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(gptrs.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gptrs.convert_config", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)

    out2 = tmp_path / "out2.yaml"
    r = cli("--input", str(src), "--output", str(out2))
    assert r.returncode == 0, r.stderr
    assert load_config(out2) == cfg

    bad = tmp_path / "bad.json"
    bad.write_text('{"n_layer": 6,\n "n_head": }', encoding="utf-8")
    r = cli("--input", str(bad), "--output", str(tmp_path / "x.yaml"))
    assert (r.returncode, r.stderr) == (
        2,
        f"error: {bad}: line 2, column 12: invalid JSON: Expecting value\n",
    )

    dup = tmp_path / "dup.json"
    dup.write_text('{"n_layer": 6, "n_layer": 7}', encoding="utf-8")
    r = cli("--input", str(dup), "--output", str(tmp_path / "x.yaml"))
    assert (r.returncode, r.stderr) == (2, f"error: {dup}: invalid JSON: duplicate key 'n_layer'\n")

    unmapped = tmp_path / "unmapped.json"
    unmapped.write_text('{"n_layer": 6, "out_dir": "runs"}', encoding="utf-8")
    r = cli("--input", str(unmapped), "--output", str(tmp_path / "x.yaml"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == (
        f"error: {unmapped}: out_dir: cannot map this key: pass --out to python -m gptrs.train"
        " (or --ignore out_dir to drop it)\n"
    )
    assert not (tmp_path / "x.yaml").exists()
    r = cli("--input", str(unmapped), "--output", str(tmp_path / "x.yaml"), "--ignore", "out_dir")
    assert r.returncode == 0 and load_config(tmp_path / "x.yaml").model.num_layers == 6

    r = cli("--input", str(tmp_path / "missing.json"), "--output", str(tmp_path / "y.yaml"))
    assert (r.returncode, r.stderr) == (2, f"error: {tmp_path / 'missing.json'}: no such file\n")
    r = cli("--input", str(tmp_path), "--output", str(tmp_path / "y.yaml"))
    assert (r.returncode, r.stderr) == (2, f"error: {tmp_path}: is a directory, not a config file\n")


@pytest.mark.timeout(30)
def test_many_keys_are_read_in_linear_time(tmp_path: Path) -> None:
    """A 60,000-key object (most of a 1 MB file) is checked for duplicates in one pass, not pairwise."""
    src = tmp_path / "many.json"
    keys = [f'"k{i}": 1' for i in range(60_000)]
    src.write_text("{" + ", ".join([*keys, '"k5": 2']) + "}", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        convert_file(src, tmp_path / "out.yaml")
    assert str(info.value) == f"{src}: invalid JSON: duplicate key 'k5'"
