"""Autoregressive generation for rotary models with a sliding KV cache (the nanochat family).

The sampling rules (temperature, top-k, top-p, seeds, EOS and fill ids) are ``generation.py``'s
(:class:`SamplingParams`, :func:`sample_next_token`); what differs is the cache. GPT's learned positions
force a re-prefill whenever its window slides; here keys are cached rotated by their absolute position, so
the prompt is run once and then every step is one token through ``decode_step``, for as long as asked, past
``max_seq_len`` too: each token attends to itself and the ``max_seq_len - 1`` tokens before it. The
reference path (``use_cache=False``) runs the whole sequence every step with that banded mask, and the two
agree within float rounding (tests/test_nanochat.py).

Prompts of different lengths are LEFT padded with an ``attention_mask`` (1 = token, 0 = pad); padding is
never attended to and rotary scores depend only on distances, so each row generates what it would alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch

from gptrs.model.generation import SamplingParams, sample_next_token
from gptrs.model.sliding_cache import SlidingKVCache


class SlidingModel(Protocol):
    """What this module needs of a model (``NanoChat`` has it)."""

    pad_token_id: int | None
    training: bool

    @property
    def vocab_size(self) -> int: ...

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: SlidingKVCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor: ...

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def new_kv_cache(self, batch_size: int) -> SlidingKVCache: ...

    def decode_step(self, tokens: torch.Tensor, kv_cache: SlidingKVCache) -> torch.Tensor: ...

    def train(self, mode: bool = True) -> object: ...


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


@torch.no_grad()
def generate_stream(
    model: SlidingModel,
    input_ids: torch.Tensor,
    params: SamplingParams,
    *,
    attention_mask: torch.Tensor | None = None,
    use_cache: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield each step's new tokens as a (B,) LongTensor; rows stopped at EOS yield the fill id
    (``pad_token_id``, else EOS). Stops after ``params.max_new_tokens`` steps or when every row stopped."""
    ids, mask = check_prompt(input_ids, attention_mask, model.vocab_size)
    device, B = ids.device, ids.size(0)
    eos_id = params.eos_token_id
    fill_id = model.pad_token_id if model.pad_token_id is not None else eos_id
    generator = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None
    was_training = model.training
    model.train(False)
    try:
        cache = model.new_kv_cache(B) if use_cache else None
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        seq, valid = ids, mask
        for i in range(params.max_new_tokens):
            if cache is None:  # the reference: the whole sequence again (banded past max_seq_len)
                logits = model.logits(model.hidden_states(seq, valid)[:, -1])
            elif i == 0:  # prefill: the prompt once
                logits = model.logits(model.hidden_states(ids, mask, kv_cache=cache)[:, -1])
            else:
                logits = model.decode_step(seq[:, -1], cache)
            token = sample_next_token(logits, params.temperature, params.top_k, params.top_p, generator)
            if eos_id is not None:
                if fill_id is not None:
                    token = token.masked_fill(finished, fill_id)
                finished |= token == eos_id
            seq = torch.cat((seq, token[:, None]), 1)
            if valid is not None:
                valid = torch.cat((valid, torch.ones_like(valid[:, :1])), 1)
            yield token
            if eos_id is not None and bool(finished.all()):
                break
    finally:
        model.train(was_training)
