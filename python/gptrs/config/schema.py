"""The configuration schema: four dataclass sections (data, tokenizer, model, training) and their reference.

Every field has a default and a one-line description (``field(metadata={"help": ...})``); its allowed values
sit next to it in the same metadata (``choices``, ``ge``/``gt``/``le``/``lt``, ``allow_empty``), so one table
drives both the validation (``validation.py``) and the reference that ``describe()`` prints. The count of
parameters a config gives (``count_parameters``) is here too: it is what the reference and ``--check`` show.
"""

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

__all__ = [
    "ARCH_DEFAULTS",
    "SECTIONS",
    "SPECIAL_TOKEN_ROLES",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TokenizerConfig",
    "TrainingConfig",
    "config_to_dict",
    "count_parameters",
    "describe",
    "fields_of",
    "hints_of",
    "resolve_model",
]


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


ARCHS = ("gpt2", "nanochat")
NANOCHAT_ROPE_THETA = 10000.0  # model.rope_theta null: nanochat's (and transformers' NanoChatConfig's) base
NANOCHAT_LOGIT_SOFTCAP = 15.0  # model.logit_softcap null: nanochat's cap


@dataclass
class ModelConfig:
    arch: str = _f(
        "gpt2",
        "shorthand for the switches below left null: 'gpt2' (learned positions, LayerNorm, GELU, biases, "
        "tied LM head) or 'nanochat' (rotary positions, parameter-free RMSNorm also after the embedding, "
        "QK-norm, ReLU^2, no biases, untied LM head, logits soft-capped at 15, zero-initialised projections)",
        choices=ARCHS,
    )
    embed_dim: int = _f(128, "width of the residual stream (d_model)", ge=1)
    ff_dim: int = _f(512, "hidden width of the feed-forward layer (usually 4 * embed_dim)", ge=1)
    num_layers: int = _f(5, "number of transformer blocks", ge=1)
    heads: int = _f(4, "attention heads; must divide embed_dim", ge=1)
    max_seq_len: int = _f(256, "context length (block size) in tokens", ge=1)
    dropout: float = _f(0.0, "dropout probability in [0, 1)", ge=0, lt=1)
    positions: str | None = _f(
        None,
        "'learned' position table (GPT-2) or 'rotary' (RoPE); null: from arch",
        choices=("learned", "rotary", None),
    )
    norm: str | None = _f(
        None,
        "'layernorm' (learned gains, biases per model.bias) or 'rmsnorm' (parameter-free); null: from arch",
        choices=("layernorm", "rmsnorm", None),
    )
    embed_norm: bool | None = _f(
        None, "normalise the token embedding before the first block; null: from arch"
    )
    qk_norm: bool | None = _f(None, "normalise queries and keys before attention (QK-norm); null: from arch")
    bias: bool | None = _f(None, "biases in Linear layers and LayerNorms; null: from arch")
    activation: str | None = _f(
        None,
        "feed-forward activation: 'gelu' (exact), 'gelu_tanh' (GPT-2's approximation) or 'relu2' "
        "(relu(x)^2); null: from arch",
        choices=("gelu", "gelu_tanh", "relu2", None),
    )
    tie_embeddings: bool | None = _f(
        None, "the LM head shares the token embedding's weights; null: from arch"
    )
    init: str | None = _f(
        None,
        "'gpt2' (N(0, 0.02), residual projections scaled by 1/sqrt(2 * num_layers)) or 'nanochat' (fan-in "
        "scaled, N(0, 1) embeddings, zero LM head and residual projections); null: from arch",
        choices=("gpt2", "nanochat", None),
    )
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
    vocab_size: int | None = _f(
        None, "embedding rows; null takes the tokenizer's vocabulary size", ge=1, le=2**32
    )
    kv_heads: int | None = _f(
        None, "key/value heads, dividing heads (fewer: grouped-query attention); null: heads", ge=1
    )
    rope_theta: float | None = _f(
        None, f"rotary base frequency (positions rotary); null: {NANOCHAT_ROPE_THETA:g}", gt=0
    )
    logit_softcap: float | None = _f(
        None,
        "final logits become c * tanh(logits / c); 0: no cap; null: from arch (gpt2 0, nanochat 15)",
        ge=0,
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


# What ``model.arch`` stands for: the value of every switch it leaves null.
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "gpt2": dict(
        positions="learned",
        norm="layernorm",
        embed_norm=False,
        qk_norm=False,
        bias=True,
        activation="gelu",
        tie_embeddings=True,
        init="gpt2",
        logit_softcap=0.0,
    ),
    "nanochat": dict(
        positions="rotary",
        norm="rmsnorm",
        embed_norm=True,
        qk_norm=True,
        bias=False,
        activation="relu2",
        tie_embeddings=False,
        init="nanochat",
        logit_softcap=NANOCHAT_LOGIT_SOFTCAP,
    ),
}


def resolve_model(mc: ModelConfig) -> ModelConfig:
    """A copy of ``mc`` with every switch concrete: null switches take ``model.arch``'s values."""
    fill = {k: v for k, v in ARCH_DEFAULTS[mc.arch].items() if getattr(mc, k) is None}
    fill["kv_heads"] = mc.kv_heads or mc.heads
    fill["rope_theta"] = NANOCHAT_ROPE_THETA if mc.rope_theta is None else mc.rope_theta
    return dataclasses.replace(mc, **fill)


@dataclass
class TrainingConfig:
    batch_size: int = _f(16, "sequences per micro-batch (per process)", ge=1)
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
    min_lr: float = _f(3e-4, "floor of the cosine decay (other optimizer groups follow in proportion)", ge=0)
    warmup_steps: int = _f(100, "linear warmup steps; must be < max_steps", ge=0)
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
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
}
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
    """Parameters of the model `config` builds, counted analytically.

    Embedding rows as the model factory picks them: model.vocab_size when set, else `vocab_size` (the loaded
    tokenizer's, if given), else tokenizer.vocab_size. For arch gpt2 (LM head tied to the token embedding):

    token embedding V*d + learned positions T*d
    + per block: 2 LayerNorms, qkv (3d^2 + 3d), attention out (d^2 + d), fc (d*ff + ff), fc out (ff*d + d)
    + final LayerNorm. Without biases the LayerNorms have weights only and the Linear layers no bias terms.

    For arch nanochat (no biases, parameter-free norms, no position table, untied LM head): token embedding
    V*d + LM head V*d + per block: queries and attention out (2 d^2), keys and values (2 d * kv_heads *
    head_dim), fc and fc out (2 d*ff).

    The speedrun switches add: value_embeds N tables of V * kv_heads * head_dim and two scalars in each of
    the 2N layers using them; skip_connections one scalar per skip (num_layers // 2); x0_mix two per block.
    """
    m = resolve_model(config.model)
    vocab = m.vocab_size or vocab_size or config.tokenizer.vocab_size
    d, ff, b = m.embed_dim, m.ff_dim, int(bool(m.bias))
    assert m.kv_heads is not None
    qkv = (m.heads + 2 * m.kv_heads) * (d // m.heads)
    norm = (d + b * d) if m.norm == "layernorm" else 0
    block = 2 * norm + (d * qkv + b * qkv) + (d * d + b * d) + (d * ff + b * ff) + (ff * d + b * d)
    embed = vocab * d * (1 if m.tie_embeddings else 2) + (
        m.max_seq_len * d if m.positions == "learned" else 0
    )
    kv_dim = m.kv_heads * (d // m.heads)
    speedrun = m.value_embeds * (vocab * kv_dim + 4)  # tables, and (a, b) in two layers per table
    speedrun += (m.num_layers // 2 if m.skip_connections else 0) + (2 * m.num_layers if m.x0_mix else 0)
    return embed + m.num_layers * block + norm + (norm if m.embed_norm else 0) + speedrun


# ----------------------------------------------------------------------------------------------------------
# The reference (`python -m gptrs.config --describe`, docs/configuration.md)

DESCRIBE_WIDTH = 100  # the plain reference wraps its lines here: a terminal of 100 columns shows it whole


def _type_name(hint: Any) -> str:
    """The type as the reference shows it: int, float, str, list[str], 'int or null'."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return str(hint) if origin else hint.__name__


def _rows() -> list[tuple[str, str, str, str, str]]:
    """(section, key, type, default as JSON, meaning) for every field."""
    rows = []
    for section, cls in SECTIONS.items():
        hints = hints_of(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            rows.append(
                (
                    section,
                    f.name,
                    _type_name(hints[f.name]),
                    json.dumps(default, ensure_ascii=False),
                    f.metadata["help"],
                )
            )
    return rows


_DOC_INTRO = """\
A run is configured by one YAML file with four sections: `data`, `tokenizer`, `model` and `training`.
Every key is optional and takes the default below when left out. The presets `small`, `default` and
`large` (GPT-2 recipe) and `nanochat-small`, `nanochat-default` and `nanochat-large` (the modern recipe:
`model.arch: nanochat`, `training.optimizer: muon`, at the same parameter budgets) ship with the package (`python -m gptrs.config --list`; `--config small` picks one from anywhere,
and `configs/` in the repository links to them). A file is checked when it is loaded: an unknown key
(with a "did you mean" suggestion), a wrong type or an out-of-range value stops the run with one line
naming the file and the key, e.g. `configs/x.yaml: model.heads: 5 does not divide model.embed_dim (128)`.

- Check a file: `python -m gptrs.config --check configs/small.yaml`
- Override from the command line: `python -m gptrs.train --set model.num_layers=4 --set training.mixed_precision=bf16`
  (values are read as YAML: `data.paths=[a.txt,b.txt]`; `tokenizer.special_tokens.unk=<|unk|>` sets one token)
- Show the resolved config: `python -m gptrs.config --show small --set model.num_layers=4`
- Convert a legacy JSON config: `python -m gptrs.convert_config --input config.json --output config.yaml`

Rules between keys: `model.heads` divides `model.embed_dim`; `training.warmup_steps` < `training.max_steps`
(unless `training.epochs` is set, which needs `data.sampling: epochs`); `training.min_lr` <=
`training.learning_rate`; `tokenizer.vocab_size` >= 256 + the number of special tokens + 1;
`model.vocab_size`, when set, >= `tokenizer.vocab_size`; source `files` needs `data.paths`, source `hub`
needs `data.dataset_name` (and neither is accepted with another source); `data.separator` names a special
token that exists; `data.max_eval_tokens` covers at least one window of `model.max_seq_len + 1` tokens.
`model.arch: nanochat` needs `model.bias: false`, `model.activation: relu2`, `model.dropout: 0` and
`model.attention: sdpa`, an even head size (`embed_dim / heads`), and `model.kv_heads` dividing
`model.heads`; `model.arch: gpt2` refuses `relu2` and any of `model.kv_heads`, `model.rope_theta`,
`model.logit_softcap` (nanochat's keys; leave them null).

Parameter counts (`gptrs.config.count_parameters`, what `--check` prints) count every parameter once:
the token embedding (V x d, tied to the LM head), learned positions (T x d), per block two LayerNorms,
the fused QKV projection (3d^2 + 3d), the attention output (d^2 + d), the feed-forward layers
(d x ff + ff and ff x d + d), and the final LayerNorm. For `model.arch: nanochat`: the token embedding and
the untied LM head (2 x V x d), per block the query and output projections (2d^2), the key and value
projections (2 x d x kv_heads x head_size) and the feed-forward layers (2 x d x ff); its norms have no
parameters and rotary positions none.
"""


def _markdown(rows: list[tuple[str, str, str, str, str]]) -> str:
    def cell(text: str, code: bool = False) -> str:
        text = text.replace("|", "\\|")  # a pipe would end the table cell, even inside backticks
        return text if code else text.replace("<", "&lt;").replace(">", "&gt;")

    out = [
        "# Configuration reference",
        "",
        "<!-- generated by `python -m gptrs.config --describe --markdown`; edit python/gptrs/config/schema.py -->",
        "",
        _DOC_INTRO,
    ]
    for section in SECTIONS:
        out += [f"## `{section}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        out += [
            f"| `{cell(k, True)}` | {cell(t)} | `{cell(d, True)}` | {cell(h)} |"
            for s, k, t, d, h in rows
            if s == section
        ]
        out.append("")
    return "\n".join(out)


def describe(markdown: bool = False) -> str:
    """The configuration reference: every key with its type, default and meaning.

    Plain text: one entry per key, ``section.key: type = default`` and the meaning indented below it, lines
    wrapped at ``DESCRIBE_WIDTH``; a blank line between sections. ``markdown``: the tables of
    docs/configuration.md.
    """
    rows = _rows()
    if markdown:
        return _markdown(rows)
    lines = ["Every key of a gptrs config: section.key: type = default, and what it means."]
    for section in SECTIONS:
        lines.append("")
        for s, key, type_name, default, meaning in rows:
            if s != section:
                continue
            head = f"{section}.{key}: {type_name} = {default}"
            lines += textwrap.wrap(head, DESCRIBE_WIDTH, subsequent_indent=" " * 8, break_on_hyphens=False)
            lines += textwrap.wrap(
                meaning,
                DESCRIBE_WIDTH,
                initial_indent=" " * 4,
                subsequent_indent=" " * 4,
                break_on_hyphens=False,
            )
    return "\n".join(lines) + "\n"
