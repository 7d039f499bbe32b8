"""Train a model on the built-in corpus, local files or a Hub dataset: ``python -m gptrs.train``.

With no arguments it trains what the quick start trains, the nanochat-small preset (the modern recipe,
which won the recipe race), on the built-in corpus (the standard library's ``.py`` files) into
``runs/nanochat-small``, then prints the validation loss next to the unigram baseline and a sample.
The console script ``gptrs-train`` is the same command.

    python -m gptrs.train --out runs/mine --set training.max_steps=500
    python -m gptrs.train --config small                              # the GPT-2 recipe (AdamW)
    python -m gptrs.train --config my.yaml --out runs/mine --resume   # continue from the newest checkpoint
    torchrun --nproc_per_node 2 -m gptrs.train --config default       # DistributedDataParallel

The steps, each once: the config is loaded and validated (``--set`` applied), the process joins the
distributed group (under torchrun), ``gptrs.data.prepare_data`` builds the tokenizer, token cache and
batches, and the ``Trainer`` trains. Exit status (``gptrs.cli``): 0 done, 2 a user error (one line on
stderr), 1 an internal error, 130/143 stopped by SIGINT/SIGTERM after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptrs.cli import make_parser, run_main, setup_logging, summary
from gptrs.config import Config, apply_overrides, load_config, resolve_config_path, save_config
from gptrs.errors import ConfigError, GptrsError
from gptrs.files import CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE
from gptrs.training.metrics import LOSS_PLOT_FILE

log = logging.getLogger("gptrs.train")

TAG = "gptrs-train"  # the console script; error lines start with it
DEFAULT_PRESET = "nanochat-small"  # what scripts/quickstart.sh trains: the recipe race's winner


def build_parser(prog: str = TAG) -> argparse.ArgumentParser:
    p = make_parser(prog, summary(__doc__), tag=TAG)
    p.add_argument(
        "--config",
        metavar="PATH|PRESET",
        help="YAML config file or preset name: small, default, large (GPT-2 recipe), nanochat-small, "
        "nanochat-default, nanochat-large (modern recipe), speedrun-small, speedrun-default, speedrun-large "
        f"(modern recipe + speedrun switches) (default: '{DEFAULT_PRESET}'; with --resume, "
        "the run's own config.yaml)",
    )
    p.add_argument(
        "--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda, cuda:N or mps"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in --out"
    )
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<config name>)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set model.num_layers=4 (repeatable)",
    )
    p.add_argument("--tokenizer", metavar="PATH", help="use this tokenizer JSON instead of training one")
    p.add_argument("--max-steps", type=int, metavar="N", help="shortcut for --set training.max_steps=N")
    return p


def load_run_config(args: argparse.Namespace, run_dir: Path | None) -> tuple[Config, str]:
    """The Config for this invocation and a name for it (used for the default run directory)."""
    if args.config:
        cfg, name = load_config(args.config), resolve_config_path(args.config).stem
    elif args.resume and run_dir is not None and (saved := saved_config(run_dir)) is not None:
        cfg, name = load_config(saved), run_dir.name
    else:
        cfg, name = load_config(DEFAULT_PRESET), DEFAULT_PRESET
    overrides = list(args.overrides)
    if args.tokenizer:
        overrides.append(f"tokenizer.path={args.tokenizer}")
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise ConfigError(f"--max-steps: must be >= 1, got {args.max_steps}")
        overrides.append(f"training.max_steps={args.max_steps}")
    _fit_warmup(cfg, overrides)
    cfg = apply_overrides(cfg, overrides, source="--set") if overrides else cfg
    return cfg, name  # validated once, by load_config or apply_overrides


def _fit_warmup(cfg: Config, overrides: list[str]) -> None:
    """A short run (``--max-steps N`` or ``--set training.max_steps=N``) should not fail validation because the
    preset's warmup is longer than it: unless the warmup is set too, it becomes N // 10."""
    steps = [o.split("=", 1)[1].strip() for o in overrides if o.startswith("training.max_steps=")]
    if not steps or any(o.startswith("training.warmup_steps=") for o in overrides):
        return
    try:
        max_steps = int(steps[-1])
    except ValueError:
        return  # not a number: validation names it
    if 1 <= max_steps <= cfg.training.warmup_steps:
        overrides.append(f"training.warmup_steps={max_steps // 10}")


def saved_config(run_dir: Path) -> Path | None:
    """The config a resumed run continues with: the run's own ``config.yaml`` (the user may have edited it:
    what can change on resume is honoured, what cannot is refused by ``check_resumable``), else the newest
    checkpoint's copy."""
    from gptrs.training.checkpoint import find_latest

    latest = find_latest(run_dir / CHECKPOINTS_DIR)
    for p in [run_dir / CONFIG_FILE] + ([latest.path / CONFIG_FILE] if latest else []):
        if p.is_file():
            return p
    return None


def _existing_run_error(run_dir: Path) -> GptrsError | None:
    from gptrs.training.checkpoint import damaged_checkpoints, find_latest

    latest = find_latest(run_dir / CHECKPOINTS_DIR)
    if latest is not None:
        return GptrsError(
            f"{run_dir} already holds a run (checkpoint {latest.name} at step {latest.step}): "
            "add --resume to continue it, or choose a new --out"
        )
    damaged = damaged_checkpoints(run_dir / CHECKPOINTS_DIR)
    if damaged:  # starting over would write new checkpoints over them
        return GptrsError(
            f"{run_dir} already holds a run whose checkpoints are damaged ({', '.join(d.name for d in damaged)}): "
            "choose a new --out, or move them out of the way"
        )
    return None


def _check_run_dir(run_dir: Path) -> None:
    """--out must be a directory or creatable as one: a regular file there (or above it) is named."""
    for p in [run_dir, *run_dir.parents]:
        if p.is_dir():
            return
        if p.exists() or p.is_symlink():
            where = "is" if p == run_dir else f"is below {p}, which is"
            raise GptrsError(
                f"--out {run_dir}: {where} a file, not a directory (give a directory for the run)"
            )


def _write_config(cfg: Config, run_dir: Path) -> None:
    """The run's config.yaml says what this invocation trains with; a file that already says so (the user's
    own edit, comments and all) is left as it is."""
    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            if load_config(path) == cfg:
                return
        except GptrsError:
            pass  # unreadable: replaced by what this run uses
        log.info("updating %s", path)
    save_config(cfg, path)  # validated when loaded: written as it is


def train(args: argparse.Namespace) -> int:
    import torch

    from gptrs.config.budget import check_fits, device_memory
    from gptrs.data import prepare_data
    from gptrs.model import build_model
    from gptrs.training.distributed import cleanup_distributed, setup_distributed
    from gptrs.training.run_lock import RunLock
    from gptrs.training.state import check_resumable
    from gptrs.training.trainer import Trainer, TrainingInterrupted

    run_dir = Path(args.out).expanduser() if args.out else None
    cfg, name = load_run_config(args, run_dir)
    run_dir = run_dir or Path("runs") / name
    _check_run_dir(run_dir)
    info, device = setup_distributed(args.device)  # the one place the process group is joined
    check_fits(cfg, device_memory(device), str(device))  # before anything is built (config/budget.py)
    lock = RunLock(run_dir).acquire() if info.is_main else None
    try:
        if info.is_main and not args.resume:
            err = _existing_run_error(run_dir)
            if err is not None:
                raise err
        if info.is_main and args.resume:  # before config.yaml is rewritten with the changed values
            changes = check_resumable(run_dir, cfg)
            if changes:
                log.info("resuming with settings changed since the checkpoint: %s", "; ".join(changes))
        if info.is_main:
            log.info("run directory: %s", run_dir)
            _write_config(cfg, run_dir)
        bundle = prepare_data(
            cfg,
            run_dir,
            rank=info.rank,
            world_size=info.world_size,
            device=device,
            log=log.info if info.is_main else log.debug,
        )
        tok = bundle.tokenizer
        torch.manual_seed(cfg.training.seed)
        model = build_model(cfg, vocab_size=tok.get_vocab_size(), pad_token_id=tok.pad_token_id)
        trainer = Trainer(model, tok, cfg, device, run_dir=run_dir, run_lock=lock)
        trainer.data_stats = dict(bundle.stats)
        val = bundle.val.shard(info.rank, info.world_size) if info.is_distributed else bundle.val
        try:
            result = trainer.train(bundle.train, val, resume=args.resume)
        except TrainingInterrupted as e:
            sys.stderr.write(f"{TAG}: {e}\n")
            return 128 + e.signum
        if info.is_main:
            _report(result, bundle.stats, model, tok, cfg, device)
            print("\n".join(next_steps(run_dir, result["step"], cfg)), flush=True)
        return 0
    finally:
        if lock is not None:
            lock.release()
        cleanup_distributed()


def _report(
    result: dict[str, Any], stats: dict[str, Any], model: Any, tok: Any, cfg: Config, device: Any
) -> None:
    """Print the outcome on stdout: validation loss against the unigram baseline, then a sample."""
    import torch

    val, unigram = result.get("val_loss"), stats.get("unigram_loss")
    lines = [trained_line(result)]
    if val is not None:
        bpb = f", {result['val_bpb']:.3f} bits/byte" if result.get("val_bpb") else ""
        lines.append(f"validation loss {val:.4f} (perplexity {math.exp(min(val, 50)):.1f}{bpb})")
    if unigram is not None:
        lines.append(f"unigram baseline loss {unigram:.4f} (a model that ignores context)")
    print("\n".join(lines), flush=True)
    tc = cfg.training
    if tc.sample_tokens <= 0:
        return
    from gptrs.generate import encode_prompt, stream_text

    ids = encode_prompt(tok, tc.sample_prompt, cfg.data.separator)
    print(f"--- sample ({tc.sample_tokens} tokens, temperature 0.8, top-k 50) ---", flush=True)
    sys.stdout.write(tc.sample_prompt)
    model.eval()
    with torch.no_grad():
        for piece in stream_text(
            model,
            tok,
            torch.tensor([ids], device=device),
            max_new_tokens=tc.sample_tokens,
            temperature=0.8,
            top_k=50,
            seed=tc.seed,
        ):
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def trained_line(result: dict[str, Any]) -> str:
    """What this invocation trained (a resumed run: only the steps after its checkpoint), or that nothing was
    left to train."""
    step, start = result["step"], result.get("start_step", 0)
    done, tokens = step - start, result["tokens"] - result.get("start_tokens", 0)
    if done == 0 and result.get("resumed"):
        return (
            f"nothing left to train: the run was already at step {step} of training.max_steps "
            f"{result.get('max_steps', step)} (add --set training.max_steps=N to train on)"
        )
    line = f"trained {done} steps ({tokens:,} tokens) in {result['elapsed_s']:.0f} s"
    return line + (f", from step {start} to step {step}" if start else "")


def next_steps(run_dir: Path, step: int, cfg: Config) -> list[str]:
    """The closing lines: where the run is, which of its files exist, and the commands that use it, with its
    real path and the interpreter that ran this one (a new shell's ``python`` may not see gptrs)."""
    d = shlex.quote(str(run_dir))
    hf = shlex.quote(str(run_dir / "hf"))
    prompt = shlex.quote(cfg.training.sample_prompt or "def ")
    py = shlex.quote(sys.executable or "python")
    files = [f"checkpoints in {run_dir / CHECKPOINTS_DIR}"] + [
        name for name in (METRICS_FILE, LOSS_PLOT_FILE) if (run_dir / name).is_file()
    ]
    from gptrs.config import resolve_model
    from gptrs.model import hf as hf_export

    try:  # a model with a switch no transformers class computes gets no export line (it would be refused)
        hf_export.target(resolve_model(cfg.model))
        export = [f"  {py} -m gptrs.export --model-path {d} --format hf --out {hf}   # for transformers"]
    except hf_export.ExportError:
        export = []
    return [
        f"run directory: {run_dir} ({', '.join(files)})",
        "next:",
        f"  {py} -m gptrs.generate --model-path {d} --prompt {prompt} --max-new-tokens 100   # sample",
        *export,
        f"  {py} -m gptrs.train --out {d} --resume --set training.max_steps={2 * max(step, 1)}   # train on",
    ]


def main(argv: Sequence[str] | None = None, *, prog: str = TAG) -> int:
    """Entry point of ``gptrs-train`` and ``python -m gptrs.train``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.log_level)
    return run_main(lambda: train(args), tag=TAG, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main(prog="python -m gptrs.train"))
