"""Autoregressive generation: the one decoding loop (streaming; ``generate`` collects it), with a KV cache.

With the cache (the default) the prompt is run once (prefill) and then one token per step through the same
forward as training (``GPT.hidden_states`` with ``kv_cache``). Every token attends to itself and the
``max_seq_len - 1`` tokens before it. Rotary keys stay valid as the window slides, so a rotary model decodes
one token per step for as long as asked. Learned positions do not: once the context is full every new token
must see the window with positions 0..max_seq_len-1, as a full recompute would, so such a model re-encodes
its last window each step (a full forward, as recompute costs). Outputs equal the recompute path
(``use_cache=False``, which runs the whole window every step, within float rounding for rotary models).

Batches of prompts of different lengths are LEFT padded with an ``attention_mask`` (1 = token, 0 = pad):
each row's positions start at its first real token and padding is never attended to, so a row generates
what it would generate alone. Each row stops at ``eos_token_id``; after that its slots are filled with
``pad_token_id`` (or the EOS id when the model has none). Generation ends early when every row has stopped.

On CUDA the decode steps run by default through ``static_decode.py``: the same forward with a static cache,
captured as a CUDA graph (``static_cache``; the CPU keeps the eager step, faster there).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from gptrs.model import static_decode
from gptrs.model.sampling import MAX_NEW_TOKENS, SamplingParams, filter_logits, sample_next_token

if TYPE_CHECKING:
    from gptrs.model.gpt import GPT

__all__ = [
    "MAX_NEW_TOKENS",
    "SamplingParams",
    "check_prompt",
    "filter_logits",
    "generate",
    "generate_stream",
    "sample_next_token",
]


def check_prompt(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) long ids in the vocabulary and a left-padding mask (None when there is no padding);
    ValueError naming what is wrong."""
    ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.as_tensor(input_ids, dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids
    if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {tuple(ids.shape)}")
    if ids.numel() == 0:
        raise ValueError("input_ids must hold at least one token per row")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary (size {vocab_size})")
    if attention_mask is None:
        return ids.long(), None
    mask = (attention_mask[None] if attention_mask.dim() == 1 else attention_mask).to(ids.device).bool()
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {tuple(mask.shape)} != input_ids shape {tuple(ids.shape)}")
    if not bool(mask[:, -1].all()) or bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask must be left padding: zeros, then ones up to the last column")
    return ids.long(), None if bool(mask.all()) else mask


def _static(model: GPT, device: torch.device, use_cache: bool, static_cache: bool | None) -> bool:
    """Whether to decode with the static (CUDA-graph) step: by default on CUDA."""
    if static_cache is None:
        return use_cache and device.type == "cuda"
    if static_cache and not use_cache:
        raise ValueError("static_cache=True needs use_cache=True")
    return static_cache


@torch.no_grad()
def generate_stream(
    model: GPT,
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
    ids, mask = check_prompt(input_ids, attention_mask, model.vocab_size)
    ctx = model.config.max_seq_len
    learned = model.config.positions == "learned"
    B, T0 = ids.shape
    if learned and T0 > ctx:
        warnings.warn(
            f"prompt of {T0} tokens is longer than the context (max_seq_len={ctx}); using its last {ctx} tokens",
            stacklevel=3,
        )
    device = ids.device
    max_new, eos_id = params.max_new_tokens, params.eos_token_id
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    fill_id = model.pad_token_id if model.pad_token_id is not None else eos_id
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    try:
        # History of every token so far (prompt + generated), preallocated: the window is a view of it.
        seq = torch.empty(B, T0 + max_new, dtype=torch.long, device=device)
        seq[:, :T0] = ids
        valid = None
        if mask is not None:
            valid = torch.ones(B, T0 + max_new, dtype=torch.bool, device=device)
            valid[:, :T0] = mask
        n = T0
        if max_new and _static(model, device, use_cache, static_cache):
            # The static step while a learned-position context has room (rotary: all the way); the eager
            # loop below takes over after that (a fresh cache: it starts with a prefill).
            steps = min(max_new, ctx - T0 + 1) if learned else max_new
            start = max(0, T0 - ctx) if learned else 0
            for token in static_decode.decode(
                model, ids[:, start:], None if mask is None else mask[:, start:], params,
                steps=steps, fill_id=fill_id, finished=finished, generator=generator,
            ):  # fmt: skip
                seq[:, n] = token
                n += 1
                yield token
            if eos_id is not None and bool(finished.all()):
                return
        cache = model.new_kv_cache(B) if use_cache else None
        for _ in range(max_new - (n - T0)):
            start = max(0, n - ctx) if learned else 0
            window = valid[:, start:n] if valid is not None else None
            if cache is None:  # the reference: the whole window again
                h = model.hidden_states(seq[:, start:n], window)
            elif cache.max_len == 0 or (learned and cache.full):
                # Prefill (first step, or a learned-position window slid: its keys need new positions).
                cache.reset()
                h = model.hidden_states(seq[:, start:n], window, kv_cache=cache)
            else:
                h = model.hidden_states(seq[:, n - 1 : n], kv_cache=cache)
            logits = model.logits(h[:, -1])
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
    model: GPT,
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
    static_cache: decode with the static step of ``static_decode.py`` (captured as a CUDA graph on CUDA);
    None (default) = on CUDA only. Its greedy tokens equal the eager path's; its samples come from the same
    distribution, drawn differently (the same seed, other tokens).
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
