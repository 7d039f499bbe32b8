"""The modern model family: nanochat's architecture (``model.arch: nanochat``), in one readable file.

    tokens -> token embedding -> RMSNorm
           -> num_layers x Block(x + attn(norm(x)); x + mlp(norm(x)))
           -> RMSNorm -> LM head (its own weights) -> cap * tanh(logits / cap)

What differs from the GPT-2 model in ``gpt.py``:

- rotary position embeddings (``rotary.py``) instead of a learned position table; queries and keys are
  rotated, then RMS-normalised (QK-norm), which keeps the attention logits bounded;
- RMSNorm without learned parameters everywhere, also right after the token embedding;
- a ReLU^2 feed-forward (``relu(x)^2``), no biases anywhere, untied input and output embeddings;
- the final logits soft-capped by ``cap * tanh(logits / cap)``;
- nanochat's initialisation: Linear weights N(0, 1/fan_in * min(1, fan_out/fan_in)), embeddings N(0, 1),
  and the LM head and every projection back into the residual stream (``c_proj``) zero, so each block
  starts as the identity and the first logits are all 0;
- optional grouped-query attention (``kv_heads`` < ``heads``).

Parameter names follow nanochat (``transformer.h.0.attn.c_q.weight`` ...); ``hf_nanochat.py`` maps them to
``transformers``' ``NanoChatForCausalLM``, which computes the same function. The KV cache
(``sliding_cache.py``) keeps keys rotated by absolute position, so generation can run past ``max_seq_len``:
every token attends to itself and the ``max_seq_len - 1`` tokens before it, cached or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gptrs.config import Config, ModelConfig, check_model
from gptrs.config.schema import NANOCHAT_LOGIT_SOFTCAP, NANOCHAT_ROPE_THETA
from gptrs.errors import ConfigError
from gptrs.model import serialization, sliding_generation
from gptrs.model.generation import SamplingParams
from gptrs.model.kernels.block_causal import block_causal_attention
from gptrs.model.kernels.loss import IGNORE_INDEX, lm_head_loss
from gptrs.model.kernels.softcap_loss import lm_head_softcap_cross_entropy, softcap
from gptrs.model.rotary import RotaryTables, apply_rotary
from gptrs.model.sliding_cache import SlidingKVCache, window_mask

RMS_EPS = 1e-6  # transformers' NanoChatConfig.rms_norm_eps default, so exported models compute the same


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a learned scale: x / sqrt(mean(x^2) + eps) over the last dimension."""
    return F.rms_norm(x, (x.size(-1),), eps=RMS_EPS)


class Attention(nn.Module):
    """Causal self-attention with rotary positions, QK-norm and optional grouped-query attention."""

    def __init__(self, embed_dim: int, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        self.head_dim = embed_dim // heads
        self.c_q = nn.Linear(embed_dim, heads * self.head_dim, bias=False)
        self.c_k = nn.Linear(embed_dim, kv_heads * self.head_dim, bias=False)
        self.c_v = nn.Linear(embed_dim, kv_heads * self.head_dim, bias=False)
        self.c_proj = nn.Linear(heads * self.head_dim, embed_dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        kv_cache: SlidingKVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.heads, self.head_dim)
        k = self.c_k(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.c_v(x)
        cos, sin = rope
        # RoPE, then QK-norm (the order of nanochat and transformers; a rotation keeps the norm anyway)
        # (.to: under autocast the norm answers in fp32; attention runs in the projections' dtype)
        q = rms_norm(apply_rotary(q, cos, sin)).to(v.dtype)
        k = rms_norm(apply_rotary(k, cos, sin)).to(v.dtype)
        if (
            kv_cache is None
            and attn_mask is None
            and T > 1
            and self.kv_heads == self.heads
            and x.device.type == "cpu"
            and torch.is_grad_enabled()
            and x.requires_grad
        ):
            # CPU training: gptrs' block-causal kernel (attention.py), far faster backward than SDPA's
            qkv = torch.cat((q.view(B, T, C), k.view(B, T, C), v), dim=-1)
            return self.c_proj(block_causal_attention(qkv, self.heads))
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, heads, T, head_dim)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(layer_idx, k, v)
        gqa = self.kv_heads != self.heads
        if attn_mask is not None:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)
        else:  # queries are the last T keys (T == keys, or one query that sees every key)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    """Feed-forward: Linear(d -> ff) -> ReLU^2 -> Linear(ff -> d), no biases."""

    def __init__(self, embed_dim: int, ff_dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(embed_dim, ff_dim, bias=False)
        self.c_proj = nn.Linear(ff_dim, embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    """One pre-norm block: attention then MLP, each reading an RMS-normalised copy of the residual stream."""

    def __init__(self, embed_dim: int, heads: int, kv_heads: int, ff_dim: int) -> None:
        super().__init__()
        self.attn = Attention(embed_dim, heads, kv_heads)
        self.mlp = MLP(embed_dim, ff_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        attn_mask: torch.Tensor | None = None,
        kv_cache: SlidingKVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), rope, attn_mask, kv_cache, layer_idx)
        return x + self.mlp(rms_norm(x))


class Trunk(nn.Module):
    """The token embedding and the blocks (the norms have no parameters)."""

    def __init__(self, vocab_size: int, embed_dim: int, blocks: list[Block]) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, embed_dim)
        self.h = nn.ModuleList(blocks)


@dataclass(frozen=True)
class NanoChatArch:
    """The shape of a NanoChat model (what ``hf_nanochat`` maps to ``NanoChatConfig``)."""

    vocab_size: int
    embed_dim: int
    num_layers: int
    heads: int
    kv_heads: int
    max_seq_len: int
    ff_dim: int
    rope_theta: float
    logit_softcap: float | None

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.heads


def _check_args(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"model.{name} must be a positive integer, got {value!r}")


class NanoChat(serialization.Pretrained):
    """nanochat-style language model. ``model(input_ids, targets)`` returns ``(logits, loss)`` like ``GPT``."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        num_layers: int,
        heads: int,
        max_seq_len: int,
        pad_token_id: int | None = None,
        *,
        kv_heads: int | None = None,
        ff_dim: int | None = None,
        rope_theta: float = 10000.0,
        logit_softcap: float | None = 15.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        kv_heads = heads if kv_heads is None else kv_heads
        ff_dim = 4 * embed_dim if ff_dim is None else ff_dim
        _check_args(
            vocab_size=vocab_size,
            embed_dim=embed_dim,
            num_layers=num_layers,
            heads=heads,
            kv_heads=kv_heads,
            max_seq_len=max_seq_len,
            ff_dim=ff_dim,
        )
        if embed_dim % heads or (embed_dim // heads) % 2:
            raise ConfigError(
                f"model.heads ({heads}) must divide model.embed_dim ({embed_dim}) into even halves"
            )
        if heads % kv_heads:
            raise ConfigError(f"model.kv_heads ({kv_heads}) must divide model.heads ({heads})")
        if logit_softcap is not None and not logit_softcap > 0:
            raise ConfigError(f"model.logit_softcap must be > 0 or null, got {logit_softcap!r}")
        if not rope_theta > 0:
            raise ConfigError(f"model.rope_theta must be > 0, got {rope_theta!r}")
        if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:
            raise ConfigError(f"pad_token_id {pad_token_id} is outside the vocabulary (size {vocab_size})")
        self.arch = NanoChatArch(
            vocab_size=vocab_size,
            embed_dim=embed_dim,
            num_layers=num_layers,
            heads=heads,
            kv_heads=kv_heads,
            max_seq_len=max_seq_len,
            ff_dim=ff_dim,
            rope_theta=float(rope_theta),
            logit_softcap=None if logit_softcap is None else float(logit_softcap),
        )
        self.pad_token_id = pad_token_id
        self.compile_requested: bool | None = (
            None  # model.compile as configured (the trainer does the compiling)
        )
        self.max_seq_len = max_seq_len
        self.logit_softcap = self.arch.logit_softcap
        self.gradient_checkpointing = gradient_checkpointing
        # Rows of logits alive at once in the fused LM-head loss; None lets kernels.chunks pick by device
        # (small reused chunks on the CPU, a few large ones on CUDA, where ~100 tiny chunks cost launches).
        self.loss_chunk_size: int | None = None
        self.rotary = RotaryTables(embed_dim // heads, rope_theta, initial_positions=max_seq_len)

        blocks = [Block(embed_dim, heads, kv_heads, ff_dim) for _ in range(num_layers)]
        self.transformer = Trunk(vocab_size, embed_dim, blocks)
        self.lm_head = nn.Linear(embed_dim, vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanochat's initialisation (see the module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                std = min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)
                nn.init.normal_(m.weight, mean=0.0, std=std)
        nn.init.normal_(self.transformer.wte.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            assert isinstance(block, Block)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, cfg: Config | ModelConfig, *, vocab_size: int | None = None, pad_token_id: int | None = None
    ) -> NanoChat:
        """Build from a ``Config`` (its ``model`` section) or a ``ModelConfig`` with ``arch: nanochat``.

        Rows of the embedding and LM head: ``model.vocab_size`` when set, else ``vocab_size`` (the
        tokenizer's). ``rope_theta``/``logit_softcap`` null take nanochat's values; a soft cap of 0 is none.
        """
        mc = cfg.model if isinstance(cfg, Config) else cfg
        if mc.arch != "nanochat":
            raise ConfigError(
                f"model.arch is {mc.arch!r}, not 'nanochat' (gptrs.model.build_model builds either)"
            )
        vocab = mc.vocab_size if mc.vocab_size is not None else vocab_size
        if vocab is None:
            raise ConfigError("model.vocab_size is not set and no tokenizer vocabulary size was given")
        if mc.vocab_size is not None and vocab_size is not None and mc.vocab_size < vocab_size:
            raise ConfigError(
                f"model.vocab_size ({mc.vocab_size}) is smaller than the tokenizer's vocabulary ({vocab_size})"
            )
        check_model(ModelConfig(**{**mc.__dict__, "vocab_size": vocab}))
        cap = NANOCHAT_LOGIT_SOFTCAP if mc.logit_softcap is None else (mc.logit_softcap or None)
        model = cls(
            vocab,
            mc.embed_dim,
            mc.num_layers,
            mc.heads,
            mc.max_seq_len,
            pad_token_id,
            kv_heads=mc.kv_heads,
            ff_dim=mc.ff_dim,
            rope_theta=NANOCHAT_ROPE_THETA if mc.rope_theta is None else mc.rope_theta,
            logit_softcap=cap,
            gradient_checkpointing=mc.gradient_checkpointing,
        )
        model.compile_requested = mc.compile
        return model

    @property
    def config(self) -> ModelConfig:
        """The model's configuration, every value resolved (what ``model.json`` records)."""
        a = self.arch
        return ModelConfig(
            arch="nanochat",
            embed_dim=a.embed_dim,
            ff_dim=a.ff_dim,
            num_layers=a.num_layers,
            heads=a.heads,
            max_seq_len=a.max_seq_len,
            dropout=0.0,
            bias=False,
            activation="relu2",
            attention="sdpa",
            gradient_checkpointing=self.gradient_checkpointing,
            compile=self.compile_requested,
            vocab_size=a.vocab_size,
            kv_heads=a.kv_heads,
            rope_theta=a.rope_theta,
            logit_softcap=a.logit_softcap or 0.0,
        )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        return_logits: bool | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Soft-capped logits (B, T, vocab) and, given targets (B, T), the mean cross-entropy loss.

        As ``GPT.forward``: targets equal to -100 or ``pad_token_id`` are ignored; with targets the loss
        comes from the fused chunked LM-head loss and ``logits`` is None unless ``return_logits=True``.
        ``attention_mask`` (B, T), 1 for tokens and 0 for left padding, hides the padding (rotary scores
        depend only on distances, so a row's padding does not change its positions' effect).
        """
        x = self.hidden_states(input_ids, attention_mask)
        if targets is None:
            return self.logits(x), None
        if self.pad_token_id is not None:
            targets = targets.masked_fill(targets == self.pad_token_id, IGNORE_INDEX)
        if return_logits:
            logits = self.logits(x)
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
            return logits, loss
        flat_x, flat_t = x.view(-1, x.size(-1)), targets.reshape(-1)
        if self.logit_softcap is None:
            return None, lm_head_loss(flat_x, self.lm_head.weight, flat_t, self.loss_chunk_size)
        loss = lm_head_softcap_cross_entropy(
            flat_x, self.lm_head.weight, flat_t, self.logit_softcap, self.loss_chunk_size
        )
        return None, loss

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head and the soft cap on final hidden states."""
        return softcap(self.lm_head(x), self.logit_softcap)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: SlidingKVCache | None = None,
        start_pos: int = 0,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, embed_dim), the input of the LM head.

        Token ``i`` of the input sits at rotary position ``start_pos + i`` (with ``kv_cache``: after the
        cached tokens). Any length is accepted: each token attends to itself and the ``max_seq_len - 1``
        tokens before it. With ``kv_cache`` the new keys/values are appended to it and ``attention_mask``
        covers the new tokens only (the cache remembers which earlier positions were padding).
        """
        T = input_ids.size(1)
        device = input_ids.device
        valid = attention_mask.bool() if attention_mask is not None else None
        if kv_cache is not None:
            start_pos = kv_cache.pos
            attn_mask = kv_cache.begin(T, valid, device)
        elif T > self.max_seq_len or (valid is not None and not bool(valid.all())):
            q_pos = torch.arange(T, device=device)
            attn_mask = window_mask(q_pos, q_pos, self.max_seq_len, valid)
        else:
            attn_mask = None
        x = self.transformer.wte(input_ids)
        autocast = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if autocast else x.dtype  # the projections' dtype
        rope = self.rotary.at(range(start_pos, start_pos + T), device, dtype)
        x = rms_norm(x)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.transformer.h):
            if checkpointing:
                x = checkpoint(block, x, rope, attn_mask, None, i, use_reentrant=False)
            else:
                x = block(x, rope, attn_mask, kv_cache, i)
        if kv_cache is not None:
            kv_cache.end()
        return rms_norm(x)

    def new_kv_cache(self, batch_size: int) -> SlidingKVCache:
        """An empty sliding KV cache for ``batch_size`` rows and a window of ``max_seq_len`` tokens."""
        a = self.arch
        return SlidingKVCache(a.num_layers, batch_size, a.kv_heads, a.max_seq_len, a.head_dim)

    def decode_step(self, tokens: torch.Tensor, kv_cache: SlidingKVCache) -> torch.Tensor:
        """Logits (B, vocab) for one new token per row (``tokens`` (B,)), appended to ``kv_cache``. Works
        past ``max_seq_len``: the window slides, no key is recomputed."""
        return self.logits(self.hidden_states(tokens[:, None], kv_cache=kv_cache))[:, -1]

    @property
    def vocab_size(self) -> int:
        return self.arch.vocab_size

    def generate(
        self,
        input_ids: torch.Tensor,
        *sampling: Any,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        **sampling_kw: Any,
    ) -> torch.Tensor:
        """Continue each prompt, as ``GPT.generate``: ``generate(input_ids, max_new_tokens, temperature=1.0,
        top_k=None, top_p=None, eos_token_id=None, seed=None, attention_mask=None, use_cache=True)``;
        returns (B, T + new) ids. See :mod:`gptrs.model.sliding_generation`."""
        ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.as_tensor(input_ids)
        ids = (ids[None] if ids.dim() == 1 else ids).long()
        new = list(
            self.generate_stream(
                ids, *sampling, attention_mask=attention_mask, use_cache=use_cache, **sampling_kw
            )
        )
        return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids

    def generate_stream(
        self,
        input_ids: torch.Tensor,
        *sampling: Any,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        **sampling_kw: Any,
    ) -> Iterator[torch.Tensor]:
        """Yield each step's new tokens as a (B,) LongTensor; arguments as in :meth:`generate`."""
        params = SamplingParams(*sampling, **sampling_kw)
        return sliding_generation.generate_stream(
            self, input_ids, params, attention_mask=attention_mask, use_cache=use_cache
        )

    # ------------------------------------------------------------------ accounting

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters; ``non_embedding=True`` leaves out the token embedding (the LM head stays,
        as it is a matmul weight)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.transformer.wte.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: 6 N (N without the embedding lookup) + 12 * L * d * T for attention."""
        T = self.max_seq_len if seq_len is None else seq_len
        a = self.arch
        return 6 * self.num_parameters(non_embedding=True) + 12 * a.num_layers * a.embed_dim * T

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW-only parameter groups (``training.optimizer: adamw``): decay on the blocks' matrices, none
        on the embedding and the LM head."""
        hidden = [p for p in self.transformer.h.parameters() if p.requires_grad]
        rest = [p for p in (self.transformer.wte.weight, self.lm_head.weight) if p.requires_grad]
        return [
            {"params": hidden, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]
