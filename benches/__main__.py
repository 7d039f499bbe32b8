"""The benchmark suite: ``python -m benches [tokenizer|data|train|generate|reliability|recipe|gpu|serve|all] [--quick]``.

Each suite is a module with ``run(quick: bool) -> dict``; this entry point runs it, prints its table
(the module's ``print_table(results)`` when it has one) and writes ``benches/results/<suite>.json`` with the
machine, versions and git commit (``<suite>_quick.json`` for ``--quick``). ``train`` and ``generate`` also
draw ``<suite>.png``. ``all`` runs every suite in its own process (so one suite's threads, compiled
graphs and memory never colour the next) and carries on past a suite that fails or is not there yet.

Arguments after the suite's name that this entry point does not know go to the suite's own ``main`` (e.g.
``python -m benches recipe --seeds 3 --arm ...``; ``python -m benches.bench_recipe --help`` lists them).

``--quick`` uses tiny shapes and one or two timed steps: it only checks that every suite runs (the whole
``all --quick`` stays under 3 minutes on 2 cores). The full run is what the README's tables quote.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import time
import traceback
from typing import Any

from benches import common
from gptrs.cli import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, ArgumentParser, summary

SUITES = {
    "tokenizer": "benches.bench_tokenizer",
    "data": "benches.bench_data",
    "train": "benches.bench_train",
    "generate": "benches.bench_generate",
    "reliability": "tests.reliability.reliability",
    "recipe": "benches.bench_recipe",
    "gpu": "benches.bench_gpu",
    "serve": "benches.bench_serve",
}
MISSING = 3  # exit status of a suite whose module is not in this checkout
# The peers each suite measures against: the test extras (pyproject.toml), not gptrs's own dependencies.
EXTRAS = {
    "tokenizer": ("tiktoken", "tokenizers", "rustbpe"),
    "train": ("transformers",),
    "generate": ("transformers",),
    "serve": ("fastapi", "uvicorn", "requests"),
}
EXTRAS_HINT = 'pip install -e ".[test]"'


def _import(suite: str) -> Any | None:
    name = SUITES[suite]
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name == name:  # the suite itself is absent (a missing dependency of it is a real failure)
            return None
        raise


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def missing_extra(suite: str, error: ModuleNotFoundError | None = None) -> str | None:
    """The line to print when ``suite`` cannot run for want of a test extra (checked before it starts, or
    read from the ``error`` it raised); None when nothing is missing or ``error`` is about something else."""
    if error is not None:
        top = (error.name or "").split(".")[0]
        known = {m for mods in EXTRAS.values() for m in mods} | {"matplotlib", "pyarrow", "hypothesis"}
        missing = [top] if top in known else []
    else:
        missing = [m for m in EXTRAS.get(suite, ()) if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    names = ", ".join(missing)
    return f"[{suite}] needs {names}, which is not installed: install the test extras with {EXTRAS_HINT}"


def run_suite(suite: str, quick: bool, threads: int | None) -> int:
    """Run one suite in this process; 0 ok, 1 failed, MISSING when its module does not exist."""
    module = _import(suite)
    if module is None:
        print(f"[{suite}] skipped: {SUITES[suite]} is not in this checkout")
        return MISSING
    if (line := missing_extra(suite)) is not None:
        print(line, file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"=== {suite}{' (quick)' if quick else ''}", flush=True)
    t0 = time.perf_counter()
    with common.torch_threads(threads):
        results = module.run(quick)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    path = common.write_results(suite, results, quick)
    printer = getattr(module, "print_table", None)
    if printer is None and suite == "tokenizer":
        printer = getattr(module, "_print", None)  # the tokenizer suite's own table
    if printer is not None:
        results["json"] = str(path)
        printer(results)
    else:
        common.print_generic(results)
    print(f"[{suite}] {results['seconds']} s, results: {path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m benches", description=summary(__doc__))
    parser.add_argument("suite", nargs="?", default="all", choices=[*SUITES, "all"])
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes, 1-2 timed steps: checks each suite runs"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch intra-op threads (default: physical cores, {common.physical_cores()} here)",
    )
    args, extra = parser.parse_known_args(argv)
    threads = args.threads or common.physical_cores()
    if extra:  # the suite's own options
        module = _import(args.suite) if args.suite != "all" else None
        if module is None or not inspect.signature(getattr(module, "main", lambda: 0)).parameters:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        with common.torch_threads(threads):
            return int(module.main([*extra, *(["--quick"] if args.quick else [])]) or 0)
    if args.suite != "all":
        try:
            status = run_suite(args.suite, args.quick, threads)
        except ModuleNotFoundError as e:
            if (line := missing_extra(args.suite, e)) is None:
                traceback.print_exc()
                return EXIT_INTERNAL_ERROR
            print(line, file=sys.stderr)
            return EXIT_USER_ERROR
        except Exception:
            traceback.print_exc()
            return EXIT_INTERNAL_ERROR
        if status == MISSING:
            print(f"error: suite {args.suite!r} is not available in this checkout", file=sys.stderr)
            return EXIT_USER_ERROR
        return status

    states: dict[str, str] = {}
    t0 = time.perf_counter()
    skipped = False
    for suite in SUITES:
        if (line := missing_extra(suite)) is not None:
            print(line, file=sys.stderr, flush=True)
            states[suite], skipped = "skipped (a test extra is missing)", True
            continue
        if suite == "gpu" and not _has_cuda():  # not a failure: `benches gpu --device cpu --tiny` checks it
            states[suite] = "skipped (no CUDA device)"
            continue
        cmd = [sys.executable, "-m", "benches", suite, "--threads", str(threads)] + (
            ["--quick"] if args.quick else []
        )
        t = time.perf_counter()
        rc = subprocess.run(cmd, cwd=common.REPO, env=os.environ.copy()).returncode
        took = f"{time.perf_counter() - t:.0f} s"
        states[suite] = {0: f"ok ({took})", EXIT_USER_ERROR: "not in this checkout"}.get(
            rc, f"FAILED (exit {rc}, {took})"
        )
    print(f"\n=== summary ({time.perf_counter() - t0:.0f} s)")
    for suite, state in states.items():
        print(f"{suite:<12} {state}")
    if any(s.startswith("FAILED") for s in states.values()):
        return EXIT_INTERNAL_ERROR
    return EXIT_USER_ERROR if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
