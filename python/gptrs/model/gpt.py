"""The GPT model: a decoder-only transformer in the GPT-2 mould, in one readable file (after nanoGPT).

    tokens -> token embedding + learned position embedding -> dropout
           -> num_layers x Block(pre-norm: x + attn(ln_1(x)); x + mlp(ln_2(x)))
           -> final LayerNorm -> LM head (weights tied to the token embedding) -> logits

Parameter names follow GPT-2 / nanoGPT (``transformer.h.0.attn.c_attn.weight`` ...), so the Hugging Face
export is a transpose away. Attention lives in ``attention.py``, the KV cache in ``kv_cache.py``, sampling
in ``generation.py``, save/load in ``serialization.py``; the device-specific fast paths (block-causal
attention, the bias-in-GEMM Linear, the fused LM-head loss) in ``kernels/``, so nothing here tests devices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gptrs.config import Config, ModelConfig, check_model, resolve_model
from gptrs.errors import ConfigError
from gptrs.model import generation, kernels, serialization
from gptrs.model.attention import CausalSelfAttention
from gptrs.model.kernels import IGNORE_INDEX, Linear, RowHead, lm_head_loss
from gptrs.model.kv_cache import KVCache, build_attention_mask

ACTIVATIONS = {"gelu": "none", "gelu_tanh": "tanh"}  # model.activation -> nn.GELU(approximate=...)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d -> ff) -> GELU -> Linear(ff -> d) -> dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = Linear(cfg.embed_dim, cfg.ff_dim, bias=cfg.bias)
        self.gelu = nn.GELU(approximate=ACTIVATIONS[cfg.activation])
        self.c_proj = Linear(cfg.ff_dim, cfg.embed_dim, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.c_fc(x)
        x = kernels.gelu(x, self.gelu.approximate)  # = self.gelu(x), faster for a decode step's rows
        x = self.c_proj(x)
        x = self.dropout(x)
        return x


class Block(nn.Module):
    """One pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.embed_dim, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = nn.LayerNorm(cfg.embed_dim, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x

    def decode(self, x: torch.Tensor, kv_cache: KVCache, attn_mask: torch.Tensor | None) -> torch.Tensor:
        """One token per row, (B, C), through the KV cache; see ``GPT.decode_step``."""
        x = x + self.attn.decode(self.ln_1(x), kv_cache, attn_mask)
        if self.training:  # dropout is active: take the ordinary path
            return x + self.mlp(self.ln_2(x))
        m = self.mlp
        h = kernels.gelu(m.c_fc(self.ln_2(x)), m.gelu.approximate)  # fewer module calls than self.mlp
        return x + m.c_proj(h)

    def decode_static(self, x: Tensor, kv: tuple[Tensor, Tensor], slot: Tensor, mask: Tensor) -> Tensor:
        """:meth:`decode` with static shapes (see ``CausalSelfAttention.decode_static``); eval mode only."""
        x = x + self.attn.decode_static(self.ln_1(x), kv[0], kv[1], slot, mask)
        m = self.mlp
        return x + m.c_proj(kernels.gelu(m.c_fc(self.ln_2(x)), m.gelu.approximate))


class Trunk(nn.Module):
    """Embeddings, blocks and final norm: nanoGPT's ``transformer`` ModuleDict, as a typed module."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size is not None
        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)  # token embedding (tied to the LM head)
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.embed_dim)  # learned position embedding
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_layers)])
        self.ln_f = nn.LayerNorm(cfg.embed_dim, bias=cfg.bias)


class GPT(serialization.Pretrained):
    """GPT-2 style language model. ``model(input_ids, targets)`` returns ``(logits, loss)`` as in nanoGPT."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        ff_dim: int,
        num_layers: int,
        heads: int,
        max_seq_len: int,
        pad_token_id: int | None,
        dropout: float = 0.0,
        *,
        bias: bool = True,
        activation: str = "gelu",
        attention: str = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        cfg = ModelConfig(
            embed_dim=embed_dim,
            ff_dim=ff_dim,
            num_layers=num_layers,
            heads=heads,
            max_seq_len=max_seq_len,
            dropout=dropout,
            bias=bias,
            activation=activation,
            attention=attention,
            gradient_checkpointing=gradient_checkpointing,
            vocab_size=vocab_size,
        )
        check_model(cfg)
        if pad_token_id is not None and not 0 <= pad_token_id < vocab_size:
            raise ConfigError(f"pad_token_id {pad_token_id} is outside the vocabulary (size {vocab_size})")
        self._cfg = cfg
        self.pad_token_id = pad_token_id
        self.gradient_checkpointing = gradient_checkpointing
        self.residual_in_autocast_dtype = True  # keep the residual stream in bf16/fp16 under autocast

        self.transformer = Trunk(cfg)
        self.lm_head = RowHead(embed_dim, vocab_size, bias=False)  # nn.Linear; faster rows for decoding
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press & Wolf, 2017)

        # GPT-2 initialisation: N(0, 0.02) everywhere; the projections that write into the residual stream
        # are scaled by 1/sqrt(2 * num_layers) so its variance does not grow with depth.
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * num_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, cfg: Config | ModelConfig, *, vocab_size: int | None = None, pad_token_id: int | None = None
    ) -> GPT:
        """Build from a ``Config`` (its ``model`` section) or a ``ModelConfig``.

        The vocabulary size is ``model.vocab_size`` when set (it may exceed the tokenizer's, e.g. rounded up
        to a multiple of 64 for speed), else ``vocab_size`` (the tokenizer's).
        """
        # TEMPORARY bridge (h3): the config's switches may be null; the one-GPT model replaces this file
        mc = resolve_model(cfg.model if isinstance(cfg, Config) else cfg)
        if mc.arch != "gpt2":
            raise ConfigError(
                f"model.arch is {mc.arch!r}, not 'gpt2' (gptrs.model.build_model builds either)"
            )
        vocab = mc.vocab_size if mc.vocab_size is not None else vocab_size
        if vocab is None:
            raise ConfigError("model.vocab_size is not set and no tokenizer vocabulary size was given")
        if mc.vocab_size is not None and vocab_size is not None and mc.vocab_size < vocab_size:
            raise ConfigError(
                f"model.vocab_size ({mc.vocab_size}) is smaller than the tokenizer's vocabulary ({vocab_size})"
            )
        model = cls(
            vocab,
            mc.embed_dim,
            mc.ff_dim,
            mc.num_layers,
            mc.heads,
            mc.max_seq_len,
            pad_token_id,
            mc.dropout,
            bias=mc.bias,
            activation=mc.activation,
            attention=mc.attention,
            gradient_checkpointing=mc.gradient_checkpointing,
        )
        model._cfg = dataclasses.replace(model._cfg, compile=mc.compile)
        return model

    @property
    def config(self) -> ModelConfig:
        """The model's configuration with ``vocab_size`` resolved (a copy; editing it changes nothing)."""
        return dataclasses.replace(self._cfg, gradient_checkpointing=self.gradient_checkpointing)

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        return_logits: bool | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits (B, T, vocab) and, given targets (B, T), the mean cross-entropy loss.

        Targets equal to -100 or to ``pad_token_id`` are ignored. With targets the loss is computed by the
        fused chunked LM-head loss and ``logits`` is None, unless ``return_logits=True``. Logits come out in
        the compute dtype (bf16 under bf16 autocast). ``attention_mask`` (B, T), 1 for tokens and 0 for
        left padding, hides the padding and makes each row's positions start at 0 at its first token.
        """
        x = self.hidden_states(input_ids, attention_mask)
        if targets is None:
            return self.lm_head(x), None
        if self.pad_token_id is not None:
            targets = targets.masked_fill(targets == self.pad_token_id, IGNORE_INDEX)
        if return_logits:
            logits = self.lm_head(x)
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
            )
            return logits, loss
        loss = lm_head_loss(x.view(-1, x.size(-1)), self.lm_head.weight, targets.reshape(-1))
        return None, loss

    def _embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings (then dropout): the start of the residual stream."""
        x = self.transformer.wte(input_ids) + self.transformer.wpe(position_ids)
        if self.residual_in_autocast_dtype and torch.is_autocast_enabled(x.device.type):
            # Embeddings come out in fp32 (the parameters' dtype); without this cast the residual stream
            # stays fp32 and every LayerNorm, add and matmul input pays a conversion. Measured ~5-10%
            # faster per training step on CPU; LayerNorm still accumulates in fp32 internally.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return self.transformer.drop(x)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, embed_dim), the input of the LM head.

        With ``kv_cache``, ``input_ids`` are the tokens after the cached ones; their keys/values are
        appended to the cache and ``position_ids`` (B, T) must be given. ``attention_mask`` then covers the
        new tokens only (the cache remembers which earlier positions were padding).
        """
        T = input_ids.size(1)
        past = kv_cache.pos if kv_cache is not None else 0
        if past + T > self._cfg.max_seq_len:
            raise ValueError(
                f"sequence of {past + T} tokens is longer than the context (max_seq_len={self._cfg.max_seq_len})"
            )
        valid = attention_mask.bool() if attention_mask is not None else None
        if position_ids is None:
            if valid is not None:  # each row's positions start at 0 at its first token
                position_ids = (valid.long().cumsum(1) - 1).clamp(min=0)
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
        if kv_cache is not None:
            attn_mask = kv_cache.mask(T, valid)  # the cache remembers which earlier keys were padding
        elif valid is not None and not bool(valid.all()):
            attn_mask = build_attention_mask(valid, T)
        else:
            attn_mask = None

        x = self._embed(input_ids, position_ids)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.transformer.h:
            if checkpointing:
                x = checkpoint(block, x, attn_mask, None, use_reentrant=False)
            else:
                x = block(x, attn_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = self.transformer.ln_f(x)
        return x

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, kv_cache: KVCache) -> torch.Tensor:
        """Logits (B, vocab) for one new token per row, appended to a KV cache that holds the tokens before.

        ``tokens`` and ``positions`` are (B,). The cache must already have been filled (the prefill, by
        :meth:`hidden_states`). This is the decoding hot loop: the same math as ``hidden_states`` on a
        (B, 1) input followed by the LM head, with the mask and bookkeeping reduced to what one token
        needs. Per token it saves about a third of the time on the 6/6/384 model (fp32, one thread:
        3.2 ms instead of 4.1 ms, of which ~2.2 ms is reading the weights from memory).
        """
        if kv_cache.full:
            raise ValueError(f"KV cache is full (max_seq_len={self._cfg.max_seq_len})")
        x = self._embed(tokens, positions)
        attn_mask = kv_cache.decode_mask()
        for block in self.transformer.h:
            assert isinstance(block, Block)
            x = block.decode(x, kv_cache, attn_mask)
        kv_cache.advance(1)
        return self.lm_head(self.transformer.ln_f(x))

    def decode_step_static(
        self, tokens: Tensor, positions: Tensor, kv_cache: KVCache, slot: Tensor, mask: Tensor
    ) -> Tensor:
        """:meth:`decode_step` with static shapes and no Python-side state, for a decode step captured as a
        CUDA graph (``static_decode.py``): the new keys/values go into slot ``slot`` ((1,) tensor) of the
        cache's preallocated buffers (filled up to it by a prefill), every query attends to all
        ``max_seq_len`` slots under ``mask`` ((B, 1, 1, max_seq_len) bool). The cache's ``pos`` is not
        advanced: the caller owns ``slot``. Eval mode only (no dropout)."""
        x = self._embed(tokens, positions)
        for block, kv in zip(self.transformer.h, kv_cache.layers, strict=True):
            assert isinstance(block, Block)
            x = block.decode_static(x, kv, slot, mask)
        return self.lm_head(self.transformer.ln_f(x))

    def new_kv_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for ``batch_size`` rows and the full context."""
        c = self._cfg
        return KVCache(c.num_layers, batch_size, c.heads, c.max_seq_len, c.embed_dim // c.heads)

    # ------------------------------------------------------------------ accounting

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters, the tied LM head counted once.

        ``non_embedding=True`` leaves out the token and position embeddings (Kaplan et al.'s N).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * d * T (PaLM appendix B, nanoGPT).

        N follows nanoGPT's ``estimate_mfu``: every parameter except the position embeddings (the tied token
        embedding is counted, as it is the LM head's matmul weight). 6N covers the matmuls with weights;
        12*L*d*T the attention scores and weighted sum over a context of T = ``seq_len`` (default
        max_seq_len) tokens.
        """
        T = self._cfg.max_seq_len if seq_len is None else seq_len
        N = self.num_parameters() - self.transformer.wpe.weight.numel()
        return 6 * N + 12 * self._cfg.num_layers * self._cfg.embed_dim * T

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay on the 2-D weights of Linear layers only; none on norms, biases
        and embeddings (the LM head is the token embedding, so it gets none either)."""
        linear_weights = {
            id(m.weight) for m in self.modules() if isinstance(m, nn.Linear) and m is not self.lm_head
        }
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            (decay if id(p) in linear_weights and p.dim() == 2 else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # ------------------------------------------------------------------ generation and serialization

    def generate(
        self,
        input_ids: torch.Tensor,
        *sampling: Any,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        static_cache: bool | None = None,
        **sampling_kw: Any,
    ) -> torch.Tensor:
        """Continue each prompt: ``generate(input_ids, max_new_tokens, temperature=1.0, top_k=None,
        top_p=None, eos_token_id=None, seed=None, attention_mask=None, use_cache=True, static_cache=None)``;
        the sampling
        arguments make a :class:`~gptrs.model.generation.SamplingParams`. See
        :func:`gptrs.model.generation.generate`."""
        params = generation.SamplingParams(*sampling, **sampling_kw)
        return generation.generate(
            self,
            input_ids,
            params,
            attention_mask=attention_mask,
            use_cache=use_cache,
            static_cache=static_cache,
        )

    def generate_stream(
        self,
        input_ids: torch.Tensor,
        *sampling: Any,
        attention_mask: torch.Tensor | None = None,
        use_cache: bool = True,
        static_cache: bool | None = None,
        **sampling_kw: Any,
    ) -> Iterator[torch.Tensor]:
        """Yield each step's new tokens as a (B,) LongTensor; arguments as in :meth:`generate`. See
        :func:`gptrs.model.generation.generate_stream`."""
        params = generation.SamplingParams(*sampling, **sampling_kw)
        return generation.generate_stream(
            self,
            input_ids,
            params,
            attention_mask=attention_mask,
            use_cache=use_cache,
            static_cache=static_cache,
        )
