"""The modern recipe wired in: ``model.arch`` / ``training.optimizer`` in the config, the nanochat presets at
the GPT-2 presets' budgets, the model factory and ``model.json``'s arch, the Trainer with Muon (bitwise
resume, the schedule driving every group, a gradient scaler), and generation through the sliding cache."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gptrs.config import (
    Config,
    ModelConfig,
    apply_overrides,
    check_model,
    count_parameters,
    load_config,
    resolve_model,
)
from gptrs.config.schema import describe
from gptrs.data import RandomBatches
from gptrs.errors import CheckpointError, ConfigError
from gptrs.model import GPT, build_model, load_model
from gptrs.training import Trainer
from gptrs.training.checkpoint import load_trainer_state
from gptrs.training.metrics import read_metrics
from gptrs.training.muon import MuonAdamW
from gptrs.training.optim import build_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
V, D, FF, L, H, T = 48, 32, 64, 2, 4, 16
NANO = ["model.arch=nanochat", "model.bias=false", "model.activation=relu2"]


def nano_config(**training: object) -> Config:
    """A tiny nanochat + Muon config (the nanochat-small preset, shrunk)."""
    cfg = load_config("nanochat-small")
    shape = {"embed_dim": D, "ff_dim": FF, "num_layers": L, "heads": H, "max_seq_len": T}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **shape))
    t = cfg.training
    t.batch_size, t.max_steps, t.log_interval, t.eval_interval, t.save_interval = 4, 8, 1, 4, 4
    t.mixed_precision, t.peak_flops = False, 1e11
    for k, v in training.items():
        setattr(t, k, v)
    return cfg


def tokens(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A learnable stream: runs of counting (t -> t+1 mod V) broken by random jumps."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.uint16)
    t = 0
    for i in range(n):
        t = int(rng.integers(V)) if rng.random() < 0.1 else (t + 1) % V
        out[i] = t
    return out


def eval_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    sampler = RandomBatches(tokens(2000, seed=1), 4, T, seed=1)
    return [next(sampler) for _ in range(3)]


def nano_model(cfg: Config, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size=V)
    assert model.config.arch == "nanochat"
    return model


# ----------------------------------------------------------------------------------------------- config


def test_arch_defaults_to_gpt2_and_is_described() -> None:
    assert Config().model.arch == "gpt2" and Config().training.optimizer == "adamw"
    text = describe()
    for key in (
        "model.arch",
        "model.kv_heads",
        "model.rope_theta",
        "model.logit_softcap",
        "training.muon_lr",
    ):
        assert f"\n{key}: " in text
    assert "positions" in text and "'nanochat'" in text


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ([*NANO, "model.heads=128"], "model.heads: 128 heads make an odd head size (1)"),
        (["model.positions=rotary", "model.heads=128"], "model.heads: 128 heads make an odd head size (1)"),
        ([*NANO, "model.kv_heads=3"], "model.kv_heads: 3 does not divide model.heads (4)"),
        (["model.kv_heads=3"], "model.kv_heads: 3 does not divide model.heads (4)"),
        (["training.optimizer=sgd"], "training.optimizer: 'sgd' is not one of 'adamw', 'muon'"),
    ],
)
def test_switches_that_cannot_work_are_refused_by_name(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(Config(), sets, source="--set")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_arch_is_shorthand_for_the_switches() -> None:
    """``model.arch`` fills the switches left null; any switch set by hand wins, in any combination, and the
    model built from it has exactly the parameters the switches say."""
    base = dict(vocab_size=64, embed_dim=32, ff_dim=64, num_layers=1, heads=4, max_seq_len=8)
    nano = resolve_model(ModelConfig(arch="nanochat", **base))
    assert (nano.positions, nano.norm, nano.qk_norm, nano.activation, nano.bias, nano.tie_embeddings) == (
        "rotary", "rmsnorm", True, "relu2", False, False,
    )  # fmt: skip
    mixed = ModelConfig(arch="nanochat", bias=True, positions="learned", tie_embeddings=True, **base)
    check_model(mixed)
    model = build_model(mixed)
    names = set(model.state_dict())
    assert "transformer.wpe.weight" in names and "transformer.h.0.attn.c_attn.bias" in names
    assert model.lm_head.weight is model.transformer.wte.weight
    assert count_parameters(Config(model=mixed)) == model.num_parameters()


def test_arch_is_shorthand_for_switches_that_combine() -> None:
    """model.arch fills the switches left null; any option now goes with either arch."""
    for sets in (
        ["model.arch=nanochat"],
        [*NANO, "model.dropout=0.1", "model.attention=reference", "model.activation=gelu"],
        ["model.activation=relu2", "model.kv_heads=2", "model.rope_theta=500", "model.logit_softcap=0"],
    ):
        apply_overrides(Config(), sets)
    base = dict(arch="nanochat", vocab_size=64, embed_dim=32, ff_dim=64, num_layers=1, heads=4, max_seq_len=8)
    check_model(ModelConfig(**base))
    check_model(ModelConfig(**{**base, "bias": True, "activation": "gelu"}))
    with pytest.raises(ConfigError, match=r"^model\.kv_heads: 3 does not divide model\.heads \(4\)$"):
        check_model(ModelConfig(**{**base, "kv_heads": 3}))


NANOCHAT_PRESETS = {"small": 1_638_400, "default": 91_226_112, "large": 343_932_928}


@pytest.mark.parametrize("size", ["small", "default", "large"])
def test_nanochat_presets_match_the_gpt2_budgets(size: str) -> None:
    """Within 10% of the GPT-2 preset of the same size; the analytic count is the built model's (built on
    the meta device: no memory) and the figure in the preset's first line."""
    ours, theirs = load_config(f"nanochat-{size}"), load_config(size)
    n, target = count_parameters(ours), count_parameters(theirs)
    assert n == NANOCHAT_PRESETS[size]
    assert abs(n - target) / target <= 0.10, (n, target)
    with torch.device("meta"):
        model = build_model(ours, vocab_size=ours.tokenizer.vocab_size)
    assert model.config.arch == "nanochat" and model.num_parameters() == n
    assert (ours.model.arch, ours.training.optimizer) == ("nanochat", "muon")
    t = ours.training  # the sweep's winners
    assert (t.muon_lr, t.muon_momentum, t.weight_decay, t.learning_rate, t.embedding_lr) == (
        0.04,
        0.95,
        0.0,
        0.016,
        0.6,
    )
    assert (t.beta1, t.beta2, t.adam_eps, t.warmup_steps) == (0.8, 0.95, 1e-10, 0)
    assert t.min_lr == pytest.approx(0.1 * t.learning_rate)
    assert (ROOT / "configs" / f"nanochat-{size}.yaml").resolve() == (
        ROOT / "python/gptrs/config/presets" / f"nanochat-{size}.yaml"
    ).resolve()


# ----------------------------------------------------------------------------------------------- factory


def test_factory_dispatches_and_model_json_records_the_arch(tmp_path: Path) -> None:
    cfg = nano_config()
    model = nano_model(cfg)
    assert isinstance(build_model(Config(), vocab_size=V), GPT)
    model.save_pretrained(tmp_path / "nano")
    saved = json.loads((tmp_path / "nano" / "model.json").read_text())["config"]
    assert saved["arch"] == "nanochat" and saved["logit_softcap"] == 15.0 and saved["kv_heads"] == H
    loaded = load_model(tmp_path / "nano")
    assert loaded.config == model.config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ids = torch.randint(0, V, (2, T))
    torch.testing.assert_close(loaded(ids)[0], model(ids)[0], rtol=0, atol=0)
    GPT(V, D, FF, L, H, T, None).save_pretrained(tmp_path / "gpt")
    assert load_model(tmp_path / "gpt").config.arch == "gpt2"


def test_softcap_and_rope_from_the_config() -> None:
    cfg = nano_config()
    cfg.model.logit_softcap, cfg.model.rope_theta, cfg.model.kv_heads = 0.0, 500.0, 2
    model = nano_model(cfg)
    assert model.logit_softcap is None and model.config.rope_theta == 500.0 and model.config.kv_heads == 2
    assert count_parameters(cfg, vocab_size=V) == model.num_parameters()


# ----------------------------------------------------------------------------------------------- training


def test_muon_optimizer_and_one_schedule_for_every_group(tmp_path: Path) -> None:
    cfg = nano_config(max_steps=4)
    model = nano_model(cfg)
    opt = build_optimizer(model, cfg.training, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    kinds = {g["kind"]: g for g in opt.param_groups}
    assert [p.dim() for p in kinds["hidden"]["params"]] == [2] * (4 * L)
    trainer = Trainer(model, None, cfg, "cpu", run_dir=tmp_path)
    trainer.train(RandomBatches(tokens(), 4, T, seed=7), None)
    # after the last step: the schedule's last rate times each group's scale (Muon 0.04 / head 0.016 ...)
    last = trainer.history[-1]["lr"]
    assert 0.0016 < last < 0.016
    state = load_trainer_state(tmp_path / "checkpoints" / "last")["optimizer"]
    groups = {g["kind"]: g for part in ("muon", "adamw") for g in state[part]["param_groups"]}
    assert groups["hidden"]["lr"] == pytest.approx(last * 0.04 / 0.016)
    assert groups["embed"]["lr"] == pytest.approx(last * 0.6 / 0.016)
    assert groups["head"]["lr"] == pytest.approx(last)


def test_resume_with_muon_is_bitwise(tmp_path: Path) -> None:
    """8 steps straight == 4 steps, then a resume from that checkpoint for 4 more: weights and Muon and
    AdamW states bitwise equal."""
    cfg = nano_config()
    data = tokens()
    full = tmp_path / "full"
    Trainer(nano_model(cfg), None, cfg, "cpu", run_dir=full).train(
        RandomBatches(data, 4, T, seed=7), eval_batches()
    )
    half = full / "checkpoints" / "step_000004"
    assert half.is_dir()
    resumed = tmp_path / "resumed"
    result = Trainer(nano_model(cfg, seed=99), None, cfg, "cpu", run_dir=resumed).train(
        RandomBatches(data, 4, T, seed=7), eval_batches(), resume=half
    )
    assert result["resumed"] and result["step"] == 8
    a = (full / "checkpoints/last/model.safetensors").read_bytes()
    b = (resumed / "checkpoints/last/model.safetensors").read_bytes()
    assert a == b
    sa, sb = (load_trainer_state(d / "checkpoints/last")["optimizer"] for d in (full, resumed))
    assert sa["kind"] == sb["kind"] == "muon_adamw"
    for part, key in (("muon", "momentum_buffer"), ("adamw", "exp_avg_sq")):
        states = zip(sa[part]["state"].values(), sb[part]["state"].values(), strict=True)
        assert all(torch.equal(x[key], y[key]) for x, y in states)
    losses = [r["loss"] for r in read_metrics(full / "metrics.jsonl") if r["kind"] == "train"]
    assert losses[-1] < losses[0]  # it learns


def test_resume_with_another_optimizer_is_refused(tmp_path: Path) -> None:
    cfg = nano_config(max_steps=4)
    Trainer(nano_model(cfg), None, cfg, "cpu", run_dir=tmp_path).train(
        RandomBatches(tokens(), 4, T, seed=7), None
    )
    other = nano_config(max_steps=6, optimizer="adamw")
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        Trainer(nano_model(other), None, other, "cpu", run_dir=tmp_path).train(
            RandomBatches(tokens(), 4, T, seed=7), None, resume=True
        )


def test_gradient_scaler_steps_muon_adamw() -> None:
    """fp16 training scales the loss: GradScaler unscales and steps the Muon + AdamW pair like any
    optimizer (a step equals the unscaled one; an overflow skips it)."""
    cfg = nano_config()
    x = torch.randint(0, V, (2, T))
    results = []
    for scale in (None, 1024.0):
        model = nano_model(cfg)
        opt = build_optimizer(model, cfg.training, torch.device("cpu"))
        for _ in range(2):  # the second step moves every matrix (the first only the zero-initialised head)
            _, loss = model(x, x)
            assert loss is not None
            if scale is None:
                loss.backward()
                opt.step()
            else:
                scaler = torch.amp.GradScaler("cpu", init_scale=scale)
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                scaler.step(opt)
                scaler.update()
            opt.zero_grad()
        results.append(model.state_dict())
    for name, p in results[0].items():
        torch.testing.assert_close(results[1][name], p, rtol=1e-5, atol=1e-6, msg=name)
    model = nano_model(cfg)
    opt = build_optimizer(model, cfg.training, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _, loss = model(x, x)
    assert loss is not None
    scaler.scale(loss).backward()
    model.lm_head.weight.grad[0, 0] = math.inf  # as an fp16 overflow: the step is skipped
    scaler.unscale_(opt)
    scaler.step(opt)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------------------------- generation


def test_quick_recipe_learns_faster_than_a_coin() -> None:
    """A sanity check of the wiring, not a race: 30 Muon steps of the tiny model beat the uniform loss."""
    cfg = nano_config(max_steps=30)
    result = Trainer(nano_model(cfg), None, cfg, "cpu").train(
        RandomBatches(tokens(), 4, T, seed=7), eval_batches()
    )
    assert result["val_loss"] < math.log(V) - 1.0


# ----------------------------------------------------------------------------------------------- the CLIs

TINY = [
    *("data.num_training_samples=40", "data.max_eval_tokens=2048", "tokenizer.vocab_size=300"),
    *("model.num_layers=1", "model.embed_dim=32", "model.ff_dim=64", "model.heads=2", "model.max_seq_len=32"),
    *("training.batch_size=4", "training.eval_interval=3", "training.save_interval=3"),
    *("training.log_interval=1", "training.sample_tokens=8", "training.peak_flops=1e11"),
]


def test_train_generate_and_export_a_nanochat_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gptrs.train --config nanochat-small` trains the modern recipe; `gptrs.generate` (one prompt and
    --interactive) decodes from its run directory through the sliding cache; `gptrs.export` writes a
    NanoChatForCausalLM that transformers loads with our logits."""
    import io

    from gptrs import export as export_cli
    from gptrs import generate as generate_cli
    from gptrs import train as train_cli

    run_dir = tmp_path / "run"
    sets = [a for s in TINY for a in ("--set", s)]
    argv = ["--config", "nanochat-small", "--out", str(run_dir), "--device", "cpu", *sets, "--max-steps", "3"]
    assert train_cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "validation loss" in out and "--- sample (8 tokens" in out
    saved = json.loads((run_dir / "checkpoints" / "best" / "model.json").read_text())["config"]
    assert saved["arch"] == "nanochat"
    state = load_trainer_state(run_dir / "checkpoints" / "last")
    assert state["optimizer"]["kind"] == "muon_adamw"

    gen = ["--model-path", str(run_dir), "--temperature", "0", "--max-new-tokens", "40"]  # 40 > context 32
    assert generate_cli.main([*gen, "--prompt", "def "]) == 0, capsys.readouterr().err
    once = capsys.readouterr().out
    assert once.startswith("def ")
    monkeypatch.setattr("sys.stdin", io.StringIO("def \n/quit\n"))
    assert generate_cli.main([*gen, "--interactive"]) == 0
    assert "def " + capsys.readouterr().out == once  # the same greedy continuation

    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    assert export_cli.main(["--model-path", str(run_dir), "--format", "hf", "--out", str(hf_dir)]) == 0
    assert "AutoModelForCausalLM" in capsys.readouterr().out
    assert sorted(p.name for p in hf_dir.iterdir()) == sorted(export_cli.EXPORT_FILES)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert type(hf).__name__ == "NanoChatForCausalLM"
    ours = load_model(run_dir / "checkpoints" / "best").eval()
    ids = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], rtol=1e-5, atol=2e-5)


def test_the_quick_start_trains_the_race_winner_with_its_hyperparameters() -> None:
    """scripts/quickstart.sh trains nanochat-small, whose recipe is the one benches/bench_recipe.py raced."""
    from benches.bench_recipe import MODERN_RECIPE, MODERN_SMALL

    assert "-m gptrs.train --config nanochat-small" in (ROOT / "scripts" / "quickstart.sh").read_text()
    cfg = load_config("nanochat-small")
    r, t = MODERN_RECIPE, cfg.training
    assert {k: getattr(cfg.model, k) for k in MODERN_SMALL} == MODERN_SMALL
    assert (t.optimizer, t.learning_rate, t.embedding_lr, t.muon_lr, t.muon_momentum) == (
        r.optimizer,
        r.lr,
        r.embedding_lr,
        r.muon_lr,
        r.muon_momentum,
    )
    assert ((t.beta1, t.beta2), t.adam_eps, t.warmup_steps, t.weight_decay) == (
        r.betas,
        r.eps,
        r.warmup_steps,
        r.weight_decay,
    )
    assert r.decay == "cosine" and t.min_lr == pytest.approx(r.min_lr_frac * t.learning_rate)
