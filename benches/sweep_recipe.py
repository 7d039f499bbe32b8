"""The small sweep behind the recipes' hyperparameters in ``bench_recipe.py``.

Each setting trains for a fixed number of optimizer steps (``--steps``, the schedule compressed to that
length) at the small size on the recipe benchmark's data, and is scored by its held-out bits per byte at
the end (and half-way). Settings of one recipe are compared at equal steps, i.e. equal tokens seen, so the
shared machine's load (other jobs on the 2 cores) changes how long a run takes but not its score; the
seconds are reported too, and matter only where the model shape changes (the ``arch`` rows).

Runs go two at a time, one thread each, in separate processes. Stage 1 varies the learning rates one at a
time around a baseline (nanochat: the Muon rate, the AdamW rates of embedding and LM head scaled together;
GPT-2: its AdamW rate); stage 2 takes stage 1's best rates and varies warmup, decay shape and (nanochat)
the model shape. ``benches/results/recipe_sweep.json`` holds every run; the winners are printed.

    python benches/sweep_recipe.py [--steps 120] [--jobs 2] [--stage 1|2|all]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from benches.bench_recipe import GPT2_RECIPE, MODERN_RECIPE, Recipe

GPT2_BASE = replace(GPT2_RECIPE, warmup_steps=36)
# Stage 1's nanochat baseline: nanochat's own rates (Muon 0.02; AdamW head 0.004 and embedding 0.2 at width
# 768, x sqrt(768 / 128) at our width; betas 0.8/0.95), Muon doubled, then a 40% linear warmdown to 0.
SWEEP_BASE = replace(
    MODERN_RECIPE,
    lr=0.008,
    embedding_lr=0.3,
    muon_lr=0.04,
    warmup_steps=0,
    decay="warmdown",
    min_lr_frac=0.0,
    warmdown_frac=0.4,
)  # ~30% of the run, as small.yaml's 100 of a ~350-step run


def _worker(args: tuple[str, dict[str, Any], int]) -> dict[str, Any]:
    """Train one setting for ``steps`` steps on one thread; evaluate half-way and at the end."""
    import torch

    from benches.bench_recipe import Run, prepare, small_config

    torch.set_num_threads(1)
    label, fields, steps = args
    recipe = Recipe(**{**fields, "betas": tuple(fields["betas"])})
    cfg = small_config()
    bundle = prepare(cfg, log=lambda m: None)
    run = Run(recipe, cfg, bundle, None, steps)
    t0 = time.perf_counter()
    try:
        while run.step < steps:
            run.train_step()
            if run.step == steps // 2:
                run.evaluate()
        run.evaluate()
        status = "ok"
    except FloatingPointError as e:
        status = str(e)
    return {
        "label": label,
        "recipe": asdict(recipe),
        "status": status,
        "steps": run.step,
        "tokens": run.tokens,
        "train_s": round(run.train_s, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "half_bpb": run.curve[0]["bpb"] if run.curve else None,
        "bpb": run.curve[-1]["bpb"] if len(run.curve) > 1 else None,
        "parameters": sum(p.numel() for p in run.model.parameters()),
    }


def stage1() -> list[tuple[str, Recipe]]:
    m = SWEEP_BASE
    out = [("nanochat base", m)]
    out += [(f"nanochat muon_lr={v}", replace(m, muon_lr=v)) for v in (0.02, 0.08)]
    assert m.embedding_lr is not None
    for k in (0.5, 2.0):
        label = f"nanochat adamw x{k} (head {m.lr * k:g}, emb {m.embedding_lr * k:g})"
        out.append((label, replace(m, lr=m.lr * k, embedding_lr=m.embedding_lr * k)))
    out += [(f"gpt2 lr={v:g}", replace(GPT2_BASE, lr=v, min_lr_frac=0.1)) for v in (3e-3, 6e-3, 1e-2)]
    return out


def best(results: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    ok = [r for r in results if r["label"].startswith(prefix) and r["bpb"] is not None]
    return min(ok, key=lambda r: r["bpb"])


def stage2(results: list[dict[str, Any]]) -> list[tuple[str, Recipe]]:
    def recipe(r: dict[str, Any]) -> Recipe:
        return Recipe(**{**r["recipe"], "betas": tuple(r["recipe"]["betas"])})

    m, g = recipe(best(results, "nanochat")), recipe(best(results, "gpt2"))
    return [
        ("nanochat warmup=12", replace(m, warmup_steps=12)),
        ("nanochat cosine->0.1", replace(m, decay="cosine", min_lr_frac=0.1)),
        ("nanochat linear->0", replace(m, decay="linear", min_lr_frac=0.0)),
        ("nanochat warmdown 0.2", replace(m, warmdown_frac=0.2)),
        ("nanochat arch 4x112", replace(m, model={"embed_dim": 112, "num_layers": 4, "heads": 4})),
        ("gpt2 warmup=12", replace(g, warmup_steps=12)),
    ]


def run_all(settings: list[tuple[str, Recipe]], steps: int, jobs: int) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    args = [(label, asdict(r), steps) for label, r in settings]
    out = []
    with ctx.Pool(jobs, maxtasksperchild=1) as pool:
        for res in pool.imap_unordered(_worker, args):
            print(
                f"  {res['label']:<52} bpb {res['bpb']}  (half {res['half_bpb']})  {res['train_s']}s  {res['status']}",
                flush=True,
            )
            out.append(res)
    return out


def print_sweep(results: list[dict[str, Any]]) -> None:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    rows = [
        [
            r["label"],
            r["steps"],
            r["tokens"],
            f(r["half_bpb"]),
            f(r["bpb"]),
            f"{r['train_s']:.0f}",
            r["parameters"],
        ]
        for r in sorted(results, key=lambda r: (r["label"].split()[0], r["bpb"] or 99))
    ]
    headers = ["setting", "steps", "tokens", "bpb @half", "bpb", "train s (1 thread)", "params"]
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
    from benches.bench_recipe import prepare, small_config

    prepare(small_config())  # build the tokenizer and token cache once, before the workers need them
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
