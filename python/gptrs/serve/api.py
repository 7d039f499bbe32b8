"""The HTTP side: the OpenAI completions API (as the ``openai`` client speaks it), ``/v1/models``,
``/health`` and the playground page, on FastAPI. Requests are checked here field by field (a 400 naming the
field, in OpenAI's error format); the model is only reached through :class:`~gptrs.serve.engine.Engine`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gptrs.serve.engine import Engine, EngineStopped, QueueFull, Stream
from gptrs.serve.engine import Request as EngineRequest

log = logging.getLogger("gptrs.serve")

MAX_STOP = 4  # OpenAI's limit on `stop` sequences


@dataclass(frozen=True)
class Limits:
    """What the server refuses (each a 400 naming the field, or 413/429)."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int = 1024
    max_tokens: int = 1024  # the cap on a request's `max_tokens`
    max_choices: int = 16  # prompts x n in one request
    learned_positions: bool = False  # then prompt + max_tokens must fit max_seq_len (checked as max_tokens)
    max_seq_len: int = 1024


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = status, message, param, kind, code


def error_response(e: ApiError) -> JSONResponse:
    body = {"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}}
    return JSONResponse(body, status_code=e.status)


# ----------------------------------------------------------------------------------------------- validation


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param)


KNOWN_FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "echo",
    "logprobs",
    "best_of",
    "suffix",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
}


@dataclass(frozen=True)
class Completion:
    """A checked /v1/completions request."""

    prompts: list[list[int]]
    prompt_texts: list[str | None]  # the text given (None for token ids), for `echo`
    max_tokens: int
    temperature: float
    top_p: float | None
    top_k: int | None
    n: int
    stream: bool
    include_usage: bool
    stop: list[str]
    seed: int | None
    echo: bool


def parse_completion(
    body: object, limits: Limits, encode: Callable[[str], list[int]], vocab_size: int
) -> Completion:
    """Check every field (ApiError 400 naming the first bad one) and encode the prompts."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise _bad(unknown[0], "unknown field (this server implements the OpenAI completions API)")

    def opt(name: str, check: Callable[[Any], bool], what: str, default: Any) -> Any:
        v = body.get(name)
        if v is None:
            return default
        if not check(v):
            raise _bad(name, f"must be {what}, got {json.dumps(v)[:80]}")
        return v

    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model", "must be a string")
    # Fields this server does not implement: refused when set to anything but their "off" value.
    for name, off in (
        ("logprobs", (0,)),
        ("suffix", ("",)),
        ("presence_penalty", (0,)),
        ("frequency_penalty", (0,)),
        ("logit_bias", ({},)),
    ):
        v = body.get(name)
        if v is not None and v not in off:
            raise _bad(name, "is not supported by this server")
    opt("user", lambda v: isinstance(v, str), "a string", None)

    n = opt(
        "n",
        lambda v: _is_int(v) and 1 <= v <= limits.max_choices,
        f"an integer in [1, {limits.max_choices}]",
        1,
    )
    best_of = opt("best_of", _is_int, "an integer", n)
    if best_of != n:
        raise _bad("best_of", "is not supported by this server (only best_of = n)")
    max_tokens = opt("max_tokens", _is_int, "an integer", min(16, limits.max_tokens))  # OpenAI's default: 16
    if not 1 <= max_tokens <= limits.max_tokens:
        raise _bad(
            "max_tokens", f"must be between 1 and {limits.max_tokens} (this server's cap), got {max_tokens}"
        )
    temperature = float(
        opt("temperature", lambda v: _is_number(v) and 0 <= v <= 2, "a number in [0, 2]", 1.0)
    )
    top_p = float(opt("top_p", lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]", 1.0))
    top_k = opt("top_k", lambda v: _is_int(v) and v >= 1, "an integer >= 1", None)
    stream = opt("stream", lambda v: isinstance(v, bool), "true or false", False)
    echo = opt("echo", lambda v: isinstance(v, bool), "true or false", False)
    seed = opt("seed", lambda v: _is_int(v) and 0 <= v < 1 << 63, "an integer in [0, 2^63)", None)
    so = opt(
        "stream_options",
        lambda v: isinstance(v, dict) and set(v) <= {"include_usage"},
        'an object {"include_usage": bool}',
        {},
    )
    include_usage = so.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise _bad("stream_options.include_usage", "must be true or false")
    stop = opt("stop", lambda v: isinstance(v, (str, list)), "a string or a list of strings", [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop", f"must be at most {MAX_STOP} non-empty strings")

    prompts, texts = _parse_prompts(body.get("prompt"), limits, encode, vocab_size)
    if len(prompts) * n > limits.max_choices:
        raise _bad("n", f"{len(prompts)} prompts x n={n} is more than {limits.max_choices} completions")
    if limits.learned_positions:
        longest = max(len(p) for p in prompts)
        if longest + max_tokens > limits.max_seq_len:
            raise _bad(
                "max_tokens",
                f"the prompt ({longest} tokens) + max_tokens ({max_tokens}) is more than "
                f"the model's context of {limits.max_seq_len} tokens",
            )
    return Completion(
        prompts,
        texts,
        max_tokens,
        temperature,
        None if top_p == 1 else top_p,
        top_k,
        n,
        stream,
        include_usage,
        stop,
        seed,
        echo,
    )


def _parse_prompts(
    prompt: object, limits: Limits, encode: Callable[[str], list[int]], vocab_size: int
) -> tuple[list[list[int]], list[str | None]]:
    if prompt is None:
        raise _bad("prompt", "is required")
    # A string, a list of token ids, or a list of either (a batch of prompts): the forms OpenAI accepts.
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt)):
        items: list[object] = [prompt]
    elif isinstance(prompt, list) and prompt:
        items = prompt
    else:
        raise _bad("prompt", "must be a non-empty string, a list of token ids, or a list of those")
    if len(items) > limits.max_choices:
        raise _bad("prompt", f"at most {limits.max_choices} prompts per request, got {len(items)}")
    out: list[list[int]] = []
    texts: list[str | None] = []
    for i, item in enumerate(items):
        where = "prompt" if len(items) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            if not item:
                raise _bad(where, "is empty (give some text to continue)")
            if len(item) > 64 * limits.max_prompt_tokens:  # no tokenizer makes fewer tokens of that much text
                raise _bad(where, f"is longer than {limits.max_prompt_tokens} tokens")
            ids, text = encode(item), item
        elif isinstance(item, list) and item and all(_is_int(t) for t in item):
            bad = next((t for t in item if not 0 <= t < vocab_size), None)
            if bad is not None:
                raise _bad(where, f"token id {bad} is not in the vocabulary [0, {vocab_size})")
            ids, text = list(item), None
        else:
            raise _bad(where, "must be a non-empty string or a non-empty list of token ids")
        if len(ids) > limits.max_prompt_tokens:
            raise _bad(where, f"is {len(ids)} tokens, more than this server's {limits.max_prompt_tokens}")
        out.append(ids)
        texts.append(text)
    return out, texts


# ----------------------------------------------------------------------------------------------- decoding


class TextStream:
    """Token ids -> text pieces: whole characters only, special tokens dropped, and text that might be the
    start of a `stop` sequence held back until it is known not to be; ``done`` once a stop sequence is seen
    (the text before it is the last piece)."""

    def __init__(self, token_bytes: Callable[[int], bytes], specials: set[int], stop: list[str]) -> None:
        self.token_bytes, self.specials, self.stop = token_bytes, specials, stop
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.sent = 0
        self.done = False

    def _release(self, final: bool) -> str:
        cut = len(self.text)
        hits = [i for i in (self.text.find(s) for s in self.stop) if i >= 0]
        if hits:
            cut, self.done = min(hits), True
        elif not final:
            for s in self.stop:  # hold back a tail that is a prefix of a stop sequence
                for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                    if self.text.endswith(s[:k]):
                        cut = min(cut, len(self.text) - k)
                        break
        piece = self.text[self.sent : max(cut, self.sent)]
        self.sent = max(cut, self.sent)
        return piece

    def add(self, token: int) -> str:
        if self.done or token in self.specials:
            return ""
        self.text += self.decoder.decode(self.token_bytes(token))
        return self._release(final=False)

    def finish(self) -> str:
        if self.done:
            return ""
        self.text += self.decoder.decode(b"", final=True)
        return self._release(final=True)


# ----------------------------------------------------------------------------------------------- the app


@dataclass
class ServeState:
    engine: Engine
    model_id: str
    limits: Limits
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    token_bytes: Callable[[int], bytes]
    specials: set[int]
    vocab_size: int
    eos_token_id: int | None
    api_key: str | None = None
    draining: bool = False
    created: int = 0


async def _read_body(request: Request, limit: int) -> object:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is larger than {limit} bytes", None)
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a lying or absent length cannot overrun
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is larger than {limit} bytes", None)
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None


def _sse(obj: object) -> bytes:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()


class _Guard:
    """The API key and the draining check before any ``/v1/`` route. A plain ASGI middleware: starlette's
    ``@app.middleware("http")`` (BaseHTTPMiddleware) passes every streamed event through a task and a
    memory stream of its own, a cost paid per SSE event."""

    def __init__(self, app: ASGIApp, state: ServeState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            refusal = self._refusal(dict(scope["headers"]).get(b"authorization", b""))
            if refusal is not None:
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, given: bytes) -> ApiError | None:
        key = self.state.api_key
        if key is not None and not hmac.compare_digest(given, f"Bearer {key}".encode()):
            return ApiError(
                401,
                "missing or wrong API key (Authorization: Bearer KEY)",
                kind="authentication_error",
                code="invalid_api_key",
            )
        if self.state.draining:
            return ApiError(503, "the server is shutting down", kind="server_error")
        return None


def create_app(state: ServeState) -> FastAPI:
    app = FastAPI(title="gptrs.serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state
    state.created = state.created or int(time.time())
    page = resources.files("gptrs.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    app.add_middleware(_Guard, state=state)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(ApiError(e.status_code, f"{request.method} {request.url.path}: {e.detail}"))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, e: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(
            ApiError(500, "internal server error (logged on the server)", kind="server_error")
        )

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        running, waiting = state.engine.load
        status = "draining" if state.draining else "ok"
        return JSONResponse(
            {"status": status, "model": state.model_id, "running": running, "waiting": waiting},
            status_code=503 if state.draining else 200,
        )

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {
            "id": state.model_id,
            "object": "model",
            "created": state.created,
            "owned_by": "gptrs",
            "max_model_len": state.limits.max_seq_len,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat() -> JSONResponse:
        raise ApiError(
            404,
            f"{state.model_id} is a base model, not a chat model, so /v1/chat/completions is not "
            "supported; use /v1/completions with a prompt to continue",
            "model",
            code="model_not_chat",
        )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _read_body(request, state.limits.max_body_bytes)
        c = parse_completion(body, state.limits, state.encode, state.vocab_size)
        rid = f"cmpl-{uuid.uuid4().hex[:24]}"
        streams = _submit_all(state, c)
        if c.stream:
            return StreamingResponse(
                _stream_events(state, c, rid, streams),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _complete(state, c, rid, streams, request)

    return app


def _submit_all(state: ServeState, c: Completion) -> list[tuple[int, int, Stream]]:
    """One engine request per choice (prompt x n); all or none (a full queue cancels the ones taken)."""
    out: list[tuple[int, int, Stream]] = []
    try:
        for p, ids in enumerate(c.prompts):
            for j in range(c.n):
                seed = None if c.seed is None else (c.seed + j) % (1 << 63)  # n draws, each reproducible
                req = EngineRequest(
                    ids, c.max_tokens, c.temperature, c.top_k, c.top_p, seed, state.eos_token_id
                )
                out.append((p, len(out), state.engine.submit(req)))
    except (QueueFull, EngineStopped) as e:
        for _, _, s in out:
            state.engine.cancel(s)
        if isinstance(e, QueueFull):
            raise ApiError(
                429, f"the server is busy: {e}", kind="rate_limit_error", code="queue_full"
            ) from None
        raise ApiError(503, str(e), kind="server_error") from None
    return out


async def _choice_pieces(
    state: ServeState, c: Completion, stream: Stream
) -> AsyncIterator[tuple[str, str | None, int]]:
    """(text, finish_reason or None, tokens so far) for one choice, one piece per batch of tokens that
    arrived together; cancels the engine row on a stop sequence."""
    text = TextStream(state.token_bytes, state.specials, c.stop)
    n = 0
    async for tokens in stream.batches():
        piece = ""
        for token in tokens:
            n += 1
            piece += text.add(token)
            if text.done:
                state.engine.cancel(stream)
                yield piece, "stop", n
                return
        if piece:
            yield piece, None, n
    yield text.finish(), ("stop" if stream.finish_reason == "stop" or text.done else "length"), n


def _echo(state: ServeState, c: Completion, prompt_index: int) -> str:
    if not c.echo:
        return ""
    t = c.prompt_texts[prompt_index]
    return t if t is not None else state.decode(c.prompts[prompt_index])


def _usage(c: Completion, streams: list[tuple[int, int, Stream]], counts: dict[int, int]) -> dict[str, int]:
    prompt = sum(len(c.prompts[p]) for p, _, _ in streams)
    done = sum(counts.values())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


async def _complete(
    state: ServeState, c: Completion, rid: str, streams: list[tuple[int, int, Stream]], request: Request
) -> JSONResponse:
    counts: dict[int, int] = {}

    async def one(p: int, i: int, s: Stream) -> dict[str, Any]:
        parts, reason = [_echo(state, c, p)], "length"
        async for piece, finish, n in _choice_pieces(state, c, s):
            parts.append(piece)
            counts[i] = n
            reason = finish or reason
        return {"text": "".join(parts), "index": i, "logprobs": None, "finish_reason": reason}

    async def watch() -> None:  # a client that hangs up frees its rows at once
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    work: asyncio.Future[list[dict[str, Any]]] = asyncio.gather(*(one(p, i, s) for p, i, s in streams))
    watcher: asyncio.Future[None] = asyncio.ensure_future(watch())
    try:
        await asyncio.wait([work, watcher], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not work.done():
            for _, _, s in streams:
                state.engine.cancel(s)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await work
            return JSONResponse({}, status_code=499)  # nobody is there to read it
        choices = work.result()
    except RuntimeError as e:
        raise ApiError(500, f"generation failed: {e}", kind="server_error") from None
    finally:
        watcher.cancel()
        for _, _, s in streams:
            state.engine.cancel(s)  # a no-op for finished rows; frees them on any error above
    body = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": state.model_id,
        "choices": choices,
        "usage": _usage(c, streams, counts),
    }
    return JSONResponse(body)


async def _stream_events(
    state: ServeState, c: Completion, rid: str, streams: list[tuple[int, int, Stream]]
) -> AsyncIterator[bytes]:
    created = int(time.time())
    counts: dict[int, int] = {}
    events: asyncio.Queue[tuple[int, str, str | None] | None] = asyncio.Queue()

    async def pump(p: int, i: int, s: Stream) -> None:
        echo = _echo(state, c, p)
        if echo:
            await events.put((i, echo, None))
        async for piece, finish, n in _choice_pieces(state, c, s):
            counts[i] = n
            await events.put((i, piece, finish))

    async def run_all() -> None:
        try:
            await asyncio.gather(*(pump(p, i, s) for p, i, s in streams))
        finally:
            await events.put(None)

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": state.model_id,
            "choices": choices,
        }
        if c.include_usage:
            obj["usage"] = usage
        return _sse(obj)

    async def merged() -> AsyncIterator[tuple[int, str, str | None]]:
        if len(streams) == 1:  # the usual case: no queue and no task in between
            p, i, s = streams[0]
            yield i, _echo(state, c, p), None
            async for piece, finish, n in _choice_pieces(state, c, s):
                counts[i] = n
                yield i, piece, finish
            return
        task = asyncio.ensure_future(run_all())
        try:
            while (ev := await events.get()) is not None:
                yield ev
            await task  # raises what a choice raised
        finally:
            task.cancel()

    try:
        failed: BaseException | None = None
        try:
            async for i, piece, finish in merged():
                if piece or finish:
                    yield chunk([{"text": piece, "index": i, "logprobs": None, "finish_reason": finish}])
        except RuntimeError as e:  # the engine ended the request with an error
            failed = e
        if failed is not None:
            err = {
                "message": f"generation failed: {failed}",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            yield _sse({"error": err})
        elif c.include_usage:
            yield chunk([], _usage(c, streams, counts))
        yield b"data: [DONE]\n\n"
    finally:  # the client went away (the response is cancelled) or we are done: free every row now
        for _, _, s in streams:
            state.engine.cancel(s)
