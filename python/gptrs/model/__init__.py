"""The two model families (GPT-2 in ``gpt``, nanochat in ``nanochat``), their attention, KV caches,
generation and serialization, their device kernels, and the factory that picks a family by ``model.arch``.

Imports go one way: ``gpt`` uses ``attention``, ``generation``, ``serialization``, ``kv_cache`` and
``kernels``; none of them imports ``gpt``. ``nanochat`` uses ``rotary``, ``sliding_cache``,
``sliding_generation``, ``serialization`` and ``kernels``. Only this file knows both families.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from gptrs.config import Config, ModelConfig
from gptrs.errors import ConfigError
from gptrs.model.attention import CausalSelfAttention
from gptrs.model.generation import SamplingParams, generate, generate_stream, sample_next_token
from gptrs.model.gpt import GPT, MLP, Block
from gptrs.model.kernels import Linear, causal_attention, lm_head_loss
from gptrs.model.kv_cache import KVCache
from gptrs.model.nanochat import NanoChat
from gptrs.model.serialization import load_pretrained, read_model_json, save_pretrained

FAMILIES: dict[str, type[GPT] | type[NanoChat]] = {"gpt2": GPT, "nanochat": NanoChat}


def build_model(
    cfg: Config | ModelConfig, *, vocab_size: int | None = None, pad_token_id: int | None = None
) -> GPT | NanoChat:
    """The model ``model.arch`` names (``GPT`` or ``NanoChat``), built by its ``from_config``: embedding
    rows from ``model.vocab_size`` when set, else ``vocab_size`` (the tokenizer's)."""
    mc = cfg.model if isinstance(cfg, Config) else cfg
    family = FAMILIES.get(mc.arch)
    if family is None:
        raise ConfigError(f"model.arch must be one of {', '.join(FAMILIES)}, got {mc.arch!r}")
    return family.from_config(mc, vocab_size=vocab_size, pad_token_id=pad_token_id)


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GPT | NanoChat:
    """Load a model directory (``save_pretrained``, a checkpoint) of either family: ``model.json`` records
    ``arch`` (absent: gpt2, as every model written before there was a second family)."""

    def build(cfg: ModelConfig, pad_token_id: int | None) -> nn.Module:
        return build_model(cfg, pad_token_id=pad_token_id)

    return load_pretrained(directory, build, map_location)  # type: ignore[return-value]


__all__ = [
    "FAMILIES",
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "Linear",
    "NanoChat",
    "SamplingParams",
    "build_model",
    "causal_attention",
    "generate",
    "generate_stream",
    "lm_head_loss",
    "load_model",
    "load_pretrained",
    "read_model_json",
    "sample_next_token",
    "save_pretrained",
]
