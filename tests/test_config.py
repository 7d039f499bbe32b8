"""Tests for gptrs.config: loading and validation (a table of bad configs, each with its exact message),
overrides, save/load round trips, the reference (--describe), the CLI, and the presets' parameter counts."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import gptrs
from gptrs.config import (
    PRESETS_DIR,
    SECTIONS,
    Config,
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    TrainingConfig,
    apply_overrides,
    check_model,
    config_from_dict,
    config_to_dict,
    count_parameters,
    describe,
    load_config,
    save_config,
    validate,
)
from gptrs.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

# (id, YAML text, expected message; {path} is the file's path)
BAD_CONFIGS = [
    # wrong types
    (
        "str-for-int",
        'model:\n  num_layers: "4"\n',
        "{path}: model.num_layers: expected an integer, got the string '4'",
    ),
    ("bool-for-int", "model:\n  heads: true\n", "{path}: model.heads: expected an integer, got true"),
    (
        "float-for-int",
        "training:\n  batch_size: 16.5\n",
        "{path}: training.batch_size: expected an integer, got 16.5",
    ),
    (
        "str-for-float",
        "training:\n  learning_rate: fast\n",
        "{path}: training.learning_rate: expected a number, got the string 'fast'",
    ),
    ("null-not-optional", "model:\n  dropout: null\n", "{path}: model.dropout: expected a number, got null"),
    ("list-for-str", "data:\n  text_field: [a]\n", "{path}: data.text_field: expected a string, got a list"),
    (
        "list-item-type",
        "data:\n  source: files\n  paths: [a.txt, 3]\n",
        "{path}: data.paths[1]: expected a string, got 3",
    ),
    (
        "special-token-type",
        "tokenizer:\n  special_tokens: {bos: 1}\n",
        "{path}: tokenizer.special_tokens.bos: expected a string, got 1",
    ),
    ("section-not-mapping", "model: 5\n", "{path}: model: expected a mapping of keys, got 5"),
    ("non-string-key", "model:\n  1: 2\n", "{path}: model: keys must be strings, got 1"),
    # unknown keys and sections
    (
        "typo",
        "model:\n  embd_dim: 64\n",
        "{path}: model.embd_dim: unknown key; did you mean model.embed_dim?",
    ),
    (
        "wrong-section",
        "model:\n  learning_rate: 0.1\n",
        "{path}: model.learning_rate: unknown key; did you mean training.learning_rate?",
    ),
    (
        "unknown-key",
        "tokenizer:\n  zzz: 1\n",
        "{path}: tokenizer.zzz: unknown key (tokenizer keys: vocab_size, pattern, min_frequency, special_tokens, path)",
    ),
    ("section-typo", "modle:\n  heads: 4\n", "{path}: modle: unknown section; did you mean model?"),
    (
        "flat-key",
        "embed_dim: 64\n",
        "{path}: embed_dim: unknown section; did you mean model.embed_dim? (keys go under their section)",
    ),
    (
        "unknown-section",
        "logging:\n  level: 1\n",
        "{path}: logging: unknown section (sections: data, tokenizer, model, training)",
    ),
    # sizes and ranges
    ("zero-layers", "model:\n  num_layers: 0\n", "{path}: model.num_layers: must be >= 1, got 0"),
    ("negative-batch", "training:\n  batch_size: -8\n", "{path}: training.batch_size: must be >= 1, got -8"),
    ("keep-last-zero", "training:\n  keep_last: 0\n", "{path}: training.keep_last: must be >= 1, got 0"),
    (
        "negative-seed",
        "training:\n  seed: -1\n",
        "{path}: training.seed: must be in [0, 18446744073709551615], got -1",
    ),
    ("dropout-one", "model:\n  dropout: 1.0\n", "{path}: model.dropout: must be in [0, 1), got 1.0"),
    ("dropout-nan", "model:\n  dropout: .nan\n", "{path}: model.dropout: must be a finite number, got nan"),
    (
        "validation-split",
        "data:\n  validation_split: 1\n",
        "{path}: data.validation_split: must be in (0, 1), got 1.0",
    ),
    ("zero-lr", "training:\n  learning_rate: 0\n", "{path}: training.learning_rate: must be > 0, got 0.0"),
    (
        "heads-divide",
        "model:\n  embed_dim: 128\n  heads: 5\n",
        "{path}: model.heads: 5 does not divide model.embed_dim (128)",
    ),
    (
        "vocab-small",
        "tokenizer:\n  vocab_size: 259\n",
        "{path}: tokenizer.vocab_size: 259 is too small: needs at least 260 (256 bytes + 3 special tokens + 1 merge)",
    ),
    (
        "vocab-small-4-specials",
        "tokenizer:\n  vocab_size: 260\n  special_tokens: {bos: a, eos: b, pad: c, unk: d}\n",
        "{path}: tokenizer.vocab_size: 260 is too small: needs at least 261 (256 bytes + 4 special tokens + 1 merge)",
    ),
    (
        "model-vocab",
        "model:\n  vocab_size: 4000\n",
        "{path}: model.vocab_size: 4000 is smaller than tokenizer.vocab_size (4096)",
    ),
    (
        "warmup",
        "training:\n  max_steps: 100\n  warmup_steps: 100\n",
        "{path}: training.warmup_steps: 100 must be less than training.max_steps (100)",
    ),
    (
        "min-lr",
        "training:\n  learning_rate: 1e-4\n  min_lr: 1e-3\n",
        "{path}: training.min_lr: 0.001 is greater than training.learning_rate (0.0001)",
    ),
    (
        "eval-window",
        "data:\n  max_eval_tokens: 100\n",
        "{path}: data.max_eval_tokens: 100 is less than one evaluation window (model.max_seq_len + 1 = 257)",
    ),
    # choices and rules between keys
    (
        "source-enum",
        "data:\n  source: file\n",
        "{path}: data.source: 'file' is not one of 'stdlib', 'files', 'hub'; did you mean 'files'?",
    ),
    (
        "precision-enum",
        "training:\n  mixed_precision: BF16\n",
        "{path}: training.mixed_precision: 'BF16' is not one of false, true, 'bf16', 'fp16'; did you mean 'bf16'?",
    ),
    (
        "precision-int",
        "training:\n  mixed_precision: 16\n",
        "{path}: training.mixed_precision: 16 is not one of false, true, 'bf16', 'fp16'",
    ),
    (
        "activation-enum",
        "model:\n  activation: relu\n",
        "{path}: model.activation: 'relu' is not one of 'gelu', 'gelu_tanh', 'relu2'; did you mean 'relu2'?",
    ),
    (
        "files-no-paths",
        "data:\n  source: files\n",
        "{path}: data.paths: data.source 'files' needs at least one path",
    ),
    (
        "hub-no-name",
        "data:\n  source: hub\n",
        "{path}: data.dataset_name: data.source 'hub' needs a dataset name",
    ),
    (
        "paths-wrong-source",
        "data:\n  paths: [a.txt]\n",
        "{path}: data.paths: only used with data.source 'files' (it is 'stdlib')",
    ),
    ("empty-path", "data:\n  source: files\n  paths: ['']\n", "{path}: data.paths[0]: must not be empty"),
    (
        "epochs-sampling",
        "training:\n  epochs: 2\n",
        "{path}: training.epochs: needs data.sampling 'epochs' (it is 'random')",
    ),
    (
        "special-role",
        "tokenizer:\n  special_tokens: {bos: a, eos: b, mask: c}\n",
        "{path}: tokenizer.special_tokens.mask: unknown role (roles: bos, eos, pad, unk)",
    ),
    (
        "special-duplicate",
        "tokenizer:\n  special_tokens: {bos: x, eos: x}\n",
        "{path}: tokenizer.special_tokens.eos: 'x' is also the bos token",
    ),
    (
        "separator-token",
        "data:\n  separator: bos\ntokenizer:\n  special_tokens: {eos: e}\n",
        "{path}: data.separator: 'bos' needs a tokenizer.special_tokens.bos token",
    ),
    (
        "sample-prompt",
        "training:\n  sample_prompt: ''\n",
        "{path}: training.sample_prompt: must not be empty when training.sample_tokens > 0"
        " (set it to 0 to skip the sample)",
    ),
    # the file itself
    (
        "top-level-list",
        "- model\n- data\n",
        "{path}: expected a mapping with sections data, tokenizer, model, training at the top, got a list",
    ),
    (
        "top-level-scalar",
        "hello\n",
        "{path}: expected a mapping with sections data, tokenizer, model, training at the top,"
        " got the string 'hello'",
    ),
    ("empty", "", "{path}: the file is empty"),
    ("blank", "  \n\n", "{path}: the file is empty"),
    ("comments-only", "# nothing here\n", "{path}: the file has no settings, only comments"),
    (
        "yaml-unclosed",
        "model:\n  heads: [4\n",
        "{path}: line 3, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'",
    ),
    (
        "yaml-indent",
        "model:\n  heads: 4\n   embed_dim: 128\n",
        "{path}: line 3, column 13: invalid YAML: mapping values are not allowed here",
    ),
    (
        "yaml-tab",
        "model:\n\theads: 4\n",
        "{path}: line 2, column 1: invalid YAML: found character '\\t' that cannot start any token",
    ),
    (
        "duplicate-key",
        "model:\n  heads: 4\n  heads: 8\n",
        "{path}: line 3, column 3: invalid YAML: duplicate key 'heads'",
    ),
    (
        "two-documents",
        "model: {heads: 4}\n---\nmodel: {}\n",
        "{path}: line 2, column 1: invalid YAML: expected a single document in the stream but found another document",
    ),
    (
        "python-tag",
        "model: !!python/object/apply:os.system ['echo pwned']\n",
        "{path}: line 1, column 8: invalid YAML: could not determine a constructor for the tag"
        " 'tag:yaml.org,2002:python/object/apply:os.system'",
    ),
    (
        "control-char",
        "model:\n  heads: 4\x00\n",
        "{path}: line 2: invalid YAML: unacceptable character #x0000: special characters are not allowed",
    ),
    ("deep-nesting", "[" * 100_000, "{path}: invalid YAML: nested too deeply"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_message(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected.format(path=path)
    assert "\n" not in str(info.value)


PRESET_NAMES = [
    f"{recipe}{size}" for recipe in ("", "nanochat-", "speedrun-") for size in ("small", "default", "large")
]


def test_bad_config_table_is_large_enough() -> None:
    assert len(BAD_CONFIGS) >= 20
    assert len({c[0] for c in BAD_CONFIGS}) == len(BAD_CONFIGS)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^.*nope\.yaml: no such file$"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r": no such file$"):  # a file used as a directory
        (tmp_path / "f").write_text("model: {}\n")
        load_config(tmp_path / "f" / "x.yaml")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a config file"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("model:\n  heads: 4\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: line 3: not UTF-8 text (byte 0xe9)"


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (1 << 20) + b"\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 1048577 bytes is too large for a config file (limit 1048576)"


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not a regular file"


def test_utf8_bom_and_scientific_floats(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "\ufefftraining:\n  learning_rate: 1e-3\n  min_lr: 5E-5\n  peak_flops: 1.5e12\n", encoding="utf-8"
    )
    cfg = load_config(path)
    assert cfg.training.learning_rate == 1e-3 and cfg.training.min_lr == 5e-5
    assert cfg.training.peak_flops == 1.5e12


def test_int_accepted_for_float_and_missing_keys_default(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("model:\ntraining:\n  learning_rate: 1\n  max_grad_norm: 0\n", encoding="utf-8")
    cfg = load_config(path)
    assert cfg.training.learning_rate == 1.0 and isinstance(cfg.training.learning_rate, float)
    assert cfg.training.max_grad_norm == 0.0 and isinstance(cfg.training.max_grad_norm, float)
    assert cfg.model == ModelConfig() and cfg.data == DataConfig()


def test_defaults_are_valid() -> None:
    validate(Config())
    assert config_from_dict({}) == Config()


def test_validate_config_built_in_python() -> None:
    cfg = Config()
    cfg.model.num_layers = "4"  # type: ignore[assignment]
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert str(info.value) == "<overrides>: model.num_layers: expected an integer, got the string '4'"

    cfg = Config(model=ModelConfig(embed_dim=96, heads=5))
    with pytest.raises(ConfigError) as info:
        validate(cfg, source="my script")
    assert str(info.value) == "my script: model.heads: 5 does not divide model.embed_dim (96)"

    cfg = Config(data={"source": "stdlib"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^<overrides>: data: expected a DataConfig, got a mapping$"):
        validate(cfg)


# ----------------------------------------------------------------------------------------------- overrides


def test_overrides_apply_and_parse_values() -> None:
    base = Config()
    cfg = apply_overrides(
        base,
        [
            "model.num_layers=6",
            "training.mixed_precision=bf16",
            "data.source=files",
            "data.paths=[a.txt,b.txt]",
            "training.learning_rate=1e-3",
            "training.sample_prompt=def ",
            "tokenizer.special_tokens.unk=<|unk|>",
            "tokenizer.path=tok.json",
            "training.eval_batches=null",
            "model.bias=false",
        ],
    )
    assert cfg.model.num_layers == 6
    assert cfg.training.mixed_precision == "bf16"
    assert cfg.data.source == "files" and cfg.data.paths == ["a.txt", "b.txt"]
    assert cfg.training.learning_rate == 1e-3
    assert cfg.training.sample_prompt == "def "  # strings are kept as typed, trailing space included
    assert cfg.tokenizer.special_tokens["unk"] == "<|unk|>"
    assert cfg.tokenizer.path == "tok.json"
    assert cfg.training.eval_batches is None
    assert cfg.model.bias is False
    assert base == Config()  # the input is not changed

    assert apply_overrides(base, ["training.mixed_precision=false"]).training.mixed_precision is False
    assert apply_overrides(base, ["training.sample_prompt='123'"]).training.sample_prompt == "123"
    assert apply_overrides(base, ["training.sample_prompt=123"]).training.sample_prompt == "123"
    removed = apply_overrides(base, ["tokenizer.special_tokens.pad=null"]).tokenizer.special_tokens
    assert removed == {"bos": "<|bos|>", "eos": "<|endoftext|>"}


def test_overrides_validated_together() -> None:
    # Each intermediate state would be invalid (128 % 3, 96 % 5), the final one is fine.
    cfg = apply_overrides(Config(), ["model.heads=3", "model.embed_dim=96"])
    assert (cfg.model.heads, cfg.model.embed_dim) == (3, 96)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.num_layers"], "--set model.num_layers: expected section.key=value, e.g. model.num_layers=4"),
        (["num_layers=4"], "--set num_layers=4: expected section.key=value, e.g. model.num_layers=4"),
        (["model..heads=4"], "--set model..heads=4: expected section.key=value, e.g. model.num_layers=4"),
        (
            ["model.num_layer=4"],
            "--set model.num_layer=4: model.num_layer: unknown key; did you mean model.num_layers?",
        ),
        (["modle.heads=4"], "--set modle.heads=4: modle: unknown section; did you mean model?"),
        (["model.heads=x"], "--set model.heads=x: model.heads: expected an integer, got the string 'x'"),
        (["model.heads.x=1"], "--set model.heads.x=1: model.heads: has no sub-key x"),
        (
            ["data.paths=[a"],
            "--set data.paths=[a: data.paths: cannot read value '[a' as YAML: expected ',' or ']', but got '<stream end>'",
        ),
        (["model.heads=3"], "--set model.heads=3: model.heads: 3 does not divide model.embed_dim (128)"),
        (
            ["model.embed_dim=90"],
            "--set model.embed_dim=90: model.heads: 4 does not divide model.embed_dim (90)",
        ),
        (
            ["training.max_steps=50"],
            "--set training.max_steps=50: training.warmup_steps: 100 must be less than training.max_steps (50)",
        ),
        (
            ["model.num_layers=2", "model.dropout=1"],
            "--set model.dropout=1: model.dropout: must be in [0, 1), got 1.0",
        ),
        (
            ["tokenizer.special_tokens.eos=null"],
            "--set tokenizer.special_tokens.eos=null: data.separator: 'eos' needs a tokenizer.special_tokens.eos token",
        ),
    ],
)
def test_override_errors(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), overrides)
    assert str(info.value) == expected


def test_overrides_on_a_bad_python_config_and_hostile_values() -> None:
    cfg = Config()
    cfg.model.heads = "4"  # type: ignore[assignment]
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, ["model.num_layers=2"])
    assert str(info.value) == "--set: model.heads: expected an integer, got the string '4'"
    with pytest.raises(ConfigError, match=r"^--set data\.paths=\[\[\[.*: data\.paths: cannot read value"):
        apply_overrides(Config(), ["data.paths=" + "[" * 50_000])
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), ["model.heads=!!python/object/apply:os.system [echo]"])
    assert "could not determine a constructor" in str(info.value)


# ----------------------------------------------------------------------------------------------- round trips


def test_save_load_round_trip(tmp_path: Path) -> None:
    cfg = apply_overrides(
        Config(),
        ["data.source=hub", "data.dataset_name=HuggingFaceFW/fineweb", "training.mixed_precision=fp16"],
    )
    path = tmp_path / "sub" / "config.yaml"
    save_config(cfg, path, comment="made by a test")
    assert load_config(path) == cfg
    assert path.read_text(encoding="utf-8").startswith("# gptrs configuration")
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind


def test_save_refuses_invalid_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    with pytest.raises(ConfigError, match=r"config\.yaml: model\.heads: 5 does not divide"):
        save_config(Config(model=ModelConfig(heads=5)), path)
    assert not path.exists()


def test_save_keeps_old_file_when_write_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.yaml"
    save_config(Config(), path)
    before = path.read_bytes()

    def fail(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match=r"cannot write .*config\.yaml: no space left on device"):
        save_config(Config(model=ModelConfig(num_layers=7)), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


_TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
_ROLES = ("bos", "eos", "pad", "unk")


@st.composite
def valid_configs(draw: st.DrawFn) -> Config:
    separator = draw(st.sampled_from(["eos", "bos"]))
    roles = sorted(draw(st.sets(st.sampled_from(_ROLES))) | {separator})
    tokens = draw(st.lists(_TEXT, min_size=len(roles), max_size=len(roles), unique=True))
    special = dict(zip(roles, tokens, strict=True))
    vocab = draw(st.integers(256 + len(special) + 1, 1 << 20))
    source = draw(st.sampled_from(["stdlib", "files", "hub"]))
    sampling = draw(st.sampled_from(["random", "epochs"]))
    heads, head_dim = draw(st.integers(1, 16)), draw(st.integers(1, 64))
    max_seq_len = draw(st.integers(1, 4096))
    max_steps = draw(st.integers(1, 10**6))
    lr = draw(st.floats(1e-7, 1.0))
    optional_int = st.none() | st.integers(1, 10**6)
    precision = draw(st.sampled_from([False, True, "bf16", "fp16"]))
    assert isinstance(precision, (bool, str))
    cfg = Config(
        data=DataConfig(
            source=source,
            paths=draw(st.lists(_TEXT, min_size=1, max_size=3)) if source == "files" else [],
            text_field=draw(_TEXT),
            dataset_name=draw(_TEXT) if source == "hub" else None,
            dataset_subset=draw(st.none() | _TEXT),
            num_training_samples=draw(optional_int),
            validation_split=draw(st.floats(0.0, 1.0, exclude_min=True, exclude_max=True)),
            separator=separator,
            sampling=sampling,
            max_eval_tokens=draw(st.integers(max_seq_len + 1, 1 << 24)),
            cache_dir=draw(st.none() | _TEXT),
        ),
        tokenizer=TokenizerConfig(
            vocab_size=vocab,
            pattern=draw(st.sampled_from(["gpt4", "gpt2"]) | _TEXT),
            min_frequency=draw(st.integers(1, 100)),
            special_tokens=special,
            path=draw(st.none() | _TEXT),
        ),
        model=ModelConfig(
            embed_dim=heads * head_dim,
            ff_dim=draw(st.integers(1, 8192)),
            num_layers=draw(st.integers(1, 48)),
            heads=heads,
            max_seq_len=max_seq_len,
            dropout=draw(st.floats(0.0, 1.0, exclude_max=True)),
            bias=draw(st.booleans()),
            activation=draw(st.sampled_from(["gelu", "gelu_tanh"])),
            attention=draw(st.sampled_from(["sdpa", "reference"])),
            gradient_checkpointing=draw(st.booleans()),
            compile=draw(st.booleans()),
            vocab_size=draw(st.none() | st.integers(vocab, 1 << 21)),
        ),
        training=TrainingConfig(
            batch_size=draw(st.integers(1, 1024)),
            gradient_accumulation_steps=draw(st.integers(1, 64)),
            max_steps=max_steps,
            epochs=draw(st.none() | st.integers(1, 100)) if sampling == "epochs" else None,
            learning_rate=lr,
            min_lr=draw(st.floats(0.0, lr)),
            warmup_steps=draw(st.integers(0, max_steps - 1)),
            weight_decay=draw(st.floats(0.0, 1.0)),
            beta1=draw(st.floats(0.0, 1.0, exclude_max=True)),
            beta2=draw(st.floats(0.0, 1.0, exclude_max=True)),
            max_grad_norm=draw(st.floats(0.0, 100.0)),
            mixed_precision=precision,
            eval_interval=draw(st.integers(1, 10**5)),
            eval_batches=draw(optional_int),
            log_interval=draw(st.integers(1, 1000)),
            save_interval=draw(st.integers(1, 10**5)),
            keep_last=draw(st.integers(1, 10)),
            early_stopping_patience=draw(optional_int),
            seed=draw(st.integers(0, 2**64 - 1)),
            peak_flops=draw(st.none() | st.floats(1.0, 1e18)),
            sample_tokens=draw(st.integers(0, 1000)),
            sample_prompt=draw(_TEXT),
        ),
    )
    # Shapes drawn independently can make a model no machine could train (check_absolute refuses it, e.g.
    # 16 TB of activations): not a valid config, so not one this strategy yields.
    assume(fits_a_machine(cfg))
    return cfg


def fits_a_machine(cfg: Config) -> bool:
    from gptrs.config.budget import MAX_TRAINING_BYTES, estimate

    return estimate(cfg).total <= MAX_TRAINING_BYTES


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_configs())
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, cfg: Config) -> None:
    validate(cfg)
    assert config_from_dict(config_to_dict(cfg)) == cfg
    path = tmp_path_factory.mktemp("rt") / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert apply_overrides(cfg, []) == cfg


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
_JUNK = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_KEYS = st.sampled_from([f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]) | st.text(
    max_size=8
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([*SECTIONS, "other"]), st.dictionaries(_KEYS, _JUNK, max_size=4), max_size=4
    )
)
def test_junk_gives_config_error_only(data: dict[str, object]) -> None:
    try:
        config_from_dict(data, "junk")
    except ConfigError as e:
        assert str(e).startswith("junk: ") and "\n" not in str(e)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200) | st.text(alphabet="model:heads 4\n-[]{}'\"#&*!|>%@`,\t", max_size=80))
def test_any_file_gives_config_error_only(
    tmp_path_factory: pytest.TempPathFactory, content: bytes | str
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    try:
        load_config(path)
    except ConfigError as e:
        assert "\n" not in str(e)


# ----------------------------------------------------------------------------------------------- reference


def test_describe_covers_every_field() -> None:
    text, md = describe(), describe(markdown=True)
    lines = text.splitlines()
    assert all(len(line) <= 110 for line in lines), max(lines, key=len)
    heads = [i for i, line in enumerate(lines) if line and not line.startswith(" ")][1:]  # after the title
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata["help"], f"{section}.{f.name} has no description"
            start = next(i for i in heads if lines[i].startswith(f"{section}.{f.name}: "))
            end = next((i for i in heads if i > start), len(lines))
            entry = " ".join(" ".join(lines[start:end]).split())  # the entry, its wrapped lines joined
            assert " ".join(f.metadata["help"].split()) in entry
            assert f"| `{f.name}` |" in md
    assert len(heads) == sum(len(dataclasses.fields(c)) for c in SECTIONS.values())


def test_docs_configuration_is_up_to_date() -> None:
    doc = ROOT / "docs" / "configuration.md"
    assert doc.read_text(encoding="utf-8") == describe(markdown=True), (
        "regenerate it: python -m gptrs.config --describe --markdown > docs/configuration.md"
    )


# ----------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(gptrs.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "gptrs.config", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_check(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dim: 128\n  heads: 5\n", encoding="utf-8")
    r = _cli("--check", str(CONFIGS / "small.yaml"), str(bad), str(tmp_path / "missing.yaml"))
    assert r.returncode == 2
    assert r.stdout == f"{CONFIGS / 'small.yaml'}: ok (1,548,672 parameters)\n"
    assert r.stderr.splitlines() == [
        f"error: {bad}: model.heads: 5 does not divide model.embed_dim (128)",
        f"error: {tmp_path / 'missing.yaml'}: no such file",
    ]
    assert "Traceback" not in r.stderr

    r = _cli("--check", str(tmp_path))
    assert (r.returncode, r.stderr) == (2, f"error: {tmp_path}: is a directory, not a config file\n")
    r = _cli("--check", str(CONFIGS / "small.yaml"), "--set", "model.heads=7")
    assert (r.returncode, r.stderr) == (
        2,
        "error: --set model.heads=7: model.heads: 7 does not divide model.embed_dim (128)\n",
    )


def test_cli_describe_and_show() -> None:
    r = _cli("--describe")
    assert r.returncode == 0 and r.stdout == describe()
    r = _cli("--describe", "--markdown")
    assert r.returncode == 0 and r.stdout == describe(markdown=True)
    r = _cli("--show", str(CONFIGS / "small.yaml"), "--set", "model.num_layers=2")
    assert r.returncode == 0
    assert config_from_dict(yaml.safe_load(r.stdout)) == apply_overrides(
        load_config(CONFIGS / "small.yaml"), ["model.num_layers=2"]
    )
    r = _cli("--markdown")
    assert r.returncode == 2 and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize(("name", "target"), [("small", 1.6e6), ("default", 87e6), ("large", 350e6)])
def test_preset_parameter_counts(name: str, target: float) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    n = count_parameters(cfg)
    assert abs(n - target) / target <= 0.10, f"{name}: {n:,} parameters, want about {target:,.0f}"


def test_count_parameters_by_hand() -> None:
    # GPT-2 small (124M with its 50257-token vocabulary and 1024 positions): the published figure.
    gpt2 = Config(model=ModelConfig(embed_dim=768, ff_dim=3072, num_layers=12, heads=12, max_seq_len=1024))
    assert count_parameters(gpt2, vocab_size=50257) == 124_439_808
    tiny = Config(model=ModelConfig(embed_dim=2, ff_dim=3, num_layers=1, heads=1, max_seq_len=5, bias=False))
    # emb 10*2 + pos 5*2 + block (2 norms 2+2, qkv 12, proj 4, fc 6, fc_proj 6) + final norm 2
    assert count_parameters(tiny, vocab_size=10) == 20 + 10 + (4 + 12 + 4 + 6 + 6) + 2


@pytest.mark.parametrize("bias", [True, False])
def test_count_parameters_matches_model(bias: bool) -> None:
    try:
        from gptrs.model import GPT
    except ImportError:
        pytest.skip("gptrs.model is not there yet")
    cfg = load_config(CONFIGS / "small.yaml")
    cfg.model.bias = bias
    cfg.model.num_layers = 2
    model = GPT.from_config(cfg, vocab_size=cfg.tokenizer.vocab_size)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(cfg)
    assert model.num_parameters() == count_parameters(cfg)


def test_presets_state_their_counts() -> None:
    small = load_config(CONFIGS / "small.yaml")
    assert small.data.source == "stdlib"  # trains on a fresh machine with no download
    assert small.model.max_seq_len * small.training.batch_size * small.training.max_steps <= 16e6
    for name in PRESET_NAMES:
        first = (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()[0]
        n = count_parameters(load_config(CONFIGS / f"{name}.yaml"))
        assert first.startswith(f"# {name}: {n:,} parameters"), first


def test_defaults_are_the_small_preset() -> None:
    """Config() is the small preset (the GPT-2 recipe); `python -m gptrs.train` with no arguments trains
    nanochat-small instead (tests/test_recipe.py)."""
    small = load_config(Path(__file__).resolve().parents[1] / "configs" / "small.yaml")
    assert config_to_dict(Config()) == config_to_dict(small)


def test_presets_load_by_name_from_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here: the presets come from the package
    for name in PRESET_NAMES:
        assert load_config(name) == load_config(CONFIGS / f"{name}.yaml")
        assert (CONFIGS / f"{name}.yaml").resolve() == (PRESETS_DIR / f"{name}.yaml").resolve()
    (tmp_path / "small").write_text("model:\n  num_layers: 2\n", encoding="utf-8")
    assert load_config("small").model.num_layers == 2  # a file of that name wins over the preset
    with pytest.raises(ConfigError) as info:
        load_config("tiny")
    presets = ", ".join(sorted(PRESET_NAMES))
    assert str(info.value) == f"tiny: no such file, nor a preset ({presets})"


def test_cli_list_shows_the_presets() -> None:
    r = _cli("--list")
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == [  # smallest first
        "small",
        "nanochat-small",
        "speedrun-small",
        "default",
        "nanochat-default",
        "speedrun-default",
        "large",
        "nanochat-large",
        "speedrun-large",
    ]
    for line in r.stdout.splitlines():
        name, count = line.split()[:2]
        assert count == f"{count_parameters(load_config(CONFIGS / f'{name}.yaml')):,}"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(heads=3), "model.heads: 3 does not divide model.embed_dim (32)"),
        (dict(num_layers=0), "model.num_layers: must be >= 1, got 0"),
        (dict(heads="4"), "model.heads: expected an integer, got the string '4'"),
        (dict(dropout=1.0), "model.dropout: must be in [0, 1), got 1.0"),
        (
            dict(activation="relu"),
            "model.activation: 'relu' is not one of 'gelu', 'gelu_tanh', 'relu2'; did you mean 'relu2'?",
        ),
        (dict(attention="flash"), "model.attention: 'flash' is not one of 'sdpa', 'reference'"),
        (dict(vocab_size=None), "model.vocab_size: is null; a model needs its vocabulary size"),
        (dict(kv_heads=3), "model.kv_heads: 3 does not divide model.heads (4)"),
        (
            dict(heads=32, positions="rotary"),
            "model.heads: 32 heads make an odd head size (1); rotary positions need an even one",
        ),
        (
            dict(arch="nanochat", heads=32),
            "model.heads: 32 heads make an odd head size (1); rotary positions need an even one",
        ),
    ],
)
def test_check_model_names_the_field(kw: dict, message: str) -> None:
    """check_model is what the model runs when it is built: the config's rules and words, without a file."""
    base = dict(vocab_size=64, embed_dim=32, ff_dim=64, num_layers=1, heads=4, max_seq_len=8)
    check_model(ModelConfig(**base))
    with pytest.raises(ConfigError) as info:
        check_model(ModelConfig(**{**base, **kw}))
    assert str(info.value) == message


_DIM = st.integers(-1, 40)


@settings(max_examples=150, deadline=None)
@given(
    _DIM, _DIM, _DIM, _DIM, st.integers(-1, 64), st.floats(-0.5, 1.5),
    st.sampled_from(["gpt2", "nanochat"]), st.none() | st.integers(0, 8),
)  # fmt: skip
def test_check_model_agrees_with_config_validation(
    embed_dim: int,
    ff_dim: int,
    num_layers: int,
    heads: int,
    max_seq_len: int,
    dropout: float,
    arch: str,
    kv_heads: int | None,
) -> None:
    """One set of rules: a model shape passes check_model exactly when a config holding it validates."""
    mc = ModelConfig(
        embed_dim=embed_dim, ff_dim=ff_dim, num_layers=num_layers, heads=heads, max_seq_len=max_seq_len,
        dropout=dropout, vocab_size=4096, arch=arch, kv_heads=kv_heads,
    )  # fmt: skip
    try:
        check_model(mc)
        model_ok = True
    except ConfigError:
        model_ok = False
    try:
        validate(Config(model=mc))
        config_ok = True
    except ConfigError as e:
        assert str(e).startswith("<overrides>: model."), e
        config_ok = False
    assert model_ok == config_ok
    ok_shape = min(embed_dim, ff_dim, num_layers, heads, max_seq_len) >= 1 and 0 <= dropout < 1
    if ok_shape and (kv_heads is None or kv_heads >= 1) and embed_dim % heads == 0:  # the test can fail
        even = arch == "gpt2" or (embed_dim // heads) % 2 == 0
        assert model_ok == (even and heads % (kv_heads or heads) == 0)


_HINTS = (int, float, str, bool, int | None, float | None, bool | str, list[str])


@settings(max_examples=200, deadline=None)
@given(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=4)
    | st.lists(st.integers(), max_size=2)
)
def test_coerce_follows_the_field_type(value: object) -> None:
    """Types come from the field's hint alone: an int is a float too (huge ones inf), a bool never a number."""
    from gptrs.config.problems import Problem
    from gptrs.config.schema import options
    from gptrs.config.validation import coerce

    for hint in _HINTS:
        allowed = [typing.get_origin(t) or t for t in options(hint)]  # list[str] -> list
        try:
            out = coerce("k", value, hint)
        except Problem as p:
            assert p.key.startswith("k") and "expected" in p.message
            assert not any(type(value) is t for t in allowed if t not in (float, list))
            continue
        if isinstance(value, int) and not isinstance(value, bool) and int not in allowed:
            assert float in allowed and isinstance(out, float)
            try:  # the nearest float (2**53 + 1 is not one), or inf past the largest
                nearest = float(value)
            except OverflowError:
                nearest = math.copysign(math.inf, value)
            assert out == nearest
        else:
            assert out is value or out == value  # (the same object: nan != nan)
            assert type(out) is type(value) and any(type(value) is t for t in allowed)
