"""Hostile arguments to the CLIs (tokenizer train/demo/decode, export, generate), model files that describe
absurd models (refused before anything is built), and training runs: a model or batch no device holds
(refused before data), ``--resume`` with another tokenizer or model setting (refused, the run's config.yaml
unchanged), a corpus of one huge document; the "nothing lost" table (damaged runs resumed, edited configs, NaN
weights, misleading messages). Each in a child process under an address-space cap and a timeout;
training runs are ``slow``. The tables are ``tests/reliability/hostile_more.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability import hostile_cases as hc
from tests.reliability import hostile_more as hm


def _params(cases: list[hc.Case]) -> list[object]:
    return [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in cases]


@pytest.mark.parametrize("case", _params(hm.cli_cases()))
def test_cli(case: hc.Case, hostile_model_dir: Path) -> None:
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail


@pytest.mark.parametrize("case", _params(hm.train_cases()))
def test_train(case: hc.Case, hostile_model_dir: Path) -> None:
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail


@pytest.mark.parametrize("case", _params(hm.nothing_lost_cases()))
def test_nothing_lost(case: hc.Case, hostile_model_dir: Path) -> None:
    """Resumes of damaged runs and edited configs (every file that existed byte-identical after a refusal),
    NaN weights, and the messages that used to mislead (FIFOs, non-UTF-8 files, flags past 64 bits...)."""
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail


def test_tables_hold_the_new_cases() -> None:
    """At least 40 cases beyond the first tables (configs, CLIs, training runs, disks)."""
    assert len(hm.all_more_cases()) >= 40
    ids = [c.id for c in hc.all_cases()]
    assert len(ids) == len(set(ids)), "case ids must be unique (an isolated child finds its case by id)"


def test_the_fork_server_enforces_the_caps_like_a_process() -> None:
    """The zygote's children are held to the same caps as a subprocess: a hang is killed at the timeout, an
    allocation past the address-space cap fails in the child, and the exit status and output come back."""
    from tests.reliability import zygote

    server = zygote.get(hc._env())
    if server is None:
        pytest.skip(f"{zygote.NO_FORK_ENV}=1: cases run with subprocess")
    sleep = server.run(
        "module", ["timeit", "-n", "1", "import time; time.sleep(60)"], 1.0, hc.ADDRESS_SPACE_LIMIT
    )
    assert sleep.timed_out
    big = server.run("module", ["timeit", "-n", "1", "b = bytearray(8 << 30)"], 60.0, hc.ADDRESS_SPACE_LIMIT)
    assert not big.timed_out and big.returncode == 1 and "MemoryError" in big.stderr
    ok = server.run("module", ["timeit", "-n", "1", "-r", "1", "pass"], 60.0, hc.ADDRESS_SPACE_LIMIT)
    assert (ok.returncode, ok.timed_out) == (0, False) and "loop" in ok.stdout
