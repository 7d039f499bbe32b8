"""The static-shape decode step (model/static_decode.py), run eagerly on the CPU: greedy tokens equal the
eager path's for any prompt length, batch and per-row EOS; seeded sampling is reproducible; the on-device
sampler draws only from the top-k/top-p set. The CUDA-graph capture itself needs a GPU (benches/bench_gpu.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import left_padded, tiny_gpt
from gptrs.model import static_decode
from gptrs.model.sampling import filter_logits, sample_with_uniform

pytestmark = pytest.mark.usefixtures("one_thread")

V, CTX = 48, 20
MODEL = tiny_gpt(3, weight_std=2.0, vocab_size=V, max_seq_len=CTX, pad_token_id=0).eval()
ROTARY = tiny_gpt(3, weight_std=2.0, vocab_size=V, max_seq_len=CTX, pad_token_id=0, arch="nanochat").eval()


def _batch(lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return left_padded(lengths, seed, V)


@settings(max_examples=25, deadline=None)
@given(
    lengths=st.lists(st.integers(1, CTX), min_size=1, max_size=4),
    new=st.integers(1, 30),
    eos=st.one_of(st.none(), st.integers(1, V - 1)),
    seed=st.integers(0, 10**6),
    rotary=st.booleans(),
)
def test_static_greedy_equals_eager(
    lengths: list[int], new: int, eos: int | None, seed: int, rotary: bool
) -> None:
    """Any prompt length up to the context and past it (learned positions: the eager loop takes over when
    the window slides; rotary: the static step slides its ring), rows of different lengths, per-row EOS
    (frequent with a small vocabulary, so rows stop at different steps and the early stop lands inside and
    at the edges of the host-sync blocks), for both recipes."""
    ids, mask = _batch(lengths, seed)
    model = ROTARY if rotary else MODEL
    eager = model.generate(
        ids, new, temperature=0.0, eos_token_id=eos, attention_mask=mask, static_cache=False
    )
    static = model.generate(
        ids, new, temperature=0.0, eos_token_id=eos, attention_mask=mask, static_cache=True
    )
    assert torch.equal(static, eager)


def test_early_stop_lands_on_the_step_every_row_is_done(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static_decode, "SYNC_EVERY", 3)
    ids, mask = _batch([4, 2, 5], 7)
    full = MODEL.generate(ids, 12, temperature=0.0, attention_mask=mask, static_cache=False)
    for eos in full[:, 5:].unique().tolist():
        a = MODEL.generate(
            ids, 12, temperature=0.0, eos_token_id=eos, attention_mask=mask, static_cache=False
        )
        b = MODEL.generate(ids, 12, temperature=0.0, eos_token_id=eos, attention_mask=mask, static_cache=True)
        assert torch.equal(a, b), eos


def test_stream_equals_generate() -> None:
    ids, mask = _batch([3, 6], 1)
    out = MODEL.generate(ids, 9, temperature=0.0, eos_token_id=7, attention_mask=mask, static_cache=True)
    steps = list(MODEL.generate_stream(ids, 9, temperature=0.0, eos_token_id=7, attention_mask=mask,
                                       static_cache=True))  # fmt: skip
    assert torch.equal(torch.stack(steps, 1), out[:, ids.size(1) :])


@pytest.mark.parametrize("kw", [dict(top_k=5), dict(top_p=0.7), dict(top_k=10, top_p=0.9), dict()])
def test_seeded_sampling_is_reproducible(kw: dict) -> None:
    ids, mask = _batch([5, 3], 2)
    a = MODEL.generate(ids, 15, temperature=0.8, seed=11, attention_mask=mask, static_cache=True, **kw)
    b = MODEL.generate(ids, 15, temperature=0.8, seed=11, attention_mask=mask, static_cache=True, **kw)
    c = MODEL.generate(ids, 15, temperature=0.8, seed=12, attention_mask=mask, static_cache=True, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_decoders_are_reused_and_bounded() -> None:
    ids, _ = _batch([4], 0)
    static_decode._decoders.pop(MODEL, None)
    MODEL.generate(ids, 3, temperature=0.0, static_cache=True)
    first = next(iter(static_decode._decoders[MODEL].values()))
    MODEL.generate(ids[:, :2], 3, temperature=0.0, static_cache=True)  # same batch size: same decoder
    assert list(static_decode._decoders[MODEL].values()) == [first]
    for b in range(2, 2 + static_decode.MAX_DECODERS + 2):
        MODEL.generate(ids.expand(b, -1), 2, temperature=0.0, static_cache=True)
    assert len(static_decode._decoders[MODEL]) == static_decode.MAX_DECODERS
    assert first.graph is None  # the CPU never captures


def test_static_cache_arguments() -> None:
    ids, _ = _batch([4], 0)
    with pytest.raises(ValueError, match="use_cache"):
        MODEL.generate(ids, 3, use_cache=False, static_cache=True)


@settings(max_examples=30, deadline=None)
@given(
    k=st.one_of(st.none(), st.integers(1, 12)),
    p=st.one_of(st.none(), st.floats(0.05, 1.0)),
    temperature=st.floats(0.1, 3.0),
    seed=st.integers(0, 10**6),
)
def test_on_device_sampler_stays_in_the_filtered_set(
    k: int | None, p: float | None, temperature: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 12, generator=g) * 3
    allowed = filter_logits(logits, temperature, k, p) > float("-inf")
    assert allowed.any(dim=1).all()  # the most likely token always stays
    assert bool(allowed[torch.arange(6), logits.argmax(1)].all())
    if k is not None:  # nothing below the k-th largest logit
        kth = logits.sort(1, descending=True).values[:, k - 1 : k]
        assert not (allowed & (logits < kth)).any()
    for _ in range(20):
        token = sample_with_uniform(logits, torch.rand(6, 1, generator=g), temperature, k, p)
        assert bool(allowed[torch.arange(6), token].all())


@pytest.mark.parametrize("k", [None, 1, 3])
def test_sampler_at_the_top_of_the_uniform_range(k: int | None) -> None:
    """u just below 1 times the total can round up to the total (u = 1 below stands for that case): the draw
    is then still a token of the filtered set, never index V or a filtered token."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 12, generator=g) * 3
    allowed = filter_logits(logits, 1.0, k) > float("-inf")
    token = sample_with_uniform(logits, torch.ones(200, 1), 1.0, k)
    assert bool((token < 12).all()) and bool(allowed[torch.arange(200), token].all())


def test_on_device_sampler_follows_the_distribution() -> None:
    """Inverse-CDF sampling draws token i with probability p_i (a loose check over many draws)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    u = torch.rand(20000, 1, generator=g)
    draws = sample_with_uniform(logits.expand(20000, -1), u, 1.0)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), atol=0.015, rtol=0)
