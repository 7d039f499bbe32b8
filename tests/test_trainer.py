"""The Trainer: bitwise resume after a signal, gradient accumulation, early stopping, precision choice,
user loaders (a torch DataLoader, a plain nn.Module) and the files a run writes."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_gpt
from gptrs.config import Config
from gptrs.data import RandomBatches
from gptrs.errors import CheckpointError, ConfigError, DataError
from gptrs.model import GPT
from gptrs.training import Trainer, TrainingInterrupted, find_latest
from gptrs.training.checkpoint import load_trainer_state
from gptrs.training.metrics import read_metrics
from gptrs.training.precision import resolve_precision

V, D, FF, L, H, T = 48, 32, 64, 2, 2, 16
SHAPE = dict(vocab_size=V, embed_dim=D, ff_dim=FF, num_layers=L, heads=H, max_seq_len=T)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(seed: int = 0, dropout: float = 0.0, arch: str = "gpt2") -> GPT:
    return tiny_gpt(seed, dropout=dropout, arch=arch, **SHAPE)


def tokens(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A learnable stream: runs of counting (t -> t+1 mod V) broken by random jumps."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=np.uint16)
    t = 0
    for i in range(n):
        t = int(rng.integers(V)) if rng.random() < 0.1 else (t + 1) % V
        out[i] = t
    return out


def config(**training) -> Config:
    cfg = Config()
    cfg.model.embed_dim, cfg.model.ff_dim, cfg.model.num_layers, cfg.model.heads, cfg.model.max_seq_len = (
        D,
        FF,
        L,
        H,
        T,
    )
    t = cfg.training
    t.batch_size, t.max_steps, t.warmup_steps, t.learning_rate, t.min_lr = 4, 8, 2, 1e-2, 1e-3
    t.log_interval, t.eval_interval, t.save_interval, t.mixed_precision = 1, 4, 3, False
    t.peak_flops = 1e11  # skip measuring the peak (test_run_files_and_metrics measures it)
    for k, v in training.items():
        setattr(t, k, v)
    return cfg


def eval_batches(seed: int = 1, n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    sampler = RandomBatches(tokens(2000, seed=seed), 4, T, seed=seed)
    return [next(sampler) for _ in range(n)]


class SignalAfter:
    """A sampler that sends ``sig`` to this process when batch ``n`` is drawn (then behaves normally)."""

    def __init__(self, inner: RandomBatches, n: int, sig: int) -> None:
        self.inner, self.n, self.sig, self.drawn = inner, n, sig, 0

    def __iter__(self) -> SignalAfter:
        return self

    def __next__(self):
        self.drawn += 1
        if self.drawn == self.n:
            os.kill(os.getpid(), self.sig)
        return next(self.inner)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize(
    ("precision", "sig", "log_interval", "stop_step"),
    [(False, signal.SIGINT, 1, 3), ("bf16", signal.SIGTERM, 3, 4)],
)
@pytest.mark.parametrize(("arch", "optimizer"), [("gpt2", "adamw"), ("nanochat", "muon")])
def test_resume_after_signal_is_bitwise_identical(
    tmp_path: Path, precision, sig, log_interval, stop_step, arch: str, optimizer: str
) -> None:
    """Stop a run with a signal, resume it: logged losses and final weights equal an unbroken run's (also
    when it stops between two log lines, whose logged loss averages steps from both sides of the stop), for
    both recipes (AdamW's and Muon's states are saved)."""
    cfg = config(mixed_precision=precision, gradient_accumulation_steps=2, log_interval=log_interval)
    cfg.model.arch, cfg.training.optimizer = arch, optimizer
    data = tokens()

    def sampler() -> RandomBatches:
        return RandomBatches(data, 4, T, seed=7)

    full = tmp_path / "full"
    Trainer(tiny_model(dropout=0.1, arch=arch), None, cfg, "cpu", run_dir=full).train(
        sampler(), eval_batches()
    )

    broken = tmp_path / "broken"
    with pytest.raises(TrainingInterrupted) as info:
        # the signal comes during the first micro-batch of step `stop_step` (two per step): that step
        # finishes, then it saves and stops
        Trainer(tiny_model(dropout=0.1, arch=arch), None, cfg, "cpu", run_dir=broken).train(
            SignalAfter(sampler(), 2 * stop_step - 1, sig), eval_batches()
        )
    assert info.value.signum == sig and info.value.step == stop_step
    assert find_latest(broken / "checkpoints").step == stop_step
    assert len(losses(broken)) == stop_step // log_interval
    # a different init: every weight must come from the checkpoint
    result = Trainer(tiny_model(seed=99, dropout=0.1, arch=arch), None, cfg, "cpu", run_dir=broken).train(
        sampler(), eval_batches(), resume=True
    )
    assert result["resumed"] and result["step"] == cfg.training.max_steps

    assert losses(broken) == losses(full)  # exact float equality
    assert len(losses(full)) == len(range(log_interval, 9, log_interval)) + (8 % log_interval > 0)
    a = (full / "checkpoints/last/model.safetensors").read_bytes()
    b = (broken / "checkpoints/last/model.safetensors").read_bytes()
    assert a == b
    sa, sb = (load_trainer_state(d / "checkpoints/last") for d in (full, broken))
    assert sa["best_val_loss"] == sb["best_val_loss"]

    def tensors(state: object) -> list[torch.Tensor]:  # every tensor of an optimizer state, in order
        if isinstance(state, torch.Tensor):
            return [state]
        if isinstance(state, dict):
            return [t for k in sorted(state, key=str) for t in tensors(state[k])]
        if isinstance(state, (list, tuple)):
            return [t for v in state for t in tensors(v)]
        return []

    ta, tb = tensors(sa["optimizer"]), tensors(sb["optimizer"])
    assert len(ta) == len(tb) > 0 and all(torch.equal(x, y) for x, y in zip(ta, tb, strict=True))


def test_resume_skips_an_unreadable_checkpoint(tmp_path: Path) -> None:
    """A corrupt newest checkpoint is skipped for the next older one, and the run still ends bit-identical."""
    cfg = config(save_interval=3, eval_interval=100)
    data = tokens()
    Trainer(tiny_model(), None, cfg, "cpu", run_dir=tmp_path).train(RandomBatches(data, 4, T, seed=7))
    final = (tmp_path / "checkpoints/last/model.safetensors").read_bytes()
    state = tmp_path / "checkpoints/last/trainer_state.pt"
    state.write_bytes(b"\x00" * state.stat().st_size)  # same size: only loading can tell
    result = Trainer(tiny_model(seed=5), None, cfg, "cpu", run_dir=tmp_path).train(
        RandomBatches(data, 4, T, seed=7), resume=True
    )
    assert result["step"] == 8 and result["resumed"]
    assert len(losses(tmp_path)) == 8
    assert (tmp_path / "checkpoints/last/model.safetensors").read_bytes() == final
    assert load_trainer_state(tmp_path / "checkpoints/last")["step"] == 8  # rewritten whole
    # the one it could not load is kept aside, untouched, not replaced
    damaged = tmp_path / "checkpoints/damaged-last/trainer_state.pt"
    assert damaged.read_bytes() == b"\x00" * damaged.stat().st_size

    other = config()
    other.model.num_layers = 1
    with pytest.raises(CheckpointError, match=r"another model config \(model.num_layers: 2 there, 1 here\)"):
        Trainer(tiny_gpt(**{**SHAPE, "num_layers": 1}), None, other, "cpu", run_dir=tmp_path).train(
            RandomBatches(data, 4, T, seed=7), resume=True
        )


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def damage_truncate(path: Path) -> None:
    f = path / "trainer_state.pt"
    f.write_bytes(f.read_bytes()[:100])  # sizes no longer match COMPLETE: not even a candidate


def damage_same_size(path: Path) -> None:
    f = path / "trainer_state.pt"
    f.write_bytes(b"\x00" * f.stat().st_size)  # complete by size: only loading can tell


def damage_nan_weights(path: Path) -> None:
    model = GPT.from_pretrained(path)
    with torch.no_grad():
        model.transformer.h[1].attn.c_proj.weight[0, 0] = float("nan")
    model.save_pretrained(path)
    record = json.loads((path / "COMPLETE").read_text())  # complete again: only loading can tell
    record["files"] = {n: (path / n).stat().st_size for n in record["files"]}
    (path / "COMPLETE").write_text(json.dumps(record))


@pytest.mark.parametrize("damage", [damage_truncate, damage_same_size, damage_nan_weights])
def test_resume_refuses_when_no_checkpoint_loads(tmp_path: Path, damage) -> None:
    """Asked to resume a run none of whose checkpoints loads, the Trainer refuses naming each, and changes
    nothing: every file that existed is byte-identical after, and no checkpoint is added."""
    cfg = config(save_interval=3, eval_interval=4)
    data = tokens()
    Trainer(tiny_model(), None, cfg, "cpu", run_dir=tmp_path).train(
        RandomBatches(data, 4, T, seed=7), eval_batches()
    )
    root = tmp_path / "checkpoints"
    names = sorted(p.name for p in root.iterdir())
    assert names == ["best", "last", "step_000003", "step_000006"]
    for name in names:
        damage(root / name)
    before = file_hashes(tmp_path)
    with pytest.raises(CheckpointError) as e:
        Trainer(tiny_model(seed=5), None, cfg, "cpu", run_dir=tmp_path).train(
            RandomBatches(data, 4, T, seed=7), eval_batches(), resume=True
        )
    msg = str(e.value)
    assert "\n" not in msg and "no checkpoint in" in msg and "nothing was changed" in msg and "--out" in msg
    for name in names:
        assert f"{name}: " in msg
    if damage is damage_nan_weights:
        assert "tensor transformer.h.1.attn.c_proj.weight holds 1 non-finite values" in msg
    assert file_hashes(tmp_path) == before


def test_resume_falls_back_past_non_finite_weights_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """NaN weights in the newest checkpoints: resume warns naming each skipped, continues from the newest good
    one (not 'the training loss became nan'), and keeps the skipped ones aside untouched."""
    cfg = config(save_interval=3, eval_interval=100)
    data = tokens()
    Trainer(tiny_model(), None, cfg, "cpu", run_dir=tmp_path).train(RandomBatches(data, 4, T, seed=7))
    root = tmp_path / "checkpoints"
    final = (root / "last/model.safetensors").read_bytes()
    damage_nan_weights(root / "last")
    damage_truncate(root / "step_000006")
    kept = {name: file_hashes(root / name) for name in ("last", "step_000006")}
    with caplog.at_level(logging.INFO, logger="gptrs"):
        result = Trainer(tiny_model(seed=5), None, cfg, "cpu", run_dir=tmp_path).train(
            RandomBatches(data, 4, T, seed=7), resume=True
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("step_000006" in w and "does not match" not in w for w in warnings), warnings
    assert any("checkpoints/last" in w and "non-finite" in w for w in warnings), warnings
    assert any("resumed from" in w and "step_000003" in w for w in warnings), warnings
    assert result["step"] == 8 and result["resumed"]
    assert (root / "last/model.safetensors").read_bytes() == final  # re-trained from step 3: bit-identical
    for name, hashes in kept.items():
        assert file_hashes(root / f"damaged-{name}") == hashes


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    """k micro-batches of b rows == one batch of k*b rows (same rows), up to float rounding."""
    g = torch.Generator().manual_seed(3)
    big = []
    for _ in range(4):
        w = torch.from_numpy(tokens(2000, seed=5).astype(np.int64))
        starts = torch.randint(0, len(w) - T - 1, (8,), generator=g)
        win = torch.stack([w[s : s + T + 1] for s in starts.tolist()])
        big.append((win[:, :-1], win[:, 1:]))
    small = [(x[i : i + 2], y[i : i + 2]) for x, y in big for i in range(0, 8, 2)]

    runs = {}
    for name, loader, accum in (("big", big, 1), ("small", small, 4)):
        cfg = config(max_steps=4, gradient_accumulation_steps=accum, eval_interval=100)
        cfg.training.batch_size = 8 // accum
        model = tiny_model()
        result = Trainer(model, None, cfg, "cpu").train(loader)
        runs[name] = (model, result)
    (m1, r1), (m2, r2) = runs["big"], runs["small"]
    assert r1["step"] == r2["step"] == 4
    assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters(), strict=True):
        if n.endswith("attn.c_attn.bias"):
            # The key bias adds the same score to every key of a query, which softmax cancels: its true
            # gradient is 0, the computed one rounding noise, and Adam turns any noise into full-size steps.
            p1, p2 = torch.cat([p1[:D], p1[2 * D :]]), torch.cat([p2[:D], p2[2 * D :]])
        torch.testing.assert_close(p1, p2, rtol=1e-3, atol=1e-4, msg=n)  # an lr-sized (1e-2) step would show
    assert not torch.equal(m1.lm_head.weight, tiny_model().lm_head.weight)  # it did train


def test_early_stopping_stops_after_patience(tmp_path: Path) -> None:
    """Train on t -> t+1, validate on t -> t-1: validation soon gets worse at every evaluation."""
    up = np.arange(3000) % V
    down = (-np.arange(1000)) % V
    cfg = config(max_steps=50, eval_interval=1, early_stopping_patience=2, learning_rate=2e-2, warmup_steps=1)
    val = RandomBatches(down, 4, T, seed=1)
    val_batches = [next(val) for _ in range(2)]
    result = Trainer(tiny_model(), None, cfg, "cpu", run_dir=tmp_path).train(
        RandomBatches(up, 4, T, seed=0), val_batches
    )
    evals = [r["val_loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert result["stop_reason"] == "early_stopping"
    assert result["step"] == len(evals) < 10  # stopped long before max_steps
    best = int(np.argmin(evals))
    assert len(evals) - 1 - best == 2  # exactly `patience` evaluations without improvement, then stop
    assert all(v >= evals[best] for v in evals[best + 1 :])
    assert result["best_val_loss"] == evals[best]
    assert load_trainer_state(tmp_path / "checkpoints/best")["step"] == best + 1
    assert load_trainer_state(tmp_path / "checkpoints/last")["step"] == len(evals)


def test_run_files_and_metrics(tmp_path: Path) -> None:
    cfg = config(max_steps=7, save_interval=2, keep_last=2, eval_interval=3, log_interval=2, peak_flops=None)
    Trainer(tiny_model(), None, cfg, "cpu", run_dir=tmp_path).train(
        RandomBatches(tokens(), 4, T, seed=0), eval_batches(), bytes_per_token=2.5
    )
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best", "last", "step_000004", "step_000006"]  # step_000002 pruned (keep_last=2)
    for name in names:
        files = sorted(p.name for p in (tmp_path / "checkpoints" / name).iterdir())
        assert files == ["COMPLETE", "config.yaml", "model.json", "model.safetensors", "trainer_state.pt"]
    records = read_metrics(tmp_path / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4, 6, 7]
    assert [r["step"] for r in evals] == [3, 6, 7]
    for r in train:
        assert {
            "loss",
            "ppl",
            "lr",
            "grad_norm",
            "tokens_per_sec",
            "mfu",
            "step_time_ms",
            "memory_mb",
        } <= set(r)
        assert r["ppl"] == pytest.approx(math.exp(r["loss"]))
        assert 0 < r["mfu"] < 1 and r["tokens_per_sec"] > 0 and r["memory_mb"] > 0
    for r in evals:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2) / 2.5)
    assert train[-1]["lr"] < train[0]["lr"]  # cosine decay
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # each line is one JSON object
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)


class BigramModel(nn.Module):
    """A user's own model: anything returning (logits, loss) from (inputs, targets) trains."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(V, V)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        logits = self.table(x)
        loss = None if y is None else nn.functional.cross_entropy(logits.view(-1, V), y.reshape(-1))
        return logits, loss


def test_user_model_and_torch_dataloader(caplog: pytest.LogCaptureFixture) -> None:
    """The custom-dataset path: a torch DataLoader over a TensorDataset, a plain nn.Module, no run dir. The
    log reports the loader's 16 sequences a batch, not the config's 4."""
    w = torch.from_numpy(tokens(3400).astype(np.int64))[: 200 * (T + 1)].view(200, T + 1)
    ds = torch.utils.data.TensorDataset(w[:, :-1], w[:, 1:])
    train = torch.utils.data.DataLoader(
        ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = torch.utils.data.DataLoader(ds, batch_size=50)
    torch.manual_seed(0)
    model = BigramModel()
    cfg = config(max_steps=30, eval_interval=15, warmup_steps=3, learning_rate=0.1)
    before = Trainer(model, None, cfg, "cpu").evaluate(val)["val_loss"]
    assert cfg.training.batch_size == 4
    with caplog.at_level(logging.INFO, logger="gptrs"):
        result = Trainer(model, None, cfg, "cpu").train(train, val)
    assert any(
        ": 30 steps of 16 sequences (1 micro-batch of 16 per process)" in r.getMessage()
        for r in caplog.records
    )
    assert result["step"] == 30  # more steps than one pass (13 batches): the loader restarts
    assert result["val_loss"] < before - 0.5


def test_epochs_and_exhausted_data() -> None:
    batches = eval_batches(seed=3, n=5)
    cfg = config(max_steps=100, epochs=2, eval_interval=100)
    cfg.data.sampling = "epochs"  # epochs over a user loader: its length is one pass
    assert Trainer(tiny_model(), None, cfg, "cpu").train(batches)["step"] == 10
    # a one-shot generator runs out: training stops there
    cfg = config(max_steps=100, eval_interval=100)
    result = Trainer(tiny_model(), None, cfg, "cpu").train(b for b in batches)
    assert result["step"] == 5 and result["stop_reason"] == "data_exhausted"
    with pytest.raises(DataError, match="no batches"):
        Trainer(tiny_model(), None, cfg, "cpu").train([])


@pytest.mark.parametrize("native_bf16", [False, True])
def test_precision_choice(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """Both CPU kinds are tried on every machine: AVX2-only (fp32) and native bf16 (AVX512-BF16 / AMX)."""
    from gptrs.training import muon, precision

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native_bf16)
    monkeypatch.setattr(muon, "_native_cpu_bf16", lambda: native_bf16)
    assert resolve_precision(False, "cpu").name == "fp32"
    assert resolve_precision("bf16", "cpu").name == "bf16"
    assert resolve_precision(True, "cpu").name == ("bf16" if native_bf16 else "fp32")
    ns = muon.Muon([torch.nn.Parameter(torch.zeros(2, 2))]).ns_dtype(torch.device("cpu"))
    assert ns == (torch.bfloat16 if native_bf16 else torch.float32)
    assert resolve_precision(True, "cpu").make_scaler() is None
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="expected false, bf16, fp16 or true"):
        resolve_precision("fp8", "cpu")
    with resolve_precision("bf16", "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with resolve_precision(False, "cpu").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
