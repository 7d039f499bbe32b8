"""The fused LM-head losses' chunk policy (kernels/chunks.py): sizes per device, and that the CUDA policy's
graph-friendly loop (run here on CPU tensors) gives the CPU loop's loss and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptrs.model.kernels import chunks
from gptrs.model.kernels.loss import lm_head_loss
from gptrs.model.kernels.softcap_loss import lm_head_softcap_cross_entropy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_policy_is_unchanged() -> None:
    # 16 MB of logits or 1024 rows, whichever is smaller; never more rows than there are.
    assert chunks.chunk_rows("cpu", 16384, 50304, torch.bfloat16) == (16 << 20) // (50304 * 2) == 166
    assert chunks.chunk_rows("cpu", 4096, 8192, torch.bfloat16) == 1024
    assert chunks.chunk_rows("cpu", 10, 8192, torch.float32) == 10
    assert chunks.chunk_rows("cpu", 5, 10**9, torch.float32) == 1


def test_cuda_policy_takes_few_large_chunks() -> None:
    # The GPT-2 124M step: 16,384 rows x vocab 50,304 in bf16 (1.65 GB of logits) in 2 equal chunks.
    rows = chunks.chunk_rows("cuda", 16384, 50304, torch.bfloat16)
    assert rows == 8192
    assert chunks.chunk_rows("cuda", 16384, 4096, torch.bfloat16) == 16384  # the default preset: one chunk
    assert chunks.chunk_rows("cuda", 0, 4096, torch.bfloat16) == 1


@given(
    rows=st.integers(1, 10**6),
    vocab=st.integers(1, 300_000),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    budget=st.integers(1, 1 << 32),
    policy=st.sampled_from(["cpu", "cuda"]),
)
def test_chunk_rows_respects_the_budget(
    rows: int, vocab: int, dtype: torch.dtype, budget: int, policy: chunks.Policy
) -> None:
    c = chunks.chunk_rows(policy, rows, vocab, dtype, budget)
    assert 1 <= c <= rows
    per_row = vocab * dtype.itemsize
    if c > 1:  # one row always fits, whatever the budget
        assert c * per_row <= budget
    if policy == "cuda":
        n_chunks = -(-rows // c)
        # the fewest chunks the budget allows, of (nearly) equal size
        assert n_chunks == max(1, -(-rows // max(1, budget // per_row)))
        assert rows - (n_chunks - 1) * c > 0
    else:
        assert c <= chunks.MAX_ROWS


def _case(seed: int, n: int, vocab: int, ignored: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g, requires_grad=True)
    w = torch.randn(vocab, 16, generator=g, requires_grad=True)
    t = torch.randint(0, vocab, (n,), generator=g)
    t[torch.rand(n, generator=g) < ignored] = -100
    return x, w, t


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 60),
    vocab=st.integers(2, 50),
    chunk=st.integers(1, 70),
    bf16=st.booleans(),
    cap=st.sampled_from([None, 3.0, 15.0]),
    ignored=st.sampled_from([0.0, 0.3, 1.0]),
    seed=st.integers(0, 10**6),
)
def test_cuda_policy_matches_cpu_policy(
    n: int, vocab: int, chunk: int, bf16: bool, cap: float | None, ignored: float, seed: int
) -> None:
    x, w, t = _case(seed, n, vocab, ignored)

    def run(policy: chunks.Policy) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            if cap is None:
                loss = lm_head_loss(x, w, t, chunk, policy=policy)
            else:
                loss = lm_head_softcap_cross_entropy(x, w, t, cap, chunk, policy=policy)
        gx, gw = torch.autograd.grad(loss, (x, w))
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            if cap is None:
                no_grad = lm_head_loss(x, w, t, chunk, policy=policy)
            else:
                no_grad = lm_head_softcap_cross_entropy(x, w, t, cap, chunk, policy=policy)
        return loss.detach(), gx, gw, no_grad

    cpu, cuda = run("cpu"), run("cuda")
    tol = dict(atol=2e-2, rtol=2e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    for a, b in zip(cpu, cuda, strict=True):
        torch.testing.assert_close(b, a, **tol)
    if ignored == 1.0:
        assert cuda[0].item() == 0.0 and not cuda[1].any() and not cuda[2].any()


def test_cuda_policy_traces_whole_under_torch_compile() -> None:
    """No graph break in the CUDA policy's loss and its backward (aot_eager: the tracing torch.compile does,
    without generating code), so a compiled model step keeps the loss in its graph."""
    torch._dynamo.reset()
    x, w, t = _case(0, 24, 40, 0.2)

    def step(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return lm_head_loss(x * 1.0, w, t, 8, policy="cuda")

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    loss = compiled(x, w, t)
    gx, gw = torch.autograd.grad(loss, (x, w))
    ref = lm_head_loss(x, w, t, 8, policy="cpu")
    rx, rw = torch.autograd.grad(ref, (x, w))
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    torch._dynamo.reset()
