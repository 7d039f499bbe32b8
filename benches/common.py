"""Shared pieces of the benchmark suite: machine description, result files, tables, timing helpers, charts.

Every suite returns a JSON-able dict; ``write_results`` adds the machine (CPU model, cores, torch and
transformers versions, git commit, load average) and writes ``<results dir>/<suite>.json`` (``--quick`` runs
write ``<suite>_quick.json`` so they never overwrite the figures the README quotes). The results directory is
``benches/results`` unless ``GPTRS_BENCH_RESULTS_DIR`` says otherwise (the test suite points it at a
temporary directory).

Timing on a shared CPU is noisy, so comparisons alternate the contenders round by round (reversing the
order every round, so neither always runs first) and report medians and the median of per-round ratios:
a slow spell hits both sides of a ratio alike.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "python") not in sys.path:
    sys.path.insert(0, str(REPO / "python"))  # run from a checkout without installing

RESULTS_ENV = "GPTRS_BENCH_RESULTS_DIR"


# ----------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores (hyper-threads not counted), the thread count torch should use for compute."""
    try:
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":", 1)[1].strip()
            elif line.startswith("core id"):
                core = line.split(":", 1)[1].strip()
            elif not line.strip() and core is not None:
                pairs.add((phys, core))
                phys = core = None
        if core is not None:
            pairs.add((phys, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def _git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info() -> dict[str, Any]:
    """What the figures were measured on; goes into every result file."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    for name in ("torch", "transformers", "numpy"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            info[name] = None
    if info.get("torch"):
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


# ----------------------------------------------------------------------------------------------- results


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "benches" / "results")


def results_path(suite: str, quick: bool, suffix: str = ".json") -> Path:
    return results_dir() / f"{suite}{'_quick' if quick else ''}{suffix}"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def write_results(suite: str, results: dict[str, Any], quick: bool) -> Path:
    """Add ``machine``, ``suite`` and ``quick`` to ``results`` and write them atomically; return the path.
    A suite's own ``machine`` entries are kept beside the standard ones."""
    results["machine"] = {**results.get("machine", {}), **machine_info()}
    results["suite"], results["quick"] = suite, quick
    path = results_path(suite, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(results), indent=1) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------- tables


def fmt(v: Any, digits: int = 0) -> str:
    """Numbers with thousands separators; ratios and small numbers keep ``digits`` decimals."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    if title:
        print(f"\n{title}")
    for n, r in enumerate(cells):
        print(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)).rstrip()
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_generic(results: Mapping[str, Any], prefix: str = "") -> None:
    """Fallback printer for a suite without its own: one ``key.path  value`` line per scalar."""
    for k, v in results.items():
        if k == "machine":
            continue
        if isinstance(v, Mapping):
            print_generic(v, f"{prefix}{k}.")
        elif not isinstance(v, (list, tuple)) or len(v) <= 8:
            print(f"{prefix}{k:<40} {fmt(v, 3) if isinstance(v, float) else v}")


# ----------------------------------------------------------------------------------------------- timing


def print_goals_and_chart(out: Mapping[str, Any]) -> None:
    """The last lines of a suite's report: each goal met or missed, and where the chart went."""
    if out.get("goals"):
        print("goals: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in out["goals"].items()))
    if out.get("chart"):
        print(f"chart: {out['chart']}")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def alternate(fns: Mapping[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Time each function once per round, all of them in turn, the order reversed every other round.

    Returns the wall-clock seconds of every call, by name. Callers warm the functions up first.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(slow: Sequence[float], fast: Sequence[float]) -> float:
    """Median over rounds of slow[i] / fast[i]: how many times faster ``fast`` was, round by round."""
    return median([a / b for a, b in zip(slow, fast, strict=False) if b > 0])


def matmul_peak_flops(dtype: Any, n: int = 4096, repeats: int = 3) -> float:
    """FLOP/s of an n x n x n matmul in ``dtype`` (best of ``repeats``): the practical peak for MFU."""
    import torch

    a = torch.full((n, n), 0.5, dtype=dtype)
    b = torch.full((n, n), 0.25, dtype=dtype)
    a @ b  # warm-up: kernel choice, weight packing, allocator
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave as is)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------- charts


def bar_chart(
    path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], ylabel: str, title: str
) -> Path | None:
    """Grouped bar chart (one group per config, one bar per contender) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(groups) + 2), 3.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, [0 if v is None or not math.isfinite(v) else v for v in values], width, label=name)
        ax.bar_label(bars, labels=[fmt(v) for v in values], fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def hf_gpt2(
    vocab: int, seq: int, embed: int, layers: int, heads: int, ff: int | None = None, **extra: Any
) -> Any:
    """HF ``GPT2LMHeadModel`` of a shape, the peer of every GPT-2 comparison: exact GELU as ours, no dropout,
    SDPA attention (``extra`` goes to ``GPT2Config``: token ids). Imported here so the benches that never
    meet it do not need transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = GPT2Config(  # type: ignore[call-arg]
        vocab_size=vocab,
        n_positions=seq,
        n_embd=embed,
        n_layer=layers,
        n_head=heads,
        n_inner=ff if ff is not None else 4 * embed,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
        **extra,
    )
    return GPT2LMHeadModel(cfg)
