"""Crash consistency of training, the short CI version of ``tests/reliability/reliability.py``.

``python -m gptrs.train`` on a tiny model is killed with SIGKILL four times (while the token cache is built,
and at random points among: a step, an evaluation, each stage of a checkpoint write, pruning), resumed each
time; after every kill each checkpoint that looks complete must load and hold the weights an uninterrupted
run had at that step, and the finished run must equal the uninterrupted one bitwise (weights, optimizer
state, logged losses). Then SIGTERM and SIGINT (saved checkpoint, status 143/130, resume), and a full disk
while writing a checkpoint or the token cache (earlier files intact, status 2 and one line, then resume).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from tests.reliability import reliability as rel

KILLS = 4
SEED = int(os.environ.get("GPTRS_CRASH_SEED", "0"))  # another seed: other kill moments, same guarantees
RUN = rel.TinyRun(max_steps=7 * KILLS + 10)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> rel.Reference:
    """The same run, never interrupted, with a checkpoint kept at every step."""
    return rel.Reference.build(RUN, tmp_path_factory.mktemp("crash") / "reference", timeout=600)


def test_sigkill_then_resume_is_bitwise_identical(tmp_path: Path, reference: rel.Reference) -> None:
    lines: list[str] = []
    report = rel.crash_test(tmp_path, kills=KILLS, seed=SEED, say=lines.append, ref=reference)
    print("\n".join(lines))
    assert report.problems == []
    assert report.kills == KILLS and report.resumes == KILLS
    assert report.kills_by_phase.get("cache:write", 0) + report.kills_by_phase.get("cache:fsync", 0) >= 1
    assert report.checkpoints_checked >= KILLS  # there were checkpoints on disk to check
    assert report.corrupt_checkpoints == 0
    assert report.incomplete_visible == 0
    assert report.final_mismatches == 0
    assert report.ok


def test_check_run_dir_catches_a_bad_checkpoint(tmp_path: Path, reference: rel.Reference) -> None:
    """The checker can fail: a checkpoint whose weights were changed (COMPLETE kept valid) is reported."""
    import shutil

    from safetensors.torch import load_file, save_file

    run_dir = tmp_path / "run"
    shutil.copytree(reference.run_dir, run_dir, ignore=shutil.ignore_patterns(".lock"))
    assert rel.check_run_dir(run_dir, reference).corrupt == []
    victim = run_dir / "checkpoints" / "step_000004"
    tensors = load_file(str(victim / "model.safetensors"))
    tensors["transformer.wpe.weight"][0, 0] += 1e-6
    save_file(tensors, str(victim / "model.safetensors"), metadata={"format": "pt"})
    record = json.loads((victim / "COMPLETE").read_text())
    record["files"] = {n: (victim / n).stat().st_size for n in record["files"]}  # looks complete again
    (victim / "COMPLETE").write_text(json.dumps(record))
    check = rel.check_run_dir(run_dir, reference)
    assert (
        len(check.corrupt) == 1 and "step_000004" in check.corrupt[0] and "weights differ" in check.corrupt[0]
    )
    (run_dir / "checkpoints" / "step_000006" / "COMPLETE").unlink()
    assert rel.check_run_dir(run_dir, reference).incomplete_visible == ["step_000006"]


def test_sigterm_and_sigint_save_exit_and_resume(tmp_path: Path, reference: rel.Reference) -> None:
    result = rel.signal_scenario(RUN, tmp_path, reference, [signal.SIGTERM, signal.SIGINT])
    assert result.ok, result.detail


@pytest.mark.parametrize(
    "kind",
    [
        "ckpt_model",  # the weights file is half written when the disk fills up
        pytest.param("ckpt_state", marks=pytest.mark.slow),  # the trainer state is
        "ckpt_fsync",  # the data only fails to reach the disk at fsync (delayed allocation)
    ],
)
def test_disk_full_during_checkpoint(tmp_path: Path, reference: rel.Reference, kind: str) -> None:
    result = rel.disk_full_checkpoint_scenario(RUN, tmp_path, reference, kind)
    assert result.ok, result.detail


def test_disk_full_during_token_cache_build(tmp_path: Path) -> None:
    result = rel.disk_full_cache_scenario(RUN, tmp_path)
    assert result.ok, result.detail
