"""The benchmark suite runs end to end: ``python -m benches all --quick`` exits 0 and every suite present in
the checkout writes its JSON (with the machine it ran on); the train and generate suites' figures are sane.

No timing is asserted here (timing goals live in ``benches/``); the quick run only proves each suite works.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


from benches.__main__ import SUITES  # noqa: E402


def _present(suite: str) -> bool:
    return (REPO / (SUITES[suite].replace(".", "/") + ".py")).is_file()


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_all_quick_writes_every_suite(tmp_path: Path) -> None:
    env = {**os.environ, "GPTRS_BENCH_RESULTS_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-m", "benches", "all", "--quick"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # a hang guard, not a timing goal
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = proc.stdout[proc.stdout.rindex("=== summary") :]
    for suite in SUITES:
        path = tmp_path / f"{suite}_quick.json"
        if not _present(suite):
            assert f"{suite:<12} not in this checkout" in summary
            assert not path.exists()
            continue
        if suite == "gpu" and not torch.cuda.is_available():
            assert f"{suite:<12} skipped (no CUDA device)" in summary, summary
            assert not path.exists()
            continue
        assert f"{suite:<12} ok" in summary, summary
        data = json.loads(path.read_text())
        assert data["suite"] == suite and data["quick"] is True
        machine = data["machine"]
        assert machine["torch"] and machine["logical_cpus"] >= 1 and machine["cpu"]

    train = json.loads((tmp_path / "train_quick.json").read_text())
    for shape in train["shapes"]:
        assert {"hf_eager", shape["ours"]} <= set(shape["contenders"])
        for c in shape["contenders"].values():
            assert _positive(c["tokens_per_s"]) and _positive(c["mfu"]) and c["steps_timed"] >= 1
        assert _positive(shape["speedup_vs_peer"])
    assert (tmp_path / "train_quick.png").stat().st_size > 0

    recipe = json.loads((tmp_path / "recipe_quick.json").read_text())
    assert set(recipe["arms"]) == {"gpt2", "nanochat"} and recipe["data"]["val_docs"] >= 1
    for arm in recipe["arms"].values():  # each run is a Trainer run, evaluated at its last step
        for run in arm["runs"]:
            assert run["stop_reason"] in ("max_steps", "time_budget") and run["steps"] >= 1
            assert run["curve"][-1]["step"] == run["steps"] and _positive(run["train_s"])
            assert all(_positive(pt["bpb"]) and pt["train_s"] <= run["train_s"] for pt in run["curve"])
        assert arm["curve"] and _positive(arm["curve"][-1]["bpb_spread"]["mean"])

    gen = json.loads((tmp_path / "generate_quick.json").read_text())
    for shape in gen["shapes"]:
        assert shape["cache_equals_recompute"] is True
        for d in shape["dtypes"].values():
            assert _positive(d["ours"]["new_tokens_per_s"]) and _positive(d["hf"]["new_tokens_per_s"])
        assert _positive(shape["perplexity"]["fp32"]) and _positive(shape["perplexity"]["int8"])
    assert (tmp_path / "generate_quick.png").stat().st_size > 0


def test_missing_suite_is_reported_not_a_crash(monkeypatch, capsys, tmp_path: Path) -> None:
    """A suite whose module is absent: asked for alone it is a one-line error (exit 2), not a traceback."""
    import benches.__main__ as entry

    monkeypatch.setenv("GPTRS_BENCH_RESULTS_DIR", str(tmp_path))
    monkeypatch.setitem(entry.SUITES, "ghost", "benches.no_such_suite")
    assert entry.main(["ghost", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "'ghost' is not available" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


PEERS = ("tiktoken", "tokenizers", "rustbpe", "transformers")


def _without_peers(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import the test extras the suites compare against (a sitecustomize
    marks them missing, as if never installed)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        f"import sys\nfor name in {PEERS!r}:\n    sys.modules[name] = None\n", encoding="utf-8"
    )
    path = os.pathsep.join([str(site), str(REPO / "python"), str(REPO)])
    return {**os.environ, "PYTHONPATH": path, "GPTRS_BENCH_RESULTS_DIR": str(tmp_path / "results")}


def test_a_suite_without_its_extras_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = _without_peers(tmp_path)
    for suite, names in (("tokenizer", "tiktoken, tokenizers, rustbpe"), ("train", "transformers")):
        proc = subprocess.run(
            [sys.executable, "-m", "benches", suite, "--quick"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,  # a hang guard
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert proc.stderr.splitlines() == [
            f'[{suite}] needs {names}, which is not installed: install the test extras with pip install -e ".[test]"'
        ]
        assert "Traceback" not in proc.stdout and not (tmp_path / "results").exists()


def test_all_skips_suites_without_their_extras(monkeypatch, capsys) -> None:
    """``all``: one line for each suite that cannot run, the others run, and the exit status is 2."""
    import benches.__main__ as entry

    for name in PEERS:
        monkeypatch.setitem(sys.modules, name, None)
    ran: list[str] = []

    def fake_run(cmd, **kwargs):
        ran.append(cmd[3])
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(entry.subprocess, "run", fake_run)
    assert entry.main(["all", "--quick"]) == 2
    out, err = capsys.readouterr()
    needy = [s for s in SUITES if s in ("tokenizer", "train", "generate")]
    no_gpu = [] if torch.cuda.is_available() else ["gpu"]  # skipped, not a missing extra
    assert ran == [s for s in SUITES if s not in needy + no_gpu]
    assert [line.split("]")[0] for line in err.splitlines()] == [f"[{s}" for s in needy]
    for suite in needy:
        assert f"{suite:<12} skipped (a test extra is missing)" in out


def test_a_missing_extra_raised_inside_a_suite_is_one_line(monkeypatch, capsys) -> None:
    import types

    import benches.__main__ as entry

    def run_missing(quick: bool) -> dict:
        raise ModuleNotFoundError("No module named 'pyarrow'", name="pyarrow")

    def run_bug(quick: bool) -> dict:
        raise ModuleNotFoundError("No module named 'gptrs.nothing'", name="gptrs.nothing")

    monkeypatch.setitem(entry.SUITES, "fake", "fake_suite")
    monkeypatch.setitem(sys.modules, "fake_suite", types.SimpleNamespace(run=run_missing))
    assert entry.main(["fake", "--quick"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == '[fake] needs pyarrow, which is not installed: install the test extras with pip install -e ".[test]"\n'
    )
    monkeypatch.setitem(sys.modules, "fake_suite", types.SimpleNamespace(run=run_bug))
    assert entry.main(["fake", "--quick"]) == 1  # not an extra: a bug, with its traceback
    assert "Traceback" in capsys.readouterr().err
