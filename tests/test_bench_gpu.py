"""benches/bench_gpu.py: one line and exit status 2 without a GPU; every case runs at toy size on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benches import bench_gpu

REPO = Path(__file__).resolve().parents[1]


def test_without_a_gpu_it_says_so_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "GPTRS_BENCH_RESULTS_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "benches", "gpu"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("===")]
    assert len(lines) == 1 and lines[0].startswith("no CUDA GPU: "), proc.stdout
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.usefixtures("one_thread")
def test_tiny_cpu_mode_runs_every_case(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTRS_BENCH_RESULTS_DIR", str(tmp_path))
    assert bench_gpu.main(["--device", "cpu", "--tiny"]) == 0
    out = json.loads((tmp_path / "gpu_quick.json").read_text())
    cases = out["cases"]
    assert set(cases) == {"train_124m", "train_default", "train_large", "generate_b1", "generate_b8"}
    for name, case in cases.items():
        assert "error" not in case, (name, case.get("error"))
        for who, r in case["results"].items():
            assert "error" not in r, (name, who, r["error"])
    ran = cases["train_124m"]["results"]
    assert {"gptrs eager", "gptrs compiled", "HF eager"} <= {w for w, r in ran.items() if "tokens_per_s" in r}
    for batch in (1, 8):
        gen = cases[f"generate_b{batch}"]["results"]
        assert gen["gptrs static+graph"]["tokens_equal_gptrs_eager"] is True
        assert gen["HF generate"]["new_tokens_per_s"] > 0
    assert set(out["goals"]) == set(bench_gpu.goals(cases))
