"""The small sweep behind the presets' hyperparameters, on the recipe race's runner (``bench_recipe.py``).

Each setting is an arm of the race (a preset plus ``--set``-style overrides) trained by the ``Trainer`` for
``--steps`` optimizer steps (the preset's warmup + cosine schedule over that length) at the small size on the
race's data, scored by its held-out bits per byte at the end (and half-way). Settings are compared at equal
steps, i.e. equal tokens seen, so the shared machine's load changes how long a run takes but not its score;
the seconds are reported too, and matter only where the model shape changes (the ``arch`` rows).

Runs go ``--jobs`` at a time, one thread each, in separate processes. Stage 1 varies the learning rates one
at a time around the ``nanochat-small`` preset (the Muon rate; the AdamW rates of embedding and LM head
scaled together) and the ``small`` preset's AdamW rate; stage 2 takes stage 1's best and varies warmup, the
cosine's floor and (nanochat) the model shape. ``benches/results/recipe_sweep.json`` holds every run; the
winners are printed.

    python benches/sweep_recipe.py [--steps 120] [--jobs 2] [--stage 1|2|all]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from benches.bench_recipe import Arm, Protocol, mean_curve, race
from gptrs.config import load_config


def _scaled_adamw(preset: str, k: float) -> tuple[str, ...]:
    """The preset's AdamW peaks (and floor, so the cosine still ends at the same fraction) times ``k``."""
    t = load_config(preset).training
    out = [f"training.learning_rate={t.learning_rate * k:g}", f"training.min_lr={t.min_lr * k:g}"]
    if t.embedding_lr is not None:
        out.append(f"training.embedding_lr={t.embedding_lr * k:g}")
    return tuple(out)


def stage1() -> list[Arm]:
    nano, gpt = Arm("nanochat base", "nanochat-small"), Arm("gpt2 base", "small")
    out = [nano, gpt]
    out += [Arm(f"nanochat muon_lr={v}", nano.preset, (f"training.muon_lr={v}",)) for v in (0.02, 0.08)]
    out += [Arm(f"nanochat adamw x{k}", nano.preset, _scaled_adamw(nano.preset, k)) for k in (0.5, 2.0)]
    out += [Arm(f"gpt2 adamw x{k}", gpt.preset, _scaled_adamw(gpt.preset, k)) for k in (2.0, 3.33)]
    return out


def best(results: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    ok = [r for r in results if r["label"].startswith(prefix) and r["bpb"] is not None]
    return min(ok, key=lambda r: r["bpb"])


def stage2(results: list[dict[str, Any]]) -> list[Arm]:
    def arm(r: dict[str, Any], label: str, *more: str) -> Arm:
        return Arm(label, r["preset"], (*r["overrides"], *more))

    m, g = best(results, "nanochat"), best(results, "gpt2")
    return [
        arm(m, "nanochat warmup=12", "training.warmup_steps=12"),
        arm(m, "nanochat cosine->0", "training.min_lr=0"),
        arm(m, "nanochat arch 4x112", "model.embed_dim=112", "model.ff_dim=448", "model.num_layers=4"),
        arm(g, "gpt2 warmup=12", "training.warmup_steps=12"),
    ]


def run_all(arms: list[Arm], steps: int, jobs: int) -> list[dict[str, Any]]:
    out = race(arms, Protocol(steps=steps, eval_every=max(1, steps // 2), seeds=1, jobs=jobs))
    results = []
    for arm in arms:
        runs = out["arms"][arm.name]["runs"]
        curve = mean_curve(runs)
        results.append(
            {
                "label": arm.name,
                "preset": arm.preset,
                "overrides": list(arm.overrides),
                "steps": runs[0]["steps"],
                "train_s": runs[0]["train_s"],
                "half_bpb": curve[0]["bpb"] if len(curve) > 1 else None,
                "bpb": curve[-1]["bpb"] if curve else None,
                "parameters": runs[0]["parameters"],
            }
        )
    return results


def print_sweep(results: list[dict[str, Any]]) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [
        [r["label"], r["steps"], f(r["half_bpb"]), f(r["bpb"]), f"{r['train_s']:.0f}", r["parameters"]]
        for r in sorted(results, key=lambda r: (r["label"].split()[0], r["bpb"] or 99))
    ]
    headers = ["setting", "steps", "bpb @half", "bpb", "train s (1 thread)", "params"]
    common.print_table(headers, rows, title="recipe sweep (held-out bits per byte; lower is better)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--stage", choices=("1", "2", "all"), default="all")
    args = ap.parse_args(argv)
    path = common.results_dir() / "recipe_sweep.json"
    results: list[dict[str, Any]] = (
        json.loads(path.read_text())["runs"] if path.exists() and args.stage == "2" else []
    )
    if args.stage in ("1", "all"):
        results = run_all(stage1(), args.steps, args.jobs)
        common.write_results("recipe_sweep", {"steps": args.steps, "runs": results}, False)
    if args.stage in ("2", "all"):
        results += run_all(stage2(results), args.steps, args.jobs)
    winners = {fam: best(results, fam) for fam in ("nanochat", "gpt2")}
    common.write_results("recipe_sweep", {"steps": args.steps, "runs": results, "winners": winners}, False)
    print_sweep(results)
    for fam, w in winners.items():
        print(f"best {fam}: {w['label']} -> bpb {w['bpb']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
