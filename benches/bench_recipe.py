"""Recipe benchmark: the GPT-2 recipe against the modern (nanochat) recipe, same wall-clock budget.

Both recipes train at the small size on the same corpus (``../shared/corpora/books`` when present, else the
built-in stdlib corpus) with the same tokenizer (gptrs' BPE, vocab 4096), batches (16 x 256) and held-out
documents, for ``--minutes`` of *their own* training time each:

- **gpt2**: ``GPT`` at the small preset (5 x 128, 4 heads, ctx 256; 1,548,672 parameters), fused AdamW with
  ``configs/small.yaml``'s hyperparameters (peak 3e-3, floor 3e-4, 100 warmup steps, cosine, decay 0.1).
- **nanochat**: ``NanoChat`` at about the same parameter count (the ``nanochat-small`` preset's model,
  ``MODERN_SMALL``), Muon on the hidden
  matrices and AdamW on the embedding and LM head, hyperparameters from ``benches/sweep_recipe.py``.

Same machine load for both. By default (``--mode parallel``) the two train at the same time, one thread
each, in two processes: on a 2-core machine shared with other jobs this is far steadier than two threads
per recipe, whose OpenMP barriers stall whenever another process holds a core (measured while other jobs
ran: 7-13 s per step on two threads against 1.8 s on one). ``--mode alternate`` instead takes turns of
``SLICE_S`` seconds in one process with ``--threads`` threads, each recipe having the whole machine in its
turn. Only the optimizer steps count as training time; every ``EVAL_EVERY_S`` seconds of its own training
time each recipe is evaluated (untimed) on the same fixed held-out windows (``EVAL_TOKENS`` targets from
the held-out books), and the learning-rate schedules run on the fraction of the time budget used.
Precision is what the trainer picks for ``mixed_precision: true`` (bf16 autocast where the CPU has native
bf16, else fp32). The result: held-out bits per byte against minutes, as a table, JSON and a PNG
(``benches/results/recipe.*``).

Goals (2-core CPU, small size, 10 minutes each): the modern recipe reaches the GPT-2 recipe's 10-minute
held-out loss in at most half the time, and ends at least 5% lower in bits per byte.

    python -m benches recipe [--quick]
    python benches/bench_recipe.py [--minutes 10] [--quick] [--mode parallel|alternate] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from gptrs.config import Config, apply_overrides, load_config
from gptrs.model import build_model as build_family
from gptrs.training.muon import apply_lr, build_optimizer
from gptrs.training.precision import resolve_precision


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
WORK_DIR = common.REPO / "runs" / "bench_recipe"  # tokenizer + token cache, reused between runs
SLICE_S = 15.0
EVAL_EVERY_S = 30.0
EVAL_TOKENS = 32768  # held-out targets per evaluation: 128 windows of 256
MODERN_SMALL = {"embed_dim": 128, "num_layers": 3, "heads": 4}  # 1,638,400 params (+5.8% of GPT small)


@dataclass(frozen=True)
class Recipe:
    """How one family is trained: model shape, optimizer and schedule (peak rates; see ``lr_factor``)."""

    name: str
    arch: str  # "gpt2" | "nanochat"
    model: dict[str, Any] = field(default_factory=dict)  # NanoChat shape (gpt2: the preset's)
    optimizer: str = "adamw"
    lr: float = 3e-3  # AdamW peak (gpt2: everything; nanochat: the LM head)
    embedding_lr: float | None = None  # AdamW peak of the token embedding (None: lr)
    muon_lr: float = 0.02
    muon_momentum: float = 0.95
    weight_decay: float = 0.1  # AdamW decay on hidden matrices (gpt2 only: nanochat's are Muon's)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | linear | warmdown (constant, then linear over the last warmdown_frac)
    min_lr_frac: float = 0.1
    warmdown_frac: float = 0.4


GPT2_RECIPE = Recipe("gpt2", "gpt2")  # configs/small.yaml: 3e-3 -> 3e-4, 100 warmup, cosine, wd 0.1
# The sweep's winners (benches/results/recipe_sweep.json, 100-step runs; see benches/sweep_recipe.py):
# Muon 0.04 (0.02 equal, 0.08 worse), AdamW head 0.016 / embedding 0.6 (half of both: clearly worse),
# no warmup (12 steps: equal), cosine to 10% (linear to 0 and a 40% warmdown a little worse, 20% worse).
MODERN_RECIPE = Recipe(
    "nanochat",
    "nanochat",
    model=MODERN_SMALL,
    optimizer="muon",
    lr=0.016,
    embedding_lr=0.6,
    muon_lr=0.04,
    weight_decay=0.0,
    betas=(0.8, 0.95),
    eps=1e-10,
    warmup_steps=0,
    decay="cosine",
    min_lr_frac=0.1,
)


def lr_factor(r: Recipe, step: int, progress: float) -> float:
    """Multiplier of the peak rates at optimizer ``step`` with ``progress`` in [0, 1] of the budget used."""
    if step < r.warmup_steps:
        return (step + 1) / r.warmup_steps
    p = min(1.0, max(0.0, progress))
    lo = r.min_lr_frac
    if r.decay == "cosine":
        return lo + 0.5 * (1 + math.cos(math.pi * p)) * (1 - lo)
    if r.decay == "linear":
        return 1 - p * (1 - lo)
    if r.decay == "warmdown":
        start = 1 - r.warmdown_frac
        return 1.0 if p < start else lo + (1 - lo) * (1 - p) / max(r.warmdown_frac, 1e-9)
    raise ValueError(f"unknown decay shape {r.decay!r}")


# ----------------------------------------------------------------------------------------------- data


def small_config() -> Config:
    cfg = load_config(common.REPO / "configs" / "small.yaml")
    if BOOKS.is_dir() and any(BOOKS.glob("*.txt")):
        cfg = apply_overrides(cfg, ["data.source=files", f"data.paths=['{BOOKS}/*.txt']"])
    return apply_overrides(cfg, [f"data.max_eval_tokens={EVAL_TOKENS}"])


def prepare(cfg: Config, log: Any = None) -> Any:
    """Tokenizer, token cache and samplers (``gptrs.data.prepare_data``), cached under ``runs/``."""
    from gptrs.data import prepare_data

    work = WORK_DIR / ("books" if cfg.data.source == "files" else "stdlib")
    work.mkdir(parents=True, exist_ok=True)
    return prepare_data(cfg, work, log=log or (lambda m: print(f"[data] {m}", flush=True)))


# ----------------------------------------------------------------------------------------------- runs


def build_model(r: Recipe, cfg: Config, vocab_size: int, seed: int) -> torch.nn.Module:
    """The recipe's model through the config factory: gpt2 from ``cfg`` (the small preset), nanochat from
    the ``nanochat-small`` preset's model section with ``r.model`` on top, at ``cfg``'s context."""
    torch.manual_seed(seed)
    if r.arch == "gpt2":
        return build_family(cfg, vocab_size=vocab_size)
    preset = load_config("nanochat-small").model
    mc = replace(preset, **{"max_seq_len": cfg.model.max_seq_len, **r.model})
    return build_family(mc, vocab_size=vocab_size)


class Run:
    """One recipe in training: model, optimizer, its own copy of the training batch stream, clocks."""

    def __init__(
        self, r: Recipe, cfg: Config, bundle: Any, budget_s: float | None, max_steps: int | None
    ) -> None:
        from gptrs.data import RandomBatches

        self.recipe = r
        self.vocab = bundle.tokenizer.get_vocab_size()
        self.model = build_model(r, cfg, self.vocab, cfg.training.seed)
        self.model.train()
        self.opt = build_optimizer(
            self.model,
            optimizer=r.optimizer,
            lr=r.lr,
            weight_decay=r.weight_decay,
            betas=r.betas,
            eps=r.eps,
            embedding_lr=r.embedding_lr,
            muon_lr=r.muon_lr,
            muon_momentum=r.muon_momentum,
        )
        self.params = [p for g in self.opt.param_groups for p in g["params"]]
        self.batches: Iterator[Any] = iter(
            RandomBatches(
                bundle.train_tokens, cfg.training.batch_size, cfg.model.max_seq_len, seed=cfg.training.seed
            )
        )
        self.val = bundle.val
        self.bytes_per_token = float(bundle.stats["val_bytes_per_token"])
        self.precision = resolve_precision(cfg.training.mixed_precision, "cpu")
        self.budget_s, self.max_steps = budget_s, max_steps
        self.train_s = 0.0
        self.step = 0
        self.tokens = 0
        self.last_loss = math.nan
        self.curve: list[dict[str, Any]] = []

    @property
    def progress(self) -> float:
        if self.max_steps:
            return self.step / self.max_steps
        assert self.budget_s
        return self.train_s / self.budget_s

    def train_step(self) -> None:
        t0 = time.perf_counter()
        apply_lr(self.opt, self.recipe.lr * lr_factor(self.recipe, self.step, self.progress))
        x, y = next(self.batches)
        with self.precision.autocast():
            _, loss = self.model(x, y)
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.last_loss = loss.item()
        if not math.isfinite(self.last_loss):
            raise FloatingPointError(
                f"{self.recipe.name}: training loss became {self.last_loss} at step {self.step}"
            )
        self.step += 1
        self.tokens += x.numel()
        self.train_s += time.perf_counter() - t0

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Mean held-out loss (nats/token) and bits per byte on the fixed windows; appended to the curve."""
        self.model.eval()
        total, n = 0.0, 0
        for x, y in self.val:
            with self.precision.autocast():
                _, loss = self.model(x, y)
            assert loss is not None
            total += float(loss) * y.numel()
            n += y.numel()
        self.model.train()
        val_loss = total / n
        point = {
            "train_s": round(self.train_s, 2),
            "minutes": round(self.train_s / 60, 3),
            "step": self.step,
            "tokens": self.tokens,
            "train_loss": round(self.last_loss, 4),
            "val_loss": round(val_loss, 4),
            "bpb": round(val_loss / math.log(2) / self.bytes_per_token, 4),
            "load": round(os.getloadavg()[0], 2),
        }
        self.curve.append(point)
        return point


# ----------------------------------------------------------------------------------------------- the race


def time_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """Training seconds at which ``curve`` first gets to ``target`` bpb (linear between evaluations)."""
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


def _say(run: Run, pt: dict[str, Any], note: str = "") -> None:
    print(
        f"  {run.recipe.name:<9} {pt['minutes']:6.2f} min  step {pt['step']:5d}  bpb {pt['bpb']:.4f}{note}",
        flush=True,
    )


def _train_slice(
    run: Run, until_s: float, budget: float, next_eval: list[float], eval_every_s: float
) -> None:
    """Train ``run`` until its own training time reaches ``until_s``, evaluating at each ``eval_every_s``."""
    while run.train_s < until_s:
        run.train_step()
        if next_eval[0] <= run.train_s < budget:
            _say(run, run.evaluate())
            next_eval[0] += eval_every_s


def _report(run: Run) -> dict[str, Any]:
    return {
        "recipe": asdict(run.recipe),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "curve": run.curve,
    }


def _solo(args: tuple[dict[str, Any], float, float]) -> dict[str, Any]:
    """One recipe alone on one thread, in its own process (``mode="parallel"``)."""
    fields, budget, eval_every_s = args
    torch.set_num_threads(1)
    cfg = small_config()
    bundle = prepare(cfg, log=lambda m: None)
    run = Run(Recipe(**{**fields, "betas": tuple(fields["betas"])}), cfg, bundle, budget, None)
    run.evaluate()
    _train_slice(run, budget, budget, [eval_every_s], eval_every_s)
    _say(run, run.evaluate(), " (final)")
    return _report(run)


def race(
    recipes: list[Recipe],
    minutes: float,
    *,
    mode: str = "parallel",
    slice_s: float = SLICE_S,
    eval_every_s: float = EVAL_EVERY_S,
) -> dict[str, Any]:
    """Train every recipe for ``minutes`` of its own training time under the same machine load:
    ``parallel`` runs them at the same time, one thread each, in separate processes; ``alternate`` runs
    them in turns of ``slice_s`` seconds in this process, with all of its threads."""
    cfg = small_config()
    bundle = prepare(cfg)
    budget = minutes * 60
    t_start = time.perf_counter()
    if mode == "parallel":
        ctx = mp.get_context("spawn")
        with ctx.Pool(len(recipes)) as pool:
            reports = pool.map(_solo, [(asdict(r), budget, eval_every_s) for r in recipes])
        threads = 1
    elif mode == "alternate":
        runs = [Run(r, cfg, bundle, budget, None) for r in recipes]
        next_eval = {id(run): [eval_every_s] for run in runs}
        for run in runs:
            run.evaluate()
        rnd = 0
        while any(run.train_s < budget for run in runs):
            for run in runs if rnd % 2 == 0 else list(reversed(runs)):
                _train_slice(
                    run, min(run.train_s + slice_s, budget), budget, next_eval[id(run)], eval_every_s
                )
            rnd += 1
        for run in runs:
            _say(run, run.evaluate(), " (final)")
        reports = [_report(run) for run in runs]
        threads = torch.get_num_threads()
    else:
        raise ValueError(f"mode must be parallel or alternate, got {mode!r}")
    return {
        "minutes_per_recipe": minutes,
        "mode": mode,
        "threads_per_recipe": threads,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "slice_s": slice_s if mode == "alternate" else None,
        "eval_every_s": eval_every_s,
        "precision": resolve_precision(cfg.training.mixed_precision, "cpu").name,
        "corpus": str(BOOKS) if cfg.data.source == "files" else "stdlib",
        "data": {
            k: bundle.stats[k]
            for k in ("train_docs", "val_docs", "train_tokens", "eval_tokens", "val_bytes_per_token")
        },
        "recipes": {rep["recipe"]["name"]: rep for rep in reports},
    }


def summarize(out: dict[str, Any]) -> dict[str, Any]:
    """Goals: the modern recipe reaches the GPT-2 recipe's final loss in <= half the time, ends >= 5% lower."""
    rec = out["recipes"]
    if "gpt2" not in rec or "nanochat" not in rec:
        return out
    gpt, modern = rec["gpt2"]["curve"], rec["nanochat"]["curve"]
    target = gpt[-1]["bpb"]
    t = time_to_reach(modern, target)
    budget = out["minutes_per_recipe"] * 60
    reduction = 1 - modern[-1]["bpb"] / target
    out["gpt2_final_bpb"] = target
    out["nanochat_final_bpb"] = modern[-1]["bpb"]
    out["nanochat_time_to_gpt2_final_s"] = None if t is None else round(t, 1)
    out["time_fraction"] = None if t is None else round(t / budget, 3)
    out["bpb_reduction"] = round(reduction, 4)
    out["goals"] = {
        "reaches GPT-2's final loss in <= 1/2 the time": t is not None and t <= budget / 2,
        "final bpb >= 5% lower": reduction >= 0.05,
    }
    return out


def chart(out: dict[str, Any], quick: bool) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, r in out["recipes"].items():
        c = r["curve"]
        ax.plot(
            [p["minutes"] for p in c],
            [p["bpb"] for p in c],
            marker=".",
            label=f"{name} ({r['parameters']:,} params)",
        )
    ax.set_xlabel("training minutes (each recipe's own time)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"GPT-2 vs nanochat recipe, small size, {out['corpus'].rsplit('/', 1)[-1]}", fontsize=10)
    lows = [p["bpb"] for r in out["recipes"].values() for p in r["curve"][1:]]
    if lows:
        ax.set_ylim(min(lows) * 0.97, max(lows) * 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = common.results_path("recipe", quick, ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_table(out: dict[str, Any]) -> None:
    rec = out["recipes"]
    names = list(rec)
    n = max(len(r["curve"]) for r in rec.values())
    rows = []
    for i in range(n):
        row: list[Any] = []
        for name in names:
            c = rec[name]["curve"]
            if i < len(c):
                row += [f"{c[i]['minutes']:.2f}", f"{c[i]['step']}", f"{c[i]['bpb']:.4f}"]
            else:
                row += ["", "", ""]
        rows.append(row)
    headers = [h for name in names for h in (f"{name} min", "step", "bpb")]
    title = f"held-out bits per byte ({out['corpus']}, {out['precision']}, {out['mode']})"
    common.print_table(headers, rows, title=title)
    if "bpb_reduction" in out:
        t = out["nanochat_time_to_gpt2_final_s"]
        print(
            f"\nGPT-2 final {out['gpt2_final_bpb']:.4f} bpb; nanochat final {out['nanochat_final_bpb']:.4f} "
            f"({100 * out['bpb_reduction']:.1f}% lower); nanochat reached GPT-2's final at "
            + (
                "never"
                if t is None
                else f"{t / 60:.2f} min ({100 * out['time_fraction']:.0f}% of the budget)"
            )
        )
    common.print_goals_and_chart(out)


def run(quick: bool, minutes: float | None = None, mode: str = "parallel") -> dict[str, Any]:
    if minutes is None:
        minutes = 0.25 if quick else 10.0
    slice_s, every = (5.0, 10.0) if quick else (SLICE_S, EVAL_EVERY_S)
    out = summarize(
        race([GPT2_RECIPE, MODERN_RECIPE], minutes, mode=mode, slice_s=slice_s, eval_every_s=every)
    )
    path = chart(out, quick)
    out["chart"] = str(path) if path else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--minutes", type=float, default=None, help="training minutes per recipe (default 10)")
    ap.add_argument("--quick", action="store_true", help="15 seconds per recipe: checks that it runs")
    ap.add_argument(
        "--mode",
        choices=("parallel", "alternate"),
        default="parallel",
        help="parallel: both at once, one thread each (default); alternate: turns of 15 s with --threads",
    )
    ap.add_argument("--threads", type=int, default=2, help="threads in alternate mode")
    args = ap.parse_args(argv)
    with common.torch_threads(args.threads):
        t0 = time.perf_counter()
        out = run(args.quick, args.minutes, args.mode)
        out["seconds"] = round(time.perf_counter() - t0, 1)
    path = common.write_results("recipe", out, args.quick)
    print_table(out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
