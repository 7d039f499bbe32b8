"""The speed paths of the model give the same answers as the plain ones.

- CPU training attention (``block_causal_attention``: blocks of query rows, hand-written backward) equals
  ``scaled_dot_product_attention(is_causal=True)``, outputs and gradients, and works under torch.compile.
- The KV cache's one-token step (slots written in place, no mask while rows are alike) equals its general
  path (used keys gathered before the new ones, an explicit mask), with and without padding and under bf16
  autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import tiny_gpt
from gptrs.model import GPT
from gptrs.model.kernels import BLOCK_ROWS, block_causal_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def _qkv(b: int, h: int, t: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """A fused projection (B, T, 3 * h * d), as the model passes it."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3 * h * d, generator=g).to(dtype).requires_grad_()


def _sdpa_from_qkv(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, C3 = qkv.shape
    q, k, v = (x.view(B, T, heads, -1).transpose(1, 2) for x in qkv.split(C3 // 3, dim=2))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C3 // 3)


def _grads(fn, qkv: torch.Tensor, heads: int, go: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = fn(qkv, heads)
    (dqkv,) = torch.autograd.grad(out, (qkv,), go)
    return out, dqkv


@settings(max_examples=15, deadline=None)
@given(
    b=st.integers(1, 3),
    h=st.integers(1, 3),
    t=st.one_of(st.integers(2, 40), st.integers(BLOCK_ROWS - 2, 2 * BLOCK_ROWS + 3)),
    d=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 10**6),
)
def test_block_causal_attention_equals_sdpa(b: int, h: int, t: int, d: int, seed: int) -> None:
    qkv = _qkv(b, h, t, d, torch.float32, seed)
    go = torch.randn(b, t, h * d, generator=torch.Generator().manual_seed(seed + 1))
    ours = _grads(block_causal_attention, qkv, h, go)
    ref = _grads(_sdpa_from_qkv, qkv, h, go)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("t", [2 * BLOCK_ROWS, 2 * BLOCK_ROWS + 17])  # equal blocks; three unequal ones
def test_block_causal_attention_bf16_close_to_fp32(t: int) -> None:
    qkv = _qkv(2, 3, t, 16, torch.bfloat16, 0)
    go = torch.randn(2, t, 3 * 16).to(torch.bfloat16)
    ours = _grads(block_causal_attention, qkv, 3, go)
    q32 = qkv.detach().float().requires_grad_()
    ref = _grads(_sdpa_from_qkv, q32, 3, go.float())
    for a, r in zip(ours, ref, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.float(), r, atol=6e-2, rtol=5e-2)


def test_block_causal_attention_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="3 \\* heads \\* head_dim"):
        block_causal_attention(torch.randn(1, 4, 10), 2)


def _tiny(attention: str = "sdpa", **kw: object) -> GPT:
    return tiny_gpt(0, vocab_size=97, max_seq_len=40, pad_token_id=0, attention=attention, **kw)


def test_training_gradients_sdpa_path_equal_reference_path() -> None:
    """In training on the CPU the "sdpa" model runs block_causal_attention; its gradients match the
    explicit-softmax reference model's."""
    x = torch.randint(1, 97, (3, 40), generator=torch.Generator().manual_seed(3))
    y = torch.roll(x, -1, 1)
    grads = []
    for attention in ("sdpa", "reference"):
        m = _tiny(attention).train()
        m(x, y)[1].backward()  # type: ignore[union-attr]
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(g, grads[1][name], atol=1e-5, rtol=1e-4, msg=name)


def test_training_step_compiles() -> None:
    """The custom attention op and the (compiler-disabled) fused loss survive torch.compile."""
    x = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(4))
    y = torch.roll(x, -1, 1)
    eager, compiled = _tiny(), _tiny()
    runner = torch.compile(compiled)
    losses = []
    for call in (eager, runner):
        with torch.autocast("cpu", torch.bfloat16):
            loss = call(x, y)[1]
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[0], losses[1], atol=2e-2, rtol=2e-2)
    for (n, p1), p2 in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        assert p2.grad is not None and torch.isfinite(p2.grad).all(), n
        torch.testing.assert_close(p1.grad, p2.grad, atol=3e-2, rtol=5e-2, msg=n)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("arch", ["gpt2", "nanochat"])
def test_cache_one_token_step_equals_its_general_path(autocast: bool, padded: bool, arch: str) -> None:
    m = _tiny(arch=arch).eval()
    with torch.no_grad():  # away from the inits (nanochat's zeroes every residual projection)
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(5)
    prompt = torch.randint(1, 97, (2, 7), generator=g)
    mask = torch.ones_like(prompt)
    if padded:
        mask[1, :3] = 0
    steps = torch.randint(1, 97, (2, 5), generator=g)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        caches = [m.new_kv_cache(2), m.new_kv_cache(2)]
        for c in caches:
            m.hidden_states(prompt, mask, kv_cache=c)
        for i in range(steps.size(1)):
            tok = steps[:, i : i + 1]
            general = m.hidden_states(
                tok, torch.ones_like(tok), kv_cache=caches[0]
            )  # a mask: the general path
            fast = m.hidden_states(tok, kv_cache=caches[1])
            torch.testing.assert_close(general, fast, atol=1e-5 if not autocast else 2e-2, rtol=1e-5)
    lengths = [c.lengths.tolist() for c in caches if c.lengths is not None]
    assert lengths == [[12, 12 - 3 * padded]] * 2


def test_learned_positions_refuse_a_sequence_past_the_context() -> None:
    m = _tiny().eval()
    c = m.new_kv_cache(1)
    with torch.no_grad():
        m.hidden_states(torch.ones(1, 40, dtype=torch.long), kv_cache=c)
        with pytest.raises(ValueError, match="longer than the context"):
            m.hidden_states(torch.ones(1, 1, dtype=torch.long), kv_cache=c)


def test_row_head_follows_its_weight() -> None:
    """The LM head's transposed copy (generation rows on the CPU) is remade when the weight changes in place
    or is replaced, and the head stays an nn.Linear everywhere else (gradients, (B, T, C) inputs)."""
    from gptrs.model.kernels import RowHead

    head = RowHead(8, 20, bias=False)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(head(x), F.linear(x, head.weight))
        head.weight.mul_(2.0)  # an optimizer step: in place
        torch.testing.assert_close(head(x), F.linear(x, head.weight))
        head.weight = nn.Parameter(torch.randn(20, 8))  # replaced (load, tying)
        torch.testing.assert_close(head(x), F.linear(x, head.weight))
        assert torch.equal(head(x[:, None])[:, 0], F.linear(x, head.weight))  # 3-D: nn.Linear's own
    y = head(x.requires_grad_())
    assert torch.equal(y, F.linear(x, head.weight)) and y.requires_grad
    assert "_rows_weight" not in head.state_dict() and len(list(head.buffers())) == 0


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_for_small_rows_is_gelu(approximate: str) -> None:
    from gptrs.model.kernels import gelu

    x = torch.randn(2, 300) * 4
    with torch.no_grad():
        torch.testing.assert_close(gelu(x, approximate), F.gelu(x, approximate=approximate))
        big = torch.randn(4, 5000)
        assert torch.equal(gelu(big, approximate), F.gelu(big, approximate=approximate))
    assert torch.backends.mkldnn.enabled  # switched back on after the call
