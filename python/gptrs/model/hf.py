"""The model in ``transformers``' terms: ``GPT2LMHeadModel`` or ``NanoChatForCausalLM``, picked by the switches.

- **GPT-2** (``positions: learned``): our parameter names are GPT-2's; GPT-2 keeps its linear layers as
  ``Conv1D`` with (in, out) weights, so Linear weights are transposed, and a model built with ``bias: false``
  is written with zero biases (the same function). GPT-2 has LayerNorm, GELU, a tied head, one key/value head
  per query head, no QK-norm, no embedding norm and no logit cap.
- **NanoChat** (``positions: rotary``): embedding -> parameter-free RMSNorm (eps 1e-6) -> blocks (RoPE with
  the half-split ``rotate_half`` convention, then QK RMSNorm; ReLU^2 MLP ``fc1``/``fc2``) -> RMSNorm -> LM head
  -> ``cap * tanh(logits / cap)``; no biases. Our fused ``c_attn`` is split into ``q_proj``/``k_proj``/
  ``v_proj``; a tied head is written as its own copy (the same function). Within the context the two agree;
  past it ours slides a window (each token sees the last ``max_seq_len``) while NanoChat attends to all.

A combination neither class computes is refused by :func:`target` with one line naming the switch. The
export CLI (``gptrs/export.py``) writes :func:`hf_config` as ``config.json`` and :func:`hf_state_dict` as
``model.safetensors``; ``transformers`` is needed only to load the result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from gptrs.config import ModelConfig
from gptrs.errors import GptrsError
from gptrs.model.attention import RMS_EPS, CausalSelfAttention

if TYPE_CHECKING:
    from gptrs.model.gpt import GPT


class ExportError(GptrsError):
    """The model cannot be written in the requested format."""


GPT2_ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new"}  # ours -> GPT-2's activation_function
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which our model uses

# The speedrun switches (docs/speedrun.md): neither class has them.
_SPEEDRUN: dict[str, tuple[Any, str]] = {
    "value_embeds": (lambda v: not v, "0"),
    "skip_connections": (lambda v: not v, "false"),
    "x0_mix": (lambda v: not v, "false"),
    "bigram_buckets": (lambda v: not v, "0"),
    "window_pattern": (lambda v: "S" not in v.upper(), "no 'S' (one window for every layer)"),
}
# What each class can express: switch -> (test on the resolved value, what the class needs). The target is
# chosen by model.positions; any other switch that fails its test is refused by name.
_NEEDS: dict[str, dict[str, tuple[Any, str]]] = {
    "gpt2": {
        "norm": (lambda v: v == "layernorm", "'layernorm'"),
        "embed_norm": (lambda v: not v, "false"),
        "qk_norm": (lambda v: not v, "false"),
        "activation": (lambda v: v in GPT2_ACTIVATIONS, "'gelu' or 'gelu_tanh'"),
        "tie_embeddings": (lambda v: v, "true"),
        "logit_softcap": (lambda v: not v, "0"),
        **_SPEEDRUN,
    },
    "nanochat": {
        "norm": (lambda v: v == "rmsnorm", "'rmsnorm'"),
        "embed_norm": (lambda v: v, "true"),
        "qk_norm": (lambda v: v, "true"),
        "activation": (lambda v: v == "relu2", "'relu2'"),
        "bias": (lambda v: not v, "false"),
        **_SPEEDRUN,
    },
}
_CLASS = {"gpt2": "GPT2LMHeadModel", "nanochat": "NanoChatForCausalLM"}


def target(cfg: ModelConfig) -> str:
    """'gpt2' or 'nanochat': the transformers class that computes what ``cfg`` (resolved) describes;
    ExportError naming the first switch that neither can express."""
    kind = "gpt2" if cfg.positions == "learned" else "nanochat"
    if kind == "gpt2" and cfg.kv_heads != cfg.heads:
        raise ExportError(
            f"model.kv_heads={cfg.kv_heads} cannot be exported: GPT2LMHeadModel has one key/value head per "
            f"query head, and NanoChatForCausalLM needs model.positions 'rotary' (it is 'learned')"
        )
    for key, (ok, need) in _NEEDS[kind].items():
        value = getattr(cfg, key)
        if not ok(value):
            other = "NanoChatForCausalLM needs model.positions 'rotary'" if kind == "gpt2" else (
                "GPT2LMHeadModel needs model.positions 'learned'")  # fmt: skip
            raise ExportError(
                f"model.{key}={value!r} cannot be exported: {_CLASS[kind]} needs {need} "
                f"(model.positions is {cfg.positions!r}; {other})"
            )
    return kind


def hf_config(
    model: GPT, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """The ``config.json`` of the equivalent transformers model."""
    cfg = model.config
    ids = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": model.pad_token_id}
    if target(cfg) == "gpt2":
        assert cfg.activation is not None
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
            "activation_function": GPT2_ACTIVATIONS[cfg.activation],
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
            **ids,
            "torch_dtype": "float32",
        }
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": "nanochat",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.ff_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.heads,
        "num_key_value_heads": cfg.kv_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "hidden_act": "relu2",
        "attention_dropout": 0.0,
        "attention_bias": False,
        "rms_norm_eps": RMS_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "final_logit_softcapping": cfg.logit_softcap or None,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        **ids,
        "torch_dtype": "float32",
    }


_NANOCHAT_NAMES = {"attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our tensors under the transformers class's names and layouts, fp32, contiguous, on the CPU."""
    kind = target(model.config)
    state = {n: t.detach().float().cpu() for n, t in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    if kind == "gpt2":
        for name, t in state.items():
            if name != "lm_head.weight":  # tied to transformer.wte.weight; GPT-2 ties it too
                out[name] = (t.t() if name.endswith(CONV1D_SUFFIXES) else t).contiguous()
        for module_name, module in model.named_modules():  # bias=False: zero biases compute the same function
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)) and module_name != "lm_head":
                key = f"{module_name}.bias"
                if key not in out:
                    width = (
                        module.out_features
                        if isinstance(module, torch.nn.Linear)
                        else module.normalized_shape[0]
                    )
                    out[key] = torch.zeros(width)
        return out
    for name, t in state.items():
        if name in ("lm_head.weight", "transformer.wte.weight"):
            out["lm_head.weight" if name == "lm_head.weight" else "model.embed_tokens.weight"] = (
                t.contiguous()
            )
            continue
        index, rest = name.removeprefix("transformer.h.").split(".", 1)
        module, leaf = rest.rsplit(".", 1)
        prefix = f"model.layers.{index}."
        if module == "attn.c_attn":
            attn = model.get_submodule(f"transformer.h.{index}.attn")
            assert isinstance(attn, CausalSelfAttention)
            for part, w in zip(("q_proj", "k_proj", "v_proj"), t.split(attn.qkv_split), strict=True):
                out[f"{prefix}self_attn.{part}.{leaf}"] = w.contiguous()
        else:
            out[f"{prefix}{_NANOCHAT_NAMES[module]}.{leaf}"] = t.contiguous()
    out.setdefault("lm_head.weight", out["model.embed_tokens.weight"].clone())  # a tied head, written out
    return out
