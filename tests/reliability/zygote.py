"""A fork server for the hostile-input harness: torch and gptrs are imported once, each case runs in a fork.

Every CLI and isolated case runs in a process of its own, under an address-space cap and a timeout, so that a
crash, an unbounded allocation or a hang fails the case and not the harness. Started with ``subprocess``,
such a process spends 3-5 s of a 2-core machine importing torch before the case even starts, and the tables
hold over a hundred of them. The zygote (``python -m tests.reliability.zygote``, started once) imports the
heavy modules and runs no torch op (so no thread pool exists yet and forking is safe); per case it forks a
child that caps its address space, points stdin at /dev/null and stdout/stderr at files, and runs the CLI
module as ``python -m`` would (``runpy``), or the isolated case's function. The zygote waits with the timeout
and kills the child past it.

What a case sees is what a fresh process sees: the CLI modules themselves are not imported by the zygote
(``runpy`` runs them as ``__main__``), and nothing the zygote imported has run. ``GPTRS_HOSTILE_NO_FORK=1``
runs every case with ``subprocess`` instead, as before.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NO_FORK_ENV = "GPTRS_HOSTILE_NO_FORK"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool


class Zygote:
    """The client side: start the server once (lazily), then :meth:`run` one case at a time."""

    def __init__(self, env: dict[str, str]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        self._dir = tempfile.TemporaryDirectory(prefix="gptrs-zygote-")

    def alive(self) -> bool:
        return self._proc.poll() is None

    def run(self, kind: str, args: list[str], timeout: float, address_space: int) -> Result:
        """``kind`` "module": ``python -m args[0] args[1:]``; "isolated": ``_child_main(args)``."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        out, err = Path(self._dir.name) / "stdout", Path(self._dir.name) / "stderr"
        request = {"kind": kind, "args": args, "timeout": timeout, "limit": address_space}
        self._proc.stdin.write(json.dumps({**request, "out": str(out), "err": str(err)}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the hostile-case zygote died")
        reply = json.loads(line)
        read = lambda p: p.read_text(encoding="utf-8", errors="replace") if p.exists() else ""  # noqa: E731
        return Result(reply["status"], read(out), read(err), reply["timed_out"])

    def close(self) -> None:
        if self.alive():
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                pipe.close()
        self._dir.cleanup()


_ZYGOTE: Zygote | None = None


def get(env: dict[str, str]) -> Zygote | None:
    """The shared zygote (started on first use), or None when ``GPTRS_HOSTILE_NO_FORK=1`` or fork is missing."""
    global _ZYGOTE
    if os.environ.get(NO_FORK_ENV) == "1" or not hasattr(os, "fork"):
        return None
    if _ZYGOTE is None or not _ZYGOTE.alive():
        _ZYGOTE = Zygote(env)
        atexit.register(_ZYGOTE.close)
    return _ZYGOTE


# ---------------------------------------------------------------------------------------------- server side


def _child(request: dict[str, object]) -> None:
    """In the fork: redirect, cap, run, exit. Never returns."""
    code = 1
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "out"), (2, "err")):
            f = os.open(str(request[key]), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(os.devnull, encoding="utf-8")
        import resource

        limit = int(request["limit"])  # type: ignore[call-overload]
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        args = [str(a) for a in request["args"]]  # type: ignore[attr-defined]
        if request["kind"] == "module":
            import runpy

            sys.argv = list(args)
            runpy.run_module(args[0], run_name="__main__", alter_sys=True)
            code = 0
        else:
            from tests.reliability.hostile_cases import _child_main

            code = _child_main(args)
    except SystemExit as e:  # what `python -m` does with it
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)


def _wait(pid: int, timeout: float) -> tuple[int, bool]:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            return os.waitstatus_to_exitcode(status), True
        time.sleep(delay)
        delay = min(0.02, delay * 2)


def main() -> int:
    # The heavy imports a case would otherwise pay for; none of them runs a torch op.
    import numpy  # noqa: F401
    import safetensors.torch  # noqa: F401
    import tests.reliability.hostile_cases  # noqa: F401
    import torch  # noqa: F401
    import yaml  # noqa: F401

    import gptrs.config
    import gptrs.data
    import gptrs.model
    import gptrs.tokenizer
    import gptrs.training  # noqa: F401

    requests = sys.stdin
    replies = sys.stdout
    for line in requests:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        status, timed_out = _wait(pid, float(request["timeout"]))
        replies.write(json.dumps({"status": status, "timed_out": timed_out}) + "\n")
        replies.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
