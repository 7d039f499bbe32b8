"""Autoregressive generation: sampling (temperature, top-k, top-p), streaming, batched prompts, KV cache.

With the cache (the default) the prompt is run once (prefill) and then one token per step. The model only
sees its last ``max_seq_len`` tokens: once the context is full, every new token has to see that window
with positions 0..max_seq_len-1, exactly as a full recompute would, and all cached keys were made with
other positions, so the window is re-prefilled (each such step costs a full forward, as recompute does).
Outputs therefore equal the recompute path (``use_cache=False``), which runs the whole window every step.

Batches of prompts of different lengths are LEFT padded with an ``attention_mask`` (1 = token, 0 = pad):
each row's positions start at 0 at its first real token and padding is never attended to, so a row
generates what it would generate alone. Each row stops at ``eos_token_id``; after that its slots are
filled with ``pad_token_id`` (or the EOS id when the model has none). Generation ends early when every row
has stopped.

On CUDA the decode steps run by default through ``static_decode.py``: a static KV cache and the one-token
step captured as a CUDA graph (``static_cache``; the CPU keeps the eager step, faster there).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Protocol

import torch

from gptrs.config import ModelConfig
from gptrs.model import static_decode
from gptrs.model.kv_cache import KVCache
from gptrs.model.sampling import MAX_NEW_TOKENS, SamplingParams, filter_logits, sample_next_token

__all__ = [
    "MAX_NEW_TOKENS",
    "LanguageModel",
    "SamplingParams",
    "filter_logits",
    "generate",
    "generate_stream",
    "sample_next_token",
]


class LanguageModel(Protocol):
    """What generation needs of a model (``GPT`` has it): its config, the hidden states of a window (with
    or without a KV cache), the LM head, and the one-token decode step."""

    pad_token_id: int | None
    training: bool

    @property
    def config(self) -> ModelConfig: ...

    def lm_head(self, x: torch.Tensor) -> torch.Tensor: ...

    def new_kv_cache(self, batch_size: int) -> KVCache: ...

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor: ...

    def decode_step(
        self, tokens: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache
    ) -> torch.Tensor: ...

    def eval(self) -> object: ...

    def train(self, mode: bool = True) -> object: ...


def _prepare(
    model: LanguageModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Validate the prompt batch: (B, T) or (T,) integer ids in range, and a left-padding mask."""
    if not isinstance(input_ids, torch.Tensor):
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {tuple(input_ids.shape)}")
    if input_ids.size(0) == 0 or input_ids.size(1) == 0:
        raise ValueError("input_ids must hold at least one token per row")
    vocab = model.config.vocab_size
    assert vocab is not None
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary (size {vocab})")
    input_ids = input_ids.long()
    if attention_mask is None:
        return input_ids, None
    if attention_mask.dim() == 1:
        attention_mask = attention_mask[None]
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    mask = attention_mask.to(device=input_ids.device).bool()
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask must be left padding: zeros, then ones up to the last column")
    return input_ids, mask


def _static(model: LanguageModel, device: torch.device, use_cache: bool, static_cache: bool | None) -> bool:
    """Whether to decode with the static (CUDA-graph) step: by default on CUDA, when the model has one."""
    if static_cache is None:
        return use_cache and device.type == "cuda" and static_decode.supported(model)
    if static_cache and not use_cache:
        raise ValueError("static_cache=True needs use_cache=True")
    if static_cache and not static_decode.supported(model):
        raise ValueError(f"{type(model).__name__} has no static decode step (static_cache=True)")
    return static_cache


@torch.no_grad()
def generate_stream(
    model: LanguageModel,
    input_ids: torch.Tensor,
    params: SamplingParams,
    *,
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    static_cache: bool | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the new tokens of every step as a LongTensor of shape (B,), B = number of prompts (1 for a
    1-D prompt). Rows that have stopped at EOS yield the fill id (``pad_token_id``, else EOS). Stops after
    ``params.max_new_tokens`` steps or when every row has stopped. Arguments as in :func:`generate`; with
    the static step, tokens come in small blocks (``static_decode.SYNC_EVERY``) after one host sync each."""
    ids, mask = _prepare(model, input_ids, attention_mask)
    ctx = model.config.max_seq_len
    B, T0 = ids.shape
    if T0 > ctx:
        warnings.warn(
            f"prompt of {T0} tokens is longer than the context (max_seq_len={ctx}); using its last {ctx} tokens",
            stacklevel=3,
        )
    device = ids.device
    max_new, eos_id = params.max_new_tokens, params.eos_token_id
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    fill_id = model.pad_token_id if model.pad_token_id is not None else eos_id
    was_training = model.training
    model.eval()
    try:
        # History of every token so far (prompt + generated), preallocated: the window is a view of it.
        seq = torch.empty(B, T0 + max_new, dtype=torch.long, device=device)
        seq[:, :T0] = ids
        valid = None
        if mask is not None and not bool(mask.all()):
            valid = torch.ones(B, T0 + max_new, dtype=torch.bool, device=device)
            valid[:, :T0] = mask
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        cache = model.new_kv_cache(B) if use_cache else None
        next_pos: torch.Tensor | None = None  # per-row position of the next token (cache path)
        n = T0
        if _static(model, device, use_cache, static_cache) and T0 <= ctx and max_new > 0:
            # The static, graph-captured decode step while the context has room; the eager loop below
            # takes over once the window has to slide (a fresh cache: it starts with a prefill).
            prompt_mask = valid[:, :T0] if valid is not None else None
            steps = min(max_new, ctx - T0 + 1)
            for token in static_decode.decode(
                model,  # type: ignore[arg-type]
                ids,
                prompt_mask,
                params,
                steps=steps,
                fill_id=fill_id,
                finished=finished,
                generator=generator,
            ):
                seq[:, n] = token
                n += 1
                yield token
            if eos_id is not None and bool(finished.all()):
                return
        for _ in range(max_new - (n - T0)):
            start = max(0, n - ctx)
            window_mask = valid[:, start:n] if valid is not None else None
            if cache is None or cache.pos == 0 or cache.full:
                # Prefill (first step, or the window slid: its keys need their new positions): run the
                # whole window.
                if cache is not None:
                    cache.reset()
                pos_ids = None
                if window_mask is None:
                    pos_ids = torch.arange(n - start, device=device)[None]
                h = model.hidden_states(seq[:, start:n], window_mask, kv_cache=cache, position_ids=pos_ids)
                if cache is not None:
                    counts = window_mask.sum(1) if window_mask is not None else torch.full((B,), n - start)
                    next_pos = counts.to(device)
                logits = model.lm_head(h[:, -1])
            else:
                assert next_pos is not None
                logits = model.decode_step(seq[:, n - 1], next_pos, cache)
                next_pos += 1
            token = sample_next_token(logits, params.temperature, params.top_k, params.top_p, generator)
            if eos_id is not None:
                if fill_id is not None:
                    token = token.masked_fill(finished, fill_id)
                finished |= token == eos_id
            seq[:, n] = token
            n += 1
            yield token
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)


@torch.no_grad()
def generate(
    model: LanguageModel,
    input_ids: torch.Tensor,
    params: SamplingParams,
    *,
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
    static_cache: bool | None = None,
) -> torch.Tensor:
    """Continue each prompt by up to ``params.max_new_tokens`` tokens; return (B, T + new) token ids.

    input_ids: (B, T) or (T,) prompt ids, left padded when rows differ in length, with ``attention_mask``
    (B, T) of 1 for tokens and 0 for padding. The result starts with the prompt as given (uncropped) and
    has fewer than ``max_new_tokens`` new columns when every row stopped at EOS early.
    use_cache=False recomputes the whole window each step (slow; the reference the cache is tested on).
    static_cache: decode with the static step of ``static_decode.py`` (captured as a CUDA graph on CUDA)
    while the context has room; None (default) = on CUDA only. Its greedy tokens equal the eager path's;
    its samples come from the same distribution, drawn differently (the same seed, other tokens).
    """
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    new = list(
        generate_stream(
            model, ids, params, attention_mask=attention_mask, use_cache=use_cache, static_cache=static_cache
        )
    )
    if not new:
        return ids.long()
    return torch.cat([ids.long(), torch.stack(new, dim=1)], dim=1)
