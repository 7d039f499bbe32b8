"""GPU benchmark: training steps and generation, ours against Hugging Face GPT-2, in one process.

    python -m benches gpu [--quick]                 # on a CUDA machine; elsewhere one line and exit 2
    python benches/bench_gpu.py --device cpu --tiny # every case at toy size on the CPU: checks the script

Cases (bf16 autocast, fused AdamW, gradient clipping at 1.0; warm-up steps are not timed):

- ``train_124m``: the GPT-2 124M shape (12 layers, 12 heads, 768 wide, vocab 50304), batch 16 x 1024:
  gptrs eager and ``torch.compile``d against HF ``GPT2LMHeadModel`` (SDPA) eager and compiled.
- ``train_default``: the default preset's model and micro-batch (gptrs, eager and compiled).
- ``train_large``: the large preset's model, batch 8 (gptrs, eager).
- ``generate_b1`` / ``generate_b8``: greedy decoding at the 124M shape in bf16, a 16-token prompt and 256
  new tokens, batch 1 and 8: gptrs (static cache + CUDA graph, and the eager step) against HF
  ``generate``; tokens compared. Then the CUDA-graph step compiled as well (``GPTRS_COMPILE_DECODE``).

Each case reports tokens/s, MFU (against ``gptrs.training.peak_flops.measure_peak_flops``: a large bf16
matmul timed in the same run; the datasheet peak is recorded beside it) and the peak memory
(``torch.cuda.max_memory_allocated``). Every case runs inside try/except: an error is recorded in the JSON
and the run goes on. Cases that would not fit the time budget
(:data:`BUDGET_S`, under 4 minutes on an H100/H200) are skipped and say so. Results: ``benches/results/
gpu.json`` and ``gpu.png`` (training tokens/s) like the other suites.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import logging
import math
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from gptrs.config import Config, load_config
from gptrs.model import GPT, static_decode
from gptrs.training import Trainer
from gptrs.training.peak_flops import gpu_peak_flops, measure_peak_flops

BUDGET_S = 220.0  # the whole run, compiles included
COMPILE_RESERVE_S = 45.0  # a compiled case is skipped with less time than this left
NO_GPU_EXIT = 2


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    embed: int
    vocab: int
    seq: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.layers}/{self.heads}/{self.embed} V{self.vocab}, {self.batch}x{self.seq}"


GPT2_124M = Shape(12, 12, 768, 50304, 1024, 16)
TINY = Shape(2, 2, 64, 512, 64, 2)


@dataclass
class Settings:
    device: torch.device
    tiny: bool
    steps: int  # timed training steps
    warmup: int  # untimed (compiled: plus the compile)
    new_tokens: int
    prompt: int
    deadline: float

    @property
    def autocast(self) -> Any:
        # bf16 on the GPU; the CPU debug mode runs fp32 (bf16 is emulated on many CPUs)
        return torch.autocast(self.device.type, torch.bfloat16, enabled=self.device.type == "cuda")

    def compile(self, model: nn.Module) -> nn.Module:
        # --tiny on the CPU: trace with dynamo but skip code generation (the path is checked, not timed)
        backend = "eager" if self.tiny and self.device.type == "cpu" else "inductor"
        return torch.compile(model, backend=backend)  # type: ignore[return-value]

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


# ----------------------------------------------------------------------------------------------- models


def ours(s: Shape, device: torch.device) -> GPT:
    torch.manual_seed(0)
    return GPT(s.vocab, s.embed, 4 * s.embed, s.layers, s.heads, s.seq, None).to(device)


def hf_model(s: Shape, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return common.hf_gpt2(s.vocab, s.seq, s.embed, s.layers, s.heads).to(device)


def hf_from_ours(model: GPT) -> nn.Module:
    """HF GPT-2 holding our weights (the generation comparison; see bench_generate.hf_from_ours)."""
    from benches.bench_generate import hf_from_ours as convert

    return convert(model)


# ----------------------------------------------------------------------------------------------- training


def trainer_step(
    model: GPT, s: Shape, st: Settings, x: torch.Tensor, y: torch.Tensor, *, compiled: bool
) -> Callable[[], None]:
    """Our step, taken by the Trainer itself (``Trainer.step_fn``, the code of ``train()``'s steps): fused
    AdamW on ``optimizer_groups``, the schedule, clipping, bf16 autocast on the GPU, ``torch.compile`` on
    request (inductor, also in the CPU debug mode)."""
    cfg = Config()
    tc = cfg.training
    cfg.model.compile = compiled
    tc.batch_size, tc.learning_rate, tc.weight_decay, tc.max_grad_norm = s.batch, 6e-4, 0.1, 1.0
    tc.beta1, tc.beta2, tc.mixed_precision = 0.9, 0.95, "bf16" if st.device.type == "cuda" else False
    tc.peak_flops = 1e12  # not timed at start (this suite measures its own peak)
    trainer = Trainer(model, None, cfg, st.device, log_level="WARNING")
    return trainer.step_fn(itertools.repeat((x, y)))


def time_training(
    model: nn.Module, s: Shape, st: Settings, *, compiled: bool, hf: bool, flops_per_token: float, peak: float
) -> dict[str, Any]:
    """Warm up, then time ``st.steps`` optimizer steps of one (batch, seq) micro-batch each: the peer's own
    loop for HF, the Trainer's step for ours."""
    dev = st.device
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, s.vocab, (s.batch, s.seq), generator=g).to(dev)
    y = torch.randint(0, s.vocab, (s.batch, s.seq), generator=g).to(dev)
    if hf:
        opt = torch.optim.AdamW(
            model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=dev.type == "cuda"
        )
        run = st.compile(model) if compiled else model

        def step() -> None:
            with st.autocast:
                loss = run(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    else:
        assert isinstance(model, GPT)
        if (
            compiled and st.tiny and dev.type == "cpu"
        ):  # the debug mode checks the path, skipping the C++ build
            step = trainer_step(st.compile(model), s, st, x, y, compiled=False)  # type: ignore[arg-type]
        else:
            step = trainer_step(model, s, st, x, y, compiled=compiled)

    t0 = time.perf_counter()
    for _ in range(st.warmup + (1 if compiled else 0)):
        step()
    _sync(dev)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(st.steps):
        step()
    _sync(dev)
    dt = time.perf_counter() - t0
    tok_s = st.steps * s.batch * s.seq / dt
    return {
        "tokens_per_s": tok_s,
        "step_ms": 1000 * dt / st.steps,
        "mfu": flops_per_token * tok_s / peak if peak > 0 else None,
        "peak_memory_gb": _peak_gb(dev),
        "warmup_s": warm,
    }


def train_case(
    name: str,
    s: Shape,
    st: Settings,
    contenders: list[str],
    peak: float,
    build: Callable[[], GPT] | None = None,
) -> dict[str, Any]:
    """``contenders``: any of "gptrs eager", "gptrs compiled", "HF eager", "HF compiled"."""
    out: dict[str, Any] = {"shape": s.label, "results": {}}
    flops = None
    for who in contenders:
        compiled = who.endswith("compiled")
        if (
            compiled
            and st.tiny
            and st.device.type == "cpu"
            and (who.startswith("HF") or name != "train_124m")
        ):
            out["results"][who] = {"skipped": "CPU --tiny: one compiled case checks the path"}
            continue
        if compiled and st.left() < COMPILE_RESERVE_S:
            out["results"][who] = {"skipped": f"time budget ({st.left():.0f} s left)"}
            continue
        if st.left() < 5:
            out["results"][who] = {"skipped": "time budget"}
            continue
        print(f"[gpu] {name}: {who} ...", flush=True)
        model: nn.Module | None = None
        try:
            _reset_memory(st.device)
            hf = who.startswith("HF")
            model = hf_model(s, st.device) if hf else (build() if build else ours(s, st.device))
            model.train()
            if flops is None:
                ref = model if isinstance(model, GPT) else ours(s, torch.device("meta"))
                flops = float(ref.flops_per_token(s.seq))
            out["results"][who] = time_training(
                model, s, st, compiled=compiled, hf=hf, flops_per_token=flops, peak=peak
            )
        except Exception as e:  # record and go on: one broken case must not cost the others
            out["results"][who] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"[gpu] {name}: {who} FAILED: {type(e).__name__}: {e}", flush=True)
        finally:
            del model
            if st.device.type == "cuda":
                torch._dynamo.reset()
            _reset_memory(st.device)
    return out


def preset_shape(preset: str, batch: int | None, st: Settings) -> tuple[Shape, Callable[[], GPT]]:
    cfg = load_config(preset)
    m = cfg.model
    vocab = m.vocab_size or cfg.tokenizer.vocab_size
    if st.tiny:  # the preset's structure at toy size
        s = Shape(2, 2, 64, min(vocab, 512), 64, 2)
    else:
        s = Shape(m.num_layers, m.heads, m.embed_dim, vocab, m.max_seq_len, batch or cfg.training.batch_size)

    def build() -> GPT:
        if st.tiny:
            return ours(s, st.device)
        torch.manual_seed(0)
        return GPT.from_config(cfg, vocab_size=vocab).to(st.device)

    return s, build


# ----------------------------------------------------------------------------------------------- generation


def generation_case(batch: int, st: Settings) -> dict[str, Any]:
    s = TINY if st.tiny else GPT2_124M
    dev = st.device
    out: dict[str, Any] = {"shape": s.label.split(",")[0], "batch": batch, "results": {}}
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    # the full context (1024 at the 124M shape): the static step attends over all of it every token
    shape = Shape(s.layers, s.heads, s.embed, s.vocab, max(s.seq, st.prompt + st.new_tokens), batch)
    _reset_memory(dev)
    cpu_model = ours(shape, torch.device("cpu")).eval()
    hf_peer = hf_from_ours(cpu_model).to(device=dev, dtype=dtype)
    ours_model = cpu_model.to(device=dev, dtype=dtype)
    prompt = torch.randint(0, s.vocab, (batch, st.prompt), generator=torch.Generator().manual_seed(2)).to(dev)
    new = st.new_tokens
    tokens: dict[str, torch.Tensor] = {}

    def ours_gen(static: bool) -> Callable[[], torch.Tensor]:
        return lambda: ours_model.generate(prompt, new, temperature=0.0, static_cache=static)

    def hf_gen() -> torch.Tensor:
        with torch.no_grad():
            return hf_peer.generate(  # type: ignore[operator, no-any-return]
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new,
                min_new_tokens=new,
                do_sample=False,
                pad_token_id=0,
            )

    contenders: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("gptrs static+graph", ours_gen(True)),
        ("gptrs eager", ours_gen(False)),
        ("HF generate", hf_gen),
    ]
    for who, fn in contenders:
        if st.left() < 5:
            out["results"][who] = {"skipped": "time budget"}
            continue
        print(f"[gpu] generate batch {batch}: {who} ...", flush=True)
        try:
            out["results"][who] = _time_generation(fn, st, batch, new, tokens, who)
        except Exception as e:
            out["results"][who] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"[gpu] generate batch {batch}: {who} FAILED: {type(e).__name__}: {e}", flush=True)
    compile_left = st.left() > (COMPILE_RESERVE_S if dev.type == "cuda" else 0)
    who = "gptrs static+graph+compile"
    if compile_left and not (st.tiny and dev.type == "cpu"):  # inductor on the CPU: minutes, skipped
        print(f"[gpu] generate batch {batch}: {who} ...", flush=True)
        old = static_decode.COMPILE_STEP
        try:
            static_decode.COMPILE_STEP = True
            out["results"][who] = _time_generation(ours_gen(True), st, batch, new, tokens, who)
        except Exception as e:
            out["results"][who] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
            print(f"[gpu] generate batch {batch}: {who} FAILED: {type(e).__name__}: {e}", flush=True)
        finally:
            static_decode.COMPILE_STEP = old
    else:
        out["results"][who] = {"skipped": "time budget" if not compile_left else "CPU --tiny"}
    ref = tokens.get("gptrs eager")
    for who, t in tokens.items():
        if ref is not None and who != "gptrs eager":
            out["results"][who]["tokens_equal_gptrs_eager"] = bool(torch.equal(t, ref))
        if "HF generate" in tokens and who != "HF generate":
            out["results"][who]["tokens_equal_hf"] = bool(torch.equal(t, tokens["HF generate"]))
    return out  # the models go with this frame; run() frees their memory after


def _time_generation(
    fn: Callable[[], torch.Tensor],
    st: Settings,
    batch: int,
    new: int,
    tokens: dict[str, torch.Tensor],
    who: str,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    tokens[who] = fn().cpu()  # warm-up (and, for the static step, the capture)
    warm = time.perf_counter() - t0
    _reset_memory(st.device)
    times = []
    for _ in range(1 if st.tiny else 3):
        _sync(st.device)
        t0 = time.perf_counter()
        fn()
        _sync(st.device)
        times.append(time.perf_counter() - t0)
    dt = sorted(times)[len(times) // 2]
    return {
        "new_tokens_per_s": batch * new / dt,
        "ms_per_step": 1000 * dt / new,
        "peak_memory_gb": _peak_gb(st.device),
        "warmup_s": warm,
    }


# ----------------------------------------------------------------------------------------------- driver


def run(quick: bool = False, *, device: str = "cuda", tiny: bool = False) -> dict[str, Any]:
    """Every case; exits with status 2 (one line) when ``device`` is cuda and no CUDA GPU is there."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA GPU: torch {torch.__version__} sees none (torch.cuda.is_available() is False)")
        raise SystemExit(NO_GPU_EXIT)
    logging.getLogger("gptrs").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="transformers")
    start = time.perf_counter()
    st = Settings(
        device=dev,
        tiny=tiny,
        steps=2 if tiny else (4 if quick else 10),
        warmup=1 if tiny else 3,
        new_tokens=8 if tiny else (64 if quick else 256),
        prompt=4 if tiny else 16,
        deadline=start + BUDGET_S,
    )
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = measure_peak_flops(dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    # The datasheet's dense bf16 peak, what the trainer's MFU uses on a GPU it knows; MFU here is against the
    # measured matmul, which the datasheet figure can only exceed (so these MFUs are the higher of the two).
    table = gpu_peak_flops(torch.cuda.get_device_name(dev), torch.bfloat16) if dev.type == "cuda" else None
    out: dict[str, Any] = {
        "settings": {
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "tiny": tiny,
            "quick": quick,
            "timed_steps": st.steps,
            "warmup_steps": st.warmup,
            "peak_flops": peak,
            "peak_flops_datasheet": table,
            "autocast": "bf16" if dev.type == "cuda" else "off (fp32)",
            "optimizer": "AdamW fused" if dev.type == "cuda" else "AdamW",
        },
        "cases": {},
    }
    print(f"[gpu] {out['settings']['device']}: peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    cases = out["cases"]
    all4 = ["gptrs eager", "gptrs compiled", "HF eager", "HF compiled"]
    cases["train_124m"] = train_case("train_124m", TINY if tiny else GPT2_124M, st, all4, peak)
    for name, preset, batch, who in (
        ("train_default", "default", None, ["gptrs eager", "gptrs compiled"]),
        ("train_large", "large", 8, ["gptrs eager"]),
    ):
        try:
            s, build = preset_shape(preset, batch, st)
            cases[name] = train_case(name, s, st, who, peak, build)
        except Exception as e:
            cases[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    for batch in (1, 8):
        try:
            cases[f"generate_b{batch}"] = generation_case(batch, st)
        except Exception as e:
            cases[f"generate_b{batch}"] = {
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        _reset_memory(dev)
    out["goals"] = goals(cases)
    out["chart"] = str(_chart(out, quick or tiny))
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def _get(cases: dict[str, Any], case: str, who: str, key: str) -> float | None:
    v = cases.get(case, {}).get("results", {}).get(who, {}).get(key)
    return v if isinstance(v, (int, float)) else None


def goals(cases: dict[str, Any]) -> dict[str, bool]:
    """The issue's goals, for the figures this run has (a missing figure counts as missed)."""
    tok = {w: _get(cases, "train_124m", w, "tokens_per_s") for w in ("gptrs eager", "gptrs compiled")}
    hf = [_get(cases, "train_124m", w, "tokens_per_s") for w in ("HF eager", "HF compiled")]
    best_ours = max((v for v in tok.values() if v), default=0.0)
    best_hf = max((v for v in hf if v), default=math.inf)
    mem_ours = _get(cases, "train_124m", "gptrs compiled", "peak_memory_gb")
    mem_hf = [
        v for v in (_get(cases, "train_124m", w, "peak_memory_gb") for w in ("HF eager", "HF compiled")) if v
    ]
    gen = _get(cases, "generate_b1", "gptrs static+graph", "new_tokens_per_s") or 0.0
    gen_c = _get(cases, "generate_b1", "gptrs static+graph+compile", "new_tokens_per_s") or 0.0
    gen_hf = _get(cases, "generate_b1", "HF generate", "new_tokens_per_s") or math.inf
    b1 = cases.get("generate_b1", {}).get("results", {}).get("gptrs static+graph", {})
    return {
        "124M step >= 1.2x the better HF": best_ours >= 1.2 * best_hf,
        "124M compiled MFU >= 0.55": (_get(cases, "train_124m", "gptrs compiled", "mfu") or 0.0) >= 0.55,
        "124M peak memory <= 0.6x HF": mem_ours is not None
        and bool(mem_hf)
        and mem_ours <= 0.6 * min(mem_hf),
        "generation b1 >= 2500 new tok/s": max(gen, gen_c) >= 2500,
        "generation b1 >= 5x HF": max(gen, gen_c) >= 5 * gen_hf,
        "generation b1 greedy == eager": bool(b1.get("tokens_equal_gptrs_eager")),
    }


def _chart(out: dict[str, Any], quick: bool) -> Path | None:
    groups: list[str] = []
    names = ["gptrs eager", "gptrs compiled", "HF eager", "HF compiled"]
    series: dict[str, list[float]] = {n: [] for n in names}
    for case in ("train_124m", "train_default", "train_large"):
        if "results" not in out["cases"].get(case, {}):
            continue
        groups.append(case.removeprefix("train_"))
        for n in names:
            series[n].append(_get(out["cases"], case, n, "tokens_per_s") or math.nan)
    if not groups:
        return None
    title = f"Training tokens/s, {out['settings']['device']} (higher is better)"
    return common.bar_chart(common.results_path("gpu", quick, ".png"), groups, series, "tokens/s", title)


def print_table(out: dict[str, Any]) -> None:
    rows = []
    for case, r in out["cases"].items():
        if "results" not in r:
            rows.append([case, "-", "-", "-", "-", r.get("error", "?")[:60]])
            continue
        for who, v in r["results"].items():
            rate = v.get("tokens_per_s", v.get("new_tokens_per_s"))
            note = v.get("error", v.get("skipped", ""))[:60]
            if "tokens_equal_gptrs_eager" in v:
                note = f"== eager: {v['tokens_equal_gptrs_eager']}" + (
                    f", == HF: {v['tokens_equal_hf']}" if "tokens_equal_hf" in v else ""
                )
            rows.append(
                [
                    case,
                    who,
                    common.fmt(rate) if rate else "-",
                    f"{v['mfu']:.2f}" if isinstance(v.get("mfu"), float) else "-",
                    f"{v['peak_memory_gb']:.1f}" if isinstance(v.get("peak_memory_gb"), float) else "-",
                    note,
                ]
            )
    common.print_table(
        ["case", "who", "tok/s (gen: new tok/s)", "MFU", "peak GB", "note"],
        rows,
        title=f"GPU suite on {out['settings']['device']} ({out.get('seconds', '?')} s)",
    )
    common.print_goals_and_chart(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer timed steps and new tokens")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: checks the script)")
    p.add_argument("--tiny", action="store_true", help="toy shapes, 1-2 steps: every case runs in seconds")
    args = p.parse_args(argv)
    out = run(args.quick, device=args.device, tiny=args.tiny)
    path = common.write_results("gpu", out, args.quick or args.tiny)
    out["json"] = str(path)
    print_table(out)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
