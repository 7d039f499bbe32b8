"""The CPU bf16 training path of the Linear layers (``gptrs.model.kernels.linear``) against autocast's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from gptrs.model.kernels import linear as lin

needs_kernel = pytest.mark.skipif(not lin._FUSED_OK, reason="no oneDNN bf16 linear kernel on this machine")


def _run(layer: lin.Linear, x: torch.Tensor, g: torch.Tensor, fused: bool) -> tuple[torch.Tensor, ...]:
    layer.zero_grad(set_to_none=True)
    xi = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(xi) if fused else F.linear(xi, layer.weight, layer.bias)  # the latter: nn.Linear's forward
    assert ("BiasInGemm" in type(y.grad_fn).__name__) == fused
    y.backward(g)
    assert layer.weight.grad is not None and layer.bias is not None and layer.bias.grad is not None
    assert xi.grad is not None
    return y, xi.grad, layer.weight.grad, layer.bias.grad


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, what
    # both are bf16 products of the same bf16 operands; only the accumulation order may differ
    scale = b.float().abs().max().clamp(min=1e-3)
    assert (a.float() - b.float()).abs().max() <= 2e-2 * scale, what


@needs_kernel
@settings(max_examples=25)
@given(
    rows=st.integers(1, 70),
    d_in=st.integers(1, 96),
    d_out=st.integers(1, 96),
    lead=st.sampled_from([(), (2,), (3, 2)]),
    x_bf16=st.booleans(),
)
def test_matches_autocast(rows: int, d_in: int, d_out: int, lead: tuple[int, ...], x_bf16: bool) -> None:
    torch.manual_seed(rows * 1000 + d_in * 10 + d_out)
    layer = lin.Linear(d_in, d_out)
    x = torch.randn(*lead, rows, d_in)
    if x_bf16:  # the residual stream arrives in bf16; the first layer's input may be fp32
        x = x.bfloat16()
    g = torch.randn(*lead, rows, d_out).bfloat16()
    ref = _run(layer, x, g, fused=False)
    got = _run(layer, x, g, fused=True)
    for name, a, b in zip(("output", "grad x", "grad weight", "grad bias"), got, ref, strict=True):
        _close(a, b, name)


@needs_kernel
def test_model_step_matches_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole GPT forward/backward: same loss and gradients with the fused layers on or off."""
    from gptrs.config import ModelConfig
    from gptrs.model import GPT

    torch.manual_seed(0)
    model = GPT.from_config(
        ModelConfig(embed_dim=64, ff_dim=256, num_layers=2, heads=2, max_seq_len=32), vocab_size=128
    )
    x = torch.randint(0, 128, (4, 32))

    def grads(fused: bool) -> tuple[float, dict[str, torch.Tensor]]:
        monkeypatch.setattr(lin, "_FUSED_OK", fused)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, x)[1]
        assert loss is not None
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss_a, ga = grads(False)
    loss_b, gb = grads(True)
    assert loss_a == pytest.approx(loss_b, rel=1e-2)
    assert ga.keys() == gb.keys()
    for n in ga:
        _close(gb[n], ga[n], n)


@needs_kernel
def test_other_paths_are_plain() -> None:
    """fp32, no grad, and a bias-free layer take ``nn.Linear``'s forward."""
    layer, x = lin.Linear(8, 4), torch.randn(3, 8, requires_grad=True)
    assert "BiasInGemm" not in type(layer(x).grad_fn).__name__
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "BiasInGemm" not in type(lin.Linear(8, 4, bias=False)(x).grad_fn).__name__


def test_same_parameters_as_nn_linear_and_plain_for_quantization() -> None:
    """The subclass keeps nn.Linear's state_dict; as_plain_linears gives int8 quantization nn.Linear layers."""
    torch.manual_seed(0)
    ours = lin.Linear(8, 4)
    torch.manual_seed(0)
    theirs = nn.Linear(8, 4)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(
        torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True)
    )
    model = nn.Sequential(ours, nn.ReLU())
    assert lin.as_plain_linears(model) is model and type(model[0]) is nn.Linear and model[0] is ours
