"""The recipe race's bookkeeping: arms and their configs, mean and spread over seeds, time-to-target and
equal-time interpolation, the goals, and bad arms on the command line.

The race itself (the Trainer on held-out books, two processes) runs in ``python -m benches all --quick``
(tests/test_benches.py); nothing timed is asserted here.
"""

from __future__ import annotations

import statistics

import pytest
from benches import __main__ as benches_main
from benches.bench_recipe import (
    DEFAULT_ARMS,
    QUICK,
    Arm,
    arm_config,
    base_config,
    bpb_at,
    mean_curve,
    summarize,
    time_to_reach,
)
from hypothesis import given
from hypothesis import strategies as st

from gptrs.config import load_config

NAMES = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
VALUES = st.one_of(st.integers(1, 4096).map(str), st.sampled_from(["0.02", "null", "true", "[1, 2]", "a b"]))


@given(
    name=NAMES, keys=st.lists(st.sampled_from(["model.embed_dim", "training.muon_lr"]), max_size=3), v=VALUES
)
def test_an_arm_spec_parses_back_to_the_same_arm(name: str, keys: list[str], v: str) -> None:
    arm = Arm(name, "nanochat-small", tuple(f"{k}={v}" for k in keys))
    assert Arm.parse(arm.spec()) == arm


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nanochat", "expected NAME=PRESET"),
        ("=small", "expected NAME=PRESET"),
        ("a=small data.validation_split=0.5", "not a model.* or training.*"),
        ("a=small tokenizer.vocab_size=300", "not a model.* or training.*"),
        ("a=small model.embed_dim", "not a model.* or training.*"),
    ],
)
def test_bad_arms_are_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Arm.parse(spec)


def test_every_arm_and_seed_shares_the_race_data_and_tokenizer() -> None:
    """Arms differ in model and training only; the seed moves init and batch order, never the split."""
    base = base_config(QUICK)
    wide = Arm.parse("wide=nanochat-small model.embed_dim=160 model.heads=5 training.muon_lr=0.03")
    for arm in (*DEFAULT_ARMS, wide):
        preset = load_config(arm.preset)
        for seed in (1337, 1338):
            cfg = arm_config(arm, QUICK, seed)
            assert cfg.data == base.data and cfg.tokenizer == base.tokenizer
            assert cfg.training.seed == seed and cfg.training.max_steps == QUICK.steps
            assert cfg.training.eval_interval == QUICK.eval_every
            assert cfg.model.arch == preset.model.arch
            assert cfg.training.optimizer == preset.training.optimizer
            assert cfg.training.sample_tokens == 0
    cfg = arm_config(wide, QUICK, 0)
    assert (cfg.model.embed_dim, cfg.model.heads, cfg.training.muon_lr) == (160, 5, 0.03)
    # the small preset's 100 warmup steps shrink to fit a 24-step run, as `gptrs.train --max-steps` does
    assert arm_config(DEFAULT_ARMS[0], QUICK, 0).training.warmup_steps == QUICK.steps // 10
    assert base.data.max_eval_tokens == QUICK.eval_tokens


def _run(points: list[tuple[int, float, float]]) -> dict:
    return {"curve": [{"step": s, "train_s": t, "bpb": b} for s, t, b in points]}


def test_mean_curve_is_the_mean_and_spread_over_seeds_at_common_steps() -> None:
    runs = [
        _run([(10, 5.0, 3.0), (20, 10.0, 2.5), (30, 15.0, 2.0)]),
        _run([(10, 7.0, 3.2), (20, 12.0, 2.7)]),  # stopped early (a time budget): step 30 is not common
        _run([(10, 6.0, 3.4), (20, 14.0, 2.6), (30, 20.0, 2.1)]),
    ]
    c = mean_curve(runs)
    assert [pt["step"] for pt in c] == [10, 20]
    assert c[1]["bpb"] == pytest.approx((2.5 + 2.7 + 2.6) / 3)
    assert c[1]["train_s"] == pytest.approx(12.0)
    assert c[0]["bpb_spread"]["std"] == pytest.approx(statistics.stdev([3.0, 3.2, 3.4]))
    assert (c[0]["bpb_spread"]["min"], c[0]["bpb_spread"]["max"]) == (3.0, 3.4)
    assert mean_curve(runs[:1])[0]["bpb_spread"]["std"] == 0.0


def _curve(points: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"train_s": t, "bpb": b} for t, b in points]


def test_time_to_reach_and_bpb_at_interpolate() -> None:
    curve = _curve([(10, 4.0), (30, 3.0), (60, 2.0)])
    assert time_to_reach(curve, 2.5) == pytest.approx(45.0)
    assert time_to_reach(curve, 3.0) == pytest.approx(30.0)
    assert time_to_reach(curve, 5.0) == 10.0
    assert time_to_reach(curve, 1.0) is None
    assert bpb_at(curve, 45.0) == pytest.approx(2.5)
    assert bpb_at(curve, 60.0) == pytest.approx(2.0)
    assert bpb_at(curve, 61.0) is None and bpb_at(curve, 5.0) is None


def _race(base: list[tuple[int, float, float]], challenger: list[tuple[int, float, float]]) -> dict:
    return {
        "baseline": "gpt2",
        "arms": {"gpt2": {"runs": [_run(base)]}, "nanochat": {"runs": [_run(challenger)]}},
    }


def test_summarize_against_the_baseline() -> None:
    out = summarize(
        _race([(1, 0, 4.0), (2, 60, 2.0)], [(1, 0, 4.0), (2, 20, 2.5), (3, 30, 2.0), (4, 60, 1.8)])
    )
    v = out["arms"]["nanochat"]["vs_baseline"]
    assert v["time_to_baseline_final_s"] == pytest.approx(30.0) and v["time_fraction"] == pytest.approx(0.5)
    assert v["bpb_at_baseline_time"] == pytest.approx(1.8) and v["gain_at_equal_time"] == pytest.approx(0.1)
    assert all(out["goals"].values()) and len(out["goals"]) == 2
    slower = summarize(_race([(1, 0, 4.0), (2, 60, 2.0)], [(1, 0, 4.0), (2, 40, 2.0), (3, 60, 1.95)]))
    assert not any(slower["goals"].values())
    # a challenger that finishes sooner is scored by its final loss at the baseline's time
    sooner = summarize(_race([(1, 0, 4.0), (2, 60, 2.0)], [(1, 0, 4.0), (2, 40, 1.9)]))
    assert sooner["arms"]["nanochat"]["vs_baseline"]["bpb_at_baseline_time"] == pytest.approx(1.9)


def test_bad_arms_on_the_command_line_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Through `python -m benches recipe ...` (options after the suite go to its main), before any work."""
    assert benches_main.main(["recipe", "--arm", "a=small data.source=hub"]) == 2
    assert benches_main.main(["recipe", "--arm", "a=no-such-preset"]) == 2
    assert benches_main.main(["recipe", "--arm", "a=small model.num_layers=0"]) == 2
    assert benches_main.main(["recipe", "--arm", "a=small", "--arm", "a=nanochat-small"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("bench_recipe: ") for line in err), err
    assert "data.source" in err[0] and "no-such-preset" in err[1] and "num_layers" in err[2]
    with pytest.raises(SystemExit):  # a suite without options of its own: argparse says so
        benches_main.main(["train", "--no-such-option"])
