"""The model: one ``GPT`` whose architecture is a few switches (``gpt.py``), its attention, KV cache,
decoding loop, save/load and Hugging Face mapping, its device kernels, and the loader.

Imports go one way: ``gpt`` uses ``attention``, ``kv_cache``, ``rotary``, ``generation``, ``serialization``
and ``kernels``; none of them imports ``gpt`` (``generation``, ``static_decode`` and ``hf`` name it for type
checking only).
"""

from __future__ import annotations

import os

import torch

from gptrs.config import Config, ModelConfig
from gptrs.model.attention import CausalSelfAttention
from gptrs.model.generation import SamplingParams, generate, generate_stream, sample_next_token
from gptrs.model.gpt import GPT, MLP, Block, NanoChat
from gptrs.model.kernels import Linear, causal_attention, lm_head_loss
from gptrs.model.kv_cache import KVCache
from gptrs.model.serialization import load_pretrained, read_model_json, save_pretrained


def build_model(
    cfg: Config | ModelConfig, *, vocab_size: int | None = None, pad_token_id: int | None = None
) -> GPT:
    """The model a config describes (``GPT.from_config``): embedding rows from ``model.vocab_size`` when set,
    else ``vocab_size`` (the tokenizer's)."""
    return GPT.from_config(cfg, vocab_size=vocab_size, pad_token_id=pad_token_id)


def load_model(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GPT:
    """Load a model directory (``save_pretrained``, a checkpoint), whatever its switches or format version."""
    return GPT.from_pretrained(directory, map_location)


__all__ = [
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
