"""``Linear``: ``nn.Linear`` whose CPU bf16 training path adds the bias inside the GEMM.

Autocast runs ``nn.Linear`` as ``addmm(bias, x, W^T)``, and ATen's CPU ``addmm`` first copies the broadcast
bias into the whole output, then accumulates the product onto it: one extra pass over every activation a
Linear makes (4096 x 1536 bf16 for the 6/6/384 MLP, ~1.5 ms), in memory the GEMM is about to write anyway.
oneDNN can add the bias as it writes the product (``mkldnn._linear_pointwise``, the kernel Inductor uses for
CPU linears), so the forward here calls that. The backward is autocast's own math: dX = dY W, dW = dY^T X in
bf16, then the fp32 cast of dW; the bias gradient, a column sum of dY, is a GEMV (ones @ dY), which reads dY
about twice as fast as ``sum(0)`` on bf16. Whole training steps, alternated with the plain path in one
process: 2-4% faster on 6/6/384, 1-2% on 12/12/768, within noise (+-2%) on the 5/4/128 small preset. The
results match the plain path to bf16 rounding (tests compare them).

Anything else (fp32, CUDA, no grad, torch.compile, a torch without the kernel) takes ``nn.Linear``'s own
forward. The class adds no parameters or buffers: its state_dict is ``nn.Linear``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _has_fused_kernel() -> bool:
    try:
        return (
            torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        )
    except (AttributeError, RuntimeError):
        return False


_FUSED_OK = _has_fused_kernel()


class _BiasInGemmLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:  # type: ignore[override]
        dtype = torch.get_autocast_dtype("cpu")
        x2 = x.reshape(-1, x.size(-1)).to(dtype)
        w = weight.to(dtype)
        # not an autocast op: it runs on the bf16 operands as given
        y = torch.ops.mkldnn._linear_pointwise(x2, w, bias.to(dtype), "none", [], "")
        ctx.save_for_backward(x2, w)
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype  # type: ignore[attr-defined]
        ctx.w_dtype, ctx.b_dtype = weight.dtype, bias.dtype  # type: ignore[attr-defined]
        return y.view(*x.shape[:-1], y.size(-1))

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x2, w = ctx.saved_tensors  # type: ignore[attr-defined]
        need_x, need_w, need_b = ctx.needs_input_grad  # type: ignore[attr-defined]
        g = grad_out.reshape(-1, grad_out.size(-1)).to(w.dtype)
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.mm(g, w).view(ctx.x_shape).to(ctx.x_dtype)  # type: ignore[attr-defined]
        if need_w:
            grad_w = torch.mm(g.t(), x2).to(ctx.w_dtype)  # type: ignore[attr-defined]
        if need_b:
            grad_b = torch.mm(g.new_ones(1, g.size(0)), g).view(-1).to(ctx.b_dtype)  # type: ignore[attr-defined]
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """``nn.Linear`` that runs the bias-in-GEMM kernel when training on the CPU under bf16 autocast."""

    def forward(self, x: Tensor) -> Tensor:
        if (
            torch.is_grad_enabled()  # first: decoding (no grad) leaves after one check
            and _FUSED_OK
            and self.bias is not None
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and not torch.compiler.is_compiling()
        ):
            out: Tensor = _BiasInGemmLinear.apply(x, self.weight, self.bias)
            return out
        return F.linear(x, self.weight, self.bias)


class RowHead(nn.Linear):
    """``nn.Linear`` for the LM head, which multiplies rows (B, C) without gradients on the CPU in fp32
    (generation: the last position of a prefill, each decode step) by a kept transposed copy of its
    weight, (C, vocab) contiguous. MKL's one-row GEMM streams that layout faster than the (vocab, C)
    one once the weight is out of cache (vocab 8192 x 384, AVX2 AMD EPYC: 0.7 ms instead of 1.8 ms alone;
    ~8% of a 6-layer decode step). Every generation path goes through it, so the cached and the recompute
    paths stay equal bitwise. Anything else (training, (B, T, C) inputs, other devices and dtypes) is
    ``nn.Linear``'s own forward. The copy is remade when the weight changes (its storage or its in-place
    version counter); it is not a buffer: never saved, moved or counted."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight
        if (
            x.dim() != 2
            or torch.is_grad_enabled()
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or w.dtype != torch.float32
            or self.bias is not None
        ):
            return F.linear(x, w, self.bias)
        key = (w.data_ptr(), w._version, tuple(w.shape))
        cached = self.__dict__.get("_rows_weight")
        if cached is None or cached[0] != key:
            # The detached weight keeps its storage alive, so no new tensor can take its address while cached.
            cached = (key, w.detach().t().contiguous(), w.detach())
            self.__dict__["_rows_weight"] = cached
        out: Tensor = x @ cached[1]
        return out


def as_plain_linears(model: nn.Module) -> nn.Module:
    """Turn every :class:`Linear` of ``model`` back into ``nn.Linear``, in place (same parameters), and return
    the model: for tools that match layers by their exact type, such as ``torch.ao.quantization
    .quantize_dynamic(model, {nn.Linear})``, which would otherwise leave these layers in float."""
    for module in model.modules():
        if type(module) in (Linear, RowHead):
            module.__class__ = nn.Linear  # type: ignore[assignment]  # same layout: Linear adds no state
    return model
