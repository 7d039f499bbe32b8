"""The GPT model, its attention, KV cache, generation and serialization, and its device kernels.

Imports go one way: ``gpt`` uses ``attention``, ``generation``, ``serialization``, ``kv_cache`` and
``kernels``; none of them imports ``gpt``.
"""

from gptrs.model.attention import CausalSelfAttention
from gptrs.model.generation import SamplingParams, generate, generate_stream, sample_next_token
from gptrs.model.gpt import GPT, MLP, Block, maybe_compile
from gptrs.model.kernels import Linear, causal_attention, lm_head_loss
from gptrs.model.kv_cache import KVCache
from gptrs.model.serialization import load_pretrained, read_model_json, save_pretrained

__all__ = [
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "Linear",
    "SamplingParams",
    "causal_attention",
    "generate",
    "generate_stream",
    "lm_head_loss",
    "load_pretrained",
    "maybe_compile",
    "read_model_json",
    "sample_next_token",
    "save_pretrained",
]
