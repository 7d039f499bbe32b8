"""Decoding with static shapes: a one-token step whose every input is a tensor, captured once as a CUDA graph.

On a GPU the eager decode step is bound by launching its few hundred small kernels from Python, not by the
GPU (GPT-2 124M, batch 1: ~2% of what reading the weights allows). Here the step is the model's own forward
with a static KV cache (``KVCache(static=True)``), which has no Python-side state that changes from one token
to the next: its buffers are preallocated, each row's length (its write slot and position) is a device tensor
updated in place, and so are the last tokens and the finished flags; attention covers all ``max_seq_len``
slots under a mask that hides the unused ones, and the next token is picked on the device (greedy, or a draw from the temperature/top-k/top-p
distribution given uniform numbers drawn outside the step: ``sampling.sample_with_uniform``). Such a step can be
captured by ``torch.cuda.graph`` once per batch size and sampling setup and then replayed: one launch per
token. Rows that have finished keep producing the fill id without any host-side branch; the host checks
whether every row is done every :data:`SYNC_EVERY` steps only.

The same code runs eagerly on the CPU (the capture is guarded by the device type), where tests check it
against the eager path (``generation.py``); CPU generation keeps the eager path by default, which attends
to the cached keys only and so does less work per token there.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gptrs.model.sampling import SamplingParams, greedy, sample_rows, sample_with_uniform

if TYPE_CHECKING:
    from gptrs.model.gpt import GPT

SYNC_EVERY = 8  # decode steps between host checks of "has every row finished?"
MAX_DECODERS = 4  # captured decoders kept per model (each holds a KV cache and a graph's memory pool)
DISABLE_ENV = "GPTRS_NO_CUDA_GRAPHS"  # set to 1: replay the static step eagerly on CUDA too (debugging)
# Also torch.compile the step before capturing it (fewer, fused kernels per token; a one-time compile of
# tens of seconds, so off by default: worth it for long or many generations). benches/bench_gpu.py sets it.
COMPILE_STEP = os.environ.get("GPTRS_COMPILE_DECODE") == "1"


def _compute_dtype(model: GPT, device: torch.device) -> torch.dtype:
    """The dtype the layers produce keys in: the autocast dtype when autocast is on, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


class StaticDecoder:
    """Static buffers for ``batch_size`` rows of one model and one sampling setup, the step that works on
    them, and (on CUDA) that step captured as a graph.

    ``start(prompt, mask)`` prefills the cache and returns the first new token per row; each ``step()``
    then returns the next one (the same (B,) tensor, overwritten: clone what you keep). With learned
    positions at most ``max_seq_len - prompt length`` steps follow a start; rotary ones slide their window."""

    def __init__(self, model: GPT, batch_size: int, params: SamplingParams, fill_id: int | None,
                 device: torch.device) -> None:  # fmt: skip
        cfg = model.config
        assert cfg.vocab_size is not None
        self.model, self.params, self.fill_id = model, params, fill_id
        B, dtype = batch_size, _compute_dtype(model, device)
        self.cache = model.new_kv_cache(B, static=True)
        self.cache.allocate(dtype, device)
        # Positions a captured step can reach: learned ones end with the context; rotary tables are grown
        # here once, since a captured step cannot grow them (RotaryTables keeps every table it built alive).
        self.max_positions = cfg.max_seq_len
        if model.rotary is not None:
            self.max_positions = max(8 * cfg.max_seq_len, 4096)
            model.rotary.table(self.max_positions, device)
        self.tokens = torch.zeros(B, dtype=torch.long, device=device)  # the last token of each row
        self.finished = torch.zeros(B, dtype=torch.bool, device=device)
        sampling = params.temperature > 0
        self.uniform = torch.rand(B, 1, device=device) if sampling else None
        self.graph: Any = None
        self._run = self._step
        if COMPILE_STEP:
            self._run = torch.compile(self._step, dynamic=False)
        if device.type == "cuda" and os.environ.get(DISABLE_ENV) != "1":
            self._capture()

    # ------------------------------------------------------------------ the step

    def _pick(self, logits: Tensor) -> Tensor:
        """The next token of every row, on the device: greedy or sampled, the fill id for finished rows."""
        p = self.params
        if self.uniform is None:
            token = greedy(logits)
        else:
            token = sample_with_uniform(logits, self.uniform, p.temperature, p.top_k, p.top_p)
        if p.eos_token_id is not None:
            if self.fill_id is not None:
                token = token.masked_fill(self.finished, self.fill_id)
            self.finished.logical_or_(token == p.eos_token_id)
        return token

    def _step(self) -> None:
        """One token per row, every shape static and every state update in place (what a graph captures)."""
        h = self.model.hidden_states(self.tokens[:, None], kv_cache=self.cache)
        self.tokens.copy_(self._pick(self.model.logits(h[:, -1])))

    def _capture(self) -> None:
        assert self.cache.lengths is not None
        self.graph = capture(self._run, (self.tokens, self.cache.lengths, self.finished))

    # ------------------------------------------------------------------ driving it

    def _draw_uniform(self, generator: torch.Generator | None) -> None:
        if self.uniform is not None:  # outside the graph: the caller's generator, one kernel
            self.uniform.uniform_(generator=generator)

    def start(self, prompt: Tensor, mask: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Prefill with ``prompt`` (B, T) (left padded where ``mask`` (B, T) is False) and return the first
        new token of every row: the eager prefill into the same buffers, then the on-device pick."""
        cache = self.cache
        buffers = (cache.k, cache.v, cache.lengths)
        cache.reset()
        cache.static = False  # the prefill is an ordinary pass
        try:
            h = self.model.hidden_states(prompt, mask, kv_cache=cache)
        finally:
            cache.static = True
        assert all(a is b for a, b in zip((cache.k, cache.v, cache.lengths), buffers, strict=True)), (
            "KV cache reallocated under a graph"
        )
        self.finished.zero_()
        self._draw_uniform(generator)
        self.tokens.copy_(self._pick(self.model.logits(h[:, -1])))
        return self.tokens

    def step(self, generator: torch.Generator | None) -> Tensor:
        """The next token of every row (the graph's replay on CUDA, the same step run eagerly elsewhere)."""
        self._draw_uniform(generator)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()
        return self.tokens


def capture(step: Any, state: tuple[Tensor, ...]) -> Any:
    """``step`` captured as a CUDA graph. It is warmed up first on a side stream (cuBLAS handles,
    workspaces); ``state``, the tensors the warm-up changes that matter (last tokens, cache lengths, flags),
    is put back afterwards. The warm-up also writes cache slots 0 and 1 of empty rows, which every prefill
    overwrites."""
    saved = [t.clone() for t in state]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    for t, s in zip(state, saved, strict=True):
        t.copy_(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


class SlotDecoder:
    """The server's static batch: ``slots`` rows, each a request of its own or free, decoded together by one
    step with every shape fixed (captured as a CUDA graph on CUDA, run eagerly elsewhere).

    A request is :meth:`put` into a free slot after its prefill (an ordinary pass in a cache of its own,
    whose rows are copied into the static cache: ``KVCache.put``), with its sampling settings as per-row
    tensors (``sampling.sample_rows``), and :meth:`free`-d when it ends. Every :meth:`step` decodes all the
    slots, free ones too (their tokens are ignored, and their cache rows are emptied again inside the step,
    so they never run past a position table); the caller hands it one uniform number per slot, drawn
    outside the graph by each request's own generator."""

    def __init__(self, model: GPT, slots: int, device: torch.device) -> None:
        cfg = model.config
        assert cfg.vocab_size is not None
        self.model, self.slots = model, slots
        self.cache = model.new_kv_cache(slots, static=True)
        self.cache.allocate(_compute_dtype(model, device), device)
        self.max_positions = cfg.max_seq_len  # as StaticDecoder: rotary tables grown ahead, once
        if model.rotary is not None:
            self.max_positions = max(8 * cfg.max_seq_len, 4096)
            model.rotary.table(self.max_positions, device)
        V = int(cfg.vocab_size)
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.uniform = torch.zeros(slots, 1, device=device)
        self.temperature = torch.ones(slots, 1, device=device)
        self.top_k = torch.full((slots, 1), V, dtype=torch.long, device=device)
        self.top_p = torch.full((slots, 1), 2.0, device=device)  # above 1: keeps every token
        self.greedy_rows = torch.ones(slots, dtype=torch.bool, device=device)
        self.active = torch.zeros(slots, dtype=torch.long, device=device)
        self.vocab_size = V
        self.graph: Any = None
        self._run = torch.compile(self._step, dynamic=False) if COMPILE_STEP else self._step
        if device.type == "cuda" and os.environ.get(DISABLE_ENV) != "1":
            assert self.cache.lengths is not None
            self.graph = capture(self._run, (self.tokens, self.cache.lengths))

    def _step(self) -> None:
        h = self.model.hidden_states(self.tokens[:, None], kv_cache=self.cache)
        logits = self.model.logits(h[:, -1])
        picked = sample_rows(logits, self.uniform, self.temperature, self.top_k, self.top_p, self.greedy_rows)
        self.tokens.copy_(picked)
        assert self.cache.lengths is not None
        self.cache.lengths.mul_(self.active)  # free slots stay empty

    def put(
        self,
        slots: list[int],
        cache: Any,
        rows: list[int],
        first: Tensor,
        settings: list[tuple[float, int | None, float | None]],
    ) -> None:
        """Requests join: rows ``rows`` of the prefilled ``cache`` go to ``slots``, with their first tokens
        and their (temperature, top_k, top_p) (temperature 0: greedy)."""
        device = self.tokens.device
        index = torch.tensor(slots, dtype=torch.long, device=device)
        self.cache.put(index, cache, torch.tensor(rows, dtype=torch.long))
        self.tokens[index] = first.to(device)
        t, k, p = zip(*settings, strict=True)
        self.greedy_rows[index] = torch.tensor([x == 0 for x in t], device=device)
        self.temperature[index] = torch.tensor([[x if x > 0 else 1.0] for x in t], device=device)
        self.top_k[index] = torch.tensor(
            [[min(x or self.vocab_size, self.vocab_size)] for x in k], device=device
        )
        self.top_p[index] = torch.tensor([[x if x is not None and x < 1 else 2.0] for x in p], device=device)
        self.active[index] = 1

    def free(self, slots: list[int]) -> None:
        """Requests leave: their slots are emptied."""
        if slots:
            index = torch.tensor(slots, dtype=torch.long, device=self.tokens.device)
            self.active[index] = 0
            assert self.cache.lengths is not None
            self.cache.lengths[index] = 0

    def step(self, uniform: Tensor) -> Tensor:
        """The next token of every slot ((slots,), overwritten by the next step), given ``uniform``
        (slots, 1) in [0, 1)."""
        self.uniform.copy_(uniform)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._run()
        return self.tokens


_decoders: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], StaticDecoder]] = weakref.WeakKeyDictionary()


def decoder_for(
    model: GPT, batch_size: int, params: SamplingParams, fill_id: int | None, device: torch.device
) -> StaticDecoder:
    """The model's decoder for this batch size and sampling setup, built (and on CUDA captured) on first use
    and kept (the newest :data:`MAX_DECODERS` per model). The key holds everything a captured graph bakes
    in: the weights' storage, dtypes, autocast, and the sampling constants."""
    first = next(model.parameters())
    key = (
        batch_size,
        str(device),
        first.dtype,
        first.data_ptr(),
        torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type),
        params.temperature,
        params.top_k,
        params.top_p,
        params.eos_token_id,
        fill_id,
        COMPILE_STEP,
    )
    per_model = _decoders.setdefault(model, {})
    decoder = per_model.pop(key, None)
    if decoder is None:
        decoder = StaticDecoder(model, batch_size, params, fill_id, device)
        while len(per_model) >= MAX_DECODERS:
            per_model.pop(next(iter(per_model)))
    per_model[key] = decoder  # newest last
    return decoder


def decode(
    model: GPT,
    prompt: Tensor,
    mask: Tensor | None,
    params: SamplingParams,
    *,
    steps: int,
    fill_id: int | None,
    finished: Tensor,
    generator: torch.Generator | None,
) -> Iterator[Tensor]:
    """Yield up to ``steps`` new tokens per row ((B,) tensors) after ``prompt`` (B, T) (learned positions:
    T + steps - 1 <= max_seq_len), stopping after the step at which every row has finished (``finished`` (B,) is updated in
    place, as the eager loop does). Tokens come out in blocks of :data:`SYNC_EVERY`, after one host sync."""
    eos = params.eos_token_id
    decoder = decoder_for(model, prompt.size(0), params, fill_id, prompt.device)
    steps = min(steps, decoder.max_positions - prompt.size(1) + 1)
    block = [decoder.start(prompt, mask, generator).clone()]
    done_before = finished.clone()
    for i in range(1, steps + 1):
        if len(block) == SYNC_EVERY or i == steps:
            tokens = torch.stack(block, dim=1)  # (B, k)
            block = []
            if eos is None:
                yield from tokens.unbind(1)
            else:
                done = done_before[:, None] | (tokens == eos).cummax(dim=1).values  # done after each column
                all_done = done.all(dim=0)
                stop = int(all_done.float().argmax()) if bool(all_done.any()) else None  # the host sync
                cut = tokens.size(1) if stop is None else stop + 1
                finished.copy_(done[:, cut - 1])
                done_before = finished.clone()
                yield from tokens[:, :cut].unbind(1)
                if stop is not None:
                    return
        if i < steps:
            block.append(decoder.step(generator).clone())
