"""Speedrun switches, ablated: nanochat-small alone, with each switch of docs/speedrun.md, and all together.

Two measurements, both on one thread per process:

- ``cost``: the per-step cost of each switch. One process builds every arm (model + the trainer's
  optimizer) and times training steps (forward, backward, clip, optimizer step; the trainer's precision) in
  turns, the order reversed every round; medians and the median of the per-round ratios to the baseline.
- ``race``: the arms raced by the one race runner, ``benches/bench_recipe.py`` (the Trainer, held-out whole
  books, seeds, two runs side by side on one thread each, mean and spread of bits/byte against training
  time): this mode only names the arms for it.

    python benches/ablate_speedrun.py cost [--rounds 12] [--arms base bigram batch32 speedrun]
    python benches/ablate_speedrun.py parts [--rounds 12]    (forward+backward and optimizer step apart)
    python benches/ablate_speedrun.py race [--arms base all ...] [bench_recipe options: --steps, --seeds ...]

Results: ``benches/results/speedrun_ablation.json`` (cost, parts; the earlier ``race`` key was measured by a
runner of this file before the race moved to bench_recipe) and bench_recipe's own results file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import bench_recipe, common
from gptrs.config import Config

# Each arm: overrides on top of the nanochat-small preset (3 layers x 128, context 256, 16 x 256 batches).
ARMS: dict[str, list[str]] = {
    "base": [],
    "value_embeds": ["model.value_embeds=1"],
    "skips+x0": ["model.skip_connections=true", "model.x0_mix=true"],
    "windows": ["model.window_pattern=SSL", "model.short_window=64"],
    "polar_express": ["training.muon_ns=polar_express"],
    "normuon": ["training.normuon=true"],
    "bigram": ["model.bigram_buckets=20480"],
    "warmdown": ["training.warmdown_ratio=0.5"],
    "batch_schedule": ["training.batch_size_schedule=[8,12,16]"],
}
ARMS["all"] = [
    o for k, v in ARMS.items() if k not in ("base", "bigram", "warmdown", "batch_schedule") for o in v
]
ARMS["batch32"] = ["training.batch_size=32", "training.max_steps=1000"]
# Every switch together with twice the batch for half the steps: the race's "speedrun" arm (docs/speedrun.md).
ARMS["speedrun"] = [
    *ARMS["batch32"],
    *(
        "model.value_embeds=1",
        "model.skip_connections=true",
        "model.x0_mix=true",
        "model.bigram_buckets=20480",
    ),
    *("training.normuon=true", "training.warmdown_ratio=0.5"),
]
RESULTS = common.results_dir() / "speedrun_ablation.json"
PRESET = "nanochat-small"


def data_bundle() -> Any:
    return bench_recipe.prepare(bench_recipe.Protocol(), quiet=True)


def arm(name: str) -> bench_recipe.Arm:
    return bench_recipe.Arm(name, PRESET, tuple(ARMS[name]))


def arm_config(name: str, steps: int, seed: int) -> Config:
    """nanochat-small with the arm's switches, on the race's data, ``steps`` steps (bench_recipe's rules)."""
    return bench_recipe.arm_config(arm(name), bench_recipe.Protocol(steps=steps), seed)


def _build(cfg: Config, vocab: int) -> torch.nn.Module:
    from gptrs.model import build_model

    torch.manual_seed(cfg.training.seed)
    return build_model(cfg, vocab_size=vocab)


# ----------------------------------------------------------------------------------------------- cost


def cost(rounds: int, arms: list[str]) -> dict[str, Any]:
    from gptrs.data import RandomBatches
    from gptrs.training.optim import build_optimizer
    from gptrs.training.precision import resolve_precision

    torch.set_num_threads(1)
    bundle = data_bundle()
    vocab = bundle.tokenizer.get_vocab_size()
    steps: dict[str, Any] = {}
    tokens: dict[str, int] = {}
    for name in ["base", *(a for a in arms if a != "base")]:
        cfg = arm_config(name, 10, 0)
        model = _build(cfg, vocab).train()
        opt = build_optimizer(model, cfg.training, torch.device("cpu"))
        rows = cfg.training.batch_size  # the arm's own batch (batch32, speedrun: 32 rows)
        batches = iter(RandomBatches(bundle.train_tokens, rows, cfg.model.max_seq_len, seed=0))
        precision = resolve_precision(cfg.training.mixed_precision, "cpu")
        params = [p for p in model.parameters() if p.requires_grad]

        def step(model=model, opt=opt, batches=batches, precision=precision, params=params) -> None:
            x, y = next(batches)
            with precision.autocast():
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(3):  # warm-up: kernel choices, optimizer state
            step()
        steps[name] = step
        tokens[name] = rows * cfg.model.max_seq_len
    times = common.alternate(steps, rounds)
    base = times["base"]
    out = {
        name: {
            "median_s": round(common.median(t), 4),
            "ratio_to_base": round(common.paired_ratio(t, base), 3),
            # per token: what matters when arms train the same tokens in different batches
            "per_token_ratio_to_base": round(common.paired_ratio(t, base) * tokens["base"] / tokens[name], 3),
        }
        for name, t in times.items()
    }
    return {"rounds": rounds, "threads": 1, "load": round(_load(), 2), "arms": out}


def parts(rounds: int) -> dict[str, Any]:
    """The two halves of a step timed apart (less noise than whole steps on a loaded machine): forward +
    backward for the model switches, the optimizer step alone (random gradients) for the Muon ones."""
    from gptrs.training.optim import build_optimizer
    from gptrs.training.precision import resolve_precision

    torch.set_num_threads(1)
    x = torch.randint(0, 4096, (16, 256), generator=torch.Generator().manual_seed(0))
    precision = resolve_precision(True, "cpu")
    fwd: dict[str, Any] = {}
    for name in ("base", "value_embeds", "skips+x0", "windows"):
        model = _build(arm_config(name, 10, 0), 4096).train()

        def f(model: torch.nn.Module = model) -> None:
            with precision.autocast():
                _, loss = model(x, x)
            loss.backward()
            model.zero_grad(set_to_none=True)

        f()
        fwd[name] = f
    opt: dict[str, Any] = {}
    for name in ("base", "polar_express", "normuon"):
        cfg = arm_config(name, 10, 0)
        model = _build(cfg, 4096)
        optimizer = build_optimizer(model, cfg.training, torch.device("cpu"))
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        optimizer.step()
        opt[name] = optimizer.step
    out: dict[str, Any] = {"rounds": rounds, "threads": 1}
    for part, fns, n in (("forward_backward", fwd, rounds), ("optimizer_step", opt, 4 * rounds)):
        times = common.alternate(fns, n)
        out[part] = {
            k: {
                "median_s": round(common.median(t), 4),
                "ratio_to_base": round(common.paired_ratio(t, times["base"]), 3),
            }
            for k, t in times.items()
        }
    out["load"] = round(_load(), 2)
    return out


def _load() -> float:
    import os

    return os.getloadavg()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("cost", "parts", "race"))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    a, rest = p.parse_known_args(argv)
    if a.mode == "race":  # the one race runner, with these arms
        specs = [w for name in a.arms for w in ("--arm", arm(name).spec())]
        return bench_recipe.main([*specs, *rest])
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    out = cost(a.rounds, a.arms) if a.mode == "cost" else parts(a.rounds)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    key = a.mode if a.arms == list(ARMS) or a.mode != "cost" else f"cost {' '.join(a.arms)}"
    results[key] = {**out, "machine": common.machine_info(), "commands": [" ".join(sys.argv)]}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
