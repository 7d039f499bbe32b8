"""Tests for gptrs.config.budget: the parameter count and training-step memory of a config, by arithmetic alone.

The count is checked against real models (any GPT-2 shape: estimate == num_parameters()); the memory check
refuses, in one line naming the key, what a device cannot hold, and never a preset on the machine it targets.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptrs.config import Config, ModelConfig, TrainingConfig, apply_overrides, load_config
from gptrs.config.budget import (
    BYTES_PER_PARAMETER,
    MAX_TRAINING_BYTES,
    check_absolute,
    check_fits,
    estimate,
    host_memory,
    human_bytes,
    human_count,
)
from gptrs.config.problems import Problem
from gptrs.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@settings(max_examples=25, deadline=None)
@given(
    heads=st.integers(1, 4),
    head_dim=st.integers(1, 6),
    ff_dim=st.integers(1, 24),
    num_layers=st.integers(1, 3),
    max_seq_len=st.integers(1, 16),
    vocab_size=st.integers(1, 300),
    bias=st.booleans(),
)
def test_estimate_counts_the_real_parameters(
    heads: int, head_dim: int, ff_dim: int, num_layers: int, max_seq_len: int, vocab_size: int, bias: bool
) -> None:
    from gptrs.model import GPT

    m = ModelConfig(
        embed_dim=heads * head_dim, ff_dim=ff_dim, num_layers=num_layers, heads=heads,
        max_seq_len=max_seq_len, bias=bias, vocab_size=vocab_size,
    )  # fmt: skip
    model = GPT(
        vocab_size=vocab_size, embed_dim=m.embed_dim, ff_dim=ff_dim, num_layers=num_layers, heads=heads,
        max_seq_len=max_seq_len, bias=bias, pad_token_id=None,
    )  # fmt: skip
    est = estimate(Config(model=m))
    assert est.parameters == model.num_parameters()
    assert est.weights == BYTES_PER_PARAMETER * model.num_parameters()


@settings(max_examples=15, deadline=None)
@given(
    kv_heads=st.integers(1, 3),
    group=st.integers(1, 2),
    half_head=st.integers(1, 3),
    ff_dim=st.integers(1, 24),
    num_layers=st.integers(1, 3),
    vocab_size=st.integers(260, 600),
)
def test_estimate_counts_the_real_nanochat_parameters(
    kv_heads: int, group: int, half_head: int, ff_dim: int, num_layers: int, vocab_size: int
) -> None:
    from gptrs.model import build_model

    heads = kv_heads * group
    cfg = apply_overrides(
        load_config("nanochat-small"),
        [f"model.embed_dim={heads * 2 * half_head}", f"model.heads={heads}", f"model.kv_heads={kv_heads}",
         f"model.ff_dim={ff_dim}", f"model.num_layers={num_layers}", "model.max_seq_len=8",
         f"tokenizer.vocab_size={vocab_size}", f"model.vocab_size={vocab_size}"],
    )  # fmt: skip
    model = build_model(cfg, vocab_size=vocab_size)
    n = sum(p.numel() for p in model.parameters())
    est = estimate(cfg)
    assert est.parameters == n
    assert est.weights == 12 * n  # Muon: weight, gradient, one momentum buffer
    adamw = estimate(apply_overrides(cfg, ["training.optimizer=adamw"]))
    assert adamw.weights == BYTES_PER_PARAMETER * n and adamw.activations == est.activations


def test_estimate_grows_with_every_size() -> None:
    base = estimate(Config())
    nano = load_config("nanochat-default")
    for change in (
        "model.num_layers=30",
        "model.max_seq_len=2048",
        "model.ff_dim=4096",
        "training.batch_size=64",
    ):
        assert estimate(apply_overrides(nano, [change])).total > estimate(nano).total, change
    for change in (
        "model.num_layers=10",
        "model.embed_dim=256",
        "model.ff_dim=2048",
        "model.max_seq_len=512",
        "training.batch_size=64",
        "tokenizer.vocab_size=8192",
    ):
        assert estimate(apply_overrides(Config(), [change])).total > base.total, change
    # checkpointing keeps less; 16-bit activations are half of fp32's
    ckpt = apply_overrides(Config(), ["model.gradient_checkpointing=true"])
    assert estimate(ckpt).activations < base.activations
    fp32 = apply_overrides(Config(), ["training.mixed_precision=false"])
    assert estimate(fp32).activations == 2 * base.activations


@pytest.mark.parametrize(
    "name",
    [
        f"{recipe}{size}"
        for recipe in ("", "nanochat-", "speedrun-")
        for size in ("small", "default", "large")
    ],
)
def test_presets_pass_validation_and_fit_a_big_gpu(name: str) -> None:
    cfg = load_config(name)  # validation ran check_absolute
    check_fits(cfg, 80 << 30, "cuda:0")  # every preset trains on an 80 GB card


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("model.num_layers=100000", "model.num_layers"),
        ("model.embed_dim=65536", "model.embed_dim"),
        ("model.ff_dim=100000000", "model.ff_dim"),
        ("training.batch_size=1000000", "training.batch_size"),
        ("tokenizer.vocab_size=100000000", "tokenizer.vocab_size"),
    ],
)
def test_check_fits_names_the_key(change: str, key: str) -> None:
    cfg = apply_overrides(Config(), [change])
    with pytest.raises(ConfigError) as e:
        check_fits(cfg, 24 << 30, "cpu")
    msg = str(e.value)
    assert msg.startswith(f"{key}: ") and "\n" not in msg
    assert "the device (cpu) has 24 GB" in msg
    check_fits(cfg, None, "mps")  # unknown memory: no check


def test_absurd_sizes_are_refused_by_validation_without_a_device() -> None:
    with pytest.raises(
        ConfigError, match=r"model\.num_layers: 1000000000000000 makes a model of .* no single machine"
    ):
        apply_overrides(Config(), ["model.num_layers=1000000000000000"])
    huge = Config(model=ModelConfig(num_layers=10**5000))  # built in Python: no YAML literal limit
    with pytest.raises(Problem) as p:
        check_absolute(huge)
    assert p.value.key == "model.num_layers" and "an integer of" in p.value.message
    assert len(p.value.message) < 400
    assert estimate(Config(training=TrainingConfig(batch_size=1))).total < MAX_TRAINING_BYTES


def test_human_units() -> None:
    assert human_bytes(512) == "512 bytes"
    assert human_bytes(1536 << 20) == "1.5 GB"
    assert human_bytes(24 << 30) == "24 GB"
    assert human_bytes(10**400).endswith(" PB")
    assert human_count(1_548_672) == "1,548,672"
    assert human_count(19_800_000_000) == "19.8 billion"
    mem = host_memory()
    assert mem is None or mem > 0
