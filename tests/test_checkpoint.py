"""Checkpoints: atomic writes, discovery of the newest complete one, recovery after a crash, pruning,
safe loading (weights_only: a malicious pickle is refused, not run), RNG state round trips, the run lock."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_gpt
from gptrs.config import Config
from gptrs.errors import CheckpointError, GptrsError
from gptrs.model import GPT
from gptrs.training import checkpoint as ckpt
from gptrs.training.run_lock import RunLock

SHAPE = dict(vocab_size=40, embed_dim=16, ff_dim=32, num_layers=1, heads=2, max_seq_len=8)


def tiny(seed: int = 0) -> GPT:
    return tiny_gpt(seed, **SHAPE)


def state(step: int) -> dict:
    return {"step": step, "history": [{"kind": "train", "step": step, "loss": 1.5}], "t": torch.arange(3)}


def save(root: Path, name: str, step: int, model: GPT | None = None) -> Path:
    return ckpt.save_checkpoint(root, name, step=step, model=model or tiny(step), trainer_state=state(step))


def test_round_trip(tmp_path: Path) -> None:
    model = tiny(1)
    path = ckpt.save_checkpoint(
        tmp_path, "last", step=5, model=model, trainer_state=state(5), config=Config()
    )
    assert sorted(p.name for p in path.iterdir()) == [
        "COMPLETE",
        "config.yaml",
        "model.json",
        "model.safetensors",
        "trainer_state.pt",
    ]
    assert ckpt.read_complete(path)["step"] == 5
    other = tiny(2)
    ckpt.load_model_weights(other, path)
    for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    loaded = ckpt.load_trainer_state(path)
    assert loaded["step"] == 5 and torch.equal(loaded["t"], torch.arange(3))
    assert GPT.from_pretrained(path).num_parameters() == model.num_parameters()  # a model dir too


def test_discovery_picks_the_newest_complete(tmp_path: Path) -> None:
    for step in (2, 4):
        save(tmp_path, ckpt.step_name(step), step)
    save(tmp_path, "best", 2)
    assert ckpt.find_latest(tmp_path).name == "step_000004"
    # newer but incomplete: no COMPLETE, a temp dir, a truncated file
    (tmp_path / "step_000009").mkdir()
    (tmp_path / "step_000009" / "model.safetensors").write_bytes(b"x")
    tmp = save(tmp_path, "step_000008", 8)
    os.replace(tmp, tmp_path / ".tmp-step_000008-123")
    trunc = save(tmp_path, "step_000007", 7)
    with open(trunc / "trainer_state.pt", "r+b") as f:
        f.truncate(10)
    assert ckpt.find_latest(tmp_path).name == "step_000004"
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [2, 2, 4]
    assert ckpt.find_latest(tmp_path / "nothing") is None


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails half way (disk full) leaves the old 'last' whole and no temp dir behind."""
    save(tmp_path, "last", 3)
    before = (tmp_path / "last" / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        OSError, match=r"trainer_state\.pt: no space left on device .*earlier checkpoints are intact"
    ):
        save(tmp_path, "last", 6, tiny(6))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert (tmp_path / "last" / "model.safetensors").read_bytes() == before
    assert ckpt.load_trainer_state(tmp_path / "last")["step"] == 3


def test_fault_points_and_a_full_disk_at_each(tmp_path: Path) -> None:
    """save_checkpoint passes its named fault points in order; a full disk at any of them (as the crash
    harness simulates it) is one OSError line naming the file, and the previous checkpoint stays whole."""
    import errno

    from gptrs import faults

    save(tmp_path, "last", 3)
    seen: list[str] = []
    with faults.install(lambda name, info: seen.append(name)):
        save(tmp_path, "last", 4)
    assert seen[0] == "ckpt" and seen[-1] == "ckpt_done"
    for name in ("ckpt:model", "ckpt:state", "write", "rename"):
        assert name in seen, name
    assert seen.index("ckpt:model") < seen.index("ckpt:state")

    for point, file in (("ckpt:model", "model.safetensors"), ("ckpt:state", "trainer_state.pt")):

        def full(name: str, info: dict, point: str = point) -> None:
            if name == point:
                Path(info["path"]).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")

        with faults.install(full), pytest.raises(OSError) as e:
            save(tmp_path, "last", 5)
        message = str(e.value)
        assert "\n" not in message and f"{file}: no space left on device" in message
        assert "earlier checkpoints are intact" in message
        assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
        assert ckpt.read_complete(tmp_path / "last")["step"] == 4


def test_recover_after_a_crash_between_renames(tmp_path: Path) -> None:
    """Crash after 'last' was moved aside but before the new one was moved in: recover() moves it in."""
    save(tmp_path, "last", 3)
    save(tmp_path, "step_000002", 2)
    new = save(tmp_path, "incoming", 6)
    os.replace(tmp_path / "last", tmp_path / ".old-last-77")
    os.replace(new, tmp_path / ".tmp-last-77")
    assert ckpt.find_latest(tmp_path).step == 2  # dot dirs are never taken as checkpoints
    actions = ckpt.recover(tmp_path)
    assert any("restored last" in a for a in actions)
    assert ckpt.find_latest(tmp_path).step == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_000002"]
    # crash before the new one was complete: the old one comes back
    os.replace(tmp_path / "last", tmp_path / ".old-last-78")
    (tmp_path / ".tmp-last-78").mkdir()
    ckpt.recover(tmp_path)
    assert ckpt.read_complete(tmp_path / "last")["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last", "step_000002"]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 10):
        save(tmp_path, ckpt.step_name(step), step)
    save(tmp_path, "best", 1)
    gone = ckpt.prune(tmp_path, 2)
    assert [p.name for p in gone] == ["step_000001", "step_000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "step_000003", "step_000010"]


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_trainer_state_is_refused_not_run(tmp_path: Path) -> None:
    save(tmp_path, "last", 1)
    marker = tmp_path / "pwned"
    _Evil.marker = marker
    with open(tmp_path / "last" / "trainer_state.pt", "wb") as f:
        pickle.dump({"step": 1, "x": _Evil()}, f, protocol=2)
    with pytest.raises(
        CheckpointError, match=r"not a valid trainer state \(it asks to import posix.system\)"
    ):
        ckpt.load_trainer_state(tmp_path / "last")
    assert not marker.exists()
    (tmp_path / "last" / "trainer_state.pt").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"trainer_state\.pt: not a valid trainer state"):
        ckpt.load_trainer_state(tmp_path / "last")


def test_corrupt_or_mismatched_weights(tmp_path: Path) -> None:
    path = save(tmp_path, "last", 1)
    with pytest.raises(CheckpointError, match=r"missing tensors: transformer\.h\.1"):
        ckpt.load_model_weights(tiny_gpt(**{**SHAPE, "num_layers": 2}), path)
    (path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        ckpt.load_model_weights(tiny(), path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    """Resume (load_model_weights) and generate/export (from_pretrained) read through the same check."""
    model = tiny()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[3, 1] = bad
    path = save(tmp_path, "last", 1, model)
    pattern = r"model\.safetensors: tensor transformer\.h\.0\.mlp\.c_fc\.weight holds 1 non-finite values"
    with pytest.raises(CheckpointError, match=pattern):
        ckpt.load_model_weights(tiny(), path)
    with pytest.raises(CheckpointError, match=pattern):
        GPT.from_pretrained(path)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[3, 1] = 0.5
    ckpt.load_model_weights(tiny(), save(tmp_path, "best", 1, model))  # finite again: loads


def test_resolve_model_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    save(run / "checkpoints", "last", 4)
    assert ckpt.resolve_model_dir(run) == run / "checkpoints" / "last"
    save(run / "checkpoints", "best", 2)
    assert ckpt.resolve_model_dir(run) == run / "checkpoints" / "best"
    assert ckpt.resolve_model_dir(run / "checkpoints" / "last") == run / "checkpoints" / "last"
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        ckpt.resolve_model_dir(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        ckpt.resolve_model_dir(tmp_path / "missing")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 50))
def test_rng_state_round_trip_through_weights_only(seed: int, draws: int) -> None:
    """Capture every RNG, save with torch.save, load with weights_only=True, restore: same draws follow."""
    import io

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    for _ in range(draws):
        torch.rand(1), np.random.rand(), random.random()
    buf = io.BytesIO()
    torch.save(ckpt.capture_rng_state(), buf)
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    buf.seek(0)
    ckpt.restore_rng_state(torch.load(buf, weights_only=True))
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


@given(
    st.recursive(
        st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
        max_leaves=10,
    ),
    st.lists(st.integers(0, 2**32 - 1), max_size=8),
)
def test_to_safe_round_trips_numpy(obj, ints) -> None:
    arr = np.array(ints, dtype=np.uint32)
    value = {"plain": obj, "array": arr, "scalar": np.int64(7)}
    back = ckpt.from_safe(ckpt.to_safe(value))
    assert back["plain"] == obj and back["scalar"] == 7
    assert back["array"].dtype == np.uint32 and np.array_equal(back["array"], arr)


def test_run_lock_refuses_a_second_live_process(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom gptrs.training.run_lock import RunLock\nfrom gptrs.errors import GptrsError\n"
        "try:\n    RunLock(sys.argv[1]).acquire()\nexcept GptrsError as e:\n    print(e)\n    sys.exit(2)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "python")}
    with RunLock(tmp_path):
        RunLock(tmp_path).acquire().release()  # the same process may take it again (CLI, then Trainer)
        r = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env
        )
        assert r.returncode == 2
        assert (
            f"run directory {tmp_path} is in use by another training process (pid {os.getpid()})" in r.stdout
        )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr  # released: free again


def test_run_lock_error_is_a_gptrs_error(tmp_path: Path) -> None:
    assert issubclass(CheckpointError, GptrsError)
    lock = RunLock(tmp_path).acquire()
    try:
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    finally:
        lock.release()
