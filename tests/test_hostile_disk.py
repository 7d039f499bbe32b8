"""Full and read-only disks, for real: a small tmpfs mounted for each case (root only; skipped where mounting is
not permitted), filled or remounted read-only. A checkpoint save, save_pretrained, export, a tokenizer save, the
token cache and a resumed run each fail with one line naming the path and "no space left on device" (or
"Read-only file system"), exit status 2 from the CLIs, and the previous checkpoint stays complete and loadable.
The table is ``tests/reliability/hostile_more.py``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from tests.reliability import hostile_cases as hc
from tests.reliability import hostile_more as hm


@functools.cache
def _mountable() -> bool:
    return hm.can_mount()


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in hm.disk_cases()],
)
def test_disk(case: hc.Case, hostile_model_dir: Path) -> None:
    if not _mountable():
        pytest.skip("cannot mount a tmpfs here (needs root, outside a restricted container)")
    out = hc.run_case(case, hostile_model_dir)
    assert out.ok, out.detail
