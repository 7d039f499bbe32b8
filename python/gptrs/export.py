"""Export a gptrs model directory to the Hugging Face ``transformers`` GPT-2 format.

    python -m gptrs.export --model-path runs/x/best --format hf --out hf_model [--tokenizer tok.json]

writes ``config.json`` + ``model.safetensors`` that ``transformers.GPT2LMHeadModel.from_pretrained`` loads
with the same logits, and the tokenizer as a Hugging Face ``tokenizer.json`` when one is given or found in
the model directory. The mapping is direct because our parameter names are GPT-2's; GPT-2 keeps its
linear layers as ``Conv1D`` with (in, out) weights, so Linear weights are transposed. A model built with
``bias=False`` is written with zero biases (the same function). Anything GPT-2 cannot express is refused
with a message naming the option. ``transformers`` is not needed to export, only to load the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from gptrs.errors import GptrsError
from gptrs.model.gpt import GPT

HF_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # ours -> GPT-2 activation_function
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which our model uses


class ExportError(GptrsError):
    """The model cannot be written in the requested format."""


def hf_gpt2_config(model: GPT, eos_token_id: int | None = None, bos_token_id: int | None = None) -> dict:
    """The GPT-2 ``config.json`` fields equivalent to the model's configuration."""
    cfg = model.config
    if cfg.activation not in HF_ACTIVATIONS:
        raise ExportError(f"model.activation {cfg.activation!r} has no GPT-2 equivalent (gelu, gelu_tanh)")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.embed_dim,
        "n_layer": cfg.num_layers,
        "n_head": cfg.heads,
        "n_inner": cfg.ff_dim,
        "activation_function": HF_ACTIVATIONS[cfg.activation],
        "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": model.pad_token_id,
        "torch_dtype": "float32",
    }


def hf_gpt2_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our tensors under GPT-2's names and layouts (Conv1D weights transposed, absent biases as zeros)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":  # tied to transformer.wte.weight; GPT-2 ties it too
            continue
        t = t.detach().float().cpu()
        out[name] = (t.t() if name.endswith(CONV1D_SUFFIXES) else t).contiguous()
    for module_name, module in model.named_modules():  # bias=False: zero biases compute the same function
        if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module_name != "lm_head":
            key = f"{module_name}.bias"
            if key not in out:
                width = (
                    module.out_features if isinstance(module, torch.nn.Linear) else module.normalized_shape[0]
                )
                out[key] = torch.zeros(width)
    return out


def _save_tokenizer(path: Path, out: Path, explicit: bool) -> tuple[int | None, int | None]:
    """Write the tokenizer's Hugging Face tokenizer.json; return its (eos, bos) ids when it knows them."""
    try:
        import gptrs_tok

        tok = gptrs_tok.Tokenizer.load(str(path))
        tok.save_hf(str(out / "tokenizer.json"))
    except GptrsError:
        raise
    except Exception as e:
        if explicit:
            raise ExportError(
                f"{path}: cannot export tokenizer ({str(e).splitlines()[0] if str(e) else e!r})"
            ) from None
        warnings.warn(f"{path}: tokenizer not exported ({e!r})", stacklevel=2)
        return None, None
    ids = []
    for attr in ("eos_token_id", "bos_token_id"):
        value = getattr(tok, attr, None)
        ids.append(value if isinstance(value, int) else None)
    return ids[0], ids[1]


def export_hf(model_path: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Export the model directory ``model_path`` to a GPT2LMHeadModel directory ``out``; return ``out``."""
    model = GPT.from_pretrained(model_path)
    out = Path(out)
    tok_path = Path(tokenizer) if tokenizer is not None else Path(model_path) / "tokenizer.json"
    if tokenizer is not None and not tok_path.is_file():
        raise ExportError(f"tokenizer file not found: {tok_path}")
    config = hf_gpt2_config(model)  # refuses what GPT-2 cannot express before anything is written
    tensors = hf_gpt2_state_dict(model)
    out.mkdir(parents=True, exist_ok=True)
    eos = bos = None
    if tok_path.is_file():
        eos, bos = _save_tokenizer(tok_path, out, explicit=tokenizer is not None)
    config = hf_gpt2_config(model, eos_token_id=eos, bos_token_id=bos)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gptrs.export", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-path", required=True, help="model directory (model.json + model.safetensors)"
    )
    parser.add_argument(
        "--format", choices=["hf"], default="hf", help="output format: hf (transformers GPT-2)"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--tokenizer", help="tokenizer file to export (default: tokenizer.json in --model-path)"
    )
    parser.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    args = parser.parse_args(argv)
    try:
        path = export_hf(args.model_path, args.out, args.tokenizer)
    except GptrsError as e:
        if args.traceback:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} (load with transformers.GPT2LMHeadModel.from_pretrained({str(path)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
