"""The configuration schema: four dataclass sections (data, tokenizer, model, training). Each field's type,
default, help and limits (``choices``, ``ge``/``gt``/``le``/``lt``, ``allow_empty``) drive the validation, its
messages and the reference ``describe()`` prints (docs/configuration.md)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from gptrs.config.problems import show


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default, a one-line description and its constraints (choices, ge, gt, le, lt)."""
    if isinstance(default, (list, dict)):  # mutable: each instance gets its own copy
        return field(default_factory=functools.partial(copy.copy, default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    source: str = _f(
        "stdlib",
        "where text comes from: 'stdlib' (built-in corpus), 'files' or 'hub'",
        choices=("stdlib", "files", "hub"),
    )
    paths: list[str] = _f([], "files or globs for source 'files' (.txt, .jsonl/.json, .parquet)")  # noqa: RUF009
    text_field: str = _f(
        "text", "field/column holding the text in .jsonl/.json/.parquet files and hub datasets"
    )
    dataset_name: str | None = _f(
        None, "Hugging Face Hub dataset name for source 'hub', e.g. HuggingFaceFW/fineweb"
    )
    dataset_subset: str | None = _f(None, "Hub dataset subset (configuration name)")
    dataset_split: str = _f("train", "Hub dataset split to stream")
    num_training_samples: int | None = _f(
        None, "cap on the number of documents read from the source (null: all)", ge=1
    )
    validation_split: float = _f(0.05, "fraction of documents held out for validation, in (0, 1)", gt=0, lt=1)
    separator: str = _f(
        "eos",
        "special token placed between documents: 'eos' (after each) or 'bos' (before each)",
        choices=("eos", "bos"),
    )
    sampling: str = _f(
        "random",
        "'random' windows (step-based) or 'epochs' (shuffled non-overlapping windows)",
        choices=("random", "epochs"),
    )
    max_eval_tokens: int = _f(
        131072,
        "cap on validation tokens covered by the fixed evaluation windows (spread over the split)",
        ge=1,
    )
    cache_dir: str | None = _f(None, "token cache directory (null: <run dir>/data)")


@dataclass
class TokenizerConfig:
    vocab_size: int = _f(4096, "total vocabulary: 256 bytes + merges + special tokens", le=2**32)
    pattern: str = _f("gpt4", "pre-tokenization pattern: 'gpt4', 'gpt2' or a custom regex")
    min_frequency: int = _f(1, "minimum pair count for a merge during training", ge=1)
    special_tokens: dict[str, str] = _f(  # noqa: RUF009 (_f copies mutable defaults per instance)
        {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>"},
        "special tokens by role (bos, eos, pad, unk) -> token string",
    )
    path: str | None = _f(None, "an existing tokenizer JSON to use instead of training one")


# What `model.arch` fills in for each switch left null: the architecture is these switches, `arch` only names
# a set of them. Everything combines freely; the only rules are the shape's (see validation.check_model).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        positions="learned", norm="layernorm", embed_norm=False, qk_norm=False, activation="gelu",
        bias=True, tie_embeddings=True, logit_softcap=0.0, init="gpt2",
    ),
    "nanochat": dict(
        positions="rotary", norm="rmsnorm", embed_norm=True, qk_norm=True, activation="relu2",
        bias=False, tie_embeddings=False, logit_softcap=15.0, init="nanochat",
    ),
}  # fmt: skip
ROPE_THETA = 10000.0  # model.rope_theta null (nanochat's and transformers' base)


def _switch(name: str, help: str, **kw: Any) -> Any:
    """A model switch: null takes the value ``model.arch`` gives it (ARCH_DEFAULTS), which the help shows."""
    by_arch = ", ".join(f"{a}: {show(d[name])}" for a, d in ARCH_DEFAULTS.items())
    return _f(None, f"{help}; null: from arch ({by_arch})", **kw)


@dataclass
class ModelConfig:
    arch: str = _f(
        "gpt2",
        "shorthand that fills every switch below left null (arch nanochat: rotary positions, parameter-free "
        "RMSNorm, QK-norm, ReLU^2, an untied LM head and soft-capped logits; arch gpt2: GPT-2's model)",
        choices=tuple(ARCH_DEFAULTS),
    )
    embed_dim: int = _f(128, "width of the residual stream (d_model)", ge=1)
    ff_dim: int = _f(512, "hidden width of the feed-forward layer (usually 4 * embed_dim)", ge=1)
    num_layers: int = _f(5, "number of transformer blocks", ge=1)
    heads: int = _f(4, "attention heads; must divide embed_dim", ge=1)
    kv_heads: int | None = _f(
        None, "key/value heads, dividing heads (fewer: grouped-query attention); null: heads", ge=1
    )
    max_seq_len: int = _f(256, "context length (block size) in tokens", ge=1)
    vocab_size: int | None = _f(
        None, "embedding rows; null takes the tokenizer's vocabulary size", ge=1, le=2**32
    )
    positions: str | None = _switch(
        "positions",
        "'learned' (a position table) or 'rotary' (needs an even head size)",
        choices=("learned", "rotary"),
    )
    rope_theta: float | None = _f(
        None, f"rotary base frequency, with positions rotary; null: {ROPE_THETA:g}", gt=0
    )
    norm: str | None = _switch(
        "norm",
        "'layernorm' (LayerNorm with gains, and biases per bias) or 'rmsnorm' (parameter-free)",
        choices=("layernorm", "rmsnorm"),
    )
    embed_norm: bool | None = _switch("embed_norm", "a norm right after the token embedding")
    qk_norm: bool | None = _switch(
        "qk_norm", "RMS-normalise queries and keys per head before attention (no parameters)"
    )
    activation: str | None = _switch(
        "activation",
        "feed-forward activation, 'gelu' (exact), 'gelu_tanh' (GPT-2's approximation) or 'relu2' (relu(x)^2)",
        choices=("gelu", "gelu_tanh", "relu2"),
    )
    bias: bool | None = _switch("bias", "biases in the Linear layers (and LayerNorms)")
    tie_embeddings: bool | None = _switch(
        "tie_embeddings", "the LM head shares the token embedding's weights"
    )
    logit_softcap: float | None = _switch(
        "logit_softcap", "final logits become c * tanh(logits / c); 0: no cap", ge=0
    )
    init: str | None = _switch(
        "init",
        "'gpt2' (N(0, 0.02), residual projections scaled by 1/sqrt(2 * num_layers)) or 'nanochat' "
        "(fan-in scaled Linear layers, N(0, 1) embeddings, zero LM head and output projections)",
        choices=("gpt2", "nanochat"),
    )
    dropout: float = _f(0.0, "dropout probability in [0, 1)", ge=0, lt=1)
    attention: str = _f(
        "sdpa",
        "attention implementation: 'sdpa' (fused) or 'reference' (explicit mask+softmax)",
        choices=("sdpa", "reference"),
    )
    gradient_checkpointing: bool = _f(False, "recompute each block's activations in backward to save memory")
    compile: bool | None = _f(
        None,
        "torch.compile the model: null = on CUDA only (one-time compile, faster steps); true/false forces",
    )
    value_embeds: int = _f(
        0,
        "value embeddings (modded-nanogpt records 'value embeddings' and 'U-net pattern value embeddings', Nov-Dec 2024): N extra embedding tables whose rows are "
        "mixed into attention's values, table i in layer i and in layer num_layers - N + i, by two learned "
        "scalars per layer (v = a v + b ve); 0: off. At most num_layers / 2",
        ge=0,
    )
    skip_connections: bool = _f(
        False,
        "U-net skips (modded-nanogpt record 'U-net pattern skip connections', Nov 2024): the output of block i of the first half is "
        "added, times a learned scalar, to the input of its mirror block in the second half",
    )
    x0_mix: bool = _f(
        False,
        "learned residual scalars (modded-nanogpt record 'value and embedding skip connections', Oct 2024; nanochat's resid/x0 lambdas): each block's "
        "input is a x + b x0, x0 the embedding output, a = 1 and b = 0.1 at init",
    )
    bigram_buckets: int = _f(
        0,
        "bigram hash embedding (modded-nanogpt record 'Bigram Hash Embedding', Jan 2026): a table of N rows "
        "looked up by a hash of (previous token, token), zero at init, added times a learned scalar per "
        "layer (0.1 at init) to each block's input; a row's first token (no previous one) gets row N - 1. "
        "0: off; else at least 2 (modded-nanogpt: 5 x vocab)",
        ge=0,
    )
    window_pattern: str = _f(
        "",
        "sliding attention windows per layer (modded-nanogpt's block sliding window and long/short windows, Dec 2024-Jan 2025; nanochat's 'SSSL'): one "
        "letter per layer, repeated over the layers, 'S' a short window (model.short_window tokens), 'L' "
        "the whole context; the last layer is always 'L'. Empty: every layer 'L'",
        allow_empty=True,
    )
    short_window: int | None = _f(
        None,
        "tokens an 'S' layer of model.window_pattern sees (itself included); null: max_seq_len // 2",
        ge=1,
    )


def resolve_model(mc: ModelConfig) -> ModelConfig:
    """A copy of ``mc`` with every switch concrete: nulls take ``ARCH_DEFAULTS[mc.arch]``, ``kv_heads``
    takes ``heads``, ``rope_theta`` 10000 and ``short_window`` half the context. ``vocab_size`` and
    ``compile`` stay as they are."""
    if mc.arch not in ARCH_DEFAULTS:  # validation says so first, with a "did you mean"
        raise ValueError(f"model.arch: {mc.arch!r} is not one of {', '.join(ARCH_DEFAULTS)}")
    fill = {k: v for k, v in ARCH_DEFAULTS[mc.arch].items() if getattr(mc, k) is None}
    if mc.kv_heads is None:
        fill["kv_heads"] = mc.heads
    if mc.rope_theta is None:
        fill["rope_theta"] = ROPE_THETA
    if mc.short_window is None:
        fill["short_window"] = max(1, mc.max_seq_len // 2)
    return dataclasses.replace(mc, **fill)


@dataclass
class TrainingConfig:
    batch_size: int = _f(16, "sequences per micro-batch (per process)", ge=1)
    batch_size_schedule: list[int] = _f(  # noqa: RUF009
        [],
        "a batch-size schedule (modded-nanogpt record 'Batch size schedule', Nov 2025): the run's steps in "
        "equal stages, stage i training on the first [i] sequences of each micro-batch (at most "
        "batch_size), e.g. [8, 12, 16]: small batches while the gradient is still clear, cheaper steps. "
        "Empty: batch_size throughout",
        ge=1,
    )
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", ge=1)
    max_steps: int = _f(2000, "optimizer steps to train for", ge=1)
    epochs: int | None = _f(
        None, "with data.sampling 'epochs': passes over the training tokens (overrides max_steps)", ge=1
    )
    optimizer: str = _f(
        "adamw",
        "'adamw' (every parameter) or 'muon' (Muon on the blocks' 2-D weight matrices, AdamW on the "
        "embeddings, the LM head and anything not 2-D)",
        choices=("adamw", "muon"),
    )
    learning_rate: float = _f(
        3e-3, "peak learning rate after warmup (AdamW's; with optimizer muon: of the LM head)", gt=0
    )
    min_lr: float = _f(
        3e-4,
        "floor of the decay, reached at the last step (other optimizer groups follow in proportion)",
        ge=0,
    )
    warmup_steps: int = _f(100, "linear warmup steps; must be < max_steps", ge=0)
    warmdown_ratio: float | None = _f(
        None,
        "null: after warmup the rate follows a cosine down to min_lr at the last step. A fraction r in "
        "(0, 1]: the rate stays at its peak, then goes linearly to min_lr over the last r of the steps "
        "(modded-nanogpt's cooldown_frac, nanochat's warmdown_ratio)",
        gt=0,
        le=1,
    )
    weight_decay: float = _f(
        0.1,
        "decoupled weight decay of the hidden weight matrices (AdamW's, or Muon's with optimizer muon); "
        "never on norms, biases, embeddings",
        ge=0,
    )
    beta1: float = _f(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = _f(0.95, "AdamW beta2", ge=0, lt=1)
    adam_eps: float = _f(1e-8, "AdamW epsilon", gt=0)
    embedding_lr: float | None = _f(
        None, "peak learning rate of the embeddings (AdamW, no decay); null: learning_rate", gt=0
    )
    muon_lr: float = _f(0.02, "optimizer muon: peak learning rate of the hidden matrices", gt=0)
    muon_momentum: float = _f(0.95, "optimizer muon: Nesterov momentum", ge=0, lt=1)
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)", ge=0)
    mixed_precision: bool | str = _f(
        True,
        "false | bf16 | fp16 | true (true: the best the device has)",
        choices=(False, True, "bf16", "fp16"),
    )
    eval_interval: int = _f(250, "steps between evaluations", ge=1)
    eval_batches: int | None = _f(
        None, "cap on validation batches per evaluation (null: all fixed windows)", ge=1
    )
    log_interval: int = _f(10, "steps between metric logs", ge=1)
    save_interval: int = _f(500, "steps between checkpoints", ge=1)
    keep_last: int = _f(2, "periodic checkpoints kept besides 'best' and 'last'", ge=1)
    early_stopping_patience: int | None = _f(
        None, "evaluations without improvement before stopping (null: off)", ge=1
    )
    seed: int = _f(1337, "seed for initialisation, data split and batch sampling", ge=0, le=2**64 - 1)
    peak_flops: float | None = _f(
        None, "device peak FLOP/s for MFU (null: a known GPU's datasheet figure, else measured)", gt=0
    )
    sample_tokens: int = _f(200, "tokens generated as a sample at the end of training", ge=0)
    sample_prompt: str = _f("def ", "prompt for the end-of-training sample", allow_empty=True)
    muon_ns: str = _f(
        "quintic",
        "optimizer muon: orthogonalisation by 'quintic' (Newton-Schulz: one fixed polynomial, 5 steps) or "
        "'polar_express' (Polar Express: a tuned polynomial per step; modded-nanogpt record of Sep 2025)",
        choices=("quintic", "polar_express"),
    )
    normuon: bool = _f(
        False,
        "optimizer muon: NorMuon per-neuron normalisation of the orthogonalised update (second-moment EMA "
        "with beta2 per row; modded-nanogpt record of Oct 2025, nanochat)",
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "tokenizer": TokenizerConfig, "model": ModelConfig, "training": TrainingConfig
}  # fmt: skip
SPECIAL_TOKEN_ROLES = ("bos", "eos", "pad", "unk")


@functools.cache
def hints_of(cls: type) -> dict[str, Any]:
    """The resolved type of every field of a section class (``int``, ``str | None``, ``list[str]``...)."""
    return typing.get_type_hints(cls)


def fields_of(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """A section class's fields by name, in declaration order."""
    return {f.name: f for f in dataclasses.fields(cls)}


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as nested plain data (copies), the inverse of ``config_from_dict``."""
    return {section: dataclasses.asdict(getattr(config, section)) for section in SECTIONS}


def count_parameters(config: Config, vocab_size: int | None = None) -> int:
    """Parameters of the model `config` builds, from its resolved switches; embedding rows as the model takes
    them: model.vocab_size when set, else `vocab_size` (the loaded tokenizer's), else tokenizer.vocab_size.
    The speedrun switches add: value_embeds N tables of V * kv_heads * head_dim and two scalars in each of
    the 2N layers using them; skip_connections one scalar per skip (num_layers // 2); x0_mix two per block;
    bigram_buckets N rows of embed_dim and one scalar per block."""
    m = resolve_model(config.model)
    vocab = m.vocab_size or vocab_size or config.tokenizer.vocab_size
    d, ff, b, hd = m.embed_dim, m.ff_dim, int(bool(m.bias)), m.embed_dim // m.heads
    assert m.kv_heads is not None  # resolved

    norm = (d + b * d) if m.norm == "layernorm" else 0

    qkv = (m.heads + 2 * m.kv_heads) * hd
    block = (
        2 * norm
        + (d * qkv + b * qkv)  # queries, keys, values
        + (d * d + b * d)  # attention output
        + (d * ff + b * ff) + (ff * d + b * d)  # feed-forward
    )  # fmt: skip
    embeddings = vocab * d + (m.max_seq_len * d if m.positions == "learned" else 0)
    head = 0 if m.tie_embeddings else vocab * d
    speedrun = m.value_embeds * (vocab * m.kv_heads * hd + 4)  # tables, and (a, b) in two layers per table
    speedrun += (m.num_layers // 2 if m.skip_connections else 0) + (2 * m.num_layers if m.x0_mix else 0)
    speedrun += (m.bigram_buckets * d + m.num_layers) if m.bigram_buckets else 0  # table, a scalar per layer
    return embeddings + head + m.num_layers * block + norm * (1 + int(bool(m.embed_norm))) + speedrun


# ----------------------------------------------------------------------------------------------------------
# The reference (`python -m gptrs.config --describe`, docs/configuration.md)

DESCRIBE_WIDTH = 100  # the plain reference wraps its lines here: a terminal of 100 columns shows it whole
_GENERATED = "generated by `python -m gptrs.config --describe --markdown`; edit python/gptrs/config/schema.py"


def options(hint: Any) -> tuple[Any, ...]:
    """The types a field's hint allows: ``int | None`` -> (int, NoneType)."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _rows(section: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default as JSON, meaning) for every field of a section: int, 'str or null', list[str]."""
    cls, rows = SECTIONS[section], []
    for f in dataclasses.fields(cls):
        names = [
            str(t) if typing.get_origin(t) else "null" if t is type(None) else t.__name__
            for t in options(hints_of(cls)[f.name])
        ]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((f.name, " or ".join(names), json.dumps(default, ensure_ascii=False), f.metadata["help"]))
    return rows


_DOC_INTRO = """\
A run is configured by one YAML file with four sections: `data`, `tokenizer`, `model` and `training`.
Every key is optional and takes the default below when left out. The presets `small`, `default` and
`large` (GPT-2 recipe), `nanochat-small`, `nanochat-default` and `nanochat-large` (the modern recipe:
`model.arch: nanochat`, `training.optimizer: muon`) and `speedrun-small`, `-default`, `-large` (the modern
recipe with the speedrun switches of docs/speedrun.md) ship with the package (`python -m gptrs.config --list`;
`--config small` picks one from anywhere, and `configs/` in the repository links to them). A file is checked
when it is loaded; a problem stops the run with one line naming the file and the key, e.g.
`configs/x.yaml: model.heads: 5 does not divide model.embed_dim (128)`.

- Check a file: `python -m gptrs.config --check configs/small.yaml` (it prints the parameter count)
- Override from the command line: `python -m gptrs.train --set model.num_layers=4 --set training.mixed_precision=bf16`
  (values are read as YAML: `data.paths=[a.txt,b.txt]`; `tokenizer.special_tokens.unk=<|unk|>` sets one token)
- Show the resolved config: `python -m gptrs.config --show small --set model.num_layers=4`
- Convert a legacy JSON config: `python -m gptrs.convert_config --input config.json --output config.yaml`
"""


def describe(markdown: bool = False) -> str:
    """The reference of every key: plain text (``section.key: type = default``, the meaning indented below,
    wrapped at DESCRIBE_WIDTH), or with ``markdown`` the tables of docs/configuration.md."""
    if markdown:

        def cell(text: str, code: bool = False) -> str:
            text = text.replace("|", "\\|")  # a pipe would end the table cell, even inside backticks
            return text if code else text.replace("<", "&lt;").replace(">", "&gt;")

        out = ["# Configuration reference", "", f"<!-- {_GENERATED} -->", "", _DOC_INTRO]
        for section in SECTIONS:
            out += [f"## `{section}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
            out += [
                f"| `{cell(k, True)}` | {cell(t)} | `{cell(d, True)}` | {cell(h)} |"
                for k, t, d, h in _rows(section)
            ]
            out.append("")
        return "\n".join(out)
    lines = ["Every key of a gptrs config: section.key: type = default, and what it means."]
    wrap = functools.partial(textwrap.wrap, width=DESCRIBE_WIDTH, break_on_hyphens=False)
    for section in SECTIONS:
        lines.append("")
        for key, type_name, default, meaning in _rows(section):
            lines += wrap(f"{section}.{key}: {type_name} = {default}", subsequent_indent=" " * 8)
            lines += wrap(meaning, initial_indent=" " * 4, subsequent_indent=" " * 4)
    return "\n".join(lines) + "\n"
