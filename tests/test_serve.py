"""python -m gptrs.serve: the OpenAI completions API against trained quick-start models (both families),
the decode loop's batching and fairness, limits, bad input, auth, disconnects, SIGTERM and a bounded soak."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("fastapi", reason='gptrs.serve needs the serve extra: pip install -e ".[serve]"')
import requests  # a dependency of datasets and transformers

from gptrs.serve.api import TextStream

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# A quick-start recipe, shrunk to train in a few seconds: enough that greedy text is text, not noise.
TRAIN_SETS = [
    *("data.num_training_samples=200", "data.max_eval_tokens=2048", "tokenizer.vocab_size=300"),
    *(
        "model.num_layers=1",
        "model.embed_dim=64",
        "model.ff_dim=128",
        "model.heads=2",
        "model.max_seq_len=64",
    ),
    *("training.batch_size=8", "training.eval_interval=200", "training.save_interval=200"),
    *("training.log_interval=100", "training.sample_tokens=0", "training.peak_flops=1e11"),
]


def env() -> dict[str, str]:
    e = os.environ.copy()
    e["PYTHONPATH"] = os.pathsep.join([str(REPO / "python"), str(REPO), e.get("PYTHONPATH", "")])
    e["OMP_NUM_THREADS"] = "1"
    return e


def train(out: Path, config: str) -> Path:
    sets = [a for s in TRAIN_SETS for a in ("--set", s)]
    cmd = [
        sys.executable,
        "-m",
        "gptrs.train",
        "--config",
        config,
        "--out",
        str(out),
        "--device",
        "cpu",
        "--max-steps",
        "200",
        *sets,
    ]
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="session")
def nanochat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("serve") / "nanochat", "nanochat-small")


@pytest.fixture(scope="session")
def gpt2_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(tmp_path_factory.mktemp("serve") / "gpt2", "small")


class Server:
    """``python -m gptrs.serve`` in a subprocess on a free port; its log lines are collected."""

    def __init__(self, run: Path, *args: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "gptrs.serve",
            "--model-path",
            str(run),
            "--port",
            "0",
            "--device",
            "cpu",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 60
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if m := re.search(r"serving on (http://[\d.]+:\d+)/", line):
                self.url = m.group(1)
                return
            assert self.proc.poll() is None, "\n".join(self.log)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line.rstrip())
            self.lines.put(line)

    def health(self) -> dict[str, object]:
        return requests.get(f"{self.url}/health").json()

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@contextlib.contextmanager
def serving(run: Path, *args: str) -> Iterator[Server]:
    server = Server(run, *args)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def reference(run: Path, prompt: str, max_tokens: int) -> str:
    """What `model.generate` continues `prompt` with, greedily, decoded as the server decodes."""
    from gptrs.generate import _token_bytes_fn, encode_prompt, load_for_inference

    model, tok, sep = load_for_inference(str(run), torch.device("cpu"), None)
    ids = torch.tensor([encode_prompt(tok, prompt, sep)])
    out = model.generate(ids, max_tokens, temperature=0.0, eos_token_id=tok.eos_token_id)[0, ids.size(1) :]
    token_bytes, specials = _token_bytes_fn(tok)
    new = []
    for t in out.tolist():
        if t == tok.eos_token_id:
            break
        if t not in specials:
            new.append(token_bytes(t))
    return b"".join(new).decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def nano_server(nanochat_run: Path) -> Iterator[Server]:
    with serving(nanochat_run, "--max-batch", "8", "--max-queue", "40") as s:
        yield s


def test_openai_client_with_and_without_stream(nano_server: Server, nanochat_run: Path) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{nano_server.url}/v1", api_key="unused", max_retries=0)
    model = client.models.list().data[0].id
    prompt = "def __init__(self"
    expected = reference(nanochat_run, prompt, 24)
    assert expected.strip(), "the trained model should continue with some text"

    done = client.completions.create(model=model, prompt=prompt, max_tokens=24, temperature=0)
    assert done.choices[0].text == expected
    assert done.usage is not None and done.usage.completion_tokens <= 24
    assert done.choices[0].finish_reason == ("length" if done.usage.completion_tokens == 24 else "stop")

    pieces, finish = [], None
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=24, temperature=0, stream=True
    ):
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    assert len(pieces) > 2 and "".join(pieces) == expected  # streamed in pieces, the same text
    assert finish == done.choices[0].finish_reason


def test_seeded_sampling_is_reproducible_and_n_draws_differ(nano_server: Server) -> None:
    body = {"prompt": "import ", "max_tokens": 20, "temperature": 1.0, "seed": 7, "n": 3}
    a = requests.post(f"{nano_server.url}/v1/completions", json=body, timeout=60).json()
    b = requests.post(f"{nano_server.url}/v1/completions", json=body, timeout=60).json()
    texts = [c["text"] for c in a["choices"]]
    assert texts == [c["text"] for c in b["choices"]]
    assert len(set(texts)) > 1  # three draws, not one copied
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]


def test_stop_sequences_and_token_prompts(nano_server: Server, nanochat_run: Path) -> None:
    full = reference(nanochat_run, "class ", 30)
    stop = full.strip()[2:4]
    assert stop, full
    r = requests.post(
        f"{nano_server.url}/v1/completions",
        timeout=60,
        json={"prompt": "class ", "max_tokens": 30, "temperature": 0, "stop": [stop]},
    ).json()
    assert r["choices"][0]["text"] == full[: full.index(stop)]
    assert r["choices"][0]["finish_reason"] == "stop"
    # The same prompt as token ids (the separator included, as a string prompt is encoded) gives the same text.
    from gptrs.generate import encode_prompt
    from gptrs.tokenizer import BPETokenizer

    tok = BPETokenizer.load(str(nanochat_run / "tokenizer.json"))
    ids = encode_prompt(tok, "class ")
    r = requests.post(
        f"{nano_server.url}/v1/completions",
        timeout=60,
        json={"prompt": ids, "max_tokens": 30, "temperature": 0},
    ).json()
    assert r["choices"][0]["text"] == full
    assert r["usage"]["prompt_tokens"] == len(ids)


def test_several_prompts_with_echo(nano_server: Server, nanochat_run: Path) -> None:
    prompts = ["def ", "import "]
    r = requests.post(
        f"{nano_server.url}/v1/completions",
        timeout=60,
        json={"prompt": prompts, "max_tokens": 12, "temperature": 0, "echo": True},
    ).json()
    assert [c["index"] for c in r["choices"]] == [0, 1]
    for p, c in zip(prompts, r["choices"], strict=True):
        assert c["text"] == p + reference(nanochat_run, p, 12)


BAD_BODIES = [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": 0}, "top_k"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "n": 1000}, "n"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "seed": -1}, "seed"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "logprobs": 5}, "logprobs"),
    ({"prompt": "x", "best_of": 4}, "best_of"),
    ({"prompt": "x", "frequency_penalty": 1.0}, "frequency_penalty"),
    ({"prompt": "x", "tempreature": 0.5}, "tempreature"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, 2, 10**6]}, "prompt"),
    ({"prompt": [1, -1]}, "prompt"),
    ({"prompt": [[1, 2], 3.5]}, "prompt[1]"),
    ({"prompt": {"text": "x"}}, "prompt"),
    ({"max_tokens": 5}, "prompt"),
    ({"prompt": "x" * 100_000}, "prompt"),
    ({"prompt": "x", "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
]


@pytest.mark.parametrize(
    ("body", "param"), BAD_BODIES, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_BODIES)]
)
def test_bad_fields_get_a_400_naming_them(nano_server: Server, body: dict[str, object], param: str) -> None:
    r = requests.post(f"{nano_server.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (
        err["param"] == param and err["message"].startswith(param) and err["type"] == "invalid_request_error"
    )


@pytest.mark.parametrize(
    ("content", "status"),
    [(b"{not json", 400), (b"\xff\xfe", 400), (b"[1, 2]", 400), (b"null", 400), (b"x" * (2 << 20), 413)],
)
def test_bad_bodies_get_a_clear_error_never_a_500(nano_server: Server, content: bytes, status: int) -> None:
    r = requests.post(f"{nano_server.url}/v1/completions", data=content, timeout=30)
    assert r.status_code == status and "error" in r.json(), r.text
    assert "Traceback" not in r.text


def test_models_health_chat_and_unknown_routes(nano_server: Server) -> None:
    models = requests.get(f"{nano_server.url}/v1/models").json()
    assert models["data"][0]["id"] == "nanochat" and models["data"][0]["max_model_len"] == 64
    assert nano_server.health()["status"] == "ok"
    chat = requests.post(f"{nano_server.url}/v1/chat/completions", json={"messages": []})
    assert chat.status_code == 404 and "not a chat model" in chat.json()["error"]["message"]
    assert requests.get(f"{nano_server.url}/v2/nothing").json()["error"]["message"].endswith("Not Found")
    page = requests.get(f"{nano_server.url}/").text
    assert 'id="run"' in page and 'id="stop"' in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from a CDN: the page works offline


def _stream_until_first_token(url: str, body: dict[str, object]) -> socket.socket:
    """Open a streaming request by hand, read until its first event, and return the socket still open."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(data), data)
    )
    got = b""
    while b"data: " not in got:
        got += sock.recv(4096)
    return sock


def test_a_client_that_disconnects_frees_its_row_at_once(nano_server: Server) -> None:
    sock = _stream_until_first_token(nano_server.url, {"prompt": "def ", "max_tokens": 4096, "stream": True})
    assert nano_server.health()["running"] == 1
    sock.close()
    deadline = time.monotonic() + 5  # 4096 tokens would take far longer than this
    while nano_server.health()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert nano_server.health()["running"] == 0


def test_a_full_queue_answers_429_at_once(nanochat_run: Path) -> None:
    with serving(nanochat_run, "--max-batch", "1", "--max-queue", "1") as server:
        busy = [_stream_until_first_token(server.url, {"prompt": "a", "max_tokens": 4096, "stream": True})]
        waiting = threading.Thread(
            target=lambda: requests.post(
                f"{server.url}/v1/completions", timeout=60, json={"prompt": "b", "max_tokens": 2}
            )
        )
        waiting.start()
        while server.health()["waiting"] != 1:
            time.sleep(0.02)
        t0 = time.monotonic()
        r = requests.post(f"{server.url}/v1/completions", json={"prompt": "c", "max_tokens": 2}, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        assert time.monotonic() - t0 < 2
        busy[0].close()
        waiting.join(timeout=30)
        assert not waiting.is_alive()


def test_api_key(nanochat_run: Path) -> None:
    openai = pytest.importorskip("openai")
    with serving(nanochat_run, "--api-key", "s3cret") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = requests.post(f"{server.url}/v1/completions", json={"prompt": "x"}, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
            assert "x" not in r.json()["error"]["message"].split()  # nothing about the request
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="s3cret", max_retries=0)
        assert client.completions.create(model="m", prompt="x", max_tokens=3).usage.completion_tokens >= 1
        assert requests.get(f"{server.url}/health").status_code == 200  # probes need no key


def test_sigterm_finishes_running_requests_and_refuses_new_ones(gpt2_run: Path) -> None:
    with serving(gpt2_run) as server:
        # The GPT-2 family: learned positions, so prompt + max_tokens must fit the 64-token context.
        r = requests.post(f"{server.url}/v1/completions", json={"prompt": "x" * 40, "max_tokens": 60})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        sock = _stream_until_first_token(
            server.url, {"prompt": "def ", "max_tokens": 50, "stream": True, "temperature": 0.0}
        )
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(requests.RequestException):  # the listening socket is closed
            requests.post(f"{server.url}/v1/completions", json={"prompt": "y"}, timeout=5)
        rest = b""
        while b"data: [DONE]" not in rest:
            chunk = sock.recv(65536)
            assert chunk, rest
            rest += chunk
        assert b'"finish_reason":"length"' in rest or b'"finish_reason":"stop"' in rest
        assert server.proc.wait(timeout=30) == 0
        assert any("SIGTERM: taking no new requests" in line for line in server.log)


def test_help_and_the_open_host_warning(gpt2_run: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gptrs.serve", "--help"], env=env(), capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m gptrs.serve ")
    assert "`" not in done.stdout
    with serving(gpt2_run, "--host", "0.0.0.0") as server:
        assert any("without an API key" in line for line in server.log), server.log
        assert server.close() == 0


def test_bad_flags_are_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (
        ["--model-path", str(tmp_path / "none")],
        ["--model-path", str(tmp_path), "--max-batch", "0"],
        ["--model-path", str(tmp_path), "--stream-interval", "-1"],
        ["--model-path", str(tmp_path), "--stream-interval", "nan"],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "gptrs.serve", *args], env=env(), capture_output=True, text=True
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("gptrs-serve: error: ")
        flag = next((a for a in args[2:] if a.startswith("--")), "--model-path")
        assert flag in done.stderr, done.stderr


# ----------------------------------------------------------------------------------------------- the engine


@pytest.mark.parametrize("static", [False, True], ids=["eager", "static-slots"])
@pytest.mark.parametrize("stagger", [0.002, 0.0], ids=["arriving-while-decoding", "arriving-at-once"])
def test_output_alone_equals_beside_31_others(
    nanochat_run: Path, gpt2_run: Path, stagger: float, static: bool
) -> None:
    """32 requests of different lengths join one batch at different steps (or all at once: their prompts
    are then prefilled together, left padded) and leave it at different steps; each one's tokens are those
    `model.generate` makes for it alone: greedy ones, and seeded samples (each request draws from its own
    generator, with its own temperature, top-k, top-p). ``static``: the batch is the static slots the
    engine uses on CUDA (a CUDA graph there; here the same step run eagerly). The third model has the
    speedrun switches, the bigram hash embedding's per-row last token among them."""

    from conftest import tiny_gpt
    from gptrs.generate import load_for_inference
    from gptrs.serve.engine import Engine, Request

    speedrun = tiny_gpt(3, weight_std=2.0, perturb=0.1, arch="nanochat", vocab_size=320, num_layers=4,
                        max_seq_len=64, value_embeds=1, skip_connections=True, x0_mix=True,
                        window_pattern="SL", short_window=8, bigram_buckets=97).eval()  # fmt: skip
    for run in (nanochat_run, gpt2_run, None):
        if run is None:
            model, name = speedrun, "speedrun switches"
        else:
            model, name = load_for_inference(str(run), torch.device("cpu"), None)[0], run.name
        g = torch.Generator().manual_seed(0)
        prompts = [
            torch.randint(0, 300, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 20, (32,), generator=g)
        ]
        budgets = [int(n) for n in torch.randint(1, 40, (32,), generator=g)]
        sampling = [
            dict(temperature=0.0) if i % 2 == 0 else
            dict(temperature=0.9, top_k=40 if i % 4 == 1 else None, top_p=0.9 if i % 4 == 3 else None, seed=100 + i)
            for i in range(32)
        ]  # fmt: skip

        async def run_all(engine: Engine, reqs: list[Request]) -> list[list[int]]:
            async def one(i: int) -> list[int]:
                await asyncio.sleep(stagger * i)
                stream = engine.submit(reqs[i])
                return [t async for t in stream]

            return await asyncio.gather(*(one(i) for i in range(len(reqs))))

        engine = Engine(model, max_batch=32, static=static).start()
        try:
            reqs = [Request(prompts[i], budgets[i], **sampling[i]) for i in range(32)]  # type: ignore[arg-type]
            batched = asyncio.run(run_all(engine, reqs))
        finally:
            engine.stop(drain=False)
        assert engine.steps < sum(budgets) // 4  # the rows shared decode steps
        if stagger == 0:
            assert engine.prefills < 8  # ... and the prompts that came together, their prefill
        for i in range(32):
            alone = model.generate(torch.tensor([prompts[i]]), budgets[i], **sampling[i])[
                0, len(prompts[i]) :
            ]
            assert batched[i] == alone.tolist(), f"{name} request {i}"


def test_engine_queue_bound_and_stop() -> None:

    from conftest import tiny_gpt
    from gptrs.serve.engine import Engine, EngineStopped, QueueFull, Request

    async def body() -> None:
        engine = Engine(tiny_gpt(), max_batch=1, max_queue=2)  # not started: nothing leaves the queue
        streams = [engine.submit(Request([1], 5)) for _ in range(3)]
        with pytest.raises(QueueFull):
            engine.submit(Request([1], 5))
        engine.cancel(streams[0])
        engine.start()
        engine.close_intake()
        with pytest.raises(EngineStopped):
            engine.submit(Request([1], 5))
        outs = []
        for s in streams:
            outs.append([t async for t in s])
        assert streams[0].finish_reason == "cancelled" and outs[0] == []
        assert [len(o) for o in outs[1:]] == [5, 5] and streams[1].finish_reason == "length"
        engine.stop(drain=True)

    asyncio.run(body())


@pytest.mark.parametrize("interval", [0.0, 60.0])
def test_stream_interval_hands_tokens_over_together(interval: float) -> None:
    """With a long interval a row's first token comes alone and the rest in one hand-over at its end; with
    0 every token is handed over as it is made (the reader may still collect several at once). Same tokens
    either way."""
    from conftest import tiny_gpt
    from gptrs.serve.engine import Engine, Request

    model = tiny_gpt()

    async def body() -> list[list[int]]:
        engine = Engine(model, stream_interval=interval).start()
        try:
            stream = engine.submit(Request([1, 2, 3], 12, temperature=0.0))
            out = [b async for b in stream.batches()]
            assert stream.finish_reason == "length"
            return out
        finally:
            engine.stop(drain=True)

    batches = asyncio.run(body())
    expected = model.generate(torch.tensor([[1, 2, 3]]), 12, temperature=0.0)[0, 3:].tolist()
    assert [t for b in batches for t in b] == expected
    if interval > 0:
        assert [len(b) for b in batches] == [1, 11]


# ----------------------------------------------------------------------------------------------- text


@given(
    text=st.text(alphabet="ab\u00e9\u4e2d\n", max_size=30),
    cuts=st.lists(st.integers(0, 90), max_size=8),
    stops=st.lists(st.text(alphabet="ab\u00e9\n", min_size=1, max_size=3), max_size=3),
)
def test_text_stream_cuts_at_the_first_stop_and_never_shows_part_of_one(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    """Bytes arrive in arbitrary pieces (characters split across tokens); what is released is exactly the
    text before the first stop sequence to appear as they arrive, and no released piece ends inside a stop
    sequence's start."""
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    stream = TextStream(lambda i: pieces[i], set(), stops)
    out = ""
    for i in range(len(pieces)):
        out += stream.add(i)
        if stream.done:
            break
    out += stream.finish()
    # The oracle: the text decoded so far after each piece (a character split across pieces counts once it
    # is whole); generation stops at the first piece after which some stop sequence appears, and the text
    # ends where the earliest of those that appeared begins (a longer stop that starts earlier but is not
    # complete yet does not count: the stream never sees its end).
    expected, stopped = text, False
    for b in bounds[1:]:
        seen = data[:b].decode("utf-8", errors="ignore")
        hits = [seen.find(s) for s in stops if s in seen]
        if hits:
            expected, stopped = seen[: min(hits)], True
            break
    assert out == expected
    assert stream.done == stopped


# ----------------------------------------------------------------------------------------------- soak


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


HOSTILE = [
    b"{",
    b'{"prompt": 5}',
    b'{"prompt": "x", "max_tokens": -1}',
    b"\x00" * 100,
    b'{"prompt": ["a", 1]}',
    b'{"prompt": "x", "n": 99}',
    b"[]" * 1000,
]


def test_soak_good_and_hostile_requests_mixed(nanochat_run: Path) -> None:
    """A few hundred requests from 16 clients, a hostile body every few: every good one is answered with
    the right number of tokens (max_tokens, unless it ended at EOS), every bad one with a 4xx; RSS stays
    bounded."""
    with serving(nanochat_run, "--max-batch", "16", "--max-queue", "64") as server:
        requests.post(f"{server.url}/v1/completions", json={"prompt": "warm", "max_tokens": 8}, timeout=60)
        rss0 = _rss_kb(server.proc.pid)
        failures: list[str] = []
        counts = {"good": 0, "bad": 0}
        lock = threading.Lock()

        def client(k: int) -> None:
            with requests.Session() as c:
                for j in range(24):
                    if j % 4 == 3:
                        r = c.post(
                            f"{server.url}/v1/completions", data=HOSTILE[(k + j) % len(HOSTILE)], timeout=60
                        )
                        ok = 400 <= r.status_code < 500 and "error" in r.json()
                        with lock:
                            counts["bad"] += 1
                    else:
                        want = 1 + (k * 7 + j) % 12
                        body = {
                            "prompt": f"def f{k}_{j}(",
                            "max_tokens": want,
                            "seed": j,
                            "stream": j % 2 == 0,
                        }
                        r = c.post(f"{server.url}/v1/completions", json=body, timeout=60)
                        ok = r.status_code == 200 and _complete(r.text, want, stream=bool(body["stream"]))
                        with lock:
                            counts["good"] += 1
                    if not ok:
                        with lock:
                            failures.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert not failures, failures[:5]
        assert counts == {"good": 16 * 18, "bad": 16 * 6}
        grew_mb = (_rss_kb(server.proc.pid) - rss0) / 1024
        assert grew_mb < 100, f"RSS grew by {grew_mb:.0f} MB"
        assert server.health()["running"] == 0


def _complete(text: str, want: int, *, stream: bool) -> bool:
    if not stream:
        body = json.loads(text)
        usage, finish = body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]
    else:
        events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
        if events[-1] != "[DONE]":
            return False
        chunks = [json.loads(e) for e in events[:-1]]
        finish = next(c["choices"][0]["finish_reason"] for c in reversed(chunks) if c["choices"])
        usage = want if finish == "length" else 0  # streamed without usage: the finish reason must say why
    return (finish == "length" and usage == want) or (finish == "stop" and usage <= want)
