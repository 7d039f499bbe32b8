"""The modern family in ``transformers``' terms: ``NanoChatConfig`` fields and ``NanoChatForCausalLM`` weights.

``transformers``' NanoChat computes the same function as ``nanochat.py``: embedding -> parameter-free
RMSNorm (eps 1e-6) -> blocks (RoPE with the half-split ``rotate_half`` convention, then QK RMSNorm; ReLU^2
MLP ``fc1``/``fc2`` without bias) -> RMSNorm -> untied ``lm_head`` -> ``cap * tanh(logits / cap)``. The
mapping is one rename per tensor, no transposes (both sides use ``nn.Linear``).

NanoChat has no biases, no learned norm weights, no learned position table and only the ReLU^2 activation
in our sense; :func:`refuse_inexpressible` names any configured option that would need one of them. Within the context (up to ``max_seq_len`` tokens) the two agree; past
it ours slides a window (each token sees the last ``max_seq_len``) while NanoChatConfig has no sliding
window and attends to everything. The
export CLI writes :func:`nanochat_hf_config` as ``config.json`` and :func:`nanochat_hf_state_dict` as
``model.safetensors``; ``transformers`` is needed only to load the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gptrs.errors import ConfigError
from gptrs.model.nanochat import RMS_EPS, NanoChat

# gptrs option -> the only value NanoChatForCausalLM can express, and why (for the refusal message)
EXPRESSIBLE: dict[str, tuple[Any, str]] = {
    "bias": (False, "NanoChat's linear layers have no biases"),
    "activation": ("relu2", "NanoChat's feed-forward is ReLU^2"),
    "tie_embeddings": (False, "NanoChat keeps the LM head apart from the token embedding"),
    "norm": ("rmsnorm", "NanoChat's norms are parameter-free RMSNorm"),
    "position_embedding": ("rope", "NanoChat has rotary positions, no learned position table"),
}

_RENAMES = {
    "attn.c_q": "self_attn.q_proj",
    "attn.c_k": "self_attn.k_proj",
    "attn.c_v": "self_attn.v_proj",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def refuse_inexpressible(options: Mapping[str, Any]) -> None:
    """Raise ``ConfigError`` naming the first ``model.<option>`` in ``options`` that NanoChat cannot express
    (options not listed in ``EXPRESSIBLE`` pass through)."""
    for name, value in options.items():
        if name in EXPRESSIBLE and value != EXPRESSIBLE[name][0]:
            want, why = EXPRESSIBLE[name]
            raise ConfigError(
                f"model.{name}={value!r} cannot be expressed as NanoChatForCausalLM ({why}; it needs {want!r})"
            )


def nanochat_hf_config(
    model: NanoChat, *, bos_token_id: int | None = None, eos_token_id: int | None = None
) -> dict[str, Any]:
    """The ``config.json`` of the equivalent ``NanoChatForCausalLM``."""
    a = model.arch
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": "nanochat",
        "vocab_size": a.vocab_size,
        "hidden_size": a.embed_dim,
        "intermediate_size": a.ff_dim,
        "num_hidden_layers": a.num_layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "max_position_embeddings": a.max_seq_len,
        "hidden_act": "relu2",
        "attention_dropout": 0.0,
        "attention_bias": False,
        "rms_norm_eps": RMS_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": a.rope_theta},
        "final_logit_softcapping": a.logit_softcap,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": model.pad_token_id,
        "torch_dtype": "float32",
    }


def hf_name(name: str) -> str:
    """Our parameter name -> NanoChatForCausalLM's (``transformer.h.0.attn.c_q.weight`` ->
    ``model.layers.0.self_attn.q_proj.weight``)."""
    if name == "lm_head.weight":
        return name
    if name == "transformer.wte.weight":
        return "model.embed_tokens.weight"
    prefix = "transformer.h."
    if not name.startswith(prefix):
        raise ValueError(f"no NanoChat name for parameter {name!r}")
    index, rest = name[len(prefix) :].split(".", 1)
    module, leaf = rest.rsplit(".", 1)
    if module not in _RENAMES:
        raise ValueError(f"no NanoChat name for parameter {name!r}")
    return f"model.layers.{index}.{_RENAMES[module]}.{leaf}"


def nanochat_hf_state_dict(model: NanoChat) -> dict[str, torch.Tensor]:
    """Our tensors under NanoChatForCausalLM's names, fp32, contiguous, on the CPU (safetensors-ready)."""
    return {hf_name(n): t.detach().float().cpu().contiguous() for n, t in model.state_dict().items()}
