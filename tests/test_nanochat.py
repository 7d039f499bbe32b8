"""The modern family (nanochat architecture): model, sliding KV cache, soft-capped loss, HF export mapping,
and the Muon + AdamW optimizer."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import tiny_gpt
from gptrs.config import ModelConfig, resolve_model
from gptrs.errors import ConfigError
from gptrs.model import KVCache, NanoChat, hf
from gptrs.model.kernels.softcap_loss import lm_head_softcap_cross_entropy, softcap
from gptrs.training.muon import Muon, MuonAdamW, apply_lr, build_optimizer, split_parameters

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 97


def tiny_nanochat(seed: int = 0, *, scale: float = 0.3, **overrides: object) -> NanoChat:
    """A small NanoChat with random (not nanochat-initialised) weights, so every path carries signal
    (the real initialisation zeroes the LM head and the residual projections)."""
    args: dict = {"vocab_size": VOCAB, "embed_dim": 32, "num_layers": 2, "heads": 4, "max_seq_len": 16}
    args.update(overrides)
    torch.manual_seed(seed)
    model = NanoChat(**args)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, scale)
    return model.eval()


def full_logits(model: NanoChat, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.hidden_states(ids))


def step(model: NanoChat, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """One token per row through the cache: the logits (B, vocab) of the next."""
    return model.logits(model.hidden_states(tokens[:, None], kv_cache=cache))[:, -1]


def cached_logits(model: NanoChat, ids: torch.Tensor, prefill: int, chunk: int = 1) -> torch.Tensor:
    """Logits at every position: the first ``prefill`` tokens in one pass, then ``chunk`` tokens per pass."""
    cache = model.new_kv_cache(ids.size(0))
    with torch.no_grad():
        out = [model.logits(model.hidden_states(ids[:, :prefill], kv_cache=cache))]
        for s in range(prefill, ids.size(1), chunk):
            out.append(model.logits(model.hidden_states(ids[:, s : s + chunk], kv_cache=cache)))
    assert cache.max_len == ids.size(1) and cache.lengths is not None
    assert cache.lengths.tolist() == [ids.size(1)] * ids.size(0)
    return torch.cat(out, 1)


# ----------------------------------------------------------------------------------------------- model


def test_shapes_and_parameter_count() -> None:
    model = NanoChat(VOCAB, 32, 3, 4, 16, kv_heads=2, ff_dim=48)
    ids = torch.randint(0, VOCAB, (2, 10))
    logits, loss = model(ids)
    assert logits is not None and logits.shape == (2, 10, VOCAB) and loss is None
    logits, loss = model(ids, ids)
    assert logits is None and loss is not None and loss.shape == ()
    d, kv = 32, 2 * 8
    per_layer = d * d + 2 * d * kv + d * d + 2 * d * 48  # q, k, v, proj; fc, proj
    assert model.num_parameters() == 2 * VOCAB * d + 3 * per_layer
    assert model.num_parameters(non_embedding=True) == VOCAB * d + 3 * per_layer


def test_nanochat_initialisation_starts_from_zero_logits() -> None:
    model = NanoChat(VOCAB, 32, 2, 4, 16)
    assert torch.count_nonzero(model.lm_head.weight) == 0
    for block in model.transformer.h:
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
        assert torch.count_nonzero(block.mlp.c_proj.weight) == 0
    logits, _ = model(torch.randint(0, VOCAB, (1, 5)))
    assert logits is not None and torch.count_nonzero(logits) == 0
    assert 0.8 < float(model.transformer.wte.weight.detach().std()) < 1.2


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"heads": 5}, "model.heads"),
        ({"heads": 16}, "even"),  # head_dim 2 is fine, 32/16 = 2; use 32/32 = 1 below
        ({"kv_heads": 3}, "model.kv_heads"),
        ({"logit_softcap": -1.0}, "model.logit_softcap"),
        ({"num_layers": 0}, "model.num_layers"),
        ({"pad_token_id": VOCAB}, "pad_token_id"),
    ],
)
def test_bad_arguments_are_named(overrides: dict, needle: str) -> None:
    args: dict = {"vocab_size": VOCAB, "embed_dim": 32, "num_layers": 2, "heads": 4, "max_seq_len": 16}
    args.update(overrides)
    if overrides == {"heads": 16}:
        args["heads"] = 32
    with pytest.raises(ConfigError, match=needle):
        NanoChat(**args)


def test_fused_loss_equals_cross_entropy_of_capped_logits() -> None:
    model = tiny_nanochat().train()
    ids = torch.randint(0, VOCAB, (3, 12))
    targets = ids.roll(-1, 1)
    targets[0, :4] = -100
    _, fused = model(ids, targets)
    assert fused is not None
    fused.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    logits, ref = model(ids, targets, return_logits=True)
    assert logits is not None and ref is not None
    manual = F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1), ignore_index=-100)
    torch.testing.assert_close(ref, manual)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    ref.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 40),
    vocab=st.integers(2, 50),
    cap=st.floats(0.5, 30.0),
    chunk=st.integers(1, 16),
    ignored=st.integers(0, 40),
    scale=st.sampled_from([0.1, 3.0, 100.0]),  # 100: logits in the hundreds, tanh saturated
)
def test_softcap_loss_matches_reference(
    n: int, vocab: int, cap: float, chunk: int, ignored: int, scale: float
) -> None:
    g = torch.Generator().manual_seed(n * 1000 + vocab)
    x = (torch.randn(n, 8, generator=g) * scale).requires_grad_()
    w = torch.randn(vocab, 8, generator=g).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g)
    t[: min(ignored, n)] = -100
    loss = lm_head_softcap_cross_entropy(x, w, t, cap, chunk)
    gx, gw = torch.autograd.grad(loss, (x, w))
    ref = F.cross_entropy(softcap(x @ w.T, cap), t, ignore_index=-100)
    if bool((t == -100).all()):
        ref = ref.nan_to_num(0.0)  # F.cross_entropy's 0/0; ours is defined as 0
    rx, rw = (
        torch.autograd.grad(ref, (x, w)) if ref.requires_grad and not bool((t == -100).all()) else (gx, gw)
    )
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    # Where tanh saturates, 1 - tanh^2 (the reference's slope) and 4 g (1 - g) (ours) both lose digits to
    # cancellation: compare the gradients absolutely there, against their scale.
    atol = 1e-6 if scale < 100 else 1e-5
    torch.testing.assert_close(gx, rx, rtol=1e-4, atol=atol)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=atol)
    with torch.no_grad():
        torch.testing.assert_close(lm_head_softcap_cross_entropy(x, w, t, cap, chunk), loss)


def test_no_softcap_uses_the_plain_fused_loss() -> None:
    model = tiny_nanochat(logit_softcap=None, scale=2.0)
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        _, fused = model(ids, ids)
        logits, ref = model(ids, ids, return_logits=True)
    assert logits is not None and fused is not None and ref is not None
    assert float(logits.abs().max()) > 15  # really uncapped
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)


def test_cpu_training_kernel_matches_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on the CPU runs attention through gptrs' block-causal kernel; it is the same function as
    SDPA's causal attention, gradients included."""
    model = tiny_nanochat().train()
    ids = torch.randint(0, VOCAB, (2, 16))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        _, loss = model(ids, ids.roll(-1, 1))
        assert loss is not None
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []

    def sdpa_reference(qkv: torch.Tensor, heads: int) -> torch.Tensor:
        calls.append(1)
        B, T, C3 = qkv.shape
        q, k, v = (t.view(B, T, heads, -1).transpose(1, 2) for t in qkv.split(C3 // 3, dim=-1))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C3 // 3)

    loss, grads = loss_and_grads()
    monkeypatch.setattr("gptrs.model.kernels.block_causal_attention", sdpa_reference)
    ref_loss, ref_grads = loss_and_grads()
    assert len(calls) == 2  # both layers took the training kernel's path
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for n, g in grads.items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


# ----------------------------------------------------------------------------------------------- cache


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cached_decoding_equals_recompute(kv_heads: int) -> None:
    model = tiny_nanochat(kv_heads=kv_heads)
    ids = torch.randint(0, VOCAB, (2, 16))
    ref = full_logits(model, ids)
    torch.testing.assert_close(cached_logits(model, ids, prefill=5), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cached_logits(model, ids, prefill=3, chunk=4), ref, rtol=1e-4, atol=1e-5)


def greedy(model: NanoChat, prompt: torch.Tensor, steps: int, use_cache: bool) -> torch.Tensor:
    ids = prompt
    cache = model.new_kv_cache(prompt.size(0)) if use_cache else None
    with torch.no_grad():
        if cache is not None:
            logits = model.logits(model.hidden_states(ids, kv_cache=cache))[:, -1]
        for _ in range(steps):
            if cache is None:
                logits = full_logits(model, ids)[:, -1]
            nxt = logits.argmax(-1)
            ids = torch.cat((ids, nxt[:, None]), 1)
            if cache is not None:
                logits = step(model, nxt, cache)
    return ids


def test_greedy_tokens_equal_with_and_without_cache_past_the_context() -> None:
    model = tiny_nanochat(scale=0.5)
    prompt = torch.randint(0, VOCAB, (2, 6))
    steps = 3 * model.config.max_seq_len  # slides the window twice over
    assert torch.equal(greedy(model, prompt, steps, True), greedy(model, prompt, steps, False))


@pytest.mark.parametrize(("prefill", "chunk"), [(4, 1), (16, 1), (20, 1), (5, 7), (40, 3), (1, 16)])
def test_sliding_window_cache_equals_banded_recompute(prefill: int, chunk: int) -> None:
    """Past max_seq_len every token attends to the last max_seq_len tokens; the cache keeps keys rotated
    by absolute position and slides without re-encoding: equal to the banded full forward."""
    model = tiny_nanochat(kv_heads=2)
    ids = torch.randint(0, VOCAB, (2, 45))
    ref = full_logits(model, ids)  # T > max_seq_len: the banded (sliding-window) mask
    torch.testing.assert_close(cached_logits(model, ids, prefill, chunk), ref, rtol=1e-4, atol=1e-5)


def test_window_equals_re_encoding_at_shifted_positions() -> None:
    """Relative positions are what matter: with one layer (no state carried in from beyond the window) the
    sliding cache's logits at positions p.. equal re-encoding the last max_seq_len tokens from position 0."""
    one = tiny_nanochat(num_layers=1)
    long = torch.randint(0, VOCAB, (2, 40))
    cached = cached_logits(one, long, prefill=3)
    W = one.config.max_seq_len
    for t in range(W, long.size(1)):
        window = long[:, t - W + 1 : t + 1]
        torch.testing.assert_close(cached[:, t], full_logits(one, window)[:, -1], rtol=1e-4, atol=1e-5)


def test_left_padding_matches_each_row_alone() -> None:
    model = tiny_nanochat()
    a = torch.randint(1, VOCAB, (1, 10))
    b = torch.randint(1, VOCAB, (1, 6))
    batch = torch.cat((a, torch.cat((torch.zeros(1, 4, dtype=torch.long), b), 1)))
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    with torch.no_grad():
        logits, _ = model(batch, attention_mask=mask)
        alone_b, _ = model(b)
    assert logits is not None and alone_b is not None
    torch.testing.assert_close(logits[1, 4:], alone_b[0], rtol=1e-4, atol=1e-5)
    # cached, past the window: row b continues as it would alone (its positions are shifted by 4)
    cache = model.new_kv_cache(2)
    with torch.no_grad():
        model.hidden_states(batch, mask, kv_cache=cache)
        extra = torch.randint(1, VOCAB, (2, 20))
        steps = torch.stack([step(model, extra[:, i], cache) for i in range(20)], 1)
        ref_b = full_logits(model, torch.cat((b, extra[1:]), 1))[:, 6:]
    torch.testing.assert_close(steps[1], ref_b[0], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------- HF


def _save_hf(model: NanoChat, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf.hf_config(model, bos_token_id=1, eos_token_id=2)))
    save_file(hf.hf_state_dict(model), str(directory / "model.safetensors"))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_hf_nanochat_gives_the_same_logits(tmp_path: Path, kv_heads: int) -> None:
    transformers = pytest.importorskip("transformers")
    model = tiny_nanochat(kv_heads=kv_heads, ff_dim=48, rope_theta=500.0, logit_softcap=7.0)
    _save_hf(model, tmp_path)
    hf = transformers.NanoChatForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        theirs = hf(ids).logits
        ours, _ = model(ids)
    assert ours is not None
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)
    # and their cached greedy decoding picks our tokens
    with torch.no_grad():
        prompt = ids[:, :4]
        out = hf.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False, pad_token_id=0
        )
    assert torch.equal(out, greedy(model, ids[:, :4], 8, True))


def test_hf_names_cover_every_parameter() -> None:
    model = tiny_nanochat(kv_heads=2)
    names = hf.hf_state_dict(model)
    per_layer = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.fc1",
        "mlp.fc2",
    ]
    expected = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in per_layer}
    assert set(names) == expected | {"model.embed_tokens.weight", "lm_head.weight"}
    assert names["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)  # 2 kv heads of 8


@pytest.mark.parametrize(
    ("arch", "option", "value"),
    [
        ("nanochat", "bias", True),
        ("nanochat", "activation", "gelu"),
        ("nanochat", "norm", "layernorm"),
        ("nanochat", "qk_norm", False),
        ("nanochat", "embed_norm", False),
        ("gpt2", "qk_norm", True),
        ("gpt2", "activation", "relu2"),
        ("gpt2", "tie_embeddings", False),
        ("gpt2", "logit_softcap", 15.0),
        ("gpt2", "kv_heads", 2),
    ],
)
def test_inexpressible_options_are_refused_by_name(arch: str, option: str, value: object) -> None:
    cfg = ModelConfig(arch=arch, embed_dim=32, heads=4, vocab_size=300, **{option: value})
    with pytest.raises(hf.ExportError, match=f"model.{option}="):
        hf.target(resolve_model(cfg))
    assert hf.target(resolve_model(ModelConfig(arch=arch, vocab_size=300))) == arch  # as the arch: no error
    # a tied head is written out as NanoChat's own (the same function)
    assert hf.target(resolve_model(ModelConfig(arch="nanochat", tie_embeddings=True))) == "nanochat"


def test_parameter_split() -> None:
    model = tiny_nanochat()
    parts = split_parameters(model)
    assert parts["embed"] == [model.transformer.wte.weight]
    assert parts["head"] == [model.lm_head.weight]
    assert parts["other"] == []
    assert len(parts["hidden"]) == 2 * 4 and all(p.dim() == 2 for p in parts["hidden"])
    gpt = tiny_gpt()
    gparts = split_parameters(gpt)
    assert gparts["head"] == []  # tied: the head is the token embedding
    assert {id(p) for p in gparts["embed"]} == {
        id(gpt.transformer.wte.weight),
        id(gpt.transformer.wpe.weight),
    }
    assert all(p.dim() == 1 for p in gparts["other"]) and gparts["other"]
    total = sum(len(v) for v in gparts.values())
    assert total == len(list(gpt.parameters()))


def test_muon_adamw_groups_and_schedule() -> None:
    model = tiny_nanochat()
    opt = build_optimizer(model, optimizer="muon", lr=0.004, embedding_lr=0.2, muon_lr=0.02)
    assert isinstance(opt, MuonAdamW)
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    adam_ids = {id(p) for g in opt.adamw.param_groups for p in g["params"]}
    assert muon_ids == {id(p) for p in split_parameters(model)["hidden"]}
    assert adam_ids == {id(model.transformer.wte.weight), id(model.lm_head.weight)}
    apply_lr(opt, 0.002)  # half the peak: every group at half its own peak
    rates = {g["kind"]: g["lr"] for g in opt.param_groups}
    assert rates == pytest.approx({"hidden": 0.01, "embed": 0.1, "head": 0.002})
    plain = build_optimizer(model, optimizer="adamw", lr=1e-3, weight_decay=0.1)
    assert isinstance(plain, torch.optim.AdamW)
    with pytest.raises(ValueError, match=r"training\.optimizer"):
        build_optimizer(model, optimizer="sgd", lr=1e-3)


def test_muon_is_torch_muon_with_its_bf16_iteration() -> None:
    """gptrs' Muon only changes the Newton-Schulz dtype where bf16 is emulated; with bf16 it is torch's."""
    a, b = tiny_nanochat(1), tiny_nanochat(1)
    ours = Muon([p for n, p in a.named_parameters() if ".h." in n], lr=0.02, momentum=0.95, weight_decay=0.01)
    ours.force_ns_dtype = torch.bfloat16
    ref = torch.optim.Muon(
        [p for n, p in b.named_parameters() if ".h." in n], lr=0.02, momentum=0.95, weight_decay=0.01
    )
    ids = torch.randint(0, VOCAB, (2, 12))
    for _ in range(3):
        for m, opt in ((a, ours), (b, ref)):
            opt.zero_grad()
            _, loss = m.train()(ids, ids)
            assert loss is not None
            loss.backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    ours.force_ns_dtype = torch.float32  # the fp32 iteration lands close to the bf16 one
    assert Muon.ns_dtype(ours, torch.device("cpu")) == torch.float32


def _train(model: NanoChat, opt: MuonAdamW | torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        apply_lr(opt, 0.004 * (1 - step / 10))
        g = torch.Generator().manual_seed(step)
        ids = torch.randint(0, VOCAB, (2, 12), generator=g)
        _, loss = model(ids, ids.roll(-1, 1))
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("kind", ["muon", "adamw"])
def test_resume_is_bitwise(kind: str) -> None:
    def fresh() -> tuple[NanoChat, MuonAdamW | torch.optim.Optimizer]:
        torch.manual_seed(3)
        m = NanoChat(VOCAB, 32, 2, 4, 16).train()
        return m, build_optimizer(m, optimizer=kind, lr=0.004, embedding_lr=0.05, muon_lr=0.02)

    straight, opt = fresh()
    _train(straight, opt, range(8))

    first, opt1 = fresh()
    _train(first, opt1, range(4))
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": opt1.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed, opt2 = fresh()
    resumed.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    _train(resumed, opt2, range(4, 8))
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    if kind == "muon":
        with pytest.raises(ValueError, match=r"another training\.optimizer"):
            opt2.load_state_dict(torch.optim.AdamW(straight.parameters()).state_dict())


def test_bf16_autocast_runs_attention_in_bf16() -> None:
    """Under bf16 autocast the rotary tables, the normalised q/k and the cache take the projections' dtype
    (no silent fp32 attention), and the loss stays close to fp32's."""
    model = tiny_nanochat()
    ids = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        _, ref = model(ids, ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, loss = model(ids, ids)
            cache = model.new_kv_cache(2)
            model.hidden_states(ids, kv_cache=cache)
    assert ref is not None and loss is not None
    assert cache.k is not None and cache.k.dtype == torch.bfloat16
    torch.testing.assert_close(loss, ref, rtol=0.02, atol=0.0)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = tiny_nanochat().train()
    ids = torch.randint(0, VOCAB, (2, 16))
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        _, loss = model(ids, ids.roll(-1, 1))
        assert loss is not None
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
