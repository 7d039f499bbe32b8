"""The GPT model: shapes, dtypes, causality, loss, attention paths, accounting, config plumbing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_gpt
from gptrs.config import Config, ModelConfig
from gptrs.errors import ConfigError
from gptrs.model import GPT, lm_head_loss
from gptrs.model.kernels import loss as loss_kernel

V, D, FF, L, H, T = 64, 32, 80, 2, 4, 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed: int = 0, **kw: object) -> GPT:
    shape: dict = dict(
        vocab_size=V, embed_dim=D, ff_dim=FF, num_layers=L, heads=H, max_seq_len=T, pad_token_id=0
    )
    return tiny_gpt(seed, **{**shape, **kw})


def batch(b: int = 3, t: int = T, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, V, (b, t), generator=g)


def test_shapes_and_dtypes() -> None:
    m = tiny()
    x = batch(3, 10)
    logits, loss = m(x)
    assert logits is not None and logits.shape == (3, 10, V) and logits.dtype == torch.float32
    assert loss is None
    logits, loss = m(x, x)
    assert logits is None and loss is not None and loss.shape == () and loss.dtype == torch.float32
    logits, loss2 = m(x, x, return_logits=True)
    assert logits is not None and logits.shape == (3, 10, V)
    assert loss2 is not None and torch.allclose(loss, loss2, atol=1e-6)
    with torch.autocast("cpu", torch.bfloat16):
        logits, _ = m(x)
        _, loss = m(x, x)
    assert logits is not None and logits.dtype == torch.bfloat16  # not upcast to fp32
    assert loss is not None and loss.dtype == torch.float32


def test_tied_head_and_init() -> None:
    m = tiny(num_layers=4)
    assert m.lm_head.weight is m.transformer.wte.weight
    std = m.transformer.h[0].attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 4)) < 0.002  # residual projections scaled down
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 0.002


@settings(max_examples=15, deadline=None)
@given(
    cut=st.integers(0, T - 2), attention=st.sampled_from(["sdpa", "reference"]), seed=st.integers(0, 10**6)
)
def test_causality(cut: int, attention: str, seed: int) -> None:
    """Changing tokens after position `cut` never changes the logits at positions <= cut."""
    m = tiny(attention=attention)
    x = batch(2, T, seed=seed)
    y = x.clone()
    g = torch.Generator().manual_seed(seed + 1)
    y[:, cut + 1 :] = torch.randint(1, V, (2, T - cut - 1), generator=g)
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(y)
    assert a is not None and b is not None
    torch.testing.assert_close(a[:, : cut + 1], b[:, : cut + 1], atol=1e-6, rtol=0)


def test_loss_at_init_is_ln_vocab() -> None:
    vocab = 512
    m = tiny(vocab_size=vocab)
    x = torch.randint(0, vocab, (8, T), generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, vocab, (8, T), generator=torch.Generator().manual_seed(4))
    _, loss = m(x, y)
    assert loss is not None and abs(loss.item() - math.log(vocab)) < 0.1


def test_loss_ignores_pad_and_minus_100() -> None:
    m = tiny()
    x = batch(2, 12)
    y = batch(2, 12, seed=9)
    y[0, 3:7] = 0  # pad_token_id
    y[1, :2] = -100
    logits, loss = m(x, y, return_logits=True)
    assert logits is not None and loss is not None
    keep = (y != 0) & (y != -100)
    expected = F.cross_entropy(logits[keep], y[keep])
    torch.testing.assert_close(loss, expected)
    _, fused = m(x, y)
    assert fused is not None
    torch.testing.assert_close(fused, expected)
    # Without a pad id, token 0 is an ordinary target.
    m.pad_token_id = None
    _, loss_nopad = m(x, y)
    assert loss_nopad is not None and not torch.allclose(loss_nopad, expected)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 70), chunk=st.integers(1, 40), bf16=st.booleans(), seed=st.integers(0, 10**6))
def test_fused_loss_matches_plain(n: int, chunk: int, bf16: bool, seed: int) -> None:
    """The chunked fused LM-head loss equals F.cross_entropy on full logits, loss and gradients."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g, requires_grad=True)
    w = torch.randn(40, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 40, (n,), generator=g)
    t[torch.rand(n, generator=g) < 0.2] = -100
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        fused = lm_head_loss(x, w, t, chunk_size=chunk)
        plain = F.cross_entropy((x @ w.t()).float(), t, ignore_index=-100)
    gx1, gw1 = torch.autograd.grad(fused, (x, w))
    if bool((t == -100).all()):
        assert fused.item() == 0.0
        return
    gx2, gw2 = torch.autograd.grad(plain, (x, w))
    tol = dict(atol=2e-2, rtol=2e-2) if bf16 else dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, plain, **tol)
    torch.testing.assert_close(gx1, gx2, **tol)
    torch.testing.assert_close(gw1, gw2, **tol)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        torch.testing.assert_close(lm_head_loss(x, w, t, chunk_size=chunk), fused.detach())


def test_fused_loss_gradients_through_model(monkeypatch: pytest.MonkeyPatch) -> None:
    m = tiny()
    x, y = batch(4, T), batch(4, T, seed=5)
    monkeypatch.setattr(loss_kernel, "MAX_ROWS", 7)  # several uneven chunks
    m(x, y)[1].backward()  # type: ignore[union-attr]
    fused = {n: p.grad.clone() for n, p in m.named_parameters()}  # type: ignore[union-attr]
    m.zero_grad()
    m(x, y, return_logits=True)[1].backward()  # type: ignore[union-attr]
    for n, p in m.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, atol=1e-6, rtol=1e-4, msg=n)


def test_tiny_model_overfits_one_batch() -> None:
    m = tiny(vocab_size=32, max_seq_len=16)
    x = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(m.optimizer_groups(0.0), lr=1e-2)
    first = None
    for _ in range(120):
        _, loss = m(x, y)
        assert loss is not None
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first is not None and loss.item() < 0.1 < first


@pytest.mark.parametrize("autocast", [False, True])
def test_sdpa_and_reference_agree(autocast: bool) -> None:
    a = tiny(attention="sdpa")
    b = tiny(attention="reference")
    b.load_state_dict(a.state_dict())
    x = batch(3, T)
    mask = torch.ones_like(x)
    mask[1, :5] = 0  # a left-padded row exercises the explicit-mask path of both
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        for am in (None, mask):
            la, _ = a(x, attention_mask=am)
            lb, _ = b(x, attention_mask=am)
            assert la is not None and lb is not None
            tol = dict(atol=3e-2, rtol=3e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(la.float(), lb.float(), **tol)


def test_left_padding_matches_row_alone() -> None:
    m = tiny()
    x = batch(2, 12)
    pad = 5
    padded = x.clone()
    padded[1, :pad] = 0
    mask = torch.ones_like(x)
    mask[1, :pad] = 0
    with torch.no_grad():
        lb, _ = m(padded, attention_mask=mask)
        alone, _ = m(x[1:, pad:])
    assert lb is not None and alone is not None
    torch.testing.assert_close(lb[1, pad:], alone[0], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_gradients() -> None:
    x, y = batch(2, T), batch(2, T, seed=7)
    grads = []
    for ckpt in (False, True):
        m = tiny(gradient_checkpointing=ckpt)
        m(x, y)[1].backward()  # type: ignore[union-attr]
        grads.append([p.grad for p in m.parameters()])
    for g1, g2 in zip(*grads, strict=True):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-5)


def test_num_parameters_and_flops() -> None:
    m = tiny()
    per_layer = (D * 3 * D + 3 * D) + (D * D + D) + (D * FF + FF) + (FF * D + D) + 4 * D
    expected = V * D + T * D + L * per_layer + 2 * D
    assert m.num_parameters() == expected == sum(p.numel() for p in m.parameters())
    assert m.num_parameters(non_embedding=True) == expected - V * D - T * D
    assert m.flops_per_token() == 6 * (expected - T * D) + 12 * L * D * T
    assert m.flops_per_token(8) == 6 * (expected - T * D) + 12 * L * D * 8


def test_optimizer_groups() -> None:
    m = tiny()
    decay, no_decay = m.optimizer_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in m.named_parameters()}
    decay_names = sorted(names[id(p)] for p in decay["params"])
    suffixes = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    assert decay_names == sorted(n for n in names.values() if n.endswith(suffixes))
    everything = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(everything) == sorted(id(p) for p in m.parameters())  # each exactly once
    assert all(p.dim() == 2 for p in decay["params"])


def test_from_config() -> None:
    cfg = Config()
    cfg.model = ModelConfig(embed_dim=32, ff_dim=64, num_layers=1, heads=2, max_seq_len=8)
    m = GPT.from_config(cfg, vocab_size=50, pad_token_id=3)
    assert m.config.vocab_size == 50 and m.pad_token_id == 3 and m.config.embed_dim == 32
    cfg.model.vocab_size = 64
    assert GPT.from_config(cfg.model, vocab_size=50).config.vocab_size == 64
    with pytest.raises(ConfigError, match=r"model.vocab_size \(64\) is smaller than the tokenizer's"):
        GPT.from_config(cfg, vocab_size=100)
    cfg.model.vocab_size = None
    with pytest.raises(ConfigError, match=r"model\.vocab_size is not set"):
        GPT.from_config(cfg)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(heads=3), r"model\.heads: 3 does not divide model\.embed_dim \(32\)"),
        (dict(num_layers=0), "model.num_layers: must be >= 1, got 0"),
        (dict(dropout=1.0), r"model.dropout: must be in \[0, 1\), got 1.0"),
        (dict(activation="relu"), "model.activation: 'relu' is not one of 'gelu', 'gelu_tanh', 'relu2'"),
        (dict(attention="flash"), "model.attention: 'flash' is not one of 'sdpa', 'reference'"),
        (dict(pad_token_id=64), r"pad_token_id 64 is outside the vocabulary \(size 64\)"),
    ],
)
def test_bad_constructor_arguments(kw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny(**kw)


def test_sequence_longer_than_context_is_refused() -> None:
    with pytest.raises(ValueError, match=r"longer than the context \(max_seq_len=16\)"):
        tiny()(batch(1, T + 1))


def test_model_package_imports_go_one_way() -> None:
    """gpt.py uses the other modules of gptrs.model; none of them imports gpt.py when it runs (naming the
    class for the type checker, under ``if TYPE_CHECKING:``, is no import circle)."""
    import ast
    from pathlib import Path

    import gptrs.model

    root = Path(gptrs.model.__file__).parent
    for path in root.rglob("*.py"):
        if path == root / "__init__.py" or path.name == "gpt.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for guard in [
            n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
        ]:
            guard.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert "gptrs.model.gpt" not in names, f"{path.relative_to(root)} imports gptrs.model.gpt"
