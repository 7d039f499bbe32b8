"""training/compile.py: when the trainer compiles the model, and that an evaluation's (and a checkpoint's)
wall time is not counted as the next training step's (the step after each evaluation looked 4x slow)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_gpt
from gptrs.config import Config
from gptrs.data import RandomBatches
from gptrs.training import Trainer
from gptrs.training import compile as compile_policy
from gptrs.training import trainer as trainer_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        (None, "cuda", True),
        (None, "cpu", False),
        (None, "mps", False),
        (False, "cuda", False),
        (True, "cpu", True),
        (True, "cuda", True),
    ],
)
def test_compile_by_default_on_cuda_only(setting: bool | None, device: str, expected: bool) -> None:
    assert compile_policy.should_compile(setting, torch.device(device)) is expected


def test_default_config_leaves_it_to_the_device() -> None:
    assert Config().model.compile is None


def test_compiling_is_logged(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # the decision and the message only
    with caplog.at_level(logging.INFO, logger="gptrs.train"):
        compile_policy.compile_model(torch.nn.Linear(2, 2), logging.getLogger("gptrs.train"))
    assert compile_policy.COMPILE_MESSAGE in caplog.text


def test_evaluation_time_is_not_counted_as_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock that only moves during evaluation (100 s each): every logged step time stays ~0, and so
    does the training time the on_step hook and the time budget see (the budget of 50 s never runs out)."""
    clock = [1000.0]
    monkeypatch.setattr(compile_policy.time, "perf_counter", lambda: clock[0])
    real_eval = trainer_module.Trainer._evaluate_and_track

    def slow_eval(self: Trainer, run: object) -> bool:
        clock[0] += 100.0
        return real_eval(self, run)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module.Trainer, "_evaluate_and_track", slow_eval)
    cfg = Config()
    m = cfg.model
    m.embed_dim, m.ff_dim, m.num_layers, m.heads, m.max_seq_len = 32, 64, 2, 2, 16
    t = cfg.training
    t.batch_size, t.max_steps, t.warmup_steps, t.mixed_precision = 4, 6, 1, False
    t.log_interval, t.eval_interval, t.save_interval, t.peak_flops = 1, 2, 100, 1e11
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 48, 3000).astype(np.uint16)
    val = RandomBatches(stream, 4, 16, seed=1)
    model = tiny_gpt(0, vocab_size=48, embed_dim=32, ff_dim=64, num_layers=2, heads=2, max_seq_len=16)
    trainer = Trainer(model, None, cfg, "cpu", run_dir=tmp_path)
    seen: list[float] = []
    result = trainer.train(
        RandomBatches(stream, 4, 16, seed=0),
        [next(val) for _ in range(2)],
        on_step=lambda info: seen.append(info["train_s"]),
        time_budget_s=50.0,
    )
    steps = [r for r in trainer.history if r.get("kind") == "train"]
    assert len(steps) == 6 and sum(r.get("kind") == "eval" for r in trainer.history) >= 3
    assert all(r["step_time_ms"] < 1.0 for r in steps), [r["step_time_ms"] for r in steps]
    assert clock[0] >= 1300.0 and seen == [0.0] * 6  # 300+ s of evaluations, none of it training time
    assert result["stop_reason"] == "max_steps" and result["train_s"] == 0.0


def test_no_recompilation_after_the_first_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled training with evaluations in between: the training graph and the eval graph are each made
    once; the steps after later evaluations find theirs again (dynamo's counters; the "eager" backend
    traces as Inductor would, without generating code)."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    seen: list[int] = []
    real_eval = trainer_module.Trainer._evaluate_and_track

    def counting_eval(self: Trainer, run: object) -> bool:
        seen.append(sum(counters["stats"].values()))
        return real_eval(self, run)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module.Trainer, "_evaluate_and_track", counting_eval)
    cfg = Config()
    m = cfg.model
    m.embed_dim, m.ff_dim, m.num_layers, m.heads, m.max_seq_len, m.compile = 32, 64, 2, 2, 16, True
    t = cfg.training
    t.batch_size, t.max_steps, t.warmup_steps, t.mixed_precision = 4, 8, 1, False
    t.log_interval, t.eval_interval, t.save_interval, t.peak_flops = 2, 2, 100, 1e11
    stream = np.random.default_rng(0).integers(0, 48, 3000).astype(np.uint16)
    val = RandomBatches(stream, 4, 16, seed=1)
    model = tiny_gpt(0, vocab_size=48, embed_dim=32, ff_dim=64, num_layers=2, heads=2, max_seq_len=16)
    try:
        Trainer(model, None, cfg, "cpu", run_dir=tmp_path).train(
            RandomBatches(stream, 4, 16, seed=0), [next(val) for _ in range(2)]
        )
        final = sum(counters["stats"].values())
    finally:
        torch._dynamo.reset()
    assert len(seen) == 4
    assert seen[0] > 0  # the training graph was compiled
    assert seen[2] == seen[1] and final == seen[1], (seen, final)  # nothing new after the first eval
