"""Training-step benchmark: our ``GPT`` as the trainer runs it against Hugging Face ``GPT2LMHeadModel``.

One training step = forward, loss, backward, gradient clipping (max norm 1.0: both our trainer and the HF
``Trainer`` clip by default), fused AdamW step (our trainer's choice, and HF ``Trainer``'s default
``adamw_torch_fused`` since torch 2.8), zero_grad. Same shapes, same random tokens, fp32 weights under bf16
autocast on both sides.

- **peer**: ``GPT2LMHeadModel(GPT2Config(<our dims>, n_inner=4*embed, activation_function="gelu" (exact),
  dropouts 0), attn_implementation="sdpa")``, labels = inputs (HF shifts them), eager and under
  ``torch.compile`` (same parameters); its figure is the better of the two.
- **ours**: ``GPT.from_config`` with the same dimensions, each step taken by ``gptrs.training.Trainer`` itself
  (``Trainer.step_fn``: the same code as ``train()``'s steps): bf16 autocast, fused AdamW on
  ``optimizer_groups``, the schedule, clipping, ``torch.compile`` when the model config's ``compile``
  default says so (``ModelConfig().compile``). The peer's loop stays a peer's loop.
- The contenders are alternated step by step (order reversed every round) after warm-up steps (the first
  compiled call, which compiles, is timed separately); medians over the timed steps, and the speed-up is the
  median of per-round time ratios.
- **MFU** = (6N + 12·L·d·T) · tokens/s / peak, with N every parameter except the position embeddings and the
  peak a 4096³ bf16 matmul timed in this process (best of a few; the highest seen in the run).
- **bf16 vs fp32**: our model on the second shape without autocast, alternated with the bf16 step.
- **MFU ceiling**: the GEMMs of one of our steps (collected by the profiler) replayed alone on contiguous
  operands, best of 3 (:func:`matmul_floor`): the MFU the step would have if everything else (norms, GELU,
  softmax, casts, the optimizer) were free. It says how much of a missed MFU goal is the model's own
  matmul shapes on this machine and how much is everything around them.

Goals (2-core CPU, bf16): ours >= 1.3x the peer on the first two shapes and >= 1.15x on the third; MFU >= 0.6
on the second; bf16 >= 1.8x fp32.

    python -m benches train [--quick]
    python benches/bench_train.py [--quick] [--shapes 2] [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):  # run as a script: make `benches` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from gptrs.config import Config, ModelConfig, TrainingConfig
from gptrs.host_memory import tune_host_allocator
from gptrs.model import GPT
from gptrs.training import Trainer
from gptrs.training.compile import should_compile
from gptrs.training.precision import resolve_precision


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    embed: int
    block: int
    vocab: int
    batch: int
    goal: float  # required speed-up over the peer

    @property
    def label(self) -> str:
        return f"{self.layers}/{self.heads}/{self.embed}/{self.block}/{self.vocab}/{self.batch}"


SHAPES = [
    Shape(4, 4, 128, 256, 4096, 16, goal=1.3),
    Shape(6, 6, 384, 256, 8192, 16, goal=1.3),
    Shape(12, 12, 768, 512, 8192, 4, goal=1.15),
]
QUICK_SHAPES = [Shape(2, 2, 64, 64, 512, 4, goal=1.0)]
MFU_SHAPE, MFU_GOAL = 1, 0.6  # index into SHAPES
BF16_SHAPE, BF16_GOAL = 1, 1.8
# HF GPT-2 tokens/s measured when the issue was filed (same machine type, eager unless marked).
REFERENCE_HF = {SHAPES[0].label: 19_200, SHAPES[1].label: 4_790, SHAPES[2].label: 855}


# ----------------------------------------------------------------------------------------------- models


def hf_model(s: Shape) -> torch.nn.Module:
    return common.hf_gpt2(
        s.vocab, s.block, s.embed, s.layers, s.heads, bos_token_id=0, eos_token_id=0
    ).train()


def model_config(s: Shape) -> ModelConfig:
    return ModelConfig(
        embed_dim=s.embed, ff_dim=4 * s.embed, num_layers=s.layers, heads=s.heads, max_seq_len=s.block
    )


def our_model(s: Shape) -> GPT:
    return GPT.from_config(model_config(s), vocab_size=s.vocab).train()


def fused_adamw(params: Any, tc: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=True)


def peer_step(
    call: Callable[[], torch.Tensor], model: torch.nn.Module, opt: torch.optim.Optimizer, bf16: bool
) -> Callable[[], None]:
    autocast = resolve_precision("bf16" if bf16 else False, "cpu").autocast
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        with autocast():
            loss = call()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trainer_step(
    model: GPT, s: Shape, x: torch.Tensor, y: torch.Tensor, *, bf16: bool, compiled: bool
) -> Callable[[], None]:
    """One optimizer step of ``model`` on ``(x, y)`` per call, taken by the Trainer (``Trainer.step_fn``)."""
    cfg = Config(model=model_config(s))
    cfg.model.compile = compiled
    tc = cfg.training
    tc.batch_size, tc.mixed_precision, tc.max_grad_norm = s.batch, "bf16" if bf16 else False, 1.0
    tc.peak_flops = 1e12  # not timed at start (this suite measures its own peak)
    trainer = Trainer(model, None, cfg, "cpu", log_level="WARNING")
    return trainer.step_fn(itertools.repeat((x, y)))


def _compile(model: torch.nn.Module) -> torch.nn.Module:
    return torch.compile(model)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ the matmul floor


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Hide what native code writes to fd 2 (the profiler's start/stop and 'no GPU' log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_LINEAR = "mkldnn::_linear_pointwise"  # our Linear layers' forward on the CPU (gptrs/model/kernels/linear.py)
_MATMULS = {
    "aten::mm",
    "aten::addmm",
    "aten::addmm_",
    "aten::bmm",
    "aten::baddbmm",
    "aten::baddbmm_",
    _LINEAR,
}


def matmul_floor(step: Callable[[], None], dtype: torch.dtype, repeats: int = 3) -> dict[str, float]:
    """What the step would cost if it were nothing but its own matrix products.

    One step runs under the profiler; every GEMM it launches (op and operand shapes) is collected and
    replayed alone, in order, on contiguous ``dtype`` operands (bias terms dropped), best of ``repeats``.
    Row-major operands are oneDNN's fastest layout here and nothing else competes for the cache, so this is
    an optimistic floor: the time no implementation of this model's math, in these kernels, can beat."""
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    pairs: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for e in prof.events():
        if e.name not in _MATMULS or (e.cpu_parent is not None and e.cpu_parent.name in _MATMULS):
            continue
        if e.name == _LINEAR:  # (x, weight (out, in), bias, ...): x @ weight^T
            a, w = (tuple(x) for x in e.input_shapes[:2])
            pairs.append((a, (w[1], w[0])))
            continue
        # (a, b[, out]) for mm/bmm; (input, a, b, beta, alpha[, out]) for the add variants
        first = 1 if e.name.startswith(("aten::add", "aten::badd")) else 0
        a, b = (tuple(x) for x in e.input_shapes[first : first + 2])
        pairs.append((a, b))
    operands = {ab: (torch.randn(ab[0]).to(dtype), torch.randn(ab[1]).to(dtype)) for ab in set(pairs)}
    ops = [operands[ab] for ab in pairs]
    flops = sum(2 * math.prod(a) * b[-1] for a, b in pairs)
    best = math.inf
    for _ in range(repeats + 1):  # the first pass warms oneDNN's kernel caches
        t0 = time.perf_counter()
        for lhs, rhs in ops:
            torch.matmul(lhs, rhs)
        best = min(best, time.perf_counter() - t0)
    return {"ms": 1e3 * best, "gemms": len(ops), "gemm_flops": flops}


# ----------------------------------------------------------------------------------------------- one shape


def bench_shape(
    s: Shape, rounds: int, warmup: int, compile_peer: bool, compile_ours: bool, with_fp32: bool
) -> dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randint(0, s.vocab, (s.batch, s.block))
    y = torch.roll(x, -1, dims=1)
    tc = TrainingConfig()

    contenders: dict[str, Callable[[], None]] = {}
    hf = hf_model(s)
    hf_opt = fused_adamw(hf.parameters(), tc)
    contenders["hf_eager"] = peer_step(lambda: hf(input_ids=x, labels=x).loss, hf, hf_opt, True)
    if compile_peer:
        hf_c = _compile(hf)
        contenders["hf_compiled"] = peer_step(lambda: hf_c(input_ids=x, labels=x).loss, hf, hf_opt, True)

    ours = our_model(s)
    ours_name = "ours_compiled" if compile_ours else "ours_eager"
    contenders[ours_name] = trainer_step(ours, s, x, y, bf16=True, compiled=compile_ours)
    if with_fp32:
        contenders["ours_fp32"] = trainer_step(ours, s, x, y, bf16=False, compiled=compile_ours)

    first_step_s: dict[str, float] = {}
    for name, fn in contenders.items():  # warm-up; the first call of a compiled model compiles it
        t0 = time.perf_counter()
        fn()
        first_step_s[name] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            fn()
    times = common.alternate(contenders, rounds)
    floor = matmul_floor(contenders[ours_name], torch.bfloat16)

    tokens = s.batch * s.block
    fpt = ours.flops_per_token(s.block)
    wpe = hf.get_submodule("transformer.wpe")
    assert isinstance(wpe, torch.nn.Embedding)
    n_hf = sum(p.numel() for p in hf.parameters()) - wpe.weight.numel()
    assert 6 * n_hf + 12 * s.layers * s.embed * s.block == fpt, "peer and ours differ in size"
    res: dict[str, Any] = {
        "shape": s.label,
        **asdict(s),
        "tokens_per_step": tokens,
        "flops_per_token": fpt,
        "parameters": ours.num_parameters(),
        "contenders": {},
        "matmul_floor": floor,
    }
    for name, ts in times.items():
        med = common.median(ts)
        res["contenders"][name] = {
            "step_ms": 1e3 * med,
            "tokens_per_s": tokens / med,
            "first_step_s": first_step_s[name],
            "steps_timed": len(ts),
            "step_ms_all": [round(1e3 * t, 2) for t in ts],
        }
    peers = [n for n in ("hf_eager", "hf_compiled") if n in times]
    peer = min(peers, key=lambda n: common.median(times[n]))
    res["peer_best"], res["ours"] = peer, ours_name
    res["speedup_vs_peer"] = common.paired_ratio(times[peer], times[ours_name])
    res["speedup_vs_peer_medians"] = common.median(times[peer]) / common.median(times[ours_name])
    if with_fp32:
        res["bf16_vs_fp32"] = common.paired_ratio(times["ours_fp32"], times[ours_name])
    del contenders
    gc.collect()
    return res


# ----------------------------------------------------------------------------------------------- suite


def run(
    quick: bool = False, shapes: list[int] | None = None, rounds: int | None = None, warmup: int | None = None
) -> dict[str, Any]:
    """Benchmark every shape; a JSON-able dict (the suite adds the machine and writes it)."""
    logging.getLogger("torch._inductor").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    chosen = QUICK_SHAPES if quick else [SHAPES[i] for i in (shapes or range(len(SHAPES)))]
    rounds = rounds or (2 if quick else 7)
    warmup = warmup or (1 if quick else 2)
    compile_ours = should_compile(ModelConfig().compile, torch.device("cpu")) and not quick
    peak = {"bf16": 0.0, "fp32": 0.0}
    out: dict[str, Any] = {
        "settings": {
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "warmup_steps": warmup,
            "autocast": "bf16 (weights and optimizer state fp32)",
            "optimizer": "AdamW fused, clip_grad_norm 1.0",
            "ours_compiled": compile_ours,
            # process-wide, as the trainer sets it: the peer, in the same process, gets it too
            "host_allocator_tuned": tune_host_allocator(),
            "peer_compiled": not quick,
            "note": "quick: tiny shape, nothing compiled" if quick else "",
        },
        "shapes": [],
    }
    mm_n = 1024 if quick else 4096
    for s in chosen:
        peak["bf16"] = max(peak["bf16"], common.matmul_peak_flops(torch.bfloat16, mm_n))
        with_fp32 = quick or s == SHAPES[BF16_SHAPE]
        if with_fp32:
            peak["fp32"] = max(peak["fp32"], common.matmul_peak_flops(torch.float32, mm_n))
        r = bench_shape(
            s, rounds, warmup, compile_peer=not quick, compile_ours=compile_ours, with_fp32=with_fp32
        )
        out["shapes"].append(r)
        print(f"[train] {s.label}: x{r['speedup_vs_peer']:.2f} vs {r['peer_best']}", flush=True)
    peak["bf16"] = max(peak["bf16"], common.matmul_peak_flops(torch.bfloat16, mm_n))
    out["peak_flops"] = peak

    goals: dict[str, bool] = {}
    for r in out["shapes"]:
        for name, c in r["contenders"].items():
            pk = peak["fp32"] if name.endswith("fp32") else peak["bf16"]
            c["mfu"] = r["flops_per_token"] * c["tokens_per_s"] / pk if pk else math.nan
        r["mfu_ours"] = r["contenders"][r["ours"]]["mfu"]
        fl = r["matmul_floor"]
        # MFU if the step were its matmuls alone (optimistic): the physical ceiling for this model here
        fl["mfu_ceiling"] = r["flops_per_token"] * r["tokens_per_step"] / (fl["ms"] / 1e3) / peak["bf16"]
        fl["share_of_our_step"] = fl["ms"] / r["contenders"][r["ours"]]["step_ms"]
        r["reference_hf_tokens_per_s"] = REFERENCE_HF.get(r["shape"])
        if not quick:
            goals[f"{r['shape']}: >= {r['goal']}x peer"] = r["speedup_vs_peer"] >= r["goal"]
    if not quick:
        by_label = {r["shape"]: r for r in out["shapes"]}
        r2 = by_label.get(SHAPES[MFU_SHAPE].label)
        if r2 is not None:
            goals[f"{r2['shape']}: MFU >= {MFU_GOAL}"] = r2["mfu_ours"] >= MFU_GOAL
            goals[f"{r2['shape']}: bf16 >= {BF16_GOAL}x fp32"] = r2["bf16_vs_fp32"] >= BF16_GOAL
    out["goals"] = goals
    out["chart"] = str(_chart(out, quick, "train" if shapes is None else "train_partial"))
    return out


def _chart(out: dict[str, Any], quick: bool, name: str) -> Path | None:
    groups = [r["shape"] for r in out["shapes"]]
    series: dict[str, list[float]] = {
        "HF GPT-2 (best of eager/compiled)": [
            r["contenders"][r["peer_best"]]["tokens_per_s"] for r in out["shapes"]
        ],
        "gptrs": [r["contenders"][r["ours"]]["tokens_per_s"] for r in out["shapes"]],
    }
    title = f"Training tokens/s, bf16, {out['settings']['threads']} threads (higher is better)"
    return common.bar_chart(common.results_path(name, quick, ".png"), groups, series, "tokens/s", title)


def print_table(out: dict[str, Any]) -> None:
    rows = []
    for r in out["shapes"]:
        c = r["contenders"]
        rows.append(
            [
                r["shape"],
                c["hf_eager"]["tokens_per_s"],
                c["hf_compiled"]["tokens_per_s"] if "hf_compiled" in c else None,
                c[r["ours"]]["tokens_per_s"],
                f"{r['speedup_vs_peer']:.2f}x",
                f"{c[r['ours']]['mfu']:.2f}",
                f"{c[r['peer_best']]['mfu']:.2f}",
                f"{r['matmul_floor']['mfu_ceiling']:.2f}",
                f"{r['bf16_vs_fp32']:.2f}x" if "bf16_vs_fp32" in r else "-",
            ]
        )
    headers = [
        "shape (L/H/d/T/V/B)",
        "HF eager tok/s",
        "HF compiled tok/s",
        "gptrs tok/s",
        "gptrs/HF",
        "MFU",
        "HF MFU",
        "MFU ceiling",
        "bf16/fp32",
    ]
    pk = out["peak_flops"]
    common.print_table(
        headers,
        [[v if not isinstance(v, float) else round(v) for v in row] for row in rows],
        title=f"training step, bf16 autocast, {out['settings']['threads']} threads; ours = "
        f"{'compiled' if out['settings']['ours_compiled'] else 'eager'}; peak bf16 matmul "
        f"{pk['bf16'] / 1e12:.2f} TFLOP/s",
    )
    for r in out["shapes"]:
        compile_s = {n: round(c["first_step_s"], 1) for n, c in r["contenders"].items()}
        print(f"  {r['shape']}: first (compiling) step s: {compile_s}")
        fl = r["matmul_floor"]
        print(
            f"  {r['shape']}: its {fl['gemms']} GEMMs alone take {fl['ms']:.0f} ms "
            f"({100 * fl['share_of_our_step']:.0f}% of our step): MFU ceiling {fl['mfu_ceiling']:.2f}"
        )
    common.print_goals_and_chart(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--shapes", type=int, nargs="*", help="indices into SHAPES (1-based), default all")
    p.add_argument("--rounds", type=int)
    p.add_argument("--threads", type=int, default=common.physical_cores())
    args = p.parse_args()
    shapes = [i - 1 for i in args.shapes] if args.shapes else None
    with common.torch_threads(args.threads):
        out = run(args.quick, shapes, args.rounds)
    path = common.write_results("train" if shapes is None else "train_partial", out, args.quick)
    print_table(out)
    print(f"results: {path}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
