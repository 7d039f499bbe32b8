"""Reliability report: crash consistency under SIGKILL, signals, a full disk, and the hostile-input tables.

This is a correctness harness, not a benchmark; it lives with the tests, which run short versions of it.

**Crash harness.** ``python -m gptrs.train`` runs a tiny model on a slice of the built-in corpus (CPU, fp32,
dropout on, so every RNG matters) and is killed with SIGKILL at chosen moments: while the tokenizer trains,
while the token cache is built, during a step, during evaluation, and inside a checkpoint write (writing the
weights, the trainer state, the fsyncs, the renames that replace ``best``/``last``, pruning old ones). Each
kill is followed by ``--resume`` until the run completes. After every kill the run directory is checked:

- every checkpoint that looks complete (a valid ``COMPLETE`` record, including the ``.tmp-``/``.old-`` ones
  that recovery would rename into place) loads (``GPT.from_pretrained``, the trainer state through
  ``torch.load(weights_only=True)``, its config and tokenizer) and holds bitwise the weights an
  uninterrupted run had at that step; no visible checkpoint directory lacks its ``COMPLETE`` record;
- the tokenizer and the token cache, when present, load and equal the uninterrupted run's.

At the end the final weights, optimizer state and logged losses must equal, bitwise, those of a run that was
never killed (same config, same seed). To land kills inside the short windows on purpose, the killed runs go
through :func:`tests.reliability.hook.child_main`, which installs a hook on gptrs' named fault points
(``gptrs.faults``; configured by the ``GPTRS_RELIABILITY_HOOKS`` environment variable) that logs the current
phase to a file and sleeps a little at each stage of a write; the uninterrupted reference run is plain
``python -m gptrs.train``. A fault point the harness relies on that no process ever reached (renamed,
removed) is a failure, not a fault silently skipped.

**Report.** :func:`run` runs the harness, the SIGTERM/SIGINT and disk-full scenarios and every case of
``tests/reliability/hostile_cases.py``, prints one table and writes ``benches/results/reliability.json``.
``tests/test_crash.py`` and ``tests/test_hostile_*.py`` are the short CI versions of the same code.

    python tests/reliability/reliability.py                 # >= 20 kills, a few minutes
    python tests/reliability/reliability.py --kills 40 --seed 3
    python tests/reliability/reliability.py --quick         # 2 kills, in-process hostile cases only
    python -m tests.reliability ...                         # the same
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

if __name__ == "__main__":  # run as a script: make `tests.reliability` importable
    sys.path.insert(0, str(REPO))

from tests.reliability.hook import HOOK_ENV, read_points  # noqa: E402

# Environment for every child: one thread each (the machines are small and shared; also the same thread
# count in every run, which bitwise comparisons want), no network, no progress bars.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "PYTHONUNBUFFERED": "1",
}


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **CHILD_ENV, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "python"), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return env


# ---------------------------------------------------------------------------------------------------------
# Parent side: the tiny run, starting and killing it, checking what it leaves on disk


@dataclass
class TinyRun:
    """The run the harness trains: small enough that a step takes milliseconds on one CPU thread."""

    max_steps: int = 40
    save_interval: int = 2
    eval_interval: int = 4
    keep_last: int = 2
    samples: int = 40  # documents of the built-in corpus
    seed: int = 1337

    def overrides(self, keep_last: int | None = None, save_interval: int | None = None) -> list[str]:
        sets = {
            "data.num_training_samples": self.samples,
            "data.max_eval_tokens": 512,
            "tokenizer.vocab_size": 300,
            "model.embed_dim": 32,
            "model.ff_dim": 64,
            "model.num_layers": 2,
            "model.heads": 2,
            "model.max_seq_len": 32,
            "model.dropout": 0.1,
            "training.batch_size": 4,
            "training.max_steps": self.max_steps,
            "training.warmup_steps": min(2, self.max_steps - 1),
            "training.save_interval": self.save_interval if save_interval is None else save_interval,
            "training.eval_interval": self.eval_interval,
            "training.log_interval": 2,
            "training.keep_last": self.keep_last if keep_last is None else keep_last,
            "training.mixed_precision": "false",
            "training.peak_flops": "1e11",
            "training.sample_tokens": 0,
            "training.seed": self.seed,
        }
        out = []
        for k, v in sets.items():
            out += ["--set", f"{k}={v}"]
        return out

    def argv(
        self, run_dir: Path, *, resume: bool, keep_last: int | None = None, save_interval: int | None = None
    ) -> list[str]:
        return [
            "--out",
            str(run_dir),
            "--device",
            "cpu",
            *(["--resume"] if resume else ["--config", "small"]),  # GPT-2: it has dropout (nanochat has none)
            *self.overrides(keep_last, save_interval),
        ]


def start_train(
    run: TinyRun,
    run_dir: Path,
    *,
    resume: bool,
    hooks: dict[str, Any] | None = None,
    log: Path | None = None,
    keep_last: int | None = None,
    save_interval: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start a training process: plain ``python -m gptrs.train`` without hooks, else through child_main."""
    argv = run.argv(run_dir, resume=resume, keep_last=keep_last, save_interval=save_interval)
    extra = {}
    if hooks is None:
        cmd = [sys.executable, "-m", "gptrs.train", *argv]
    else:
        code = "import sys; from tests.reliability.hook import child_main; sys.exit(child_main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, *argv]
        extra[HOOK_ENV] = json.dumps(hooks)
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # a file: a pipe could fill and block
    try:
        return subprocess.Popen(cmd, cwd=REPO, env=child_env(extra), stdout=out, stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]


def read_phases(phase_file: Path) -> list[str]:
    try:
        return phase_file.read_text().splitlines()
    except FileNotFoundError:
        return []


def log_tail(log: Path, n: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except FileNotFoundError:
        return ""


def load_weights(path: Path) -> dict[str, bytes]:
    """Tensor name -> raw bytes (dtype and shape included): equality of these is bitwise equality."""
    from safetensors.torch import load_file

    return {
        k: f"{t.dtype}{tuple(t.shape)}".encode() + t.contiguous().numpy().tobytes()
        for k, t in load_file(str(path)).items()
    }


def _state_bytes(obj: Any) -> Any:
    """Tensors inside a (nested) state replaced by their raw bytes, for bitwise comparison."""
    import torch

    if isinstance(obj, torch.Tensor):
        return f"{obj.dtype}{tuple(obj.shape)}".encode() + obj.contiguous().numpy().tobytes()
    if isinstance(obj, dict):
        return {k: _state_bytes(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_state_bytes(v) for v in obj]
    return obj


def metric_series(run_dir: Path) -> list[tuple[str, int, float]]:
    from gptrs.training.metrics import read_metrics

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for r in read_metrics(path):
        key = "loss" if r.get("kind") == "train" else "val_loss"
        out.append((str(r.get("kind")), int(r["step"]), float(r[key])))
    return out


@dataclass
class Reference:
    """What the uninterrupted run left: weights at every saved step, final state, logs, tokenizer, cache."""

    run_dir: Path
    weights_by_step: dict[int, Path]
    final_step: int
    losses: list[tuple[str, int, float]]
    tokenizer: bytes
    cache_tokens: bytes

    @classmethod
    def build(cls, run: TinyRun, run_dir: Path, timeout: float) -> Reference:
        from gptrs.training.checkpoint import CHECKPOINTS_DIR, list_checkpoints

        log = run_dir.parent / f"{run_dir.name}.log"
        # A checkpoint at every step, all kept: the weights at any step a killed run may have saved (when
        # checkpoints are written does not change the run: saving reads the RNG states, never draws).
        proc = start_train(run, run_dir, resume=False, log=log, keep_last=10**6, save_interval=1)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the reference run took over {timeout:.0f} s:\n{log_tail(log)}") from None
        if rc != 0:
            raise RuntimeError(f"the reference run failed (exit {rc}):\n{log_tail(log)}")
        by_step: dict[int, Path] = {}
        for c in list_checkpoints(run_dir / CHECKPOINTS_DIR):
            by_step.setdefault(c.step, c.path / "model.safetensors")
        return cls(
            run_dir,
            by_step,
            max(by_step),
            metric_series(run_dir),
            (run_dir / "tokenizer.json").read_bytes(),
            (run_dir / "data" / "train.bin").read_bytes(),
        )


@dataclass
class DirCheck:
    """What one inspection of a run directory found."""

    checked: int = 0  # complete-looking checkpoints loaded and compared
    corrupt: list[str] = field(default_factory=list)  # complete-looking but unloadable or wrong
    incomplete_visible: list[str] = field(default_factory=list)  # visible directory without COMPLETE
    cache_checked: int = 0
    latest_step: int | None = None


def check_run_dir(run_dir: Path, ref: Reference) -> DirCheck:
    """Load every checkpoint that looks complete and compare it with the reference (see the module doc)."""
    from gptrs.config import load_config
    from gptrs.data.token_cache import load_cache
    from gptrs.files import CACHE_HEADER
    from gptrs.model import GPT
    from gptrs.tokenizer import BPETokenizer
    from gptrs.training import checkpoint as ck

    out = DirCheck()
    root = run_dir / ck.CHECKPOINTS_DIR
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not d.is_dir():
            continue
        record = ck.read_complete(d)
        if record is None:
            if not d.name.startswith("."):
                out.incomplete_visible.append(d.name)
            continue
        out.checked += 1
        step = int(record["step"])
        try:
            GPT.from_pretrained(d)
            state = ck.load_trainer_state(d)
            load_config(d / ck.CONFIG_FILE)
            BPETokenizer.load(str(d / ck.TOKENIZER_FILE))
            if int(state["step"]) != step:
                raise ValueError(f"trainer state is at step {state['step']}, COMPLETE says {step}")
            want = ref.weights_by_step.get(step)
            if want is None:
                raise ValueError(f"the reference run saved no checkpoint at step {step}")
            if load_weights(d / ck.MODEL_FILE) != load_weights(want):
                raise ValueError(f"weights differ from the uninterrupted run's at step {step}")
        except Exception as e:
            out.corrupt.append(f"{d.name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
    latest = ck.find_latest(root)
    out.latest_step = latest.step if latest else None
    tok = run_dir / "tokenizer.json"
    if tok.exists() and tok.read_bytes() != ref.tokenizer:
        out.corrupt.append("tokenizer.json differs from the uninterrupted run's")
    header = run_dir / "data" / CACHE_HEADER
    if header.exists():
        out.cache_checked += 1
        try:
            key = json.loads(header.read_text())["key"]
            cache, why = load_cache(run_dir / "data", key)
            if cache is None:
                raise ValueError(why)
            if (run_dir / "data" / "train.bin").read_bytes() != ref.cache_tokens:
                raise ValueError("train.bin differs from the uninterrupted run's")
        except Exception as e:
            out.corrupt.append(f"token cache: {type(e).__name__}: {e}")
    return out


def compare_final(run_dir: Path, ref: Reference) -> list[str]:
    """Differences between the finished run and the reference: weights, optimizer state, logged losses."""
    import torch

    from gptrs.training import checkpoint as ck

    problems = []
    last = ck.find_latest(run_dir / ck.CHECKPOINTS_DIR)
    if last is None or last.step != ref.final_step:
        return [f"no final checkpoint at step {ref.final_step} (latest: {last})"]
    mine, theirs = load_weights(last.path / ck.MODEL_FILE), load_weights(ref.weights_by_step[ref.final_step])
    bad = sorted(k for k in theirs if mine.get(k) != theirs[k])
    if bad or set(mine) != set(theirs):
        problems.append(f"final weights differ: {bad[:5]}")
    ref_last = ref.weights_by_step[ref.final_step].parent
    a = torch.load(last.path / ck.TRAINER_STATE, weights_only=True)["optimizer"]
    b = torch.load(ref_last / ck.TRAINER_STATE, weights_only=True)["optimizer"]
    if _state_bytes(a) != _state_bytes(b):
        problems.append("final optimizer state differs")
    if metric_series(run_dir) != ref.losses:
        problems.append("logged losses differ from the uninterrupted run's")
    return problems


# Kill targets: a phase (prefix of a phase line) and the longest random delay after it starts, in units of
# the hook's nap (``slow``) or in seconds for the training loop.
EARLY_TARGETS = ("tokenizer", "cache:write", "cache:fsync", "cache:rename")
LATE_TARGETS = (
    "step",
    "eval",
    "ckpt:model",
    "ckpt:state",
    "ckpt:fsync",
    "ckpt:rename",
    "prune",
)
# The fault points a full crash run must reach (in some life): the hook aims at all of them.
EXPECTED_POINTS = frozenset(
    (
        *("tokenizer", "tokenizer_done", "cache", "cache:write", "cache_done", "write", "rename"),
        *("train", "step", "eval", "ckpt", "ckpt:model", "ckpt:state", "ckpt_done", "prune"),
    )
)


def phase_label(line: str) -> str:
    """The phase a phase-file line names, for the report: ``ckpt:best`` (a save starting) -> ``ckpt:start``."""
    head, _, rest = line.partition(":")
    if head.endswith("_done"):
        return head[: -len("_done")] + ":done"
    if head == "ckpt" and rest not in ("model", "state", "fsync", "rename"):
        return "ckpt:start"
    return line


def kill_plan(kills: int, rng: random.Random) -> list[str]:
    """Targets for ``kills`` kills: the data preparation first (its phases only happen until the cache
    exists), then every late target in turn, in shuffled rounds; a short plan starts with a step and the
    renames that replace a checkpoint, the windows that matter most."""
    early = list(EARLY_TARGETS) if kills >= 12 else ["cache:write"] if kills >= 3 else []
    late = [] if kills >= 12 else ["step", "ckpt:rename"]
    rest = [t for t in LATE_TARGETS if t not in late]
    rng.shuffle(rest)
    late += rest
    while len(early) + len(late) < kills:
        batch = list(LATE_TARGETS)
        rng.shuffle(batch)
        late += batch
    return (early + late)[:kills]


@dataclass
class CrashReport:
    kills: int = 0
    resumes: int = 0
    kills_by_phase: dict[str, int] = field(default_factory=dict)
    planned: int = 0
    checkpoints_checked: int = 0
    corrupt_checkpoints: int = 0
    incomplete_visible: int = 0
    caches_checked: int = 0
    final_mismatches: int = 0
    problems: list[str] = field(default_factory=list)
    max_steps: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.kills == self.planned
            and self.corrupt_checkpoints == 0
            and self.incomplete_visible == 0
            and self.final_mismatches == 0
            and not self.problems
        )


def _wait_for(
    proc: subprocess.Popen[bytes], phase_file: Path, start: int, ready: Callable[[list[str]], bool]
) -> bool:
    """Poll until ``ready(phases of this life)``; False if the process ended first."""
    while True:
        if ready(read_phases(phase_file)[start:]):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)


def crash_run(
    run: TinyRun,
    work: Path,
    ref: Reference,
    *,
    kills: int,
    seed: int = 0,
    slow: float = 0.03,
    timeout: float = 240.0,
    say: Callable[[str], Any] = lambda s: None,
) -> CrashReport:
    """Train ``run`` in ``work/crashed``, SIGKILLing it ``kills`` times and resuming; check after each kill."""
    t0 = time.perf_counter()
    rng = random.Random(seed)
    run_dir, phase_file, log = work / "crashed", work / "phases.txt", work / "crashed.log"
    hooks = {"phase_file": str(phase_file), "slow": slow}
    report = CrashReport(max_steps=run.max_steps)
    plan = kill_plan(kills, rng)
    report.planned = len(plan)
    phases: Counter[str] = Counter()
    life = 0

    def account(check: DirCheck, when: str) -> None:
        report.checkpoints_checked += check.checked
        report.caches_checked += check.cache_checked
        report.corrupt_checkpoints += len(check.corrupt)
        report.incomplete_visible += len(check.incomplete_visible)
        report.problems += [f"{when}: {p}" for p in check.corrupt]
        report.problems += [f"{when}: {p} has no COMPLETE but is visible" for p in check.incomplete_visible]

    for target in plan:
        start = len(read_phases(phase_file))
        proc = start_train(run, run_dir, resume=life > 0, hooks=hooks, log=log)
        life += 1
        early = target in EARLY_TARGETS

        def ready(lines: list[str], target: str = target, early: bool = early) -> bool:
            if early:  # (or, if that phase is over for good, the training loop)
                return any(p.startswith(target) or p == "train" for p in lines)
            # Only after one checkpoint of this life is on disk, so every life makes progress.
            done = next((i for i, p in enumerate(lines) if p.startswith("ckpt_done")), None)
            return done is not None and any(p.startswith(target) for p in lines[done + 1 :])

        deadline = time.monotonic() + timeout
        reached = _wait_for(
            proc, phase_file, start, lambda lines, d=deadline: ready(lines) or time.monotonic() > d
        )
        if reached and proc.poll() is None:
            # A step takes a few ms, the tokenizer's nap is the window before its file is written.
            window = {"step": 0.02, "tokenizer": slow}.get(target, 2 * slow)
            time.sleep(rng.uniform(0, window))
            proc.send_signal(signal.SIGKILL)
        rc = proc.wait()
        lines = read_phases(phase_file)[start:]
        if rc != -signal.SIGKILL:
            report.problems.append(
                f"life {life}: process ended with status {rc} before the kill aimed at {target!r}"
                + (f":\n{log_tail(log)}" if rc != 0 else "")
            )
            break
        if time.monotonic() > deadline:
            report.problems.append(f"life {life}: no {target!r} phase within {timeout:.0f} s (hang?)")
        report.kills += 1
        hit = lines[-1] if lines else "start"
        phases[phase_label(hit)] += 1
        check = check_run_dir(run_dir, ref)
        account(check, f"after kill {report.kills} ({hit})")
        say(
            f"kill {report.kills:2d}/{len(plan)}: aimed at {target:<13} hit {hit:<22} "
            f"latest checkpoint step {check.latest_step}, {check.checked} checked, "
            f"{len(check.corrupt)} corrupt"
        )

    if report.kills == len(plan):  # resume until done (a clean run needs exactly one more life)
        proc = start_train(run, run_dir, resume=True, hooks=hooks, log=log)
        report.resumes = report.kills
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        if rc != 0:
            report.problems.append(f"the final resume ended with status {rc}:\n{log_tail(log)}")
            report.final_mismatches += 1
        else:
            account(check_run_dir(run_dir, ref), "at the end")
            diffs = compare_final(run_dir, ref)
            report.final_mismatches += len(diffs)
            report.problems += diffs
    else:
        report.resumes = max(0, life - 1)
    missing = sorted(EXPECTED_POINTS - read_points(phase_file))
    if missing:
        report.problems.append(f"fault points never reached (renamed or removed?): {', '.join(missing)}")
    report.kills_by_phase = dict(sorted(phases.items()))
    report.elapsed_s = time.perf_counter() - t0
    return report


def crash_test(
    work: Path,
    *,
    kills: int,
    seed: int = 0,
    slow: float = 0.03,
    say: Callable[[str], Any] = lambda s: None,
    ref: Reference | None = None,
) -> CrashReport:
    """The whole harness: a reference run (unless given), then the killed run, on a run sized for ``kills``."""
    run = TinyRun(max_steps=max(24, 7 * kills + 10))
    work.mkdir(parents=True, exist_ok=True)
    if ref is None or ref.final_step != run.max_steps:
        say(f"reference run: {run.max_steps} steps, never interrupted")
        ref = Reference.build(run, work / "reference", timeout=600)
    return crash_run(run, work, ref, kills=kills, seed=seed, slow=slow, say=say)


# ---------------------------------------------------------------------------------------------------------
# Signals and a full disk


@dataclass
class ScenarioResult:
    name: str
    ok: bool
    detail: str


def _stderr_problems(text: str) -> list[str]:
    bad = []
    if "Traceback" in text:
        bad.append("a traceback")
    if "panicked" in text or "PanicException" in text:
        bad.append("a Rust panic")
    return bad


def signal_scenario(run: TinyRun, work: Path, ref: Reference, signals: Sequence[int]) -> ScenarioResult:
    """Each of ``signals`` in turn stops the run mid-way (after a checkpoint of that life): a checkpoint is
    saved, the exit status is 128 + signum with one line saying where; ``--resume`` then continues, and the
    finished run ends bitwise where the reference does."""
    names = "/".join(signal.Signals(s).name for s in signals)
    name = f"{names} saves, exits {'/'.join(str(128 + s) for s in signals)}, resumes"
    tag = "_".join(str(s) for s in signals)
    run_dir, phase_file, log = work / f"sig{tag}", work / f"sig{tag}.phases", work / f"sig{tag}.log"
    hooks = {"phase_file": str(phase_file), "slow": 0.0}
    problems: list[str] = []
    last = ""
    for i, sig in enumerate(signals):
        start = len(read_phases(phase_file))
        log.unlink(missing_ok=True)
        proc = start_train(run, run_dir, resume=i > 0, hooks=hooks, log=log)
        if not _wait_for(proc, phase_file, start, lambda ls: any(p.startswith("ckpt_done") for p in ls)):
            return ScenarioResult(name, False, f"ended (status {proc.wait()}) before a checkpoint")
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            return ScenarioResult(name, False, f"did not stop within 120 s of {signal.Signals(sig).name}")
        text = log.read_text(errors="replace")
        last = text.strip().splitlines()[-1] if text.strip() else ""
        problems += _stderr_problems(text)
        if rc != 128 + sig:
            problems.append(f"{signal.Signals(sig).name}: exit status {rc}")
        if not re.search(rf"stopped by {signal.Signals(sig).name} at step \d+; checkpoint saved", last):
            problems.append(f"{signal.Signals(sig).name}: last line {last!r}")
        check = check_run_dir(run_dir, ref)
        problems += check.corrupt
    if start_train(run, run_dir, resume=True, hooks=hooks, log=log).wait(timeout=300) != 0:
        problems.append(f"--resume failed:\n{log_tail(log)}")
    else:
        problems += compare_final(run_dir, ref)
    return ScenarioResult(name, not problems, "; ".join(problems) or last)


def disk_full_checkpoint_scenario(run: TinyRun, work: Path, ref: Reference, kind: str) -> ScenarioResult:
    """A checkpoint write fails with ENOSPC: the earlier checkpoints stay whole, the CLI exits 2 with one
    line, and ``--resume`` (disk freed) finishes bitwise like the reference."""
    name = f"disk full while writing a checkpoint ({kind})"
    run_dir, log = work / f"enospc_{kind}", work / f"enospc_{kind}.log"
    hooks = {"phase_file": str(work / f"enospc_{kind}.phases"), "enospc": kind, "enospc_at": 3}
    rc = start_train(run, run_dir, resume=False, hooks=hooks, log=log).wait(timeout=300)
    text = log.read_text(errors="replace")
    last = text.strip().splitlines()[-1] if text.strip() else ""
    problems = _stderr_problems(text)
    if rc != 2:
        problems.append(f"exit status {rc} (expected 2)")
    if f"enospc:{kind}" not in read_phases(work / f"enospc_{kind}.phases"):
        problems.append(f"the full disk ({kind}) was never simulated: its fault point was not reached")
    if "no space left on device" not in last.lower() or "checkpoint" not in last:
        problems.append(f"last line {last!r} (expected the disk error and which checkpoint)")
    check = check_run_dir(run_dir, ref)
    problems += check.corrupt + [f"{d} visible without COMPLETE" for d in check.incomplete_visible]
    if check.latest_step is None:
        problems.append("no earlier checkpoint left")
    if rc == 2:
        resume = start_train(run, run_dir, resume=True, log=log)
        if resume.wait(timeout=300) != 0:
            problems.append(f"--resume failed:\n{log_tail(log)}")
        else:
            problems += compare_final(run_dir, ref)
    return ScenarioResult(name, not problems, "; ".join(problems) or last)


def disk_full_cache_scenario(run: TinyRun, work: Path) -> ScenarioResult:
    """Rebuilding the token cache (a changed source) fails with ENOSPC: the CLI exits 2 with one line and the
    previous cache is still whole (a run with the old settings reuses it)."""
    from gptrs.data.token_cache import load_cache
    from gptrs.files import CACHE_HEADER

    name = "disk full while building the token cache"
    run_dir, log = work / "enospc_cache", work / "enospc_cache.log"
    first = TinyRun(max_steps=3, save_interval=3, eval_interval=3, samples=run.samples)
    if start_train(first, run_dir, resume=False, log=log).wait(timeout=300) != 0:
        return ScenarioResult(name, False, f"setup run failed:\n{log_tail(log)}")
    before = {p.name: p.read_bytes() for p in (run_dir / "data").iterdir() if not p.name.startswith(".")}
    changed = TinyRun(max_steps=4, save_interval=2, eval_interval=2, samples=run.samples + 1)
    hooks = {"phase_file": str(work / "enospc_cache.phases"), "enospc": "cache", "enospc_at": 1}
    rc = start_train(changed, run_dir, resume=True, hooks=hooks, log=log).wait(timeout=300)
    text = log.read_text(errors="replace")
    last = text.strip().splitlines()[-1] if text.strip() else ""
    problems = _stderr_problems(text)
    if rc != 2:
        problems.append(f"exit status {rc} (expected 2)")
    if "enospc:cache" not in read_phases(work / "enospc_cache.phases"):
        problems.append("the full disk was never simulated: the cache:write fault point was not reached")
    if "no space left on device" not in last.lower() or "token cache" not in last:
        problems.append(f"last line {last!r}")
    after = {p.name: p.read_bytes() for p in (run_dir / "data").iterdir() if not p.name.startswith(".")}
    if after != before:
        problems.append(f"cache files changed: {sorted(set(after) ^ set(before)) or 'contents'}")
    key = json.loads((run_dir / "data" / CACHE_HEADER).read_text())["key"]
    if load_cache(run_dir / "data", key)[0] is None:
        problems.append("the previous cache no longer loads")
    return ScenarioResult(name, not problems, "; ".join(problems) or last)


# ---------------------------------------------------------------------------------------------------------
# The report


def _hostile_summary(work: Path, say: Callable[[str], Any], quick: bool) -> dict[str, dict[str, Any]]:
    from tests.reliability import hostile_cases

    per: dict[str, dict[str, Any]] = {}
    for case in hostile_cases.all_cases():
        if quick and (case.argv is not None or case.isolate):
            continue
        outcome = hostile_cases.run_case(case, work / "hostile")
        row = per.setdefault(case.surface, {"tried": 0, "handled": 0, "failures": []})
        row["tried"] += 1
        row["handled"] += outcome.ok
        if not outcome.ok:
            row["failures"].append(f"{case.name}: {outcome.detail}")
            say(f"  hostile input not handled: [{case.surface}] {case.name}: {outcome.detail}")
    return per


def print_table(results: dict[str, Any]) -> None:
    """The report: one ``what  figure`` line per row."""
    rows = results["table"]
    width = max(len(k) for k, _ in rows)
    print()
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


def run(quick: bool = False, *, kills: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the harness, the scenarios and the hostile tables; return the results (``table`` for the report).

    ``quick`` (the benchmark suite's CI mode, which only checks that the suite runs) makes 2 kills, skips the
    scenarios and runs the in-process hostile cases only; the full run makes ``kills`` (default 24) and runs
    everything.
    """
    import tempfile

    kills = kills if kills is not None else (2 if quick else 24)
    say = print
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gptrs-reliability-") as tmp:
        work = Path(tmp)
        say(f"crash harness: {kills} SIGKILLs at chosen moments, resuming each time (seed {seed})")
        crash = crash_test(work / "crash", kills=kills, seed=seed, say=say)
        scenarios: list[ScenarioResult] = []
        if not quick:
            say("signals and a full disk")
            short = TinyRun(max_steps=20)
            ref = Reference.build(short, work / "reference20", timeout=600)
            scenarios += [
                signal_scenario(short, work, ref, [signal.SIGTERM, signal.SIGINT]),
                disk_full_checkpoint_scenario(short, work, ref, "ckpt_model"),
                disk_full_checkpoint_scenario(short, work, ref, "ckpt_state"),
                disk_full_checkpoint_scenario(short, work, ref, "ckpt_fsync"),
                disk_full_cache_scenario(short, work),
            ]
        for s in scenarios:
            say(f"  {'ok  ' if s.ok else 'FAIL'} {s.name}: {s.detail}")
        say(
            "hostile inputs (tests/reliability/hostile_cases.py)"
            + (": in-process cases only" if quick else "")
        )
        hostile = _hostile_summary(work, say, quick)

    table = [
        ("kills (SIGKILL)", f"{crash.kills} of {crash.planned} planned"),
        ("kills by phase", ", ".join(f"{k} {v}" for k, v in crash.kills_by_phase.items())),
        ("resumes", str(crash.resumes)),
        ("checkpoints checked after kills", str(crash.checkpoints_checked)),
        ("corrupt checkpoints found", str(crash.corrupt_checkpoints)),
        ("visible without COMPLETE", str(crash.incomplete_visible)),
        ("final mismatches vs never killed", f"{crash.final_mismatches} (weights, optimizer state, losses)"),
        *[(s.name, "ok" if s.ok else "FAIL") for s in scenarios],
        *[(f"bad inputs: {k}", f"{v['handled']} / {v['tried']} handled") for k, v in hostile.items()],
    ]
    return {
        "command": f"python tests/reliability/reliability.py --kills {kills} --seed {seed}",
        "kills": kills,
        "seed": seed,
        "crash": asdict(crash),
        "crash_ok": crash.ok,
        "scenarios": [asdict(s) for s in scenarios],
        "hostile": hostile,
        "hostile_tried": sum(v["tried"] for v in hostile.values()),
        "hostile_handled": sum(v["handled"] for v in hostile.values()),
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "table": table,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--kills", type=int, help="SIGKILLs in the crash harness (default 24; 2 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan and delays")
    p.add_argument("--quick", action="store_true", help="a short run (CI)")
    args = p.parse_args(argv)
    results = run(args.quick, kills=args.kills, seed=args.seed)
    print_table(results)
    from benches import common  # the report goes beside the benchmark suites' results

    print(f"\nwrote {common.write_results('reliability', results, args.quick)}")
    ok = (
        results["crash_ok"]
        and all(s["ok"] for s in results["scenarios"])
        and results["hostile_handled"] == results["hostile_tried"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
