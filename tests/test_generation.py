"""Generation, for both recipes: KV cache against recompute, sliding past the context, batched left padding,
rows joining and leaving a batch, EOS, sampling."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gptrs.model.generation as generation
from conftest import tiny_gpt
from gptrs.model import GPT, KVCache, sample_next_token
from gptrs.training.precision import cpu_supports_bf16

pytestmark = pytest.mark.usefixtures("one_thread")

V, CTX = 48, 12
ARCHS = pytest.mark.parametrize("arch", ["gpt2", "nanochat"])


def tiny(seed: int = 0, arch: str = "gpt2", **kw: object) -> GPT:
    # The default inits give near-uniform (GPT-2) or all-zero (nanochat) logits. Larger weights make the
    # output depend on the whole context, so the comparisons below exercise attention over the cache, and
    # keep greedy choices clear of ties.
    return tiny_gpt(seed, weight_std=2.0, vocab_size=V, max_seq_len=CTX, pad_token_id=0, arch=arch, **kw)


@ARCHS
def test_test_model_is_not_degenerate(arch: str) -> None:
    out = tiny(arch=arch).generate(prompts(2, 3), 20, temperature=0)[:, 3:]
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


@ARCHS
@pytest.mark.parametrize("chunk", [1, 3])
def test_cached_steps_match_full_forward(arch: str, chunk: int) -> None:
    """Prefill + ``chunk`` tokens at a time through the cache gives the logits of one full forward pass."""
    m = tiny(arch=arch).eval()
    x = prompts(2, CTX)
    with torch.no_grad():
        full, _ = m(x)
        cache = m.new_kv_cache(2)
        steps = [m(x[:, :4], kv_cache=cache)[0]]
        for i in range(4, CTX, chunk):
            steps.append(m(x[:, i : i + chunk], kv_cache=cache)[0])
    assert full is not None and cache.max_len == CTX and cache.lengths is not None
    assert cache.lengths.tolist() == [CTX, CTX]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("prompt_len", "new"),
    [(3, 6), (5, 20), (CTX, 5), (CTX + 4, 7)],  # within, sliding past, full prompt, over-long prompt
)
@ARCHS
def test_cache_equals_recompute(
    monkeypatch: pytest.MonkeyPatch, prompt_len: int, new: int, arch: str
) -> None:
    m = tiny(arch=arch)
    x = prompts(2, prompt_len)
    seen = record_logits(monkeypatch)
    warns = prompt_len > CTX and arch == "gpt2"  # learned positions crop the prompt; rotary ones slide
    with pytest.warns(UserWarning, match="longer than the context") if warns else _nothing():
        cached = m.generate(x, new, temperature=0)
    cached_logits = list(seen)
    seen.clear()
    with pytest.warns(UserWarning) if warns else _nothing():
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


@ARCHS
def test_generation_past_the_context_is_a_sliding_window(arch: str) -> None:
    """Past the context, each token is the argmax of a plain forward over the last max_seq_len tokens
    (learned positions: re-encoded from position 0; rotary: the banded forward over everything)."""
    m = tiny(arch=arch).eval()
    out = m.generate(prompts(1, 4), 15, temperature=0)
    with torch.no_grad():
        for n in range(4, out.size(1)):
            window = out[:, max(0, n - CTX) : n] if arch == "gpt2" else out[:, :n]
            logits, _ = m(window)
            assert logits is not None and int(logits[0, -1].argmax()) == int(out[0, n])


@pytest.mark.parametrize("use_cache", [True, False])
@ARCHS
def test_left_padded_batch_equals_rows_alone(use_cache: bool, arch: str) -> None:
    m = tiny(arch=arch)
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


@ARCHS
def test_rows_join_and_leave_a_running_batch(arch: str) -> None:
    """A request prefilled in its own cache and merged into a running batch (``KVCache.merge``), or left
    behind by others (``select``), decodes what it decodes alone: rows of a cache are independent."""
    m = tiny(arch=arch).eval()
    # learned positions stay inside the context (12); rotary rows slide past it
    rows = [prompts(1, n, seed=n) for n in ((3, 2, 4) if arch == "gpt2" else (5, 2, 7))]
    steps = 8 if arch == "gpt2" else 20

    def greedy_step(tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        logits, _ = m(tokens, kv_cache=cache)
        assert logits is not None
        return logits[:, -1].argmax(-1)

    with torch.no_grad():
        caches = [m.new_kv_cache(1) for _ in rows]
        firsts = [greedy_step(r, c) for r, c in zip(rows, caches, strict=True)]
        batch = KVCache.merge(caches[:2])  # rows 0 and 1 run together ...
        tokens = torch.cat(firsts[:2])
        out: list[list[int]] = [[int(t)] for t in firsts]
        for i in range(steps):
            if i == 3:  # ... row 2 joins ...
                batch = KVCache.merge([batch, caches[2]])
                tokens = torch.cat((tokens, firsts[2]))
            if i == 6:  # ... and row 1 leaves
                batch = batch.select(torch.tensor([0, 2]))
                tokens = tokens[[0, 2]]
            tokens = greedy_step(tokens[:, None], batch)
            live = [0, 1, 2] if 3 <= i < 6 else ([0, 1] if i < 3 else [0, 2])
            for row, t in zip(live, tokens.tolist(), strict=True):
                out[row].append(t)
    for row, r in enumerate(rows):
        alone = m.generate(r, len(out[row]), temperature=0)[0, r.size(1) :].tolist()
        assert out[row] == alone, f"row {row}"


@ARCHS
def test_each_row_stops_at_eos(arch: str) -> None:
    m = tiny(arch=arch)
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


@ARCHS
def test_stream_yields_what_generate_returns(arch: str) -> None:
    m = tiny(arch=arch)
    x = prompts(2, 3)
    steps = list(m.generate_stream(x, 6, temperature=0.9, top_k=10, seed=5))
    assert all(s.shape == (2,) and s.dtype == torch.long for s in steps)
    assert torch.equal(torch.stack(steps, 1), m.generate(x, 6, temperature=0.9, top_k=10, seed=5)[:, 3:])
    one = list(m.generate_stream(x[0], 4, temperature=0))  # a 1-D prompt is a batch of one
    assert all(s.shape == (1,) for s in one)


@ARCHS
def test_seeded_sampling_is_reproducible_and_filters_work(arch: str) -> None:
    m = tiny(arch=arch)
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
@ARCHS
def test_cache_equals_recompute_under_bf16_autocast(arch: str) -> None:
    m = tiny(arch=arch)
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
