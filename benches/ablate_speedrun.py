"""Speedrun switches, ablated: nanochat-small alone, with each switch of docs/speedrun.md, and all together.

Two measurements, both on one thread per process:

- ``cost``: the per-step cost of each switch. One process builds every arm (model + the trainer's
  optimizer) and times training steps (forward, backward, clip, optimizer step; the trainer's precision) in
  turns, the order reversed every round; medians and the median of the per-round ratios to the baseline.
- ``race``: each arm trained through ``gptrs.training.Trainer`` for ``--steps`` steps on the books corpus
  (``../shared/corpora/books``; the held-out split is whole books, as ``gptrs.data.prepare_data`` splits
  documents), two arms at a time in two processes, for each seed; then held-out bits/byte on the fixed
  evaluation windows and the wall time of ``Trainer.train``.

    python benches/ablate_speedrun.py cost [--rounds 12]
    python benches/ablate_speedrun.py parts [--rounds 12]    (forward+backward and optimizer step apart)
    python benches/ablate_speedrun.py race [--steps 300] [--seeds 1 2] [--arms base ve ...] [--key race]

Results: ``benches/results/speedrun_ablation.json`` (each mode its own key).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from benches.bench_recipe import EVAL_TOKENS, prepare, small_config
from gptrs.config import Config, apply_overrides, load_config

# Each arm: overrides on top of the nanochat-small preset (3 layers x 128, context 256, 16 x 256 batches).
ARMS: dict[str, list[str]] = {
    "base": [],
    "value_embeds": ["model.value_embeds=1"],
    "skips+x0": ["model.skip_connections=true", "model.x0_mix=true"],
    "windows": ["model.window_pattern=SSL", "model.short_window=64"],
    "polar_express": ["training.muon_ns=polar_express"],
    "normuon": ["training.normuon=true"],
}
ARMS["all"] = [o for k, v in ARMS.items() if k != "base" for o in v]
RESULTS = common.results_dir() / "speedrun_ablation.json"
DATA_SEED = 1337  # the held-out books and the tokenizer stay those of this seed (bench_recipe's cache); seeds vary init and batches


def data_bundle() -> Any:
    return prepare(arm_config("base", 10, DATA_SEED), log=lambda m: None)


def arm_config(name: str, steps: int, seed: int) -> Config:
    """nanochat-small with the arm's switches, on the books corpus, ``steps`` steps, evaluated once."""
    data = small_config()  # the bench's data section: books when present, EVAL_TOKENS held-out targets
    cfg = load_config("nanochat-small")
    cfg = replace(cfg, data=data.data, tokenizer=data.tokenizer)
    return apply_overrides(
        cfg,
        [
            f"training.max_steps={steps}",
            f"training.seed={seed}",
            f"training.eval_interval={steps}",
            f"training.save_interval={steps}",
            f"training.log_interval={max(1, steps // 5)}",
            "training.sample_tokens=0",
            "training.peak_flops=1e11",  # skip measuring the peak (MFU is not reported here)
            f"data.max_eval_tokens={EVAL_TOKENS}",
            *ARMS[name],
        ],
    )


def _build(cfg: Config, vocab: int) -> torch.nn.Module:
    from gptrs.model import build_model

    torch.manual_seed(cfg.training.seed)
    return build_model(cfg, vocab_size=vocab)


# ----------------------------------------------------------------------------------------------- cost


def cost(rounds: int) -> dict[str, Any]:
    from gptrs.data import RandomBatches
    from gptrs.training.optim import build_optimizer
    from gptrs.training.precision import resolve_precision

    torch.set_num_threads(1)
    bundle = data_bundle()
    vocab = bundle.tokenizer.get_vocab_size()
    steps: dict[str, Any] = {}
    for name in ARMS:
        cfg = arm_config(name, 10, 0)
        model = _build(cfg, vocab).train()
        opt = build_optimizer(model, cfg.training, torch.device("cpu"))
        batches = iter(RandomBatches(bundle.train_tokens, 16, cfg.model.max_seq_len, seed=0))
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
    times = common.alternate(steps, rounds)
    base = times["base"]
    out = {
        name: {
            "median_s": round(common.median(t), 4),
            "ratio_to_base": round(common.paired_ratio(t, base), 3),
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


# ----------------------------------------------------------------------------------------------- race


def _load() -> float:
    import os

    return os.getloadavg()[0]


def _train_arm(args: tuple[str, int, int]) -> dict[str, Any]:
    """One arm, one seed, in its own process on one thread: Trainer.train, then held-out bits/byte."""
    name, steps, seed = args
    torch.set_num_threads(1)
    from gptrs.training import Trainer

    cfg = arm_config(name, steps, seed)
    bundle = data_bundle()
    vocab = bundle.tokenizer.get_vocab_size()
    model = _build(cfg, vocab)
    with tempfile.TemporaryDirectory() as run_dir:
        from gptrs.data import RandomBatches

        trainer = Trainer(model, bundle.tokenizer, cfg, "cpu", run_dir=run_dir, log_level="WARNING")
        sampler = RandomBatches(
            bundle.train_tokens, cfg.training.batch_size, cfg.model.max_seq_len, seed=seed
        )
        t0 = time.perf_counter()
        trainer.train(sampler, bundle.val)
        wall = time.perf_counter() - t0
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for x, y in bundle.val:
            _, loss = model(x, y)
            total += float(loss) * y.numel()
            n += y.numel()
    val_loss = total / n
    bpb = val_loss / math.log(2) / float(bundle.stats["val_bytes_per_token"])
    row = {"arm": name, "seed": seed, "steps": steps, "wall_s": round(wall, 1), "val_loss": round(val_loss, 4),
           "bpb": round(bpb, 4), "params": sum(p.numel() for p in model.parameters()), "load": round(_load(), 2)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def race(steps: int, seeds: list[int], arms: list[str], processes: int) -> dict[str, Any]:
    data_bundle()  # tokenizer + token cache once, before the workers
    jobs = [(a, steps, s) for s in seeds for a in arms]
    with mp.get_context("spawn").Pool(processes) as pool:
        rows = pool.map(_train_arm, jobs, chunksize=1)
    return {"steps": steps, "processes": processes, "threads": 1, "runs": rows}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: mean and spread (max - min) of held-out bits/byte over seeds, mean wall seconds."""
    summary = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        bpb = [r["bpb"] for r in mine]
        wall = [r["wall_s"] for r in mine]
        summary[arm] = {
            "seeds": [r["seed"] for r in mine],
            "bpb_mean": round(sum(bpb) / len(bpb), 4),
            "bpb_spread": round(max(bpb) - min(bpb), 4),
            "wall_s_mean": round(sum(wall) / len(wall), 1),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("cost", "parts", "race"))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--key", default=None, help="results key (default: the mode), e.g. a race at other steps")
    a = p.parse_args(argv)
    if a.mode == "race":
        out = race(a.steps, a.seeds, a.arms, a.processes)
    else:
        out = cost(a.rounds) if a.mode == "cost" else parts(a.rounds)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    commands = [" ".join(sys.argv)]
    key = a.key or a.mode
    earlier = results.get(key, {})
    if a.mode == "race" and earlier.get("steps") == a.steps:  # more seeds or arms for the same race: merge
        fresh = {(r["arm"], r["seed"]) for r in out["runs"]}
        out["runs"] = [r for r in earlier["runs"] if (r["arm"], r["seed"]) not in fresh] + out["runs"]
        commands = earlier.get("commands", []) + commands
    if a.mode == "race":
        out["summary"] = summarize(out["runs"])
    results[key] = {**out, "machine": common.machine_info(), "commands": commands}
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(out["summary"] if a.mode == "race" else out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
