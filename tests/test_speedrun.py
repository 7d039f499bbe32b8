"""The speedrun switches (docs/speedrun.md): value embeddings, U-net skips, x0 mixing and the Muon variants.

Each must work everywhere the model does: the parameter count, training (every new parameter gets a
gradient), save/load, bitwise resume, KV-cache generation against recompute, the static decode step, and an
export refusal naming the switch."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import left_padded, tiny_gpt
from gptrs.config import Config, ModelConfig, count_parameters, resolve_model
from gptrs.data import RandomBatches
from gptrs.errors import ConfigError
from gptrs.model import GPT, hf
from gptrs.model.kv_cache import previous_tokens
from gptrs.training import Trainer, TrainingInterrupted
from gptrs.training.batch_schedule import batch_rows_at
from gptrs.training.muon import POLAR_EXPRESS, POLAR_EXPRESS_SAFETY, _normuon, build_optimizer, orthogonalize

pytestmark = pytest.mark.usefixtures("one_thread")

V, CTX = 48, 12
SWITCHES = [
    dict(value_embeds=1),
    dict(value_embeds=2),
    dict(skip_connections=True),
    dict(x0_mix=True),
    dict(window_pattern="SL", short_window=3),
    dict(bigram_buckets=11),
    dict(
        value_embeds=1,
        skip_connections=True,
        x0_mix=True,
        window_pattern="SSL",
        short_window=4,
        bigram_buckets=37,
    ),
]
ARCHS = pytest.mark.parametrize("arch", ["gpt2", "nanochat"])
EACH = pytest.mark.parametrize("switches", SWITCHES, ids=lambda kw: "+".join(kw))


def tiny(arch: str, switches: dict, seed: int = 0, **kw: object) -> GPT:
    """Random weights large enough that outputs depend on the whole context (see test_generation.tiny), and
    the switches' scalars moved off their init so a scalar that is ignored or mixed up shows."""
    m = tiny_gpt(seed, weight_std=2.0, vocab_size=V, max_seq_len=CTX, pad_token_id=0, arch=arch,
                 num_layers=5, **switches, **kw)  # fmt: skip
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("lambdas", "skip_weights")):
                p.add_(0.3 * torch.randn_like(p))
    return m


def prompts(b: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, V, (b, t), generator=torch.Generator().manual_seed(seed))


@settings(max_examples=30, deadline=None)
@given(
    arch=st.sampled_from(["gpt2", "nanochat"]),
    layers=st.integers(1, 6),
    value_embeds=st.integers(0, 3),
    skip=st.booleans(),
    x0=st.booleans(),
    kv_heads=st.sampled_from([1, 2, 4]),
    bigram=st.sampled_from([0, 2, 97]),
)
def test_count_parameters_matches_the_model(
    arch: str, layers: int, value_embeds: int, skip: bool, x0: bool, kv_heads: int, bigram: int
) -> None:
    cfg = Config()
    m = cfg.model
    m.arch, m.embed_dim, m.ff_dim, m.num_layers, m.heads, m.kv_heads = arch, 32, 64, layers, 4, kv_heads
    m.value_embeds, m.skip_connections, m.x0_mix, m.bigram_buckets = value_embeds, skip, x0, bigram
    if 2 * value_embeds > layers:
        with pytest.raises(ConfigError, match=f"model.value_embeds={value_embeds} needs"):
            GPT.from_config(cfg, vocab_size=V)
        return
    assert GPT.from_config(cfg, vocab_size=V).num_parameters() == count_parameters(cfg, V)


@ARCHS
@EACH
def test_every_switch_parameter_learns_and_changes_the_output(arch: str, switches: dict) -> None:
    m = tiny(arch, switches)
    x = prompts(2, CTX)
    _, loss = m(x, x)
    assert loss is not None
    loss.backward()
    new = [
        (n, p)
        for n, p in m.named_parameters()
        if "value_embeds" in n or "bigram" in n or n.endswith(("lambdas", "skip_weights"))
    ]
    if set(switches) <= {"window_pattern", "short_window"}:
        assert not new  # windows add no parameters; test_short_windows_limit_what_a_layer_sees covers them
        return
    assert new, "the switch added no parameters"
    for name, p in new:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # and the switch's parameters matter: zeroing them changes the logits
    before, _ = m(x)
    with torch.no_grad():
        for _, p in new:
            p.zero_()
    after, _ = m(x)
    assert before is not None and after is not None and not torch.allclose(before, after)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        m = tiny("nanochat", SWITCHES[-1], gradient_checkpointing=ckpt).train()
        x = prompts(2, CTX)
        m(x, x)[1].backward()  # type: ignore[union-attr]
        grads.append({n: p.grad for n, p in m.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, msg=name)


@pytest.mark.parametrize("prompt_len, new", [(3, 6), (CTX, 5), (CTX + 4, 7)])
@ARCHS
@EACH
def test_cache_equals_recompute(arch: str, switches: dict, prompt_len: int, new: int) -> None:
    m = tiny(arch, switches)
    x = prompts(2, prompt_len)
    if prompt_len > CTX and arch == "gpt2":
        x = x[:, -CTX:]  # learned positions take at most the context (test_generation covers the cropping)
    cached = m.generate(x, new, temperature=0)
    recomputed = m.generate(x, new, temperature=0, use_cache=False)
    assert torch.equal(cached, recomputed)
    assert len(set(cached[:, x.size(1) :].flatten().tolist())) > 2  # not a degenerate model


@ARCHS
@EACH
def test_cached_logits_equal_one_full_forward(arch: str, switches: dict) -> None:
    m = tiny(arch, switches).eval()
    x = prompts(2, CTX)
    with torch.no_grad():
        full, _ = m(x)
        cache = m.new_kv_cache(2)
        steps = [m(x[:, :5], kv_cache=cache)[0]] + [
            m(x[:, i : i + 1], kv_cache=cache)[0] for i in range(5, CTX)
        ]
    assert full is not None
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)  # type: ignore[arg-type]


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, CTX), min_size=1, max_size=3),
    new=st.integers(1, 20),
    arch=st.sampled_from(["gpt2", "nanochat"]),
    seed=st.integers(0, 10**6),
)
def test_static_decode_equals_eager(lengths: list[int], new: int, arch: str, seed: int) -> None:
    m = tiny(arch, SWITCHES[-1]).eval()
    ids, mask = left_padded(lengths, seed, V)
    eager = m.generate(ids, new, temperature=0.0, attention_mask=mask, static_cache=False)
    static = m.generate(ids, new, temperature=0.0, attention_mask=mask, static_cache=True)
    assert torch.equal(static, eager)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), B=st.integers(1, 3), T=st.integers(1, 12))
def test_previous_tokens_skip_padding_and_carry_over_passes(data: st.DataObject, B: int, T: int) -> None:
    """Fed in passes (each with any padding pattern), each real token's previous token is the last real one
    before it in its row, across passes; -1 for a row's first."""
    ids = torch.tensor(data.draw(st.lists(st.lists(st.integers(0, 99), min_size=T, max_size=T), min_size=B,
                                          max_size=B)))  # fmt: skip
    valid = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=B,
                                            max_size=B)))  # fmt: skip
    cuts = sorted(data.draw(st.sets(st.integers(1, T - 1), max_size=3))) if T > 1 else []
    last = None
    got = torch.full((B, T), -7)
    for a, b in zip([0, *cuts], [*cuts, T], strict=True):
        prev, last = previous_tokens(ids[:, a:b], valid[:, a:b], last)
        got[:, a:b] = prev
    for r in range(B):
        seen = -1
        for t in range(T):
            if valid[r, t]:
                assert got[r, t] == seen
                seen = int(ids[r, t])
        assert last is not None and last[r] == seen


@pytest.mark.parametrize("arch", ["gpt2", "nanochat"])
def test_bigram_row_reads_the_same_alone_or_left_padded(arch: str) -> None:
    m = tiny(arch, dict(bigram_buckets=11)).eval()
    ids, mask = left_padded([3, 9, 12], seed=5, vocab_size=V)
    with torch.no_grad():
        batch, _ = m(ids, attention_mask=mask)
        for r, n in enumerate(mask.sum(1).tolist()):
            alone, _ = m(ids[r : r + 1, CTX - n :])
            torch.testing.assert_close(batch[r, CTX - n :], alone[0], atol=1e-5, rtol=1e-5)  # type: ignore[index]


def test_bigram_table_starts_at_zero_and_a_bucket_of_one_is_refused() -> None:
    m = GPT(V, 32, 64, 2, 4, CTX, arch="nanochat", bigram_buckets=5)
    emb = m.transformer.bigram_embed
    assert emb is not None and not emb.weight.any()
    with pytest.raises(ConfigError, match=r"model\.bigram_buckets must be 0"):
        GPT(V, 32, 64, 2, 4, CTX, arch="nanochat", bigram_buckets=1)


@EACH
def test_save_load_round_trip(tmp_path: Path, switches: dict) -> None:
    m = tiny("nanochat", switches)
    m.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    for key, value in switches.items():
        assert meta["config"][key] == value
    back = GPT.from_pretrained(tmp_path)
    assert back.config == m.config
    for name, t in m.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    x = prompts(2, CTX)
    assert torch.equal(back(x)[0], m(x)[0])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "option, value",
    [
        ("value_embeds", 1),
        ("skip_connections", True),
        ("x0_mix", True),
        ("window_pattern", "SSSL"),
        ("bigram_buckets", 64),
    ],
)
@ARCHS
def test_export_refuses_each_switch_by_name(arch: str, option: str, value: object) -> None:
    cfg = ModelConfig(arch=arch, embed_dim=32, heads=4, vocab_size=300, **{option: value})
    with pytest.raises(hf.ExportError, match=f"^model.{option}={value!r} cannot be exported"):
        hf.target(resolve_model(cfg))
    assert hf.target(resolve_model(ModelConfig(arch=arch, vocab_size=300))) == arch


@pytest.mark.parametrize("arch", ["gpt2", "nanochat"])
@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_short_windows_limit_what_a_layer_sees(arch: str, attention: str) -> None:
    """Layer 0 with window w: its output at position t changes with token t - w + 1 and not with t - w (nor
    anything before), in a full forward; the last layer is always the whole context."""
    w, t = 4, 10
    m = tiny(arch, dict(window_pattern="S", short_window=w), attention=attention).eval()
    assert m.layer_windows == [w] * 4 + [CTX]
    seen: list[torch.Tensor] = []
    m.transformer.h[0].register_forward_hook(lambda mod, args, out: seen.append(out[0, t].detach()))

    def layer0_at_t(ids: torch.Tensor) -> torch.Tensor:
        seen.clear()
        with torch.no_grad():
            m(ids[None])
        return seen[0]

    x = prompts(1, CTX)[0]
    base = layer0_at_t(x)
    for j in range(t + 1):
        y = x.clone()
        y[j] = (y[j] % (V - 1)) + 1  # another token
        changed = not torch.allclose(layer0_at_t(y), base)
        assert changed == (j > t - w), j


@pytest.mark.parametrize("pattern, short, want", [("", None, [12] * 5), ("SL", None, [6, 12, 6, 12, 12]),
                                                  ("s", 20, [12] * 5), ("LS", 2, [12, 2, 12, 2, 12])])  # fmt: skip
def test_layer_windows(pattern: str, short: int | None, want: list[int]) -> None:
    assert tiny("nanochat", dict(window_pattern=pattern, short_window=short)).layer_windows == want


def test_a_bad_window_pattern_is_named() -> None:
    with pytest.raises(ConfigError, match=r"model\.window_pattern must be letters S and L, got 'SX'"):
        tiny("nanochat", dict(window_pattern="SX"))


# ---------------------------------------------------------------------------------------------- training


def _config(switches: dict, **training: object) -> Config:
    cfg = Config()
    m = cfg.model
    m.arch, m.embed_dim, m.ff_dim, m.num_layers, m.heads, m.max_seq_len = "nanochat", 32, 64, 4, 2, 16
    for k, v in switches.items():
        setattr(m, k, v)
    t = cfg.training
    t.batch_size, t.max_steps, t.warmup_steps, t.learning_rate, t.min_lr = 4, 6, 2, 1e-2, 1e-3
    t.log_interval, t.eval_interval, t.save_interval, t.mixed_precision = 1, 3, 3, False
    t.optimizer, t.peak_flops = "muon", 1e11
    for k, v in training.items():
        setattr(t, k, v)
    return cfg


class _SignalAfter:
    """Batches from ``inner``; SIGINT to this process when batch ``n`` is drawn."""

    def __init__(self, inner: RandomBatches, n: int) -> None:
        self.inner, self.n, self.drawn = inner, n, 0

    def __iter__(self) -> _SignalAfter:
        return self

    def __next__(self):  # type: ignore[no-untyped-def]
        self.drawn += 1
        if self.drawn == self.n:
            import os

            os.kill(os.getpid(), signal.SIGINT)
        return next(self.inner)

    def state_dict(self):  # type: ignore[no-untyped-def]
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:  # type: ignore[no-untyped-def]
        self.inner.load_state_dict(state)


def _losses(run_dir: Path) -> list[float]:
    from gptrs.training.metrics import read_metrics

    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.mark.parametrize(
    "switches, training",
    [
        (SWITCHES[-1], {}),
        ({}, dict(muon_ns="polar_express", normuon=True, warmdown_ratio=0.5, batch_size_schedule=[2, 3, 4])),
    ],
    ids=["model-switches", "muon-switches"],
)
def test_resume_is_bitwise_identical(tmp_path: Path, switches: dict, training: dict) -> None:
    cfg = _config(switches, **training)
    data = torch.randint(0, V, (3000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    evals = [next(RandomBatches(data, 4, 16, seed=1)) for _ in range(2)]

    def model(seed: int) -> GPT:
        torch.manual_seed(seed)
        return GPT.from_config(cfg, vocab_size=V)

    def sampler() -> RandomBatches:
        return RandomBatches(data, 4, 16, seed=7)

    full, broken = tmp_path / "full", tmp_path / "broken"
    Trainer(model(0), None, cfg, "cpu", run_dir=full).train(sampler(), evals)
    with pytest.raises(TrainingInterrupted):
        Trainer(model(0), None, cfg, "cpu", run_dir=broken).train(_SignalAfter(sampler(), 3), evals)
    Trainer(model(99), None, cfg, "cpu", run_dir=broken).train(sampler(), evals, resume=True)
    assert _losses(broken) == _losses(full) and len(_losses(full)) == cfg.training.max_steps
    a = (full / "checkpoints/last/model.safetensors").read_bytes()
    assert a == (broken / "checkpoints/last/model.safetensors").read_bytes()


# ---------------------------------------------------------------------------------------------- Muon

QUINTIC = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's default


@settings(max_examples=20, deadline=None)
@given(
    rows=st.integers(8, 96), cols=st.integers(8, 96), decades=st.integers(1, 3), seed=st.integers(0, 10**6)
)
def test_polar_express_orthogonalises_closer_than_the_quintic(
    rows: int, cols: int, decades: int, seed: int
) -> None:
    """Singular values after five steps (fp32), for matrices whose singular values span ``decades`` (a
    spread: one repeated value maps to one point, which either polynomial may land nearer by chance): Polar
    Express stays below 1.15 and lands nearer 1 on average than the fixed quintic."""
    g = torch.Generator().manual_seed(seed)
    u, _, v = torch.linalg.svd(torch.randn(rows, cols, generator=g), full_matrices=False)
    s = torch.logspace(-decades, 0, min(rows, cols))
    m = u @ torch.diag(s) @ v
    pe = torch.linalg.svdvals(orthogonalize(m, POLAR_EXPRESS, 5, 1e-7, torch.float32, POLAR_EXPRESS_SAFETY))
    qu = torch.linalg.svdvals(orthogonalize(m, QUINTIC, 5, 1e-7, torch.float32))
    assert float(pe.max()) < 1.15
    assert float((pe - 1).abs().mean()) < float((qu - 1).abs().mean())


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(2, 40), cols=st.integers(2, 40), seed=st.integers(0, 10**6))
def test_normuon_equalises_the_neurons_and_keeps_the_norm(rows: int, cols: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(rows, cols, generator=g) * (0.1 + torch.rand(rows, 1, generator=g)) ** 2  # uneven rows
    state: dict = {}
    out = _normuon(u, state, "v", 0.95)
    dim = -1 if rows >= cols else -2  # rows of a tall matrix, columns of a wide one
    ms = out.square().mean(dim)
    torch.testing.assert_close(ms, ms.mean().expand_as(ms), rtol=1e-4, atol=1e-8)  # one EMA step: all alike
    torch.testing.assert_close(out.norm(), u.norm(), rtol=1e-5, atol=1e-6)
    assert state["v"].shape == ((rows, 1) if dim == -1 else (1, cols))


def test_muon_switches_change_the_step_and_their_state_round_trips() -> None:
    """Each switch changes the update (it is wired through), and NorMuon's buffers live in the optimizer
    state that checkpoints save."""

    def step(**kw: object) -> tuple[GPT, object]:
        m = tiny("nanochat", {})
        opt = build_optimizer(m, optimizer="muon", lr=1e-2, **kw)  # type: ignore[arg-type]
        x = prompts(2, CTX)
        m(x, x)[1].backward()  # type: ignore[union-attr]
        opt.step()
        return m, opt

    base, _ = step()
    pe, _ = step(muon_ns="polar_express")
    nm, opt = step(normuon=True)
    w = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(base.get_parameter(w), pe.get_parameter(w))
    assert not torch.equal(base.get_parameter(w), nm.get_parameter(w))
    state = opt.state_dict()["muon"]["state"]  # type: ignore[attr-defined]
    assert any(k.startswith("normuon_v") for s in state.values() for k in s)
    with pytest.raises(
        ValueError, match=r"training\.muon_ns must be one of quintic, polar_express, got 'cubic'"
    ):
        build_optimizer(base, optimizer="muon", lr=1e-2, muon_ns="cubic")


# ---------------------------------------------------------------------------------------------- schedules


@settings(max_examples=100, deadline=None)
@given(schedule=st.lists(st.integers(1, 64), min_size=1, max_size=5), max_steps=st.integers(1, 500))
def test_batch_schedule_stages_are_equal_and_in_order(schedule: list[int], max_steps: int) -> None:
    got = [batch_rows_at(k, schedule, max_steps) for k in range(max_steps)]
    stages = [k * len(schedule) // max_steps for k in range(max_steps)]  # the stage of each step
    assert got == [schedule[i] for i in stages]
    counts = [stages.count(i) for i in range(len(schedule))]
    if max_steps >= len(schedule):
        assert max(counts) - min(counts) <= 1  # equal stages, every one used
    assert batch_rows_at(max_steps + 5, schedule, max_steps) == schedule[-1]
    assert batch_rows_at(3, [], max_steps) is None


def test_batch_schedule_trains_on_the_first_rows(tmp_path: Path) -> None:
    """Tokens counted are the stage's rows, and the model trained equals one fed those rows itself."""
    cfg = _config({}, batch_size_schedule=[1, 3], max_steps=4, warmup_steps=0)
    data = torch.randint(0, V, (3000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    torch.manual_seed(0)
    scheduled = GPT.from_config(cfg, vocab_size=V)
    out = Trainer(scheduled, None, cfg, "cpu", run_dir=tmp_path / "a").train(
        RandomBatches(data, 4, 16, seed=7)
    )
    assert out["tokens"] == (1 + 1 + 3 + 3) * 16

    class Sliced:  # the same batches cut by hand, the schedule off
        def __iter__(self):  # type: ignore[no-untyped-def]
            for k, (x, y) in enumerate(RandomBatches(data, 4, 16, seed=7)):
                rows = 1 if k < 2 else 3
                yield x[:rows], y[:rows]

    cfg.training.batch_size_schedule = []
    torch.manual_seed(0)
    by_hand = GPT.from_config(cfg, vocab_size=V)
    Trainer(by_hand, None, cfg, "cpu", run_dir=tmp_path / "b").train(Sliced())
    for (name, a), b in zip(scheduled.state_dict().items(), by_hand.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_closing_lines_offer_export_only_where_it_works(tmp_path: Path) -> None:
    from gptrs.config import load_config
    from gptrs.train import next_steps

    plain = "\n".join(next_steps(tmp_path, 10, load_config("nanochat-small")))
    assert "-m gptrs.export" in plain
    assert "-m gptrs.export" not in "\n".join(next_steps(tmp_path, 10, load_config("speedrun-small")))
