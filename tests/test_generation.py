"""Generation: KV cache against recompute, sliding past the context, batched left padding, EOS, sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gptrs.model.generation as generation
from gptrs.model import GPT, sample_next_token
from gptrs.training.precision import cpu_supports_bf16

V, CTX = 48, 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    args = dict(vocab_size=V, embed_dim=32, ff_dim=64, num_layers=2, heads=4, max_seq_len=CTX, pad_token_id=0)
    args.update(kw)
    m = GPT(**args)
    # The N(0, 0.02) init gives near-uniform logits whose argmax just repeats the input token (tied
    # embeddings). Larger weights make the output depend on the whole context, so the comparisons below
    # exercise attention over the cache, and keep greedy choices clear of ties.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 2.0 / p.size(1) ** 0.5)
    return m


def test_test_model_is_not_degenerate() -> None:
    out = tiny().generate(prompts(2, 3), 20, temperature=0)[:, 3:]
    assert all(len(set(row.tolist())) >= 5 for row in out)


def prompts(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, V, (b, t), generator=torch.Generator().manual_seed(seed))


def record_logits(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Capture the logits each generation step samples from."""
    seen: list[torch.Tensor] = []
    real = generation.sample_next_token

    def spy(logits: torch.Tensor, *args, **kw):  # type: ignore[no-untyped-def]
        seen.append(logits.float().clone())
        return real(logits, *args, **kw)

    monkeypatch.setattr(generation, "sample_next_token", spy)
    return seen


def test_cached_steps_match_full_forward() -> None:
    """Prefill + one token at a time through the cache gives the logits of one full forward pass."""
    m = tiny().eval()
    x = prompts(2, CTX)
    with torch.no_grad():
        full, _ = m(x)
        cache = m.new_kv_cache(2)
        h = m.hidden_states(x[:, :4], kv_cache=cache, position_ids=torch.arange(4)[None])
        steps = [m.lm_head(h)]
        for i in range(4, CTX):
            h = m.hidden_states(x[:, i : i + 1], kv_cache=cache, position_ids=torch.tensor([[i]]))
            steps.append(m.lm_head(h))
    assert full is not None and cache.pos == CTX
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("prompt_len", "new"),
    [(3, 6), (5, 20), (CTX, 5), (CTX + 4, 7)],  # within, sliding past, full prompt, over-long prompt
)
def test_cache_equals_recompute(monkeypatch: pytest.MonkeyPatch, prompt_len: int, new: int) -> None:
    m = tiny()
    x = prompts(2, prompt_len)
    seen = record_logits(monkeypatch)
    with pytest.warns(UserWarning, match="longer than the context") if prompt_len > CTX else _nothing():
        cached = m.generate(x, new, temperature=0)
    cached_logits = list(seen)
    seen.clear()
    with pytest.warns(UserWarning) if prompt_len > CTX else _nothing():
        recomputed = m.generate(x, new, temperature=0, use_cache=False)
    assert cached.shape == (2, prompt_len + new)
    assert torch.equal(cached, recomputed)
    assert torch.equal(cached[:, :prompt_len], x)
    assert len(cached_logits) == len(seen) == new
    for a, b in zip(cached_logits, seen, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # Greedy means argmax of the recompute logits.
    assert torch.equal(torch.stack([s.argmax(-1) for s in seen], dim=1), recomputed[:, prompt_len:])


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_recompute_path_is_a_sliding_window() -> None:
    """Past the context, each token is the argmax of a plain forward over the last max_seq_len tokens."""
    m = tiny().eval()
    out = m.generate(prompts(1, 4), 15, temperature=0)
    with torch.no_grad():
        for n in range(4, out.size(1)):
            window = out[:, max(0, n - CTX) : n]
            logits, _ = m(window)
            assert logits is not None and int(logits[0, -1].argmax()) == int(out[0, n])


@pytest.mark.parametrize("use_cache", [True, False])
def test_left_padded_batch_equals_rows_alone(use_cache: bool) -> None:
    m = tiny()
    rows = [prompts(1, n, seed=n)[0] for n in (2, 7, 5)]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    new = 14  # slides past the context for every row
    out = m.generate(ids, new, temperature=0, attention_mask=mask, use_cache=use_cache)
    for i, r in enumerate(rows):
        alone = m.generate(r[None], new, temperature=0, use_cache=use_cache)
        assert torch.equal(out[i, width:], alone[0, len(r) :]), f"row {i}"


def test_each_row_stops_at_eos() -> None:
    m = tiny()
    x = prompts(3, 4)
    free = m.generate(x, 10, temperature=0)
    eos = int(free[0, 4 + 2])  # the third token row 0 generates
    out = m.generate(x, 10, temperature=0, eos_token_id=eos)
    assert out.size(1) <= free.size(1)
    for i in range(3):
        gen, ref = out[i, 4:].tolist(), free[i, 4 : out.size(1)].tolist()
        if eos in ref:
            stop = ref.index(eos) + 1
            assert gen[:stop] == ref[:stop]
            assert gen[stop:] == [m.pad_token_id] * (len(gen) - stop)
        else:
            assert gen == ref
    if all(eos in free[i, 4:].tolist() for i in range(3)):  # all stopped: ends at the last row's EOS
        assert out.size(1) == 4 + max(free[i, 4:].tolist().index(eos) + 1 for i in range(3))


def test_stream_yields_what_generate_returns() -> None:
    m = tiny()
    x = prompts(2, 3)
    steps = list(m.generate_stream(x, 6, temperature=0.9, top_k=10, seed=5))
    assert all(s.shape == (2,) and s.dtype == torch.long for s in steps)
    assert torch.equal(torch.stack(steps, 1), m.generate(x, 6, temperature=0.9, top_k=10, seed=5)[:, 3:])
    one = list(m.generate_stream(x[0], 4, temperature=0))  # a 1-D prompt is a batch of one
    assert all(s.shape == (1,) for s in one)


def test_seeded_sampling_is_reproducible_and_filters_work() -> None:
    m = tiny()
    x = prompts(2, 3)
    a = m.generate(x, 12, temperature=1.0, seed=1)
    assert torch.equal(a, m.generate(x, 12, temperature=1.0, seed=1))
    assert not torch.equal(a, m.generate(x, 12, temperature=1.0, seed=2))
    greedy = m.generate(x, 12, temperature=0)
    assert torch.equal(m.generate(x, 12, temperature=1.0, top_k=1, seed=3), greedy)
    assert torch.equal(m.generate(x, 12, temperature=1.0, top_p=1e-6, seed=3), greedy)


def test_generate_restores_training_mode() -> None:
    m = tiny(dropout=0.1)
    m.train()
    m.generate(prompts(1, 3), 3, temperature=0)
    assert m.training
    m.eval()
    m.generate(prompts(1, 3), 3, temperature=0)
    assert not m.training


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 20), p=st.floats(0.05, 1.0), seed=st.integers(0, 10**6))
def test_top_k_top_p_sample_inside_the_allowed_set(k: int, p: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 20, generator=g) * 3
    tok = sample_next_token(logits, 1.0, top_k=k, generator=g)
    assert all(int(t) in set(torch.topk(logits[i], k).indices.tolist()) for i, t in enumerate(tok))
    tok = sample_next_token(logits, 1.0, top_p=p, generator=g)
    probs = torch.softmax(logits, -1)
    for i, t in enumerate(tok):
        # allowed: tokens whose more-likely predecessors sum to less than p
        higher = probs[i][probs[i] > probs[i, t]].sum().item()
        assert higher < p + 1e-6


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(temperature=-0.5), "temperature must be a number >= 0, got -0.5"),
        (dict(top_k=0), "top_k must be an integer >= 1, got 0"),
        (dict(top_k=2.5), "top_k must be an integer >= 1, got 2.5"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\], got 0.0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(seed="7"), "seed must be an integer, got '7'"),
        (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0, got -1"),
        (dict(input_ids=torch.tensor([[1, V]])), r"token id 48, outside the vocabulary \(size 48\)"),
        (
            dict(input_ids=torch.zeros(1, 0, dtype=torch.long)),
            "input_ids must hold at least one token per row",
        ),
        (dict(input_ids=torch.rand(1, 3)), r"input_ids must be an integer tensor of shape \(B, T\)"),
        (dict(attention_mask=torch.tensor([[1, 1, 0]])), "attention_mask must be left padding"),
        (dict(attention_mask=torch.ones(1, 2)), r"attention_mask shape \(1, 2\) != input_ids shape \(1, 3\)"),
    ],
)
def test_bad_arguments(kw: dict, message: str) -> None:
    args: dict = dict(input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2)
    args.update(kw)
    with pytest.raises(ValueError, match=message):
        tiny().generate(**args)


@pytest.mark.skipif(
    not cpu_supports_bf16(),
    reason="bf16 is emulated on this CPU: its GEMMs round differently for a 1-row decode step and a full "
    "window, so near-tied greedy choices can flip (seen on an AVX2-only AMD EPYC)",
)
def test_cache_equals_recompute_under_bf16_autocast() -> None:
    m = tiny()
    for seed in range(3):
        x = prompts(2, 4, seed=seed)
        with torch.autocast("cpu", torch.bfloat16):
            cached = m.generate(x, 16, temperature=0)
            recomputed = m.generate(x, 16, temperature=0, use_cache=False)
        assert torch.equal(cached, recomputed)


def test_max_new_tokens_is_bounded_before_any_allocation() -> None:
    """An absurd max_new_tokens is refused by name before the token history is preallocated."""
    with pytest.raises(
        ValueError, match=r"max_new_tokens must be at most 16,777,216, got 1,125,899,906,842,624"
    ):
        tiny().generate(prompts(1, 3, seed=0), 2**50)
