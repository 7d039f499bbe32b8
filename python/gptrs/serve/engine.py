"""The decode loop behind the server: one thread owns the model and steps every running request together.

A request joins the running batch between two steps and leaves it when it finishes (its EOS or its token
budget) or is cancelled (its client went away, or ``stop`` text was seen by the HTTP layer). The HTTP side
never touches the model: :meth:`Engine.submit` queues a :class:`Request` and returns a :class:`Stream`, an
async iterator of token ids fed from the engine thread through the event loop.

Streaming: a row's new tokens are handed over at most every ``stream_interval`` seconds (its first token and
its end at once). At 32 rows a step takes a few milliseconds; handing over every token would wake 32
streams, build 32 SSE events and write 32 sockets per step, on the thread that shares the GIL with this one,
and the server would spend more time streaming than decoding (py-spy: the event loop's socket writes and
middleware were a third of the samples at 32 clients).

Back-pressure: at most ``max_batch`` rows decode at once and at most ``max_queue`` more wait; past that
``submit`` raises :class:`QueueFull` at once (the server answers 429), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from gptrs.model import KVCache, static_decode
from gptrs.model.sampling import greedy, sample_with_uniform

log = logging.getLogger("gptrs.serve")


class QueueFull(Exception):
    """More requests than the batch and the queue hold; try again later."""


class EngineStopped(Exception):
    """The engine is shutting down and takes no new requests."""


@dataclass(frozen=True)
class Request:
    """One sequence to continue: token ids in, at most ``max_tokens`` ids out (fewer at ``eos_token_id``)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    eos_token_id: int | None = None


_END = object()
# Arrivals are prefilled together up to this many (left-padded) tokens per model call: one call for many
# short prompts, while the activations of a call stay small.
PREFILL_TOKENS = 4096  # the last item a stream's queue receives


@dataclass
class Stream:
    """The tokens of one request as they are generated. ``finish_reason`` is 'stop' (EOS), 'length'
    (max_tokens), 'cancelled' or 'error' once the iterator is exhausted."""

    request: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: str | None = None
    error: str | None = None
    submitted: float = field(default_factory=time.perf_counter)

    async def batches(self) -> AsyncIterator[list[int]]:
        """The tokens in the order they come, as lists of those that arrived since the reader last looked:
        a reader that falls behind catches up in one go instead of waking once per token."""
        while True:
            items = [await self.queue.get()]
            while not self.queue.empty():
                items.append(self.queue.get_nowait())
            tokens = [t for item in items if item is not _END for t in item]
            if tokens:
                yield tokens
            if items[-1] is _END:
                if self.error is not None:
                    raise RuntimeError(self.error)
                return

    async def __aiter__(self) -> AsyncIterator[int]:
        async for tokens in self.batches():
            for t in tokens:
                yield t


@dataclass
class _Row:
    """A running request: its stream, its token budget, and its decoding state."""

    stream: Stream
    limit: int
    generator: torch.Generator | None = None  # its own sampling RNG (None: the global one)
    produced: int = 0
    pending: list[int] = field(default_factory=list)  # made, not yet handed over
    slot: int = -1  # its row of the static batch (static mode)
    flushed: float = -math.inf  # when its tokens were last handed over (never: the first goes at once)


class Engine:
    """Owns the model on one thread. ``start()`` it, ``submit`` requests, ``stop()`` it (``drain=True``
    finishes the requests already admitted or queued; ``False`` ends them with finish_reason 'cancelled')."""

    def __init__(
        self,
        model: Any,
        *,
        max_batch: int = 32,
        max_queue: int = 256,
        threads: int | None = None,
        stream_interval: float = 0.05,
        static: bool | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        if not stream_interval >= 0:
            raise ValueError(f"stream_interval must be >= 0 seconds, got {stream_interval}")
        self.model = model
        self.stream_interval = stream_interval
        self.threads = threads  # torch's intra-op threads, set from the engine's thread (None: as it is)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: deque[Stream] = deque()
        self._rows: list[_Row] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.positions = model.config.positions
        self.device = next(model.parameters()).device
        self._cache: KVCache | None = None  # the batch's KV cache, rows in the order of self._rows
        self._outbox: list[tuple[Stream, Any]] = []  # (stream, [tokens] or _END) made since the last _send
        self._last: torch.Tensor | None = None  # each row's last token, the input of the next step
        # Static mode (the default on CUDA): the batch is max_batch slots of one static cache, and each step
        # is one replay of a CUDA graph (static_decode.SlotDecoder); eager mode merges and selects caches.
        if static is None:
            static = self.device.type == "cuda" and os.environ.get(static_decode.DISABLE_ENV) != "1"
        self._decoder = static_decode.SlotDecoder(model, max_batch, self.device) if static else None
        self._free_slots = list(range(max_batch))[::-1]
        self.steps = 0  # decode steps taken, all rows at once
        self.prefills = 0  # prefill calls (several arriving prompts share one)
        self.tokens_out = 0

    # ------------------------------------------------------------------ the HTTP side (event loop thread)

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="gptrs-serve-engine", daemon=True)
        self._thread.start()
        return self

    @property
    def static(self) -> bool:
        """Whether the batch is static slots (a CUDA graph on CUDA) rather than an eager batch."""
        return self._decoder is not None

    @property
    def load(self) -> tuple[int, int]:
        """(rows decoding, requests waiting)."""
        with self._cond:
            return len(self._rows), len(self._waiting)

    def submit(self, request: Request, loop: asyncio.AbstractEventLoop | None = None) -> Stream:
        stream = Stream(request, loop or asyncio.get_running_loop())
        with self._cond:
            if not self._accepting:
                raise EngineStopped("the server is shutting down")
            if len(self._rows) + len(self._waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(
                    f"{len(self._rows)} requests running and {len(self._waiting)} waiting (the limit is "
                    f"{self.max_batch} + {self.max_queue}); retry later"
                )
            self._waiting.append(stream)
            self._cond.notify()
        return stream

    def cancel(self, stream: Stream) -> None:
        """Free the request's row (or queue place) before the next step; its stream ends 'cancelled'."""
        stream.cancelled.set()
        with self._cond:
            self._cond.notify()

    def close_intake(self) -> None:
        """Take no new requests (``submit`` raises EngineStopped); those admitted or queued carry on."""
        with self._cond:
            self._accepting = False

    def stop(self, *, drain: bool, timeout: float | None = None) -> None:
        with self._cond:
            self._accepting = False
            if not drain:
                for s in [*self._waiting, *(r.stream for r in self._rows)]:
                    s.cancelled.set()
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ the engine thread

    def _send(self) -> None:
        """Hand this step's tokens to the event loops: one wake-up per loop and step, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Stream, Any]]] = {}
        for stream, item in self._outbox:
            by_loop.setdefault(stream.loop, []).append((stream, item))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for stream, _ in items:
                    stream.cancelled.set()

    def _finish(self, row_or_stream: _Row | Stream, reason: str, error: str | None = None) -> None:
        if isinstance(row_or_stream, _Row):
            self._flush(row_or_stream, 0.0)
        stream = row_or_stream.stream if isinstance(row_or_stream, _Row) else row_or_stream
        stream.finish_reason, stream.error = reason, error
        self._outbox.append((stream, _END))

    def _flush(self, row: _Row, now: float) -> None:
        if row.pending:
            self._outbox.append((row.stream, row.pending))
            row.pending, row.flushed = [], now

    def _deliver(self, row: _Row, token: int) -> bool:
        """Hand one new token to the request (now, or with the next ones: ``stream_interval``); False once
        the request is done (and told so)."""
        row.produced += 1
        self.tokens_out += 1
        if token == row.stream.request.eos_token_id:
            self._finish(row, "stop")
            return False
        row.pending.append(token)
        if row.produced >= row.limit:
            self._finish(row, "length")
            return False
        now = time.perf_counter()
        if now - row.flushed >= self.stream_interval:
            self._flush(row, now)
        return True

    def _admit(self, streams: list[Stream]) -> None:
        """Arriving requests join the batch: their prompts are run together (left padded, at most
        ``PREFILL_TOKENS`` padded tokens per call) in a cache of their own, which then merges into the batch's;
        each request's first token is picked from that prefill."""
        rows: list[_Row] = []
        for stream in streams:
            r = stream.request
            limit = r.max_tokens
            if self.positions == "learned":  # a row may not hold more than the context
                limit = min(limit, int(self.model.config.max_seq_len) - len(r.prompt_ids))
            if self._decoder is not None:  # nor, in a static batch, more positions than its tables have
                limit = min(limit, self._decoder.max_positions - len(r.prompt_ids))
            if stream.cancelled.is_set() or limit < 1:
                self._finish(stream, "cancelled" if stream.cancelled.is_set() else "length")
                continue
            gen = torch.Generator(device=self.device).manual_seed(r.seed) if r.seed is not None else None
            rows.append(_Row(stream, limit, generator=gen))
        group: list[_Row] = []
        for row in rows:
            longest = max(len(g.stream.request.prompt_ids) for g in [*group, row])
            if group and (len(group) + 1) * longest > PREFILL_TOKENS:
                self._prefill(group)
                group = []
            group.append(row)
        if group:
            self._prefill(group)

    def _prefill(self, rows: list[_Row]) -> None:
        try:
            prompts = [row.stream.request.prompt_ids for row in rows]
            T = max(len(p) for p in prompts)
            ids = torch.zeros((len(rows), T), dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for i, p in enumerate(prompts):
                ids[i, T - len(p) :] = torch.tensor(p, dtype=torch.long)
                mask[i, T - len(p) :] = 1
            padded = any(len(p) < T for p in prompts)
            cache = self.model.new_kv_cache(len(rows))
            self.prefills += 1
            h = self.model.hidden_states(
                ids.to(self.device), mask.to(self.device) if padded else None, kv_cache=cache
            )
            first = self._pick(self.model.logits(h[:, -1]), rows)
        except Exception as e:
            if len(rows) > 1:  # run them one by one, so that a request that cannot run fails alone
                for row in rows:
                    self._prefill([row])
                return
            log.exception("request failed")
            self._finish(rows[0], "error", f"{type(e).__name__}: {e}")
            return
        keep = [
            i for i, (row, t) in enumerate(zip(rows, first.tolist(), strict=True)) if self._deliver(row, t)
        ]
        if not keep:
            return
        if len(keep) < len(rows):
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            cache, first = cache.select(index), first[index]
        self._join([rows[i] for i in keep], cache, first)

    def _pick(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """One token per row, each with its own sampling settings and generator. Rows that share settings are
        filtered and drawn together (``sample_with_uniform``); a seeded row's uniform number comes from its
        own generator, exactly what ``sample_next_token`` draws for it alone, so a seeded request's text
        does not depend on its company (nor on the path: generate, the static step or here)."""
        groups: dict[tuple[float, int | None, float | None], list[int]] = {}
        for i, row in enumerate(rows):
            r = row.stream.request
            if r.temperature > 0:
                groups.setdefault((r.temperature, r.top_k, r.top_p), []).append(i)
        if sum(map(len, groups.values())) < len(rows):
            out = greedy(logits)  # the greedy rows' pick
        else:  # every row samples: every entry is written below
            out = torch.empty(len(rows), dtype=torch.long, device=logits.device)
        for (temperature, top_k, top_p), idx in groups.items():
            u = torch.rand((len(idx), 1), device=logits.device)  # the unseeded rows' numbers
            for j, i in enumerate(idx):
                if rows[i].generator is not None:
                    u[j].uniform_(generator=rows[i].generator)
            rows_logits = logits if len(idx) == len(rows) else logits[idx]
            picked = sample_with_uniform(rows_logits, u, temperature, top_k, top_p)
            if len(idx) == len(rows):
                out = picked
            else:
                out[idx] = picked
        return out

    def _drop(self, keep: list[int]) -> None:
        """Keep only these rows of the batch, and of its cache: finished requests leave."""
        if len(keep) == len(self._rows):
            return
        if self._decoder is not None:
            kept = set(keep)
            gone = [row.slot for i, row in enumerate(self._rows) if i not in kept]
            self._decoder.free(gone)
            self._free_slots.extend(gone)
            self._rows = [self._rows[i] for i in keep]
            return
        self._rows = [self._rows[i] for i in keep]
        if not keep:
            self._cache = self._last = None
            return
        assert self._cache is not None and self._last is not None
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._cache, self._last = self._cache.select(index), self._last[index]

    def _join(self, rows: list[_Row], cache: KVCache, first: torch.Tensor) -> None:
        """Prefilled rows join the batch: their cache rows and last tokens go after the running ones (static
        mode: into free slots)."""
        if self._decoder is not None:
            for row in rows:
                row.slot = self._free_slots.pop()
            settings = [
                (r.stream.request.temperature, r.stream.request.top_k, r.stream.request.top_p) for r in rows
            ]
            self._decoder.put([r.slot for r in rows], cache, list(range(len(rows))), first, settings)
            self._rows.extend(rows)
            return
        self._cache = cache if self._cache is None else KVCache.merge([self._cache, cache])
        self._last = first if self._last is None else torch.cat([self._last, first])
        self._rows.extend(rows)

    def _step(self) -> None:
        """One new token for every running row: one model call for the whole batch."""
        self._drop([i for i, row in enumerate(self._rows) if not self._cancelled(row)])
        if not self._rows:
            return
        if self._decoder is not None:
            tokens = self._static_step()
        else:
            assert self._last is not None
            logits, _ = self.model(self._last[:, None], kv_cache=self._cache)
            self._last = self._pick(logits[:, -1], self._rows)
            tokens = self._last.tolist()
        self._drop([i for i, row in enumerate(self._rows) if self._deliver(row, tokens[i])])
        self.steps += 1

    def _static_step(self) -> list[int]:
        """One replay for every slot; each row's uniform number from its own generator (or the global one),
        drawn here, outside the graph. The running rows' tokens, in their order."""
        assert self._decoder is not None
        u = torch.rand((self.max_batch, 1), device=self.device)
        for row in self._rows:
            if row.generator is not None:
                u[row.slot].uniform_(generator=row.generator)
        every = self._decoder.step(u).tolist()
        return [every[row.slot] for row in self._rows]

    def _cancelled(self, row: _Row) -> bool:
        if row.stream.cancelled.is_set():
            self._finish(row, "cancelled")
            return True
        return False

    def _fail_all(self, e: Exception) -> None:
        """A step that raised (a bug, or out of memory) ends every running request with an error, and the
        loop carries on with the next ones."""
        log.exception("decode step failed; ending the %d running requests", len(self._rows))
        for row in self._rows:
            self._finish(row, "error", f"{type(e).__name__}: {e}")
        if self._decoder is not None:
            self._decoder.free([row.slot for row in self._rows])
            self._free_slots = list(range(self.max_batch))[::-1]
        self._rows, self._cache, self._last = [], None, None

    def _run(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._rows and not self._waiting and not self._stopping:
                        self._cond.wait()
                    if self._stopping and not self._rows and not self._waiting:
                        return
                    arriving: list[Stream] = []
                    while self._waiting and len(self._rows) + len(arriving) < self.max_batch:
                        arriving.append(self._waiting.popleft())
                try:
                    self._admit(arriving)  # prefilled outside the lock: submit() never waits on the model
                    self._step()
                except Exception as e:
                    self._fail_all(e)
                self._send()
                time.sleep(0)  # let the HTTP thread take the GIL between steps (it streams what we made)


def _put_all(items: list[tuple[Stream, Any]]) -> None:  # on the event loop
    for stream, item in items:
        stream.queue.put_nowait(item)
