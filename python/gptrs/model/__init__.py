"""The GPT model, its attention, KV cache, loss, generation and serialization."""

from gptrs.model.attention import CausalSelfAttention
from gptrs.model.generation import generate, generate_stream, sample_next_token
from gptrs.model.gpt import GPT, MLP, Block, maybe_compile
from gptrs.model.kv_cache import KVCache
from gptrs.model.loss import lm_head_cross_entropy
from gptrs.model.serialization import load_pretrained, read_model_json, save_pretrained

__all__ = [
    "GPT",
    "MLP",
    "Block",
    "CausalSelfAttention",
    "KVCache",
    "generate",
    "generate_stream",
    "lm_head_cross_entropy",
    "load_pretrained",
    "maybe_compile",
    "read_model_json",
    "sample_next_token",
    "save_pretrained",
]
