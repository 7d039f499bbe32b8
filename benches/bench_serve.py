"""Serving benchmark: ``gptrs.serve`` against ``transformers serve`` (with and without its
``--continuous-batching``) on the same exported model, over HTTP, as a user would run them.

The model is the quick-start recipe (``nanochat-small``), trained briefly on the built-in corpus and
exported with ``gptrs.export --format hf``; both servers load it from disk on the CPU. For 1, 8 and 32
concurrent clients, each client sends streaming ``/v1/completions`` requests (a short prompt, 64 new tokens,
temperature 1, a seed per request) back to back. The servers take turns, the order reversed every round.

Reported per server and client count: new tokens/s (all clients together), time to first token (p50),
request latency (p50, p99) and how many answers came back complete (a finish_reason, and 64 tokens or
fewer with finish_reason 'stop' at EOS), and how many streams ended with ``data: [DONE]`` (``transformers
serve`` leaves it out). Ratios: gptrs over the better ``transformers serve`` mode at each client count.

Goals (2-core CPU): at 32 clients >= 3x the better transformers mode's tokens/s, at 1 client >= 1x, and a
lower p99 latency. ``transformers serve`` needs ``accelerate`` (it always passes a ``device_map``); without it
those rows are reported as skipped with the reason.

    python -m benches serve [--quick]
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common

NEW_TOKENS = 64
CLIENTS = (1, 8, 32)
SERVERS = ("gptrs", "transformers", "transformers-cb")
GOALS = {"32 clients >= 3x": (32, 3.0), "1 client >= 1x": (1, 1.0)}


def _env() -> dict[str, str]:
    e = os.environ.copy()
    e["PYTHONPATH"] = os.pathsep.join(
        [str(common.REPO / "python"), str(common.REPO), e.get("PYTHONPATH", "")]
    )
    e["HF_HUB_OFFLINE"] = "1"  # the model is a local directory; never reach for the network
    return e


def prepare_model(tmp: Path, quick: bool) -> tuple[Path, Path]:
    """(run directory, exported HF directory) of the briefly trained quick-start model."""
    run, hf = tmp / "run", tmp / "hf"
    sets = ["training.eval_interval=100000", "training.sample_tokens=0", "training.log_interval=50"]
    if quick:  # tiny shapes: only checks that every server answers
        sets += [
            "model.num_layers=1",
            "model.embed_dim=64",
            "model.ff_dim=128",
            "model.heads=2",
            "model.max_seq_len=128",
            "tokenizer.vocab_size=300",
            "data.num_training_samples=100",
        ]
    steps = 20 if quick else 200
    cmd = [
        sys.executable,
        "-m",
        "gptrs.train",
        "--config",
        "nanochat-small",
        "--out",
        str(run),
        "--device",
        "cpu",
        "--max-steps",
        str(steps),
        *(a for s in sets for a in ("--set", s)),
    ]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, text=True)
    cmd = [sys.executable, "-m", "gptrs.export", "--model-path", str(run), "--format", "hf", "--out", str(hf)]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True, text=True)
    return run, hf


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transformers_missing() -> str | None:
    """Why ``transformers serve`` cannot run here, or None."""
    if shutil.which("transformers") is None:
        return "the `transformers` command is not installed"
    missing = [m for m in ("accelerate", "fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        return f"`transformers serve` needs {', '.join(missing)} (pip install 'transformers[serving]')"
    return None


@contextlib.contextmanager
def server(kind: str, run: Path, hf: Path, threads: int) -> Iterator[str]:
    """Start one server, wait until it answers /health, yield its base URL, stop it."""
    port = _free_port()
    if kind == "gptrs":
        cmd = [
            sys.executable,
            "-m",
            "gptrs.serve",
            "--model-path",
            str(run),
            "--port",
            str(port),
            "--device",
            "cpu",
            "--log-level",
            "WARNING",
        ]
    else:
        cmd = [
            shutil.which("transformers") or "transformers",
            "serve",
            str(hf),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--device",
            "cpu",
            "--log-level",
            "warning",
        ]
        cmd.append("--continuous-batching" if kind == "transformers-cb" else "--no-continuous-batching")
    env = _env() | {"OMP_NUM_THREADS": str(threads)}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{kind} exited ({proc.returncode}): {log.read().decode()[-1500:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} did not start in 300 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def one_request(url: str, model: str, i: int) -> dict[str, Any]:
    """One streaming completion: time to first text, total time, tokens, and whether it came back whole."""
    import requests

    body: dict[str, Any] = {
        "model": model,
        "prompt": f"def f{i}(x",
        "max_tokens": NEW_TOKENS,
        "temperature": 1.0,
        "seed": i,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    first = None
    chunks, usage, finish, done = 0, None, None, False
    with requests.post(f"{url}/v1/completions", json=body, stream=True, timeout=600) as r:
        if r.status_code != 200:
            return {
                "ok": False,
                "error": f"HTTP {r.status_code}: {r.text[:200]}",
                "seconds": time.perf_counter() - t0,
            }
        for line in r.iter_lines():
            if not line.startswith(b"data: "):
                continue
            data = line[6:]
            if data == b"[DONE]":
                done = True
                break
            chunk = json.loads(data)
            usage = chunk.get("usage") or usage
            for c in chunk.get("choices", []):
                if c.get("text") and first is None:
                    first = time.perf_counter()
                chunks += bool(c.get("text"))
                finish = c.get("finish_reason") or finish
    seconds = time.perf_counter() - t0
    tokens = usage["completion_tokens"] if usage else chunks  # a server without usage: one chunk per token
    # Complete: a finish_reason, and all 64 tokens unless it stopped at EOS. `data: [DONE]` is counted on its
    # own: `transformers serve` ends its completion streams without it.
    ok = (finish == "length" and tokens == NEW_TOKENS) or (finish == "stop" and tokens <= NEW_TOKENS)
    return {
        "ok": ok,
        "done_marker": done,
        "tokens": tokens,
        "seconds": seconds,
        "ttft": (first or t0 + seconds) - t0,
        "finish": finish,
    }


def load(url: str, model: str, clients: int, per_client: int, offset: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``per_client`` requests back to back; the whole wall time."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for j in range(per_client):
            try:
                out = one_request(url, model, offset + k * per_client + j)
            except Exception as e:  # a dropped connection is an incomplete answer, not a crash of the bench
                out = {"ok": False, "error": f"{type(e).__name__}: {e}", "seconds": math.nan}
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"wall": wall, "requests": results}


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(x for x in xs if not math.isnan(x))
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    reqs = [r for rd in rounds for r in rd["requests"]]
    good = [r for r in reqs if r["ok"]]
    rates = [sum(r.get("tokens", 0) for r in rd["requests"] if r["ok"]) / rd["wall"] for rd in rounds]
    errors = sorted({r["error"] for r in reqs if "error" in r})[:3]
    return {
        "tokens_per_s": common.median(rates),
        "ttft_p50_ms": 1000 * _pct([r["ttft"] for r in good], 0.5),
        "latency_p50_s": _pct([r["seconds"] for r in good], 0.5),
        "latency_p99_s": _pct([r["seconds"] for r in good], 0.99),
        "complete": f"{len(good)}/{len(reqs)}",
        "all_complete": len(good) == len(reqs),
        "ended_with_done": f"{sum(bool(r.get('done_marker')) for r in reqs)}/{len(reqs)}",
        **({"errors": errors} if errors else {}),
    }


def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    rounds = rounds or (1 if quick else 3)
    clients = (1, 4) if quick else CLIENTS
    threads = common.physical_cores()
    out: dict[str, Any] = {
        "new_tokens": NEW_TOKENS,
        "rounds": rounds,
        "clients": list(clients),
        "servers": {},
    }
    skip = transformers_missing()
    kinds = [k for k in SERVERS if k == "gptrs" or skip is None]
    for k in SERVERS:
        if k not in kinds:
            out["servers"][k] = {"skipped": skip}
    with tempfile.TemporaryDirectory(prefix="gptrs-bench-serve-") as tmp:
        run_dir, hf = prepare_model(Path(tmp), quick)
        measured: dict[str, dict[int, list[dict[str, Any]]]] = {k: {c: [] for c in clients} for k in kinds}
        with contextlib.ExitStack() as stack:
            urls = {k: stack.enter_context(server(k, run_dir, hf, threads)) for k in kinds}
            models = {k: ("run" if k == "gptrs" else str(hf)) for k in kinds}
            for k in kinds:  # warm-up: first requests load lazily and compile nothing twice
                load(urls[k], models[k], 2, 1, 10_000)
            for r in range(rounds):
                for c in clients:
                    for k in kinds if r % 2 == 0 else reversed(kinds):
                        per_client = 1 if quick else max(1, 32 // c)
                        measured[k][c].append(load(urls[k], models[k], c, per_client, 1000 * r))
        for k in kinds:
            out["servers"][k] = {str(c): summarize(measured[k][c]) for c in clients}
    out["ratios"], out["goals"] = _ratios(out, clients)
    return out


def _ratios(out: dict[str, Any], clients: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, bool]]:
    ours = out["servers"].get("gptrs", {})
    peers = [
        out["servers"][k] for k in ("transformers", "transformers-cb") if "skipped" not in out["servers"][k]
    ]
    ratios: dict[str, Any] = {}
    for c in clients:
        best = max((p[str(c)]["tokens_per_s"] for p in peers), default=math.nan)
        p99 = min((p[str(c)]["latency_p99_s"] for p in peers), default=math.nan)
        ratios[str(c)] = {
            "throughput_vs_best_transformers": ours[str(c)]["tokens_per_s"] / best,
            "p99_lower": ours[str(c)]["latency_p99_s"] < p99,
        }
    goals = {}
    if peers:
        for name, (c, x) in GOALS.items():
            if str(c) in ratios:
                goals[name] = (
                    ratios[str(c)]["throughput_vs_best_transformers"] >= x and ratios[str(c)]["p99_lower"]
                )
        goals["every answer complete"] = all(
            s[str(c)]["all_complete"] for s in out["servers"].values() if "skipped" not in s for c in clients
        )
    return ratios, goals


def print_table(out: dict[str, Any]) -> None:
    rows = []
    for k, s in out["servers"].items():
        if "skipped" in s:
            rows.append([k, "skipped", "-", "-", "-", "-", "-"])
            continue
        for c in out["clients"]:
            m = s[str(c)]
            ratio = (
                out["ratios"].get(str(c), {}).get("throughput_vs_best_transformers") if k == "gptrs" else None
            )
            rows.append(
                [
                    k,
                    c,
                    m["tokens_per_s"],
                    m["ttft_p50_ms"],
                    m["latency_p50_s"],
                    m["latency_p99_s"],
                    f"{m['complete']}"
                    + (f"  ({ratio:.2f}x)" if ratio is not None and not math.isnan(ratio) else ""),
                ]
            )
    table = [
        [r[0], str(r[1])] + [common.fmt(v, 1) if isinstance(v, float) else str(v) for v in r[2:]]
        for r in rows
    ]
    common.print_table(
        [
            "server",
            "clients",
            "new tok/s",
            "TTFT p50 ms",
            "p50 s",
            "p99 s",
            "complete (vs best transformers)",
        ],
        table,
        title=f"serving, {out['new_tokens']} new tokens per request, {out['rounds']} round(s), alternated",
    )
    for k, s in out["servers"].items():
        if "skipped" in s:
            print(f"{k}: skipped: {s['skipped']}")
    common.print_goals_and_chart(out)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=common.__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    out = run(args.quick)
    print_table(out)


if __name__ == "__main__":
    main()
