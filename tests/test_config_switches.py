"""Tests for the model switches: ``model.arch`` as shorthand (ARCH_DEFAULTS, resolve_model), the shape rules
that remain, and the parameter count of any combination (real models for the two archs, hand counts for
mixed switches)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptrs.config import (
    ARCH_DEFAULTS,
    Config,
    ModelConfig,
    apply_overrides,
    check_model,
    count_parameters,
    load_config,
    resolve_model,
)
from gptrs.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SWITCHES = {
    "positions": ["learned", "rotary"],
    "norm": ["layernorm", "rmsnorm"],
    "embed_norm": [False, True],
    "qk_norm": [False, True],
    "activation": ["gelu", "gelu_tanh", "relu2"],
    "bias": [False, True],
    "tie_embeddings": [False, True],
    "logit_softcap": [0.0, 15.0, 30.0],
    "init": ["gpt2", "nanochat"],
}


def test_every_switch_defaults_to_null_and_each_arch_fills_all() -> None:
    mc = ModelConfig()
    for arch, table in ARCH_DEFAULTS.items():
        assert set(table) == set(SWITCHES), arch
    assert all(getattr(mc, k) is None for k in SWITCHES)
    gpt2 = resolve_model(mc)
    assert (gpt2.positions, gpt2.norm, gpt2.activation, gpt2.bias, gpt2.tie_embeddings) == (
        "learned", "layernorm", "gelu", True, True,
    )  # fmt: skip
    assert (gpt2.embed_norm, gpt2.qk_norm, gpt2.logit_softcap, gpt2.init) == (False, False, 0.0, "gpt2")
    nano = resolve_model(ModelConfig(arch="nanochat"))
    assert (nano.positions, nano.norm, nano.activation, nano.bias, nano.tie_embeddings) == (
        "rotary", "rmsnorm", "relu2", False, False,
    )  # fmt: skip
    assert (nano.embed_norm, nano.qk_norm, nano.logit_softcap, nano.init) == (True, True, 15.0, "nanochat")
    assert (nano.kv_heads, nano.rope_theta) == (nano.heads, 10000.0)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(list(ARCH_DEFAULTS)),
    st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in SWITCHES.items()}),
    st.none() | st.sampled_from([1, 2, 4]),
    st.none() | st.floats(1.0, 1e6),
)
def test_resolve_keeps_what_is_set_and_fills_the_rest(
    arch: str, given_: dict[str, object], kv_heads: int | None, rope_theta: float | None
) -> None:
    mc = ModelConfig(arch=arch, kv_heads=kv_heads, rope_theta=rope_theta, **given_)  # type: ignore[arg-type]
    r = resolve_model(mc)
    for key in SWITCHES:
        assert getattr(r, key) == given_.get(key, ARCH_DEFAULTS[arch][key]), key
    assert r.kv_heads == (kv_heads or mc.heads) and r.rope_theta == (rope_theta or 10000.0)
    assert resolve_model(r) == r and mc.kv_heads == kv_heads  # idempotent; the input is not changed
    assert all(v is not None for k, v in dataclasses.asdict(r).items() if k not in ("vocab_size", "compile"))
    assert count_parameters(Config(model=mc)) == count_parameters(Config(model=r))


def test_arch_is_shorthand_and_everything_combines() -> None:
    small = load_config("small")
    nano = apply_overrides(small, ["model.arch=nanochat"])  # the switches follow the arch
    assert resolve_model(nano.model).norm == "rmsnorm" and resolve_model(nano.model).bias is False
    mixed = apply_overrides(small, ["model.arch=nanochat", "model.activation=gelu", "model.bias=true"])
    r = resolve_model(mixed.model)
    assert (r.activation, r.bias, r.positions) == ("gelu", True, "rotary")
    assert (
        resolve_model(apply_overrides(small, ["model.kv_heads=2", "model.dropout=0.1"]).model).kv_heads == 2
    )
    # a rule of the shape still holds after resolution, naming the key
    with pytest.raises(
        ConfigError, match=r"^--set model\.arch=nanochat: model\.heads: 128 heads make an odd"
    ):
        apply_overrides(small, ["model.heads=128", "model.arch=nanochat"])
    with pytest.raises(ConfigError, match=r"^--set model\.kv_heads=3: model\.kv_heads: 3 does not divide"):
        apply_overrides(small, ["model.kv_heads=3"])
    apply_overrides(small, ["model.heads=128"])  # head size 1 is fine with learned positions


def test_old_configs_keep_loading(tmp_path: Path) -> None:
    """Presets and configs written before the switches: explicit bias/activation per arch stay valid."""
    old_nano = (
        "model:\n  arch: nanochat\n  bias: false\n  activation: relu2\n  dropout: 0.0\n  attention: sdpa\n"
    )
    old_gpt2 = "model:\n  bias: true\n  activation: gelu_tanh\n  dropout: 0.1\n"
    (tmp_path / "nano.yaml").write_text(old_nano, encoding="utf-8")
    (tmp_path / "gpt2.yaml").write_text(old_gpt2, encoding="utf-8")
    nano = load_config(tmp_path / "nano.yaml")
    assert resolve_model(nano.model) == resolve_model(ModelConfig(arch="nanochat"))
    gpt2 = resolve_model(load_config(tmp_path / "gpt2.yaml").model)
    assert (gpt2.activation, gpt2.bias, gpt2.positions) == ("gelu_tanh", True, "learned")


@settings(max_examples=20, deadline=None)
@given(
    arch=st.sampled_from(["gpt2", "nanochat"]),
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 2),
    half_head=st.integers(1, 3),
    ff_dim=st.integers(1, 24),
    num_layers=st.integers(1, 3),
    max_seq_len=st.integers(1, 16),
    vocab_size=st.integers(1, 300),
    bias=st.none() | st.booleans(),
)
def test_count_matches_the_current_models(
    arch: str,
    kv_heads: int,
    group: int,
    half_head: int,
    ff_dim: int,
    num_layers: int,
    max_seq_len: int,
    vocab_size: int,
    bias: bool | None,
) -> None:
    from gptrs.model import build_model

    heads = kv_heads * group
    mc = ModelConfig(
        arch=arch, embed_dim=heads * 2 * half_head, heads=heads, ff_dim=ff_dim, num_layers=num_layers,
        max_seq_len=max_seq_len, vocab_size=vocab_size,
        kv_heads=kv_heads if arch == "nanochat" else None, bias=bias if arch == "gpt2" else None,
    )  # fmt: skip
    model = build_model(Config(model=mc))
    assert count_parameters(Config(model=mc)) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        # emb 40, untied head 40; block: 2 gain-only LayerNorms 8, q/k/v 4*(2+2*1)*2 = 32, out 16, MLP 48,
        # QK-norm (RMS) none; final and embedding norms 8
        (dict(positions="rotary", tie_embeddings=False, bias=False, qk_norm=True, embed_norm=True), 192),
        # nanochat with biases and LayerNorms (kv_heads null: 2): norms 16, q/k/v 4*12 + 12, out 20,
        # MLP 30 + 28; final and embedding norms 16
        (dict(arch="nanochat", bias=True, norm="layernorm", kv_heads=None), 250),
        # nanochat with a learned position table (5*4) and a tied head: q/k/v 32, out 16, MLP 48, no norm
        (dict(arch="nanochat", positions="learned", tie_embeddings=True), 40 + 20 + 32 + 16 + 48),
    ],
)
def test_count_by_hand_for_mixed_switches(switches: dict[str, object], expected: int) -> None:
    base: dict[str, object] = dict(embed_dim=4, heads=2, kv_heads=1, ff_dim=6, num_layers=1, max_seq_len=5)
    mc = ModelConfig(**{**base, "vocab_size": 10, **switches})  # type: ignore[arg-type]
    check_model(mc)
    assert count_parameters(Config(model=mc)) == expected


def test_a_huge_flat_list_is_refused_for_its_size(tmp_path: Path) -> None:
    """Issue 22: a file of 150,000 list items has no alias; the refusal says what it is."""
    path = tmp_path / "flat.yaml"
    path.write_text("- a\n" * 150_000, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 100000, column 3: the document holds more than 100000 values")
    assert "alias" not in msg


def test_show_says_what_arch_fills_in(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from gptrs.config import config_from_dict
    from gptrs.config.__main__ import main

    assert main(["--show", "nanochat-small", "--set", "model.bias=true"]) == 0
    out = capsys.readouterr().out
    assert "  positions: null  # 'rotary'\n" in out and "  kv_heads: null  # 4\n" in out
    assert "  bias: true\n" in out and "  vocab_size: null\n" in out  # set by hand; nothing to resolve
    assert config_from_dict(yaml.safe_load(out)) == apply_overrides(
        load_config("nanochat-small"), ["model.bias=true"]
    )
