"""The host allocator settings: applied once on glibc Linux, skipped when disabled."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = (
    "from gptrs.host_memory import tune_host_allocator\n"
    "applied = tune_host_allocator()\n"
    "assert tune_host_allocator() is applied  # idempotent\n"
    "print(applied)\n"
)


def _run(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("GPTRS_MALLOC_TUNING", None)
    if env_value is not None:
        env["GPTRS_MALLOC_TUNING"] = env_value
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_applied_on_linux() -> None:
    assert _run(None) == "True"


def test_disabled_by_environment() -> None:
    assert _run("0") == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
@pytest.mark.parametrize("tuned", [True, False])
def test_activation_sized_buffers_come_from_the_heap(tuned: bool) -> None:
    """The mechanism itself: a 28 MB tensor (just under the raised threshold; the 6/6/384 model's activations
    are 3-12 MB) is carved from the heap when the settings are on, and is a fresh mmap of its own (unmapped
    again on free, so its pages fault in every step) under glibc's default threshold. Read from
    /proc/self/maps in a fresh process: glibc's adaptive threshold only rises past a size after a chunk that
    large was freed, which start-up does not do, so this is deterministic, unlike page-fault counts."""
    code = (
        "import sys, torch\n"
        "from gptrs.host_memory import tune_host_allocator\n"
        "if sys.argv[1] == '1': assert tune_host_allocator()\n"
        "t = torch.empty(7 << 20)  # float32: 28 MB\n"
        "addr = t.data_ptr()\n"
        "for line in open('/proc/self/maps'):\n"
        "    span, *rest = line.split()\n"
        "    lo, hi = (int(v, 16) for v in span.split('-'))\n"
        "    if lo <= addr < hi:\n"
        "        print('heap' if line.rstrip().endswith('[heap]') else 'mmap')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("GPTRS_MALLOC_TUNING", None)
    r = subprocess.run(
        [sys.executable, "-c", code, "1" if tuned else "0"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == ("heap" if tuned else "mmap")
