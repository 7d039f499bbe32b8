"""Sampling: the parameters of a generation request and how one token per row is picked from logits.

Every path picks the same way: :func:`filter_logits` (temperature, top-k, top-p), then
:func:`sample_with_uniform`, the inverse of the distribution's CDF at one uniform number per row drawn from
the request's generator. The eager loop (:func:`sample_next_token`), the static decode step
(``static_decode.py``, the numbers drawn outside its captured graph) and the server's batch
(``serve/engine.py``, one number per seeded request from its own generator) therefore draw the same token
from the same seed. Why not ``torch.multinomial`` or Gumbel noise: the server needs a generator per seeded
row, and one multinomial call per row cost more than the model's whole step at 32 rows (4.3 against 3.5 ms,
nanochat-small, one thread); a vocab-wide noise row per request still cost 1.8 ms; one number per row and a
batched cumsum cost 0.3 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# The token history is preallocated (prompt + max_new_tokens per row, int64), so an absurd request must be
# refused before that allocation: 2^24 tokens is 128 MiB per row, and days of decoding on any machine.
MAX_NEW_TOKENS = 1 << 24


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the new tokens and when to stop; checked on construction (ValueError naming the field).

    max_new_tokens: how many tokens to add at most (0 returns the prompt).
    temperature: 0 = greedy (argmax); else the logits are divided by it before sampling.
    top_k >= 1 and top_p in (0, 1] filter the distribution before sampling (see :func:`sample_next_token`).
    eos_token_id: a row stops once it has generated this token.
    seed: makes sampling reproducible (a private generator; the global RNG is left alone).
    """

    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if self.max_new_tokens > MAX_NEW_TOKENS:
            raise ValueError(
                f"max_new_tokens must be at most {MAX_NEW_TOKENS:,}, got {self.max_new_tokens:,}"
            )
        if not _is_number(self.temperature) or not self.temperature >= 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if self.top_p is not None and (not _is_number(self.top_p) or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.eos_token_id is not None and not _is_int(self.eos_token_id):
            raise ValueError(f"eos_token_id must be an integer, got {self.eos_token_id!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """fp32 logits (B, vocab) divided by ``temperature`` (> 0), with the tokens top-k and top-p drop set to
    -inf. top_k keeps the k most likely tokens; top_p keeps the smallest set of most likely tokens whose
    probability sums to at least p (nucleus sampling); both may be combined (top-k first). Static shapes
    only (no host sync), so a captured decode step can run it."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The most likely token of each row (the first one on a tie, as ``argmax``). ``max(dim).indices``
    rather than ``argmax``: on the CPU ``argmax`` over a (32, 4096) batch of logits took 3x as long (190
    against 65 us, one thread), a twentieth of a 32-row decode step of nanochat-small."""
    return logits.max(dim=-1).indices


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from logits (B, vocab). Temperature 0 is greedy (argmax; top-k/p unused);
    else a draw from the softmax of :func:`filter_logits` by :func:`sample_with_uniform`, one uniform number
    per row from ``generator`` (the global one when None)."""
    if temperature == 0:
        return greedy(logits)
    u = torch.rand((logits.size(0), 1), generator=generator, device=logits.device)
    return sample_with_uniform(logits, u, temperature, top_k, top_p)


def sample_with_uniform(
    logits: torch.Tensor,
    u: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """A draw from the softmax of :func:`filter_logits`, given ``u`` (B, 1) uniform in [0, 1) drawn
    beforehand: the first token whose cumulative probability exceeds ``u`` times the total (the total, not 1,
    so float rounding in the sum cannot push the draw past the end; a token of probability 0 adds nothing to
    the sum, so it is never the first to exceed it). No random op and no host sync, so a captured step can
    run it while the caller's generator makes ``u``. Temperature 0 is greedy (``u`` unused)."""
    if temperature == 0:
        return greedy(logits)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    token = torch.searchsorted(cdf, u * total, right=True)
    # u * total rounds up to the total once in ~2^24 draws, which would give index V: the last token with a
    # probability above 0 (the first to reach the total; the sum never decreases) is the draw then.
    last = torch.searchsorted(cdf, total)
    return torch.minimum(token, last).squeeze(-1)


def sample_rows(
    logits: torch.Tensor,
    u: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    greedy_rows: torch.Tensor,
) -> torch.Tensor:
    """:func:`sample_with_uniform` with every setting a per-row tensor, for a captured step whose rows are
    different requests (the server's): ``temperature`` (B, 1) > 0, ``top_k`` (B, 1) (vocab: no limit),
    ``top_p`` (B, 1) (above 1: no limit), ``greedy_rows`` (B,) bool. Row for row the same arithmetic as
    :func:`filter_logits` and :func:`sample_with_uniform`, so a row draws the token it would alone."""
    x = logits.float() / temperature
    V = x.size(-1)
    ordered = torch.sort(x, dim=-1, descending=True).values
    kth = ordered.gather(1, (top_k - 1).clamp(0, V - 1))
    x = x.masked_fill(x < kth, float("-inf"))
    sorted_x, order = torch.sort(x, dim=-1, descending=True)
    probs = F.softmax(sorted_x, dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= top_p
    x = torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x.masked_fill(drop, float("-inf")))
    probs = F.softmax(x, dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1:].contiguous()
    token = torch.minimum(torch.searchsorted(cdf, u * total, right=True), torch.searchsorted(cdf, total))
    return torch.where(greedy_rows, greedy(logits), token.squeeze(-1))
