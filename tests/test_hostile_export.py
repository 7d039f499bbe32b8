"""Export over what it reads or over the user's files (issue 22): the checkpoint, the run directory, its
``checkpoints/``, a directory inside a checkpoint, a directory of the user's own files are refused with one
line and exit 2, every file that existed before unchanged (by hash); a fresh ``RUN/hf``, ``--force`` among
the user's files, an earlier export and the export after a killed one succeed, leaving no temporary file.
The table is ``export_cases`` in ``tests/reliability/hostile_more.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability import hostile_cases as hc
from tests.reliability import hostile_more as hm


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in hm.export_cases()])
def test_export(case: hc.Case, hostile_model_dir: Path) -> None:
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail
