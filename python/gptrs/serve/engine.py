"""The decode loop behind the server: one thread owns the model and steps every running request together.

A request joins the running batch between two steps and leaves it when it finishes (its EOS or its token
budget) or is cancelled (its client went away, or ``stop`` text was seen by the HTTP layer). The HTTP side
never touches the model: :meth:`Engine.submit` queues a :class:`Request` and returns a :class:`Stream`, an
async iterator of token ids fed from the engine thread through the event loop.

Back-pressure: at most ``max_batch`` rows decode at once and at most ``max_queue`` more wait; past that
``submit`` raises :class:`QueueFull` at once (the server answers 429), so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

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


_END = object()  # the last item a stream's queue receives


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

    def _put(self, item: Any) -> None:  # engine thread -> event loop
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[int]:
        while True:
            item = await self.queue.get()
            if item is _END:
                if self.error is not None:
                    raise RuntimeError(self.error)
                return
            yield item


@dataclass
class _Row:
    stream: Stream
    tokens: Iterator[torch.Tensor]
    produced: int = 0


class Engine:
    """Owns the model on one thread. ``start()`` it, ``submit`` requests, ``stop()`` it (``drain=True``
    finishes the requests already admitted or queued; ``False`` ends them with finish_reason 'cancelled')."""

    def __init__(self, model: Any, *, max_batch: int = 32, max_queue: int = 256) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model = model
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._waiting: deque[Stream] = deque()
        self._rows: list[_Row] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = (
            0  # decode steps taken (all rows at once): a batch of 8 takes ~1/8 of the steps of 8 alone
        )
        self.tokens_out = 0

    # ------------------------------------------------------------------ the HTTP side (event loop thread)

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="gptrs-serve-engine", daemon=True)
        self._thread.start()
        return self

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

    def _finish(self, stream: Stream, reason: str, error: str | None = None) -> None:
        stream.finish_reason, stream.error = reason, error
        stream._put(_END)

    def _admit(self) -> None:
        """Move waiting requests into free rows (called with the lock held)."""
        while self._waiting and len(self._rows) < self.max_batch:
            stream = self._waiting.popleft()
            if stream.cancelled.is_set():
                self._finish(stream, "cancelled")
                continue
            r = stream.request
            ids = torch.tensor([r.prompt_ids], dtype=torch.long, device=_device(self.model))
            tokens = self.model.generate_stream(
                ids,
                r.max_tokens,
                temperature=r.temperature,
                top_k=r.top_k,
                top_p=r.top_p,
                eos_token_id=r.eos_token_id,
                seed=r.seed,
            )
            self._rows.append(_Row(stream, tokens))

    def _step(self) -> None:
        """One new token for every running row."""
        keep: list[_Row] = []
        for row in self._rows:
            s = row.stream
            if s.cancelled.is_set():
                self._finish(s, "cancelled")
                continue
            try:
                t = next(row.tokens, None)
            except Exception as e:  # a bad request must not take the loop (and every other row) down
                log.exception("request failed")
                self._finish(s, "error", f"{type(e).__name__}: {e}")
                continue
            if t is None:  # the loop stopped early: that only happens at EOS
                self._finish(s, "stop")
                continue
            token = int(t[0])
            row.produced += 1
            self.tokens_out += 1
            if token == s.request.eos_token_id:
                self._finish(s, "stop")
                continue
            s._put(token)
            if row.produced >= s.request.max_tokens:
                self._finish(s, "length")
                continue
            keep.append(row)
        self._rows = keep
        self.steps += 1

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cond:
                    while not self._rows and not self._waiting and not self._stopping:
                        self._cond.wait()
                    if self._stopping and not self._rows and not self._waiting:
                        return
                    self._admit()
                self._step()


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device
