"""The recipe race: arms (a preset plus config overrides) trained by the ``Trainer``, side by side, N seeds each.

Every run is ``gptrs.training.Trainer.train()`` on the arm's config, so what picks a default is what a user
runs. The protocol:

- **Data**: ``../shared/corpora/books`` (``$GPTRS_BOOKS_DIR``; else the built-in stdlib corpus), one
  document per book, ``data.validation_split`` of the books held out whole. The tokenizer (gptrs' BPE,
  vocab 4096) and token cache are built once, before any run, under ``runs/bench_recipe``; every run of
  every arm trains on the same training books and is scored on the same held-out windows (``EVAL_TOKENS``
  targets). A run's seed changes its initialisation and batch order, never the split.
- **Arms**: ``NAME=PRESET KEY=VALUE ...`` (``--arm``, repeatable): a preset and ``--set``-style overrides of
  its ``model.*`` / ``training.*`` keys (data and tokenizer are the race's). The first arm is the baseline.
  Default: ``gpt2=small`` against ``nanochat=nanochat-small``.
- **Runs**: ``--seeds`` per arm (3), ``--steps`` optimizer steps each (2000; the schedule is the preset's
  over those steps; ``--minutes`` also caps each run's training time, ``Trainer(time_budget_s=...)``), one
  thread per run, ``--jobs`` runs at a time in separate processes (2 on a 2-core machine; the queue
  alternates arms, so arms share the machine's load alike). Held-out bits/byte every ``--eval-every``
  steps, with the run's own training seconds (evaluations excluded) from the Trainer's ``on_step`` hook.
- **Report**: per arm and evaluation, the mean and spread (min, max, standard deviation) over seeds of
  held-out bits/byte and of training seconds; against the baseline, the time each arm takes to reach the
  baseline's final bits/byte and its bits/byte at the baseline's final time (equal wall time). Table, JSON
  and a chart in ``benches/results/recipe.*``.

Goals (the default arms, 2-core CPU): the challenger reaches the baseline's final held-out bits/byte in at
most ``--goal-time`` of its time (0.5) and ends, at equal time, ``--goal-gain`` lower (5%).

    python -m benches recipe [--quick]
    python -m benches recipe --seeds 3 --steps 2000 --arm gpt2=small --arm nanochat=nanochat-small \\
        --arm "nanochat-wide=nanochat-small model.embed_dim=160 model.heads=5"
"""

from __future__ import annotations

import argparse
import itertools
import math
import multiprocessing as mp
import os
import re
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from gptrs.config import Config, apply_overrides, load_config
from gptrs.errors import GptrsError


def _books_dir() -> Path:
    """``$GPTRS_BOOKS_DIR``, else ``../shared/corpora/books`` beside the checkout (or beside its parent, for a
    git worktree under a folder of worktrees)."""
    env = os.environ.get("GPTRS_BOOKS_DIR")
    if env:
        return Path(env)
    for base in (common.REPO.parent, common.REPO.parent.parent):
        if (base / "shared" / "corpora" / "books").is_dir():
            return base / "shared" / "corpora" / "books"
    return common.REPO.parent / "shared" / "corpora" / "books"


BOOKS = _books_dir()
WORK_DIR = common.REPO / "runs" / "bench_recipe"  # tokenizer + token cache, reused between races
BASE_PRESET = "small"  # the race's data and tokenizer sections come from here
EVAL_TOKENS = 32768  # held-out targets per evaluation: 128 windows of 256
QUICK_EVAL_TOKENS = 4096
# Training-loop settings every run shares: no sample, no peak-FLOP/s timing (MFU plays no part here).
RUN_SETTINGS = [
    "training.sample_tokens=0",
    "training.peak_flops=1e12",
    "training.early_stopping_patience=null",
]


@dataclass(frozen=True)
class Arm:
    """One contender: a preset and overrides of its model and training keys."""

    name: str
    preset: str
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> Arm:
        """``NAME=PRESET [KEY=VALUE ...]`` (shell-quoted words)."""
        words = shlex.split(spec)
        if not words or "=" not in words[0]:
            raise ValueError(f"--arm {spec!r}: expected NAME=PRESET [KEY=VALUE ...]")
        name, preset = words[0].split("=", 1)
        if not name or not preset:
            raise ValueError(f"--arm {spec!r}: expected NAME=PRESET [KEY=VALUE ...]")
        for o in words[1:]:
            if not o.startswith(("model.", "training.")) or "=" not in o:
                raise ValueError(f"--arm {name}: {o!r} is not a model.* or training.* KEY=VALUE override")
        return cls(name, preset, tuple(words[1:]))

    def spec(self) -> str:
        return shlex.join([f"{self.name}={self.preset}", *self.overrides])


DEFAULT_ARMS = (Arm("gpt2", "small"), Arm("nanochat", "nanochat-small"))


@dataclass(frozen=True)
class Protocol:
    steps: int = 2000
    seeds: int = 3
    jobs: int = 2
    eval_every: int = 250
    minutes: float | None = None  # a cap on each run's training time
    eval_tokens: int = EVAL_TOKENS
    corpus: str = field(default_factory=lambda: str(BOOKS) if _has_books() else "stdlib")


def _has_books() -> bool:
    return BOOKS.is_dir() and any(BOOKS.glob("*.txt"))


# 24 steps, and at most 12 s of training each (a loaded machine must not make the test suite slow)
QUICK = Protocol(steps=24, seeds=1, eval_every=8, minutes=0.2, eval_tokens=QUICK_EVAL_TOKENS)


# ----------------------------------------------------------------------------------------------- configs


def base_config(p: Protocol) -> Config:
    """The data and tokenizer every arm shares (the small preset's, on the race's corpus)."""
    over = [f"data.max_eval_tokens={p.eval_tokens}"]
    if p.corpus != "stdlib":
        over += ["data.source=files", f"data.paths=['{p.corpus}/*.txt']"]
    return apply_overrides(load_config(BASE_PRESET), over, source="bench_recipe")


def arm_config(arm: Arm, p: Protocol, seed: int) -> Config:
    """The arm's preset with its overrides, the race's data and tokenizer, ``p.steps`` steps and ``seed``."""
    from gptrs.train import _fit_warmup  # the rule of `--max-steps`: a warmup longer than the run shrinks

    base = base_config(p)
    cfg = load_config(arm.preset)
    cfg.data, cfg.tokenizer = base.data, base.tokenizer
    over = [
        *RUN_SETTINGS,
        f"training.max_steps={p.steps}",
        f"training.eval_interval={p.eval_every}",
        f"training.log_interval={p.eval_every}",
        f"training.seed={seed}",
        *arm.overrides,
    ]
    _fit_warmup(cfg, over)
    return apply_overrides(cfg, over, source=f"--arm {arm.name}")


def prepare(p: Protocol, quiet: bool = False) -> Any:
    """Tokenizer, token cache and validation windows (``gptrs.data.prepare_data``), cached under ``runs/``."""
    from gptrs.data import prepare_data

    work = WORK_DIR / ("stdlib" if p.corpus == "stdlib" else Path(p.corpus).name)
    work.mkdir(parents=True, exist_ok=True)
    log = (lambda m: None) if quiet else (lambda m: print(f"[data] {m}", flush=True))
    return prepare_data(base_config(p), work, log=log)


# ----------------------------------------------------------------------------------------------- one run


def train_one(arm: Arm, p: Protocol, seed: int) -> dict[str, Any]:
    """One seed of one arm, on one thread, through the Trainer; its held-out curve against training time."""
    import torch

    from gptrs.data import RandomBatches
    from gptrs.model import build_model
    from gptrs.training import Trainer

    torch.set_num_threads(1)
    bundle = prepare(p, quiet=True)  # the cache the parent built: loaded, not rebuilt
    cfg = arm_config(arm, p, seed)
    tok = bundle.tokenizer
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size=tok.get_vocab_size(), pad_token_id=tok.pad_token_id)
    train = RandomBatches(bundle.train_tokens, cfg.training.batch_size, cfg.model.max_seq_len, seed=seed)
    curve: list[dict[str, Any]] = []

    def on_step(info: dict[str, Any]) -> None:
        if info["eval"] is not None:
            e = info["eval"]
            pt = {"step": info["step"], "train_s": round(info["train_s"], 2), "bpb": round(e["val_bpb"], 4)}
            curve.append({**pt, "val_loss": round(e["val_loss"], 4), "load": round(os.getloadavg()[0], 2)})
            print(
                f"  {arm.name:<14} seed {seed}  step {pt['step']:5d}  {pt['train_s'] / 60:6.2f} min  "
                f"bpb {pt['bpb']:.4f}",
                flush=True,
            )

    trainer = Trainer(model, tok, cfg, "cpu", log_level="WARNING")
    budget = p.minutes * 60 if p.minutes else None
    result = trainer.train(
        train,
        bundle.val,
        bytes_per_token=bundle.stats["val_bytes_per_token"],
        on_step=on_step,
        time_budget_s=budget,
    )
    return {
        "arm": arm.name,
        "seed": seed,
        "steps": result["step"],
        "stop_reason": result["stop_reason"],
        "train_s": round(result["train_s"], 2),
        "parameters": sum(q.numel() for q in model.parameters()),
        "precision": trainer.precision.name,
        "curve": curve,
    }


def _train_one(args: tuple[Arm, Protocol, int]) -> dict[str, Any]:
    return train_one(*args)


# ----------------------------------------------------------------------------------------------- the race


def seeds(p: Protocol) -> list[int]:
    base = load_config(BASE_PRESET).training.seed
    return [base + i for i in range(p.seeds)]


def race(arms: list[Arm], p: Protocol) -> dict[str, Any]:
    """Every seed of every arm, ``p.jobs`` at a time (one thread each); the runs grouped by arm."""
    bundle = prepare(p)  # once, here: the workers only load it
    jobs = [(arm, p, s) for s in seeds(p) for arm in arms]  # seed-major: arms side by side
    t0 = time.perf_counter()
    if p.jobs <= 1:
        runs = [_train_one(j) for j in jobs]
    else:
        with mp.get_context("spawn").Pool(p.jobs, maxtasksperchild=1) as pool:
            runs = pool.map(_train_one, jobs, chunksize=1)
    return {
        "protocol": asdict(p),
        "arms": {a.name: {"spec": a.spec(), "runs": [r for r in runs if r["arm"] == a.name]} for a in arms},
        "baseline": arms[0].name,
        "wall_s": round(time.perf_counter() - t0, 1),
        "data": {
            k: bundle.stats[k]
            for k in ("train_docs", "val_docs", "train_tokens", "eval_tokens", "val_bytes_per_token")
        },
    }


# ----------------------------------------------------------------------------------------------- summaries


def _spread(xs: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
    }


def mean_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per evaluation (the steps every seed reached): the mean step and mean and spread of bpb and time."""
    common_steps = set.intersection(*({pt["step"] for pt in r["curve"]} for r in runs)) if runs else set()
    out = []
    for step in sorted(common_steps):
        pts = [next(pt for pt in r["curve"] if pt["step"] == step) for r in runs]
        bpb, secs = _spread([pt["bpb"] for pt in pts]), _spread([pt["train_s"] for pt in pts])
        out.append(
            {
                "step": step,
                "train_s": secs["mean"],
                "bpb": bpb["mean"],
                "bpb_spread": bpb,
                "train_s_spread": secs,
            }
        )
    return out


def time_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds at which ``curve`` first gets to ``target`` bpb (linear between evaluations; from the
    untrained start at time 0 before the first)."""
    prev = None
    for pt in curve:
        if pt["bpb"] <= target:
            if prev is None:
                return float(pt["train_s"])
            a, b = prev, pt
            frac = (a["bpb"] - target) / max(a["bpb"] - b["bpb"], 1e-12)
            return float(a["train_s"] + frac * (b["train_s"] - a["train_s"]))
        prev = pt
    return None


def bpb_at(curve: list[dict[str, Any]], seconds: float) -> float | None:
    """The curve's bpb at ``seconds`` of training (linear between evaluations); None outside the curve."""
    for a, b in itertools.pairwise(curve):
        if a["train_s"] <= seconds <= b["train_s"]:
            frac = (seconds - a["train_s"]) / max(b["train_s"] - a["train_s"], 1e-12)
            return float(a["bpb"] + frac * (b["bpb"] - a["bpb"]))
    if curve and math.isclose(curve[-1]["train_s"], seconds):
        return float(curve[-1]["bpb"])
    return None


def summarize(out: dict[str, Any], goal_time: float = 0.5, goal_gain: float = 0.05) -> dict[str, Any]:
    """Mean curves, and each arm against the baseline: time to its final bpb, bpb at its final time."""
    for arm in out["arms"].values():
        arm["curve"] = mean_curve(arm["runs"])
    base = out["arms"][out["baseline"]]["curve"]
    if not base:
        return out
    target, t_base = base[-1]["bpb"], base[-1]["train_s"]
    goals: dict[str, bool] = {}
    for name, arm in out["arms"].items():
        if name == out["baseline"] or not arm["curve"]:
            continue
        c = arm["curve"]
        t = time_to_reach(c, target)
        at = bpb_at(c, t_base)
        if at is None and c[-1]["train_s"] < t_base:
            at = c[-1]["bpb"]  # finished sooner: its final loss is what it has at the baseline's time
        arm["vs_baseline"] = {
            "time_to_baseline_final_s": None if t is None else round(t, 1),
            "time_fraction": None if t is None else round(t / t_base, 3),
            "bpb_at_baseline_time": None if at is None else round(at, 4),
            "gain_at_equal_time": None if at is None else round(1 - at / target, 4),
        }
        v = arm["vs_baseline"]
        goals[f"{name} reaches {out['baseline']}'s final bpb in <= {goal_time:g}x its time"] = (
            v["time_fraction"] is not None and v["time_fraction"] <= goal_time
        )
        goals[f"{name} >= {100 * goal_gain:g}% lower bpb at equal time"] = (
            v["gain_at_equal_time"] is not None and v["gain_at_equal_time"] >= goal_gain
        )
    out["goals"] = goals
    return out


# ----------------------------------------------------------------------------------------------- output


def chart(out: dict[str, Any], quick: bool) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, arm in out["arms"].items():
        c = arm["curve"]
        if not c:
            continue
        minutes = [pt["train_s"] / 60 for pt in c]
        params = arm["runs"][0]["parameters"]
        ax.plot(minutes, [pt["bpb"] for pt in c], marker=".", label=f"{name} ({params:,} params)")
        lo = [pt["bpb_spread"]["min"] for pt in c]
        hi = [pt["bpb_spread"]["max"] for pt in c]
        ax.fill_between(minutes, lo, hi, alpha=0.2)
    ax.set_xlabel("training minutes (each run's own, one thread)")
    ax.set_ylabel("held-out bits per byte (band: min-max of seeds)", fontsize=9)
    corpus = out["protocol"]["corpus"].rsplit("/", 1)[-1]
    name, seeds = out.get("name", "recipe"), out["protocol"]["seeds"]
    ax.set_title(f"{name} race, {corpus}, {seeds} seed(s) per arm", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = common.results_path(out.get("name", "recipe"), quick, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(out: dict[str, Any]) -> None:
    rows = []
    for name, arm in out["arms"].items():
        for pt in arm["curve"]:
            b, t = pt["bpb_spread"], pt["train_s_spread"]
            rows.append(
                [
                    name,
                    pt["step"],
                    f"{t['mean'] / 60:.2f} ({t['min'] / 60:.2f}-{t['max'] / 60:.2f})",
                    f"{b['mean']:.4f}",
                    f"{b['std']:.4f}",
                    f"{b['min']:.4f}-{b['max']:.4f}",
                ]
            )
    p = out["protocol"]
    title = (
        f"held-out bits per byte ({p['corpus']}, {out['precision']}, {p['seeds']} seed(s) per arm, "
        f"one thread per run, {p['jobs']} at a time)"
    )
    headers = ["arm", "step", "train min (range)", "bpb mean", "std", "bpb range"]
    common.print_table(headers, rows, title=title)
    for name, arm in out["arms"].items():
        v = arm.get("vs_baseline")
        if v is None:
            continue
        t = v["time_to_baseline_final_s"]
        reach = "never" if t is None else f"in {t / 60:.2f} min ({100 * v['time_fraction']:.0f}% of its time)"
        gain = "-" if v["gain_at_equal_time"] is None else f"{100 * v['gain_at_equal_time']:.1f}%"
        print(f"{name}: reaches {out['baseline']}'s final bpb {reach}; {gain} lower bpb at equal time")
    common.print_goals_and_chart(out)


# ----------------------------------------------------------------------------------------------- entry


def run(
    quick: bool,
    arms: list[Arm] | None = None,
    protocol: Protocol | None = None,
    goal_time: float = 0.5,
    goal_gain: float = 0.05,
    name: str = "recipe",
) -> dict[str, Any]:
    """The race (``quick``: ``QUICK``, one seed, small validation windows: it checks that the race runs)."""
    p = protocol or (QUICK if quick else Protocol())
    out = race(list(arms or DEFAULT_ARMS), p)
    out["name"] = name
    runs = [r for arm in out["arms"].values() for r in arm["runs"]]
    out["precision"] = ", ".join(sorted({r["precision"] for r in runs}))
    summarize(out, goal_time, goal_gain)
    path = chart(out, quick)
    out["chart"] = str(path) if path else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument(
        "--quick", action="store_true", help="24 steps (12 s at most), one seed: checks the race runs"
    )
    ap.add_argument(
        "--arm",
        action="append",
        default=[],
        metavar="'NAME=PRESET [KEY=VALUE ...]'",
        help="a preset and model.*/training.* overrides (repeatable; the first is the baseline; default: "
        + ", ".join(a.spec() for a in DEFAULT_ARMS)
        + ")",
    )
    ap.add_argument("--seeds", type=int, default=None, help="runs per arm (default 3)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 2000)")
    ap.add_argument("--minutes", type=float, default=None, help="cap on each run's training minutes")
    ap.add_argument("--eval-every", type=int, default=None, help="steps between evaluations (default 250)")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    ap.add_argument("--corpus", default=None, help="a folder of .txt books, or 'stdlib' (default: books)")
    ap.add_argument(
        "--goal-time", type=float, default=0.5, help="goal: reach the baseline's final in this fraction"
    )
    ap.add_argument("--goal-gain", type=float, default=0.05, help="goal: this much lower bpb at equal time")
    ap.add_argument(
        "--name",
        default="recipe",
        help="results are written to benches/results/NAME.json and NAME.png (default: recipe)",
    )
    args = ap.parse_args(argv)
    base = QUICK if args.quick else Protocol()
    given = {
        "steps": args.steps,
        "seeds": args.seeds,
        "minutes": args.minutes,
        "eval_every": args.eval_every,
        "jobs": args.jobs,
        "corpus": args.corpus,
    }
    p = replace(base, **{k: v for k, v in given.items() if v is not None})
    try:
        arms = [Arm.parse(a) for a in args.arm] or list(DEFAULT_ARMS)
        if len({a.name for a in arms}) != len(arms):
            raise ValueError("--arm: two arms with the same name")
        for arm in arms:
            arm_config(arm, p, 0)  # a bad preset or key: one line now, not in a worker later
    except (ValueError, GptrsError) as e:  # both name the arm and the key
        print(f"bench_recipe: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        print(f"bench_recipe: --name {args.name!r}: letters, digits, '_' and '-' only", file=sys.stderr)
        return 2
    out = run(args.quick, arms, p, args.goal_time, args.goal_gain, args.name)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    path = common.write_results(args.name, out, args.quick)
    print_table(out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
