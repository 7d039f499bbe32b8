"""The GPT model: a decoder-only transformer in one readable file (after nanoGPT), its architecture a few
switches of ``ModelConfig`` (``model.arch`` is shorthand for them: the GPT-2 recipe or nanochat's).

    tokens -> token embedding (+ learned position embedding) (-> norm) -> dropout
           -> num_layers x Block(pre-norm: x + attn(ln_1(x)); x + mlp(ln_2(x)))
           -> final norm -> LM head (tied to the token embedding or its own) (-> cap * tanh(logits / cap))

The switches (each a ``model.*`` key; ``python -m gptrs.config --describe`` says what it does):

    positions       learned table (GPT-2)             | rotary, applied in attention (RoPE)
    norm            LayerNorm with gains (and biases) | parameter-free RMSNorm
    embed_norm      -                                 | a norm right after the token embedding
    qk_norm         -                                 | RMS-normalised queries and keys
    activation      GELU (exact or tanh)              | ReLU^2
    bias, tie_embeddings, logit_softcap, kv_heads (grouped-query attention), dropout
    init            GPT-2's N(0, 0.02)                | nanochat's fan-in scaled, zero residual projections

and the speedrun's (modded-nanogpt; off by default, none exports; docs/speedrun.md): ``value_embeds`` (extra
tables mixed into attention's values), ``skip_connections`` (U-net skips from the first half of the blocks to
the second), ``x0_mix`` (each block's input a x + b x0, x0 the embedding output), ``bigram_buckets`` (a
hashed (previous token, token) table added to each block's input).

Parameter names follow GPT-2 / nanoGPT (``transformer.h.0.attn.c_attn.weight`` ...). Attention is in
``attention.py``, the KV cache in ``kv_cache.py``, decoding in ``generation.py``, save/load in
``serialization.py``, the Hugging Face mapping in ``hf.py``; the device-specific fast paths in ``kernels/``,
so nothing here tests devices. Decoding runs this same forward with a ``kv_cache``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gptrs.config import Config, ModelConfig, check_model, resolve_model
from gptrs.errors import ConfigError
from gptrs.model import generation, kernels, serialization
from gptrs.model.attention import RMS_EPS, CausalSelfAttention
from gptrs.model.kernels import IGNORE_INDEX, Linear, RowHead, lm_head_loss
from gptrs.model.kernels.softcap_loss import lm_head_softcap_cross_entropy, softcap
from gptrs.model.kv_cache import KVCache, causal_mask, previous_tokens, row_positions
from gptrs.model.rotary import RotaryTables

GELU_APPROXIMATE = {"gelu": "none", "gelu_tanh": "tanh"}  # model.activation -> F.gelu(approximate=...)


def make_norm(cfg: ModelConfig) -> nn.Module:
    """LayerNorm with learned gains (and biases per ``model.bias``) or parameter-free RMSNorm."""
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.embed_dim, bias=bool(cfg.bias))
    return nn.RMSNorm(cfg.embed_dim, eps=RMS_EPS, elementwise_affine=False)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(d -> ff) -> GELU or ReLU^2 -> Linear(ff -> d) -> dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.c_fc = Linear(cfg.embed_dim, cfg.ff_dim, bias=bool(cfg.bias))
        self.activation = cfg.activation
        self.c_proj = Linear(cfg.ff_dim, cfg.embed_dim, bias=bool(cfg.bias))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c_fc(x)
        if self.activation == "relu2":
            x = F.relu(x).square()
        else:  # = F.gelu, faster for a decode step's rows
            x = kernels.gelu(x, GELU_APPROXIMATE[str(self.activation)])
        x = self.c_proj(x)
        return self.dropout(x) if self.training else x  # eval: skip the (identity) module call


class Block(nn.Module):
    """One pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0) -> None:
        super().__init__()
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.ln_2 = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor] | None = None,
        attn_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        ve: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, attn_mask, kv_cache, ve)
        return x + self.mlp(self.ln_2(x))


class Trunk(nn.Module):
    """Embeddings, blocks and final norm: nanoGPT's ``transformer`` ModuleDict, as a typed module."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size is not None
        self.wte = nn.Embedding(cfg.vocab_size, cfg.embed_dim)  # token embedding
        self.wpe = nn.Embedding(cfg.max_seq_len, cfg.embed_dim) if cfg.positions == "learned" else None
        self.ln_e = make_norm(cfg) if cfg.embed_norm else None
        self.drop = nn.Dropout(cfg.dropout)
        self.h = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_layers)])
        self.ln_f = make_norm(cfg)
        # The speedrun switches (model.value_embeds, skip_connections, x0_mix); absent when off, so the
        # parameters of the GPT-2 and nanochat recipes stay what they were.
        kv_dim = (cfg.kv_heads or cfg.heads) * (cfg.embed_dim // cfg.heads)
        self.value_embeds = (
            nn.ModuleList([nn.Embedding(cfg.vocab_size, kv_dim) for _ in range(cfg.value_embeds)])
            if cfg.value_embeds
            else None
        )
        self.skip_weights = nn.Parameter(torch.ones(cfg.num_layers // 2)) if cfg.skip_connections else None
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.num_layers)) if cfg.x0_mix else None
        self.x0_lambdas = nn.Parameter(torch.full((cfg.num_layers,), 0.1)) if cfg.x0_mix else None
        n = cfg.bigram_buckets
        self.bigram_embed = nn.Embedding(n, cfg.embed_dim) if n else None
        self.bigram_lambdas = nn.Parameter(torch.full((cfg.num_layers,), 0.1)) if n else None


def bigram_hash(prev: Tensor, tokens: Tensor, buckets: int) -> Tensor:
    """The bigram hash embedding's row for each (previous token, token) (``model.bigram_buckets``): two
    multiplications by large odd constants, XORed, spread pairs over rows 0 .. buckets - 2 (modded-nanogpt's
    hash); a token with no previous one (prev -1, a row's first) gets the reserved last row."""
    h = torch.bitwise_xor(36313 * tokens, 27191 * prev.clamp(min=0)) % (buckets - 1)
    return torch.where(prev < 0, buckets - 1, h)


def layer_windows(cfg: ModelConfig) -> list[int]:
    """The tokens each layer attends to (itself included): ``model.window_pattern`` repeated over the layers,
    'S' ``model.short_window`` (null: max_seq_len // 2), 'L' and the last layer ``max_seq_len``."""
    pattern, W = cfg.window_pattern.upper(), cfg.max_seq_len
    if set(pattern) - {"S", "L"}:
        raise ConfigError(f"model.window_pattern must be letters S and L, got {cfg.window_pattern!r}")
    if not pattern:
        return [W] * cfg.num_layers
    short = min(W, cfg.short_window or max(1, W // 2))
    windows = [short if pattern[i % len(pattern)] == "S" else W for i in range(cfg.num_layers)]
    windows[-1] = W  # the last layer sees the whole context (nanochat)
    return windows


def resolve_vocab(mc: ModelConfig, vocab_size: int | None) -> int:
    """Embedding rows: ``model.vocab_size`` when set (it may exceed the tokenizer's, e.g. rounded up to a
    multiple of 64 for speed), else ``vocab_size`` (the tokenizer's)."""
    if mc.vocab_size is None:
        if vocab_size is None:
            raise ConfigError("model.vocab_size is not set and no tokenizer vocabulary size was given")
        return vocab_size
    if vocab_size is not None and mc.vocab_size < vocab_size:
        raise ConfigError(
            f"model.vocab_size ({mc.vocab_size}) is smaller than the tokenizer's vocabulary ({vocab_size})"
        )
    return mc.vocab_size


class GPT(nn.Module):
    """The language model. ``model(input_ids, targets)`` returns ``(logits, loss)`` as in nanoGPT.

    ``GPT(vocab_size, embed_dim, ff_dim, num_layers, heads, max_seq_len, pad_token_id)`` builds the GPT-2
    recipe (other ``ModelConfig`` switches as keywords, e.g. ``arch="nanochat"``); ``GPT(config=...)``
    builds a ``ModelConfig`` with ``vocab_size`` set; ``GPT.from_config`` resolves it from a tokenizer.
    """

    def __init__(
        self,
        vocab_size: int | None = None,
        embed_dim: int | None = None,
        ff_dim: int | None = None,
        num_layers: int | None = None,
        heads: int | None = None,
        max_seq_len: int | None = None,
        pad_token_id: int | None = None,
        dropout: float = 0.0,
        *,
        config: ModelConfig | None = None,
        **switches: Any,
    ) -> None:
        super().__init__()
        if config is None:
            shape = dict(embed_dim=embed_dim, ff_dim=ff_dim, num_layers=num_layers, heads=heads,
                         max_seq_len=max_seq_len)  # fmt: skip
            missing = [k for k, v in shape.items() if v is None]
            if vocab_size is None or missing:
                raise TypeError(f"GPT() needs vocab_size and {', '.join(shape)} (or config=ModelConfig)")
            config = ModelConfig(vocab_size=vocab_size, dropout=dropout, **shape, **switches)  # type: ignore[arg-type]
        check_model(config)
        cfg = resolve_model(config)
        assert cfg.vocab_size is not None
        if 2 * cfg.value_embeds > cfg.num_layers:
            raise ConfigError(
                f"model.value_embeds={cfg.value_embeds} needs at least {2 * cfg.value_embeds} layers "
                f"(each table serves one of the first and one of the last layers); "
                f"model.num_layers is {cfg.num_layers}"
            )
        if cfg.bigram_buckets == 1:
            raise ConfigError("model.bigram_buckets must be 0 (off) or at least 2, got 1")
        if pad_token_id is not None and not 0 <= pad_token_id < cfg.vocab_size:
            raise ConfigError(
                f"pad_token_id {pad_token_id} is outside the vocabulary (size {cfg.vocab_size})"
            )
        self._cfg = cfg
        self.pad_token_id = pad_token_id
        self.layer_windows = layer_windows(cfg)  # tokens each layer attends to (model.window_pattern)
        self.gradient_checkpointing = cfg.gradient_checkpointing
        # Under autocast keep the residual stream in bf16/fp16 (measured 5-10% faster per training step on
        # CPU for the GPT-2 recipe); the RMSNorm recipe was tuned with an fp32 residual and keeps it.
        self.residual_in_autocast_dtype = cfg.norm == "layernorm"
        # Rows of logits alive at once in the fused LM-head loss; None lets kernels.chunks pick by device.
        self.loss_chunk_size: int | None = None
        self.logit_softcap = cfg.logit_softcap or None
        head_dim = cfg.embed_dim // cfg.heads
        self.rotary = (
            RotaryTables(head_dim, cfg.rope_theta or 0.0, cfg.max_seq_len)
            if cfg.positions == "rotary"
            else None
        )

        self.transformer = Trunk(cfg)
        self.lm_head = RowHead(
            cfg.embed_dim, cfg.vocab_size, bias=False
        )  # nn.Linear; faster rows for decoding
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press & Wolf, 2017)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``model.init``. gpt2: N(0, 0.02) everywhere, the projections that write into the residual stream
        scaled by 1/sqrt(2 * num_layers) so its variance does not grow with depth. nanochat: Linear weights
        N(0, 1/fan_in * min(1, fan_out/fan_in)) (q, k and v each as its own matrix), embeddings N(0, 1), and
        the LM head and every residual projection zero, so each block starts as the identity."""
        if self._cfg.init == "gpt2":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Embedding):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self._cfg.num_layers))
            self._reset_scalars()
            return
        splits = {id(m.c_attn): m.qkv_split for m in self.modules() if isinstance(m, CausalSelfAttention)}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                for w in m.weight.split(splits.get(id(m), m.weight.size(0))):
                    fan_out, fan_in = w.shape
                    nn.init.normal_(
                        w, mean=0.0, std=min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)
                    )
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, mean=0.0, std=1.0)
        if not self._cfg.tie_embeddings:
            nn.init.zeros_(self.lm_head.weight)
        for block in self.transformer.h:
            assert isinstance(block, Block)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        self._reset_scalars()

    def _reset_scalars(self) -> None:
        """The speedrun switches' learned scalars: value-embedding mixes (0.5, 0.5), skip weights 1,
        residual 1, x0 0.1 and bigram 0.1 (the values of modded-nanogpt and nanochat), and the bigram table
        zero (modded-nanogpt: the block inputs start as without it, the scalars carry its first gradients)."""
        t = self.transformer
        if t.bigram_embed is not None:
            nn.init.zeros_(t.bigram_embed.weight)
        for block in t.h:
            assert isinstance(block, Block)
            if block.attn.ve_lambdas is not None:
                block.attn.ve_lambdas.fill_(0.5)
        for p, value in ((t.skip_weights, 1.0), (t.resid_lambdas, 1.0), (t.x0_lambdas, 0.1),
                         (t.bigram_lambdas, 0.1)):  # fmt: skip
            if p is not None:
                p.fill_(value)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, cfg: Config | ModelConfig, *, vocab_size: int | None = None, pad_token_id: int | None = None
    ) -> GPT:
        """Build from a ``Config`` (its ``model`` section) or a ``ModelConfig``; embedding rows as
        :func:`resolve_vocab` picks them."""
        mc = cfg.model if isinstance(cfg, Config) else cfg
        vocab = resolve_vocab(mc, vocab_size)
        return GPT(config=dataclasses.replace(mc, vocab_size=vocab), pad_token_id=pad_token_id)

    @property
    def config(self) -> ModelConfig:
        """The model's configuration, every switch resolved (a copy; what ``model.json`` records)."""
        return dataclasses.replace(self._cfg, gradient_checkpointing=self.gradient_checkpointing)

    @property
    def vocab_size(self) -> int:
        assert self._cfg.vocab_size is not None
        return self._cfg.vocab_size

    def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
        """Write ``model.safetensors`` and ``model.json`` into ``directory`` (created if needed)."""
        serialization.save_pretrained(self, directory, self.config, self.pad_token_id)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu"
    ) -> GPT:
        """Load a model written by :meth:`save_pretrained` (or a trainer checkpoint directory)."""
        return serialization.load_pretrained(
            directory, lambda cfg, pad: cls.from_config(cfg, pad_token_id=pad), map_location
        )

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        return_logits: bool | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Logits (B, T, vocab) and, given targets (B, T), the mean cross-entropy loss.

        Targets equal to -100 or to ``pad_token_id`` are ignored. With targets the loss is computed by the
        fused chunked LM-head loss and ``logits`` is None, unless ``return_logits=True``. Logits come out in
        the compute dtype (bf16 under bf16 autocast). ``attention_mask`` (B, T), 1 for tokens and 0 for
        left padding, hides the padding and makes each row's positions start at its first token. With
        ``kv_cache`` the tokens follow each row's cached ones (see :meth:`hidden_states`).
        """
        x = self.hidden_states(input_ids, attention_mask, kv_cache=kv_cache)
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
        return None, lm_head_softcap_cross_entropy(
            flat_x, self.lm_head.weight, flat_t, self.logit_softcap, self.loss_chunk_size
        )

    def logits(self, x: Tensor) -> Tensor:
        """The LM head (and the soft cap) on final hidden states."""
        return softcap(self.lm_head(x), self.logit_softcap)

    def hidden_states(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, *, kv_cache: KVCache | None = None
    ) -> Tensor:
        """Final-norm hidden states (B, T, embed_dim), the input of the LM head.

        Each token attends to itself and the ``max_seq_len - 1`` tokens before it; a model with learned
        positions takes at most ``max_seq_len`` tokens. With ``kv_cache`` the new keys/values are appended
        to each row's cached ones and ``attention_mask`` covers the new tokens only.
        """
        T = input_ids.size(1)
        W, device = self._cfg.max_seq_len, input_ids.device
        valid = attention_mask.bool() if attention_mask is not None else None
        past = kv_cache.max_len if kv_cache is not None and not kv_cache.static else 0
        if self.transformer.wpe is not None and past + T > W:
            raise ValueError(f"sequence of {past + T} tokens is longer than the context (max_seq_len={W})")
        if kv_cache is not None:
            pos, attn_mask = kv_cache.begin(T, valid, device)
        else:
            padded = valid is not None and not bool(valid.all())
            pos = row_positions(valid if padded else None, T, device)
            attn_mask = causal_mask(pos, pos, W, valid if padded else None) if padded or T > W else None
        masks = {W: attn_mask}  # by window: a shorter one (model.window_pattern) masks older keys too
        for w in set(self.layer_windows) - {W}:
            if kv_cache is not None:
                masks[w] = kv_cache.window_mask(w)
            else:
                masks[w] = causal_mask(pos, pos, w, valid if padded else None) if padded or T > w else None
        x = self._embed(input_ids, pos)
        rope = None
        if self.rotary is not None:
            top = None if kv_cache is not None and kv_cache.static else past + T  # static: tables grown ahead
            rope = self.rotary.at(pos, device, self._compute_dtype(x), top)
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        t = self.transformer
        x0 = x
        ves = [table(input_ids) for table in t.value_embeds] if t.value_embeds is not None else []
        xb = None  # model.bigram_buckets: the hashed (previous token, token) embedding
        if t.bigram_embed is not None and t.bigram_lambdas is not None:
            if kv_cache is not None:
                prev = kv_cache.previous_tokens(input_ids, valid)
            else:
                prev = previous_tokens(input_ids, valid if padded else None, None)[0]
            xb = t.bigram_embed(bigram_hash(prev, input_ids, t.bigram_embed.num_embeddings))
        skips: list[Tensor] = []  # model.skip_connections: outputs of the first half, the last on top
        n_skip = 0 if t.skip_weights is None else t.skip_weights.numel()
        L = len(t.h)
        for i, block in enumerate(t.h):
            assert isinstance(block, Block)
            if t.resid_lambdas is not None and t.x0_lambdas is not None:
                x = t.resid_lambdas[i].to(x.dtype) * x + t.x0_lambdas[i].to(x.dtype) * x0
            if xb is not None and t.bigram_lambdas is not None:
                x = x + t.bigram_lambdas[i].to(x.dtype) * xb.to(x.dtype)
            if t.skip_weights is not None and i >= L - n_skip:  # the mirror of block L - 1 - i
                x = x + t.skip_weights[i - (L - n_skip)].to(x.dtype) * skips.pop()
            ve = ves[block.attn.ve_table] if block.attn.ve_table is not None else None
            mask = masks[self.layer_windows[i]]
            if checkpointing:
                x = checkpoint(block, x, rope, mask, None, ve, use_reentrant=False)
            else:
                x = block(x, rope, mask, kv_cache, ve)
            if i < n_skip:
                skips.append(x)
        if kv_cache is not None:
            kv_cache.end()
        return self.transformer.ln_f(x)

    def _embed(self, input_ids: Tensor, positions: Tensor) -> Tensor:
        """Token (+ position) embeddings (then the embedding norm, dropout): the start of the residual stream."""
        t = self.transformer
        x = t.wte(input_ids)
        if t.wpe is not None:
            x = x + t.wpe(positions)
        if t.ln_e is not None:
            x = t.ln_e(x)
        if self.residual_in_autocast_dtype and torch.is_autocast_enabled(x.device.type):
            # Embeddings come out in fp32 (the parameters' dtype); without this cast the residual stream
            # stays fp32 and every norm, add and matmul input pays a conversion.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        return t.drop(x) if self.training else x

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the projections produce: the autocast dtype under autocast, else the weights'."""
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return self.transformer.wte.weight.dtype

    def new_kv_cache(self, batch_size: int, *, static: bool = False) -> KVCache:
        """An empty KV cache for ``batch_size`` rows and a window of ``max_seq_len`` tokens."""
        c = self._cfg
        assert c.kv_heads is not None
        return KVCache(
            c.num_layers, batch_size, c.kv_heads, c.max_seq_len, c.embed_dim // c.heads, static=static
        )

    # ------------------------------------------------------------------ accounting

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters, a tied LM head counted once. ``non_embedding=True`` leaves out the token and
        position embeddings (Kaplan et al.'s N; an untied LM head stays: it is a matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(e.weight.numel() for e in (self.transformer.wte, self.transformer.wpe) if e is not None)
            n -= self._lookup_table_numel()
        return n

    def _lookup_table_numel(self) -> int:
        """Parameters of the speedrun's lookup tables (value embeddings, the bigram hash embedding)."""
        t = self.transformer
        n = 0 if t.value_embeds is None else sum(p.numel() for p in t.value_embeds.parameters())
        return n + (0 if t.bigram_embed is None else t.bigram_embed.weight.numel())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward): 6N + 12 * L * d * T (PaLM appendix B, nanoGPT).

        N counts the weights that multiply activations: every parameter but the position table and (when the
        head is untied) the token embedding, which are lookups; a tied embedding is the LM head's matmul.
        12*L*d*T covers the attention scores and weighted sum over a context of T = ``seq_len`` tokens.
        """
        c = self._cfg
        T = c.max_seq_len if seq_len is None else seq_len
        n = self.num_parameters()
        if self.transformer.wpe is not None:
            n -= self.transformer.wpe.weight.numel()
        if not c.tie_embeddings:
            n -= self.transformer.wte.weight.numel()
        n -= self._lookup_table_numel()  # lookups too
        return 6 * n + 12 * c.num_layers * c.embed_dim * T

    def optimizer_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay on the 2-D weights of Linear layers only; none on norms, biases,
        embeddings and the LM head."""
        linear_weights = {
            id(m.weight) for m in self.modules() if isinstance(m, nn.Linear) and m is not self.lm_head
        }
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for p in self.parameters():
            if p.requires_grad:
                (decay if id(p) in linear_weights and p.dim() == 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        input_ids: Tensor,
        *sampling: Any,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        static_cache: bool | None = None,
        **sampling_kw: Any,
    ) -> Tensor:
        """Continue each prompt: ``generate(input_ids, max_new_tokens, temperature=1.0, top_k=None,
        top_p=None, eos_token_id=None, seed=None, attention_mask=None, use_cache=True, static_cache=None)``;
        the sampling arguments make a :class:`~gptrs.model.sampling.SamplingParams`. Returns (B, T + new)
        ids. See :func:`gptrs.model.generation.generate`."""
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
        input_ids: Tensor,
        *sampling: Any,
        attention_mask: Tensor | None = None,
        use_cache: bool = True,
        static_cache: bool | None = None,
        **sampling_kw: Any,
    ) -> Iterator[Tensor]:
        """Yield each step's new tokens as a (B,) LongTensor; arguments as in :meth:`generate`."""
        params = generation.SamplingParams(*sampling, **sampling_kw)
        return generation.generate_stream(
            self,
            input_ids,
            params,
            attention_mask=attention_mask,
            use_cache=use_cache,
            static_cache=static_cache,
        )


class NanoChat(GPT):
    """``GPT`` with ``arch="nanochat"``, built with the argument order of nanochat-style code: a name for
    the nanochat settings, not a second model. ``logit_softcap=None`` means no cap here."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        num_layers: int,
        heads: int,
        max_seq_len: int,
        pad_token_id: int | None = None,
        *,
        ff_dim: int | None = None,
        logit_softcap: float | None = 15.0,
        **switches: Any,
    ) -> None:
        super().__init__(vocab_size, embed_dim, 4 * embed_dim if ff_dim is None else ff_dim, num_layers, heads,
                         max_seq_len, pad_token_id, arch="nanochat", logit_softcap=logit_softcap or 0.0,
                         **switches)  # fmt: skip
