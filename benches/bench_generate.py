"""Generation benchmark: our KV-cache decoding against Hugging Face ``generate``, and int8 inference.

Batch 1, a 16-token prompt, 256 new tokens, greedy, on the first two training shapes (4/4/128 vocab 4096 and
6/6/384 vocab 8192; the context is 16 + 256 = 272 positions so that neither model has to slide its window).
Both sides hold the *same weights*: the HF ``GPT2LMHeadModel`` (``attn_implementation="sdpa"``, exact GELU)
is loaded from ours (Conv1D weights transposed), so their greedy tokens can be compared too.

- The first shape is trained for a few hundred steps on the built-in stdlib corpus (tokenizer and batches
  from ``gptrs.data.prepare_data``) so its text and perplexity mean something; the second keeps its random
  initialisation (decoding speed does not depend on the weights; EOS is never passed, so every run makes
  256 tokens).
- Each dtype (fp32, and bf16 weights) is timed separately; ours and HF's ``generate`` (its default dynamic
  KV cache, ``do_sample=False``) are alternated run by run; medians of new tokens per second.
- Checks: our cached greedy output equals our recompute path (``use_cache=False``), token for token.
- int8: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers (what ``gptrs.generate --quantize
  int8`` does): decoding speed, and validation perplexity (fp32 vs int8) of the trained model on held-out
  windows.

- Floors (fp32, :func:`decode_floor`): the decode step's matmuls alone with the real weights (the bytes a
  step must read), and our loop on the same architecture at width 12 (the per-op launch cost alone). Their
  sum is roughly our per-token time; the first bounds what any fp32 decoding loop can reach.

Goal: ours >= 2x HF ``generate`` new tokens/s on both shapes.

    python -m benches generate [--quick]
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benches import common
from gptrs.config import Config
from gptrs.host_memory import tune_host_allocator
from gptrs.model import GPT
from gptrs.model.kernels import as_plain_linears

GOAL = 2.0


@dataclass(frozen=True)
class Shape:
    layers: int
    heads: int
    embed: int
    vocab: int
    train_steps: int  # 0: random weights

    @property
    def label(self) -> str:
        return f"{self.layers}/{self.heads}/{self.embed}/V{self.vocab}"


SHAPES = [Shape(4, 4, 128, 4096, train_steps=300), Shape(6, 6, 384, 8192, train_steps=0)]
QUICK_SHAPES = [Shape(2, 2, 64, 512, train_steps=10)]
PROMPT, NEW = 16, 256
QUICK_PROMPT, QUICK_NEW = 8, 24


# ----------------------------------------------------------------------------------------------- models


def _data(vocab: int, seq_len: int, batch: int, run_dir: str, quick: bool, steps: int) -> tuple[Config, Any]:
    """The small preset's recipe for ``steps`` steps at this shape, and its data (``gptrs.data.prepare_data``)."""
    from gptrs.data import prepare_data

    cfg = Config()
    cfg.tokenizer.vocab_size = vocab
    cfg.model.max_seq_len = seq_len
    t = cfg.training
    t.batch_size, t.max_steps, t.warmup_steps = batch, steps, max(1, steps // 10)
    t.sample_tokens, t.peak_flops, t.log_interval = 0, 1e12, steps  # no sample, no peak timing
    if quick:
        cfg.data.num_training_samples = 200
        cfg.data.max_eval_tokens = 4 * batch * seq_len
    return cfg, prepare_data(cfg, run_dir, progress=False)


def train_briefly(model: GPT, cfg: Config, data: Any, steps: int) -> dict[str, Any]:
    """A few hundred steps of the small preset's recipe through the ``Trainer`` (bf16 autocast where the CPU
    has native bf16, else fp32; fused AdamW, warmup + cosine, clipping). Emulated bf16 took 20+ minutes."""
    from gptrs.training import Trainer

    result = Trainer(model, data.tokenizer, cfg, "cpu", log_level="WARNING").train(data.train)
    model.eval()
    return {"steps": result["step"], "seconds": result["train_s"], "final_train_loss": result["train_loss"]}


def hf_from_ours(model: GPT) -> nn.Module:
    """The HF GPT-2 with our weights (GPT-2's Conv1D stores Linear weights transposed)."""
    c = model.config
    hf = common.hf_gpt2(
        c.vocab_size or 0, c.max_seq_len, c.embed_dim, c.num_layers, c.heads, c.ff_dim,
        bos_token_id=None, eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    state = {k: (v.t() if k.endswith(conv1d) else v) for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"]  # buffers, tied
    assert not missing and not unexpected, (missing, unexpected)
    return hf.eval()


def quantize_int8(model: GPT) -> nn.Module:
    with warnings.catch_warnings():  # torch points at torchao for new code; the API still works
        warnings.simplefilter("ignore")
        plain = as_plain_linears(copy.deepcopy(model))  # quantize_dynamic matches nn.Linear by exact type
        return torch.ao.quantization.quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8)


@torch.no_grad()
def perplexity(model: nn.Module, val: Any, max_batches: int) -> float:
    """exp(mean cross-entropy) over the fixed validation windows, from the logits (works for int8 too)."""
    total, count = 0.0, 0
    for i, (x, y) in enumerate(val):
        if i >= max_batches:
            break
        logits, _ = model(x)
        total += float(F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return math.exp(total / max(count, 1))


# ----------------------------------------------------------------------------------------------- timing


def _gen_ours(model: nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    return model.generate(prompt, new, temperature=0.0)  # type: ignore[operator]


@torch.no_grad()
def _gen_hf(hf: nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    return hf.generate(  # type: ignore[operator]
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=0,
    )


def decode_floor(model: GPT, prompt: torch.Tensor, new: int) -> dict[str, float]:
    """The two parts of a decoding step, each measured alone (fp32, batch 1).

    - ``matmul_only_tokens_per_s``: every Linear of one step (each block's four, then the LM head), with the
      model's own weights, on a one-row input, back to back and nothing else: reading the weights is the
      work a step cannot avoid. No decoding loop can beat it without fewer bytes (bf16, int8).
    - ``overhead_only_tokens_per_s``: our ``generate`` on the same architecture shrunk to width 12 and
      vocabulary 16, where the math is negligible: the per-token cost of launching the step's ops.
    """
    d = model.config.embed_dim
    linears = [m for blk in model.transformer.h for m in blk.modules() if isinstance(m, nn.Linear)]
    head = model.lm_head.weight
    x = torch.randn(1, d)
    xs = {m.in_features: torch.randn(1, m.in_features) for m in linears}

    def one_step() -> None:
        for m in linears:
            F.linear(xs[m.in_features], m.weight, m.bias)
        F.linear(x, head)

    with torch.no_grad():
        for _ in range(8):
            one_step()
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(new):
                one_step()
            best = min(best, time.perf_counter() - t0)
    cfg = model.config
    tiny = GPT(16, 2 * cfg.heads, 8 * cfg.heads, cfg.num_layers, cfg.heads, cfg.max_seq_len, None).eval()
    tiny_prompt = prompt.remainder(16)
    _gen_ours(tiny, tiny_prompt, new)
    t_tiny = min(common.alternate({"tiny": lambda: _gen_ours(tiny, tiny_prompt, new)}, 3)["tiny"])
    return {"matmul_only_tokens_per_s": new / best, "overhead_only_tokens_per_s": new / t_tiny}


def bench_shape(s: Shape, quick: bool, rounds: int, tmp: str) -> dict[str, Any]:
    prompt_len, new = (QUICK_PROMPT, QUICK_NEW) if quick else (PROMPT, NEW)
    ctx = prompt_len + new
    torch.manual_seed(0)
    model = GPT(s.vocab, s.embed, 4 * s.embed, s.layers, s.heads, ctx, None)
    res: dict[str, Any] = {"shape": s.label, "prompt_tokens": prompt_len, "new_tokens": new, "context": ctx}
    data = None
    if s.train_steps:
        run_dir = f"{tmp}/{s.label.replace('/', '_')}"
        cfg, data = _data(s.vocab, ctx, 16 if not quick else 4, run_dir, quick, s.train_steps)
        res["training"] = train_briefly(model, cfg, data, s.train_steps)
        val_ids = next(iter(data.val))[0][0, :prompt_len]
        prompt = val_ids[None].clone()  # a real prompt from held-out text
        res["weights"] = f"trained {s.train_steps} steps on the stdlib corpus"
    else:
        prompt = torch.randint(0, s.vocab, (1, prompt_len), generator=torch.Generator().manual_seed(1))
        res["weights"] = "random initialisation"
    model.eval()
    hf = hf_from_ours(model)

    # Correctness: cached greedy == recompute greedy (fp32), and HF's greedy tokens for information.
    ours_tokens = _gen_ours(model, prompt, new)
    recompute = model.generate(prompt, new, temperature=0.0, use_cache=False)
    hf_tokens = _gen_hf(hf, prompt, new)
    res["cache_equals_recompute"] = bool(torch.equal(ours_tokens, recompute))
    res["tokens_equal_hf"] = bool(torch.equal(ours_tokens, hf_tokens))
    res["tokens_differing_from_hf"] = (
        int((ours_tokens != hf_tokens).sum()) if ours_tokens.shape == hf_tokens.shape else None
    )

    res["dtypes"] = {}
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        h = hf if dtype == torch.float32 else copy.deepcopy(hf).to(dtype)
        fns = {"ours": lambda m=m: _gen_ours(m, prompt, new), "hf": lambda h=h: _gen_hf(h, prompt, new)}
        if dtype == torch.float32:
            q = quantize_int8(model)
            fns["ours_int8"] = lambda q=q: _gen_ours(q, prompt, new)
        for fn in fns.values():
            fn()  # warm-up
        times = common.alternate(fns, rounds)
        d: dict[str, Any] = {
            name: {"new_tokens_per_s": new / common.median(ts)} for name, ts in times.items()
        }
        d["speedup_vs_hf"] = common.paired_ratio(times["hf"], times["ours"])
        if "ours_int8" in times:
            d["int8_speedup_vs_fp32"] = common.paired_ratio(times["ours"], times["ours_int8"])
        if dtype != torch.float32:
            d["greedy_equals_fp32"] = bool(torch.equal(_gen_ours(m, prompt, new), ours_tokens))
        res["dtypes"][dtype_name] = d

    if data is not None:
        n_val = 2 if quick else 16
        ppl = perplexity(model, data.val, n_val)
        ppl_q = perplexity(quantize_int8(model), data.val, n_val)
        res["perplexity"] = {
            "val_windows": n_val,
            "fp32": ppl,
            "int8": ppl_q,
            "change_pct": 100 * (ppl_q / ppl - 1),
            "unigram": math.exp(data.stats["unigram_loss"]),
        }
        res["sample"] = data.tokenizer.decode(ours_tokens[0].tolist())[:400]
    floor = decode_floor(model, prompt, new)
    hf32 = res["dtypes"]["fp32"]["hf"]["new_tokens_per_s"]
    # the most a loop with zero per-op cost could reach over HF, at this dtype
    floor["max_speedup_vs_hf_fp32"] = floor["matmul_only_tokens_per_s"] / hf32
    res["decode_floor_fp32"] = floor
    best = max(res["dtypes"].values(), key=lambda d: d["ours"]["new_tokens_per_s"])
    res["ours_best_new_tokens_per_s"] = best["ours"]["new_tokens_per_s"]
    res["hf_best_new_tokens_per_s"] = max(d["hf"]["new_tokens_per_s"] for d in res["dtypes"].values())
    res["speedup_best_vs_best"] = res["ours_best_new_tokens_per_s"] / res["hf_best_new_tokens_per_s"]
    return res


def run(quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    logging.getLogger("gptrs").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="transformers")
    rounds = rounds or (1 if quick else 5)
    out: dict[str, Any] = {
        "settings": {
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "batch": 1,
            "greedy": True,
            "hf_cache": "DynamicCache (generate's default)",
            # process-wide, as gptrs.generate sets it: the peer, in the same process, gets it too
            "host_allocator_tuned": tune_host_allocator(),
        },
        "shapes": [],
    }
    with tempfile.TemporaryDirectory(prefix="gptrs-bench-gen-") as tmp:
        for s in QUICK_SHAPES if quick else SHAPES:
            r = bench_shape(s, quick, rounds, tmp)
            out["shapes"].append(r)
            print(
                f"[generate] {s.label}: x{r['dtypes']['fp32']['speedup_vs_hf']:.2f} vs HF (fp32)", flush=True
            )
    goals = {}
    if not quick:
        for r in out["shapes"]:
            # the reference figures are fp32; bf16 weights are reported beside it
            goals[f"{r['shape']}: >= {GOAL}x HF (fp32)"] = r["dtypes"]["fp32"]["speedup_vs_hf"] >= GOAL
            goals[f"{r['shape']}: cache == recompute"] = r["cache_equals_recompute"]
    out["goals"] = goals
    out["chart"] = str(_chart(out, quick))
    return out


def _chart(out: dict[str, Any], quick: bool) -> Path | None:
    groups: list[str] = []
    series: dict[str, list[float]] = {"HF generate": [], "gptrs": [], "gptrs int8": []}
    for r in out["shapes"]:
        for dt, d in r["dtypes"].items():
            groups.append(f"{r['shape']} {dt}")
            series["HF generate"].append(d["hf"]["new_tokens_per_s"])
            series["gptrs"].append(d["ours"]["new_tokens_per_s"])
            series["gptrs int8"].append(d["ours_int8"]["new_tokens_per_s"] if "ours_int8" in d else math.nan)
    title = f"Greedy decoding, batch 1, new tokens/s, {out['settings']['threads']} threads (higher is better)"
    return common.bar_chart(
        common.results_path("generate", quick, ".png"), groups, series, "new tokens/s", title
    )


def print_table(out: dict[str, Any]) -> None:
    rows = []
    for r in out["shapes"]:
        for dt, d in r["dtypes"].items():
            rows.append(
                [
                    f"{r['shape']} {dt}",
                    round(d["hf"]["new_tokens_per_s"]),
                    round(d["ours"]["new_tokens_per_s"]),
                    f"{d['speedup_vs_hf']:.2f}x",
                    round(d["ours_int8"]["new_tokens_per_s"]) if "ours_int8" in d else "-",
                    f"{d['int8_speedup_vs_fp32']:.2f}x" if "int8_speedup_vs_fp32" in d else "-",
                ]
            )
    common.print_table(
        ["shape, dtype", "HF new tok/s", "gptrs new tok/s", "gptrs/HF", "gptrs int8", "int8/fp32"],
        rows,
        title=f"greedy generation, batch 1, {out['shapes'][0]['prompt_tokens']}-token prompt, "
        f"{out['shapes'][0]['new_tokens']} new tokens, {out['settings']['threads']} threads",
    )
    for r in out["shapes"]:
        line = (
            f"  {r['shape']} ({r['weights']}): cache == recompute: {r['cache_equals_recompute']}; "
            f"same tokens as HF: {r['tokens_equal_hf']}"
        )
        if "perplexity" in r:
            p = r["perplexity"]
            line += (
                f"; val perplexity fp32 {p['fp32']:.2f} -> int8 {p['int8']:.2f} ({p['change_pct']:+.2f}%), "
                f"unigram {p['unigram']:.1f}"
            )
        print(line)
        fl = r["decode_floor_fp32"]
        print(
            f"  {r['shape']} fp32 floor: the step's matmuls alone {fl['matmul_only_tokens_per_s']:.0f} tok/s "
            f"(at most {fl['max_speedup_vs_hf_fp32']:.2f}x HF with zero per-op cost); "
            f"per-op cost alone (width 12) {fl['overhead_only_tokens_per_s']:.0f} tok/s"
        )
    common.print_goals_and_chart(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int)
    p.add_argument("--threads", type=int, default=common.physical_cores())
    args = p.parse_args()
    with common.torch_threads(args.threads):
        out = run(args.quick, args.rounds)
    path = common.write_results("generate", out, args.quick)
    print_table(out)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
