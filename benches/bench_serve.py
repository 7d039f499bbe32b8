"""Serving benchmark: ``gptrs.serve`` against ``transformers serve`` (with and without its
``--continuous-batching``) on the same exported model, over HTTP, as a user would run them.

The model is the quick-start recipe (``nanochat-small``), trained briefly on the built-in corpus and
exported with ``gptrs.export --format hf``; both servers load it from disk on the CPU. For 1, 8 and 32
concurrent clients, each client sends streaming ``/v1/completions`` requests (a short prompt, 64 new tokens,
temperature 1, a seed per request) back to back: 64 requests per round with 1 and 8 clients, 3 per client
(96) with 32, so that every cell measures a steady state (requests leaving and joining a running batch), not
one burst of a few hundred milliseconds. The servers take turns, the order reversed every round.

Reported per server and client count: new tokens/s (all clients together), time to first token (p50),
request latency (p50, p99) and how many answers came back complete (a finish_reason, and 64 tokens or
fewer with finish_reason 'stop' at EOS), and how many streams ended with ``data: [DONE]`` (``transformers
serve`` leaves it out). Ratios: gptrs over the better ``transformers serve`` mode at each client count.

Goals (2-core CPU): at 32 clients >= 3x the better transformers mode's tokens/s, at 1 client >= 1x, and a
lower p99 latency. ``transformers serve`` needs ``accelerate`` (it always passes a ``device_map``); without it
those rows are reported as skipped with the reason.

Then a soak on a fresh gptrs server: 3,000 requests (200 with ``--quick``) from 16 clients, every fourth a
hostile body (bad JSON, wrong types, out-of-range fields, a 2 MiB body ...); every good request must come
back with its tokens, every bad one with a 4xx; the server's RSS is sampled throughout (early, peak, end).

    python -m benches serve [--quick]
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
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
REQUESTS = 64  # per round and cell (at least 3 per client)
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


def transformers_cli() -> str | None:
    """The ``transformers`` command beside this interpreter (a virtualenv not activated), else on PATH."""
    beside = Path(sys.executable).parent / "transformers"
    return str(beside) if beside.is_file() else shutil.which("transformers")


def transformers_missing() -> str | None:
    """Why ``transformers serve`` cannot run here, or None."""
    if transformers_cli() is None:
        return "the `transformers` command is not installed"
    missing = [m for m in ("accelerate", "fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        return f"`transformers serve` needs {', '.join(missing)} (pip install 'transformers[serving]')"
    return None


@contextlib.contextmanager
def server(kind: str, run: Path, hf: Path, threads: int) -> Iterator[tuple[str, int]]:
    """Start one server, wait until it answers /health, yield its base URL and process id, stop it."""
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
            transformers_cli() or "transformers",
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
        yield url, proc.pid
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
            urls = {k: stack.enter_context(server(k, run_dir, hf, threads))[0] for k in kinds}
            models = {k: ("run" if k == "gptrs" else str(hf)) for k in kinds}
            for k in kinds:  # warm-up: first requests load lazily and compile nothing twice
                load(urls[k], models[k], 2, 1, 10_000)
            for r in range(rounds):
                for c in clients:
                    for k in kinds if r % 2 == 0 else reversed(kinds):
                        per_client = 1 if quick else max(3, REQUESTS // c)
                        measured[k][c].append(load(urls[k], models[k], c, per_client, 1000 * r))
        for k in kinds:
            out["servers"][k] = {str(c): summarize(measured[k][c]) for c in clients}
        with server("gptrs", run_dir, hf, threads) as (url, pid):
            out["soak"] = soak(url, pid, 200 if quick else 3000)
    out["ratios"], out["goals"] = _ratios(out, clients)
    out["goals"]["soak: every good request right, every bad one a 4xx"] = out["soak"]["failures"] == 0
    return out


# Bodies a hostile or broken client sends: each must get a 4xx with an error object, and nothing else.
HOSTILE = [
    b"{",
    b"null",
    b"[]" * 1000,
    b"\x00" * 100,
    b'{"prompt": 5}',
    b'{"prompt": "x", "max_tokens": -1}',
    b'{"prompt": "x", "max_tokens": 100000000}',
    b'{"prompt": ["a", 1]}',
    b'{"prompt": "x", "n": 99}',
    b'{"prompt": "x", "temperature": "hot"}',
    b'{"prompt": [99999999]}',
    b'{"prompt": "x", "stop": [""]}',
    b'{"prompt": "' + b"x" * (2 << 20) + b'"}',
]


def soak(url: str, pid: int, n: int, clients: int = 16) -> dict[str, Any]:
    """``n`` requests from ``clients`` threads, every fourth a hostile body; every good one (streamed or
    not, 1-64 tokens) must come back with its tokens (all of them unless it ended at EOS), every bad one with
    a 4xx error object. The server's RSS is sampled throughout: after the first requests it must level off."""
    import requests

    failures: list[str] = []
    rss: list[int] = []
    stop = threading.Event()
    counter = iter(range(n))
    lock = threading.Lock()

    def sample() -> None:
        while not stop.wait(0.25):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                rss.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)))  # type: ignore[union-attr]

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                try:
                    why = _soak_one(session, url, i)
                except requests.RequestException as e:
                    why = f"{type(e).__name__}: {e}"
                if why:
                    with lock:
                        failures.append(f"request {i}: {why}")

    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    tenth = max(1, len(rss) // 10)
    return {
        "requests": n,
        "seconds": time.perf_counter() - t0,
        "failures": len(failures),
        "first_failures": failures[:5],
        "rss_mb_after_first_tenth": max(rss[:tenth], default=0) / 1024,
        "rss_mb_peak": max(rss, default=0) / 1024,
        "rss_mb_end": (rss[-1] if rss else 0) / 1024,
    }


def _soak_one(session: Any, url: str, i: int) -> str | None:
    """One soak request; the reason it went wrong, or None."""
    if i % 4 == 3:
        r = session.post(f"{url}/v1/completions", data=HOSTILE[i // 4 % len(HOSTILE)], timeout=60)
        ok = 400 <= r.status_code < 500 and "error" in r.json()
        return None if ok else f"hostile body got {r.status_code}: {r.text[:100]}"
    want, stream = 1 + i * 7 % 64, i % 2 == 0
    body = {
        "prompt": f"def f{i}(",
        "max_tokens": want,
        "seed": i,
        "stream": stream,
        "stream_options": {"include_usage": True} if stream else None,
    }
    r = session.post(f"{url}/v1/completions", json=body, timeout=600)
    if r.status_code != 200:
        return f"HTTP {r.status_code}: {r.text[:100]}"
    if stream:
        events = [line[6:] for line in r.text.split("\n") if line.startswith("data: ")]
        if not events or events[-1] != "[DONE]":
            return "the stream did not end with [DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        usage = chunks[-1]["usage"]["completion_tokens"]
        finish = next(c["choices"][0]["finish_reason"] for c in reversed(chunks) if c["choices"])
    else:
        usage, finish = r.json()["usage"]["completion_tokens"], r.json()["choices"][0]["finish_reason"]
    if (finish == "length" and usage == want) or (finish == "stop" and usage <= want):
        return None
    return f"asked {want} tokens, got {usage} with finish_reason {finish}"


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
    if "soak" in out:
        sk = out["soak"]
        print(
            f"soak: {sk['requests']} requests (every 4th hostile) in {sk['seconds']:.0f} s, {sk['failures']} "
            f"failures; server RSS {sk['rss_mb_after_first_tenth']:.0f} MB early, {sk['rss_mb_peak']:.0f} MB "
            f"peak, {sk['rss_mb_end']:.0f} MB at the end"
        )
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
