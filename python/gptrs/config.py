"""Run configuration: dataclass sections (data, tokenizer, model, training) read from YAML and validated.

Every field has a default and a one-line description (``field(metadata={"help": ...})``); its allowed values
sit next to it in the same metadata (``choices``, ``ge``/``gt``/``le``/``lt``), so one table drives both the
validation and the reference that ``python -m gptrs.config --describe`` prints.

    cfg = load_config("configs/small.yaml")                  # ConfigError names the file and the key path
    cfg = apply_overrides(cfg, ["model.num_layers=4"])       # what `--set` does on the command line
    save_config(cfg, "run/config.yaml")                      # atomic: temp file + os.replace

Every problem is one line, ``<file>: <section>.<key>: <what is wrong>``, e.g.
``configs/x.yaml: model.heads: 5 does not divide model.embed_dim (128)``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import functools
import json
import math
import os
import re
import stat
import sys
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gptrs.errors import ConfigError, GptrsError


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
        131072, "cap on validation tokens covered by the fixed evaluation windows", ge=1
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


@dataclass
class ModelConfig:
    embed_dim: int = _f(128, "width of the residual stream (d_model)", ge=1)
    ff_dim: int = _f(512, "hidden width of the feed-forward layer (usually 4 * embed_dim)", ge=1)
    num_layers: int = _f(5, "number of transformer blocks", ge=1)
    heads: int = _f(4, "attention heads; must divide embed_dim", ge=1)
    max_seq_len: int = _f(256, "context length (block size) in tokens", ge=1)
    dropout: float = _f(0.0, "dropout probability in [0, 1)", ge=0, lt=1)
    bias: bool = _f(True, "use biases in Linear and LayerNorm layers (GPT-2 does)")
    activation: str = _f(
        "gelu",
        "feed-forward activation: 'gelu' (exact) or 'gelu_tanh' (GPT-2's approximation)",
        choices=("gelu", "gelu_tanh"),
    )
    attention: str = _f(
        "sdpa",
        "attention implementation: 'sdpa' (fused) or 'reference' (explicit mask+softmax)",
        choices=("sdpa", "reference"),
    )
    gradient_checkpointing: bool = _f(False, "recompute each block's activations in backward to save memory")
    compile: bool = _f(False, "wrap the model in torch.compile")
    vocab_size: int | None = _f(None, "embedding rows; null takes the tokenizer's vocabulary size", le=2**32)


@dataclass
class TrainingConfig:
    batch_size: int = _f(16, "sequences per micro-batch (per process)", ge=1)
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step", ge=1)
    max_steps: int = _f(2000, "optimizer steps to train for", ge=1)
    epochs: int | None = _f(
        None, "with data.sampling 'epochs': passes over the training tokens (overrides max_steps)", ge=1
    )
    learning_rate: float = _f(3e-3, "peak learning rate after warmup", gt=0)
    min_lr: float = _f(3e-4, "floor of the cosine decay", ge=0)
    warmup_steps: int = _f(100, "linear warmup steps; must be < max_steps", ge=0)
    weight_decay: float = _f(0.1, "AdamW weight decay (not applied to norms, biases, embeddings)", ge=0)
    beta1: float = _f(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = _f(0.95, "AdamW beta2", ge=0, lt=1)
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
    peak_flops: float | None = _f(None, "device peak FLOP/s for MFU (null: measured at start-up)", gt=0)
    sample_tokens: int = _f(200, "tokens generated as a sample at the end of training", ge=0)
    sample_prompt: str = _f("def ", "prompt for the end-of-training sample", allow_empty=True)


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
MAX_CONFIG_BYTES = 1 << 20  # no real config comes near this; a bigger file is a mistake, not a config

__all__ = [
    "SECTIONS",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TokenizerConfig",
    "TrainingConfig",
    "apply_overrides",
    "check_model",
    "config_from_dict",
    "config_to_dict",
    "count_parameters",
    "describe",
    "load_config",
    "save_config",
    "validate",
]


# ----------------------------------------------------------------------------------------------------------
# Problems and how they are shown


class _Problem(Exception):
    """A validation failure at a key path; becomes a ConfigError once the source (file, --set) is known."""

    def __init__(
        self, key: str, message: str, related: tuple[str, ...] = (), plain: str | None = None
    ) -> None:
        super().__init__(message)
        self.key = key  # "model.heads", or "" for the whole file
        self.message = message
        self.related = related  # other keys the problem involves (used to blame the right --set)
        self.plain = plain or f"{key} {message}"  # the problem where there is no source (check_model)

    def error(self, source: str, key: str | None = None) -> ConfigError:
        key = self.key if key is None else key
        return ConfigError(
            _one_line(f"{source}: {key}: {self.message}" if key else f"{source}: {self.message}")
        )


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    """A value as the user wrote it (YAML spelling): 5, 0.1, true, null, 'text'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _clip(repr(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return _clip(str(value), 40)
    return _clip(repr(value))


def _what(value: Any) -> str:
    """A value with its kind, for type errors: 'the string '4'', '4.5', 'a list'."""
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__}"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None or isinstance(value, (bool, int, float)):
        return _show(value)
    return f"a {type(value).__name__}"


def _name(key: Any) -> str:
    """A key as shown in a key path; odd ones (spaces, newlines, very long) are quoted."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_\-]{1,60}", key):
        return key
    return _show(key)


def _suggest(word: str, options: Iterable[str]) -> str | None:
    by_lower = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None


# ----------------------------------------------------------------------------------------------------------
# Types: what each field accepts


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names, or TypeError. An int passes for a float; a bool never passes for an int."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            with contextlib.suppress(TypeError):
                return _coerce(value, arg)
        raise TypeError
    if hint is type(None) and value is None:
        return None
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        # Ints past float range become inf, which the finiteness check then reports.
        if isinstance(value, int) and abs(value) >= 2**1023:
            return math.inf if value > 0 else -math.inf
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(hint)
        return [_coerce(v, item) for v in value]
    if origin is dict and isinstance(value, Mapping):
        k_hint, v_hint = typing.get_args(hint)
        return {_coerce(k, k_hint): _coerce(v, v_hint) for k, v in value.items()}
    raise TypeError


def _expected(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in typing.get_args(hint))
    if origin is list:
        return "a list of strings"
    if origin is dict:
        return "a mapping of strings to strings"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names[hint]


def _type_name(hint: Any) -> str:
    """The type as the reference shows it: int, float, str, list[str], 'int or null'."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return str(hint) if origin else hint.__name__


def _choices_message(value: Any, choices: Sequence[Any]) -> str:
    message = f"{_show(value)} is not one of {', '.join(_show(c) for c in choices)}"
    if isinstance(value, str):
        hint = _suggest(value, [c for c in choices if isinstance(c, str)])
        if hint is not None:
            message += f"; did you mean {_show(hint)}?"
    return message


def _typed(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Convert one field's value, or raise a _Problem that points at the offending element."""
    try:
        return _coerce(value, hint)
    except TypeError:
        pass
    origin = typing.get_origin(hint)
    if origin is list and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _Problem(f"{key}[{i}]", f"expected a string, got {_what(item)}")
    if origin is dict and isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Problem(key, f"keys must be strings, got {_what(k)}")
            if not isinstance(v, str):
                raise _Problem(f"{key}.{_name(k)}", f"expected a string, got {_what(v)}")
    if "choices" in meta:
        raise _Problem(key, _choices_message(value, meta["choices"]))
    raise _Problem(key, f"expected {_expected(hint)}, got {_what(value)}")


# ----------------------------------------------------------------------------------------------------------
# Building a Config from plain data (YAML, JSON, --set)


def _unknown_section(name: str) -> _Problem:
    qualified = {f"{s}.{f}": f for s, cls in SECTIONS.items() for f in _fields(cls)}
    owners = [q for q, f in qualified.items() if f == name]
    if owners:  # a flat key at the top level, e.g. `embed_dim: 128`
        return _Problem(
            _name(name), f"unknown section; did you mean {owners[0]}? (keys go under their section)"
        )
    hint = _suggest(name, SECTIONS)
    if hint:
        return _Problem(_name(name), f"unknown section; did you mean {hint}?")
    return _Problem(_name(name), f"unknown section (sections: {', '.join(SECTIONS)})")


def _unknown_key(section: str, key: str) -> _Problem:
    path = f"{section}.{_name(key)}"
    hint = _suggest(key, _fields(SECTIONS[section]))
    if hint:
        return _Problem(path, f"unknown key; did you mean {section}.{hint}?")
    elsewhere = {f"{s}.{f}": f for s, cls in SECTIONS.items() if s != section for f in _fields(cls)}
    for qualified, name in elsewhere.items():
        if name == key:
            return _Problem(path, f"unknown key; did you mean {qualified}?")
    hint = _suggest(key, elsewhere.values())
    if hint:
        owner = next(q for q, f in elsewhere.items() if f == hint)
        return _Problem(path, f"unknown key; did you mean {owner}?")
    return _Problem(path, f"unknown key ({section} keys: {', '.join(_fields(SECTIONS[section]))})")


def _build_section(section: str, body: Any) -> Any:
    cls = SECTIONS[section]
    if body is None:  # a section whose keys are all commented out
        body = {}
    if not isinstance(body, Mapping):
        raise _Problem(section, f"expected a mapping of keys, got {_what(body)}")
    fields, hints = _fields(cls), _hints(cls)
    kwargs = {}
    for key, value in body.items():
        if not isinstance(key, str):
            raise _Problem(section, f"keys must be strings, got {_what(key)}")
        if key not in fields:
            raise _unknown_key(section, key)
        kwargs[key] = _typed(f"{section}.{key}", value, hints[key], fields[key].metadata)
    return cls(**kwargs)


def _build(data: Any) -> Config:
    if not isinstance(data, Mapping):
        raise _Problem(
            "", f"expected a mapping with sections {', '.join(SECTIONS)} at the top, got {_what(data)}"
        )
    sections = {}
    for name, body in data.items():
        if not isinstance(name, str):
            raise _Problem("", f"section names must be strings, got {_what(name)}")
        if name not in SECTIONS:
            raise _unknown_section(name)
        sections[name] = _build_section(name, body)
    return Config(**sections)


def _check_types(config: Any) -> None:
    """For a Config built in Python: every section is the right class and every field the right type."""
    if not isinstance(config, Config):
        raise _Problem("", f"expected a gptrs.config.Config, got {_what(config)}")
    for section, cls in SECTIONS.items():
        body = getattr(config, section)
        if not isinstance(body, cls):
            raise _Problem(section, f"expected a {cls.__name__}, got {_what(body)}")
        hints = _hints(cls)
        for name, f in _fields(cls).items():
            _typed(f"{section}.{name}", getattr(body, name), hints[name], f.metadata)


# ----------------------------------------------------------------------------------------------------------
# Values: ranges, choices and the rules that tie fields together


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**64 else repr(x)


def _check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and not any(type(value) is type(c) and value == c for c in choices):
        raise _Problem(key, _choices_message(value, choices))
    if isinstance(value, float) and not math.isfinite(value):
        raise _Problem(key, f"must be a finite number, got {_show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo = meta.get("ge", meta.get("gt"))
        hi = meta.get("le", meta.get("lt"))
        too_low = lo is not None and (value < lo if "ge" in meta else value <= lo)
        too_high = hi is not None and (value > hi if "le" in meta else value >= hi)
        if too_low or too_high:
            if lo is not None and hi is not None:
                interval = (
                    f"{'[' if 'ge' in meta else '('}{_num(lo)}, {_num(hi)}{']' if 'le' in meta else ')'}"
                )
                raise _Problem(key, f"must be in {interval}, got {_show(value)}")
            op, bound = (
                (">=" if "ge" in meta else ">", lo) if too_low else ("<=" if "le" in meta else "<", hi)
            )
            raise _Problem(key, f"must be {op} {_num(bound)}, got {_show(value)}")
    if isinstance(value, list):
        strings = [(f"{key}[{i}]", s) for i, s in enumerate(value)]
    elif isinstance(value, dict):
        strings = [(f"{key}.{_name(k)}", s) for k, v in value.items() for s in (k, v)]
    else:
        strings = [(key, value)]
    for where, s in strings:
        if not isinstance(s, str):
            continue
        if not s and not meta.get("allow_empty"):
            raise _Problem(where, "must not be empty")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _Problem(
                where, f"contains a lone surrogate at index {e.start}; not valid Unicode text"
            ) from None


def _check_values(cfg: Config) -> None:
    for section, cls in SECTIONS.items():
        body = getattr(cfg, section)
        for name, f in _fields(cls).items():
            _check_field(f"{section}.{name}", getattr(body, name), f.metadata)
    _check_relations(cfg)


def _check_relations(cfg: Config) -> None:
    """Rules between fields; each names the key to change and shows the other one's value."""
    d, tok, m, t = cfg.data, cfg.tokenizer, cfg.model, cfg.training

    if d.source == "files" and not d.paths:
        raise _Problem("data.paths", "data.source 'files' needs at least one path", ("data.source",))
    if d.source != "files" and d.paths:
        raise _Problem(
            "data.paths", f"only used with data.source 'files' (it is {d.source!r})", ("data.source",)
        )
    if d.source == "hub" and d.dataset_name is None:
        raise _Problem("data.dataset_name", "data.source 'hub' needs a dataset name", ("data.source",))
    if d.source != "hub" and d.dataset_name is not None:
        raise _Problem(
            "data.dataset_name", f"only used with data.source 'hub' (it is {d.source!r})", ("data.source",)
        )
    if d.max_eval_tokens < m.max_seq_len + 1:
        raise _Problem(
            "data.max_eval_tokens",
            f"{d.max_eval_tokens} is less than one evaluation window (model.max_seq_len + 1 = {m.max_seq_len + 1})",
            ("model.max_seq_len",),
        )

    seen: dict[str, str] = {}
    for role, token in tok.special_tokens.items():
        key = f"tokenizer.special_tokens.{_name(role)}"
        if role not in SPECIAL_TOKEN_ROLES:
            hint = _suggest(role, SPECIAL_TOKEN_ROLES)
            extra = f"; did you mean {hint}?" if hint else f" (roles: {', '.join(SPECIAL_TOKEN_ROLES)})"
            raise _Problem(key, f"unknown role{extra}")
        if not token:
            raise _Problem(key, "must not be empty")
        if token in seen:
            raise _Problem(key, f"{_show(token)} is also the {seen[token]} token")
        seen[token] = role
    if d.separator not in tok.special_tokens:
        raise _Problem(
            "data.separator",
            f"{d.separator!r} needs a tokenizer.special_tokens.{d.separator} token",
            ("tokenizer.special_tokens",),
        )
    smallest = 256 + len(tok.special_tokens) + 1
    why = f"256 bytes + {len(tok.special_tokens)} special tokens + 1 merge"
    if tok.vocab_size < smallest:
        raise _Problem(
            "tokenizer.vocab_size", f"{tok.vocab_size} is too small: needs at least {smallest} ({why})"
        )

    _check_model(m)
    if m.vocab_size is not None:
        if m.vocab_size < smallest:
            raise _Problem(
                "model.vocab_size", f"{m.vocab_size} is too small: needs at least {smallest} ({why})"
            )
        if tok.path is None and m.vocab_size < tok.vocab_size:
            raise _Problem(
                "model.vocab_size",
                f"{m.vocab_size} is smaller than tokenizer.vocab_size ({tok.vocab_size})",
                ("tokenizer.vocab_size",),
            )

    if t.epochs is not None and d.sampling != "epochs":
        raise _Problem(
            "training.epochs", f"needs data.sampling 'epochs' (it is {d.sampling!r})", ("data.sampling",)
        )
    if t.epochs is None and t.warmup_steps >= t.max_steps:
        raise _Problem(
            "training.warmup_steps",
            f"{t.warmup_steps} must be less than training.max_steps ({t.max_steps})",
            ("training.max_steps",),
        )
    if t.min_lr > t.learning_rate:
        raise _Problem(
            "training.min_lr",
            f"{_show(t.min_lr)} is greater than training.learning_rate ({_show(t.learning_rate)})",
            ("training.learning_rate",),
        )
    if t.sample_tokens > 0 and not t.sample_prompt:
        raise _Problem(
            "training.sample_prompt",
            "must not be empty when training.sample_tokens > 0 (set it to 0 to skip the sample)",
            ("training.sample_tokens",),
        )


def _check_model(m: ModelConfig) -> None:
    """The shapes a model can be built with (raises _Problem). For a whole Config the field checks have
    already covered all but the heads rule; a ModelConfig built in Python (GPT's constructor) meets them here."""
    for name in ("embed_dim", "ff_dim", "num_layers", "heads", "max_seq_len"):
        value = getattr(m, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _Problem(f"model.{name}", f"must be a positive integer, got {value!r}")
    if m.embed_dim % m.heads:
        raise _Problem(
            "model.heads",
            f"{m.heads} does not divide model.embed_dim ({m.embed_dim})",
            ("model.embed_dim",),
            plain=f"model.heads ({m.heads}) must divide model.embed_dim ({m.embed_dim})",
        )
    if not 0.0 <= m.dropout < 1.0:
        raise _Problem("model.dropout", f"must be in [0, 1), got {m.dropout!r}")
    for name in ("activation", "attention"):
        choices, value = _fields(ModelConfig)[name].metadata["choices"], getattr(m, name)
        if value not in choices:
            raise _Problem(f"model.{name}", f"must be one of {', '.join(choices)}, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Public API


def check_model(mc: ModelConfig) -> None:
    """Raise ConfigError (one line naming the field) unless a model can be built with ``mc`` (its
    ``vocab_size`` resolved): the model's shape rules, in one place; validating a Config applies them too."""
    vocab = mc.vocab_size  # may be null in a Config (the tokenizer's); a model needs it
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ConfigError(f"model.vocab_size must be a positive integer, got {vocab!r}")
    try:
        _check_model(mc)
    except _Problem as p:
        raise ConfigError(p.plain) from None


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    """A validated Config from nested plain data ({"model": {"heads": 4}, ...}); missing keys take defaults."""
    try:
        cfg = _build(data)
        _check_values(cfg)
    except _Problem as p:
        raise p.error(source) from None
    return cfg


def config_to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """The config as nested plain data (copies), the inverse of config_from_dict."""
    return {section: dataclasses.asdict(getattr(config, section)) for section in SECTIONS}


def validate(config: Config, source: str = "<overrides>") -> None:
    """Check a Config built or changed in Python by the same rules as a file; raise ConfigError naming `source`."""
    try:
        _check_types(config)
        _check_values(config)
    except _Problem as p:
        raise p.error(source) from None


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 3e-4 as a float (YAML 1.1 wants 3.0e-4) and refuses duplicate keys."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings _Loader would read as floats ('1e5')."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        with contextlib.suppress(TypeError):  # unhashable keys: the base constructor reports them
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_show(key)}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no Python objects are built
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = e.problem or e.context
        # Some problems only make sense after their context: "expected a single document ... but found another"
        if e.problem and e.problem.startswith("but ") and e.context:
            problem = f"{e.context} {e.problem}"
        raise ConfigError(_one_line(f"{source}: {where}invalid YAML: {problem}")) from None
    except yaml.reader.ReaderError as e:  # a control character; the reader reports a character offset
        line = text.count("\n", 0, e.position) + 1
        raise ConfigError(
            f"{source}: line {line}: invalid YAML: unacceptable character #x{e.character:04x}: {e.reason}"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(_one_line(f"{source}: invalid YAML: {e}")) from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def _read_text(path: str | os.PathLike[str], source: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The file's text, or a one-line ConfigError: missing, a directory, not a regular file, too big, not UTF-8."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{source}: is a directory, not a config file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block or never end
            raise ConfigError(f"{source}: not a regular file")
        if st.st_size > limit:
            raise ConfigError(f"{source}: {st.st_size} bytes is too large for a config file (limit {limit})")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{source}: no such file") from None
    except OSError as e:
        raise ConfigError(_one_line(f"{source}: cannot read: {e.strerror or e}")) from None
    if len(raw) > limit:
        raise ConfigError(f"{source}: more than {limit} bytes is too large for a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, start) + 1
        raise ConfigError(f"{source}: line {line}: not UTF-8 text (byte 0x{raw[start]:02x})") from None
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty")
    return text


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config; any problem is a one-line ConfigError naming the file and key path."""
    source = os.fspath(path)
    data = _parse_yaml(_read_text(path, source), source)
    if data is None:
        raise ConfigError(f"{source}: the file has no settings, only comments")
    return config_from_dict(data, source)


def _dump_yaml(data: dict[str, Any]) -> str:
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    if yaml.load(text, Loader=_Loader) != data:  # PyYAML mangles a few characters (NEL, U+0085) unescaped
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=False, width=1000)
    return text


def save_config(config: Config, path: str | os.PathLike[str], comment: str | None = None) -> None:
    """Validate and write `config` as YAML, atomically (temp file, fsync, os.replace): never half-written."""
    path = Path(path)
    validate(config, source=str(path))
    header = "# gptrs configuration; `python -m gptrs.config --describe` explains every key.\n"
    if comment:
        header += "".join(f"# {line}\n" for line in comment.splitlines())
    body = _dump_yaml(config_to_dict(config))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(header + body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _parse_override_value(raw: str, hint: Any) -> Any:
    """A --set value: YAML for numbers, bools and lists; strings as typed (YAML would strip `def ` to `def`)."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    quoted = raw[:1] in ("'", '"')
    if str in args and bool not in args and not quoted:
        if type(None) in args and raw.strip() in ("", "null", "~"):
            return None
        return raw
    return yaml.load(raw, Loader=_Loader) if raw.strip() else None


def apply_overrides(config: Config, overrides: Sequence[str], source: str = "--set") -> Config:
    """A new Config with `section.key=value` overrides applied (values read as YAML), validated as a whole.

    `tokenizer.special_tokens.unk=<|unk|>` sets one special token (`=null` removes it). A malformed override,
    an unknown key or a wrong type is a ConfigError naming that override: `--set model.heads=x: model.heads: ...`.
    """
    data = config_to_dict(config)
    keys: list[tuple[str, str]] = []  # (key path, the override as typed), to blame the right one at the end
    for item in overrides:
        where = f"{source} {_clip(item, 80)}"
        key, sep, raw = item.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or len(parts) not in (2, 3) or not all(parts):
            raise ConfigError(_one_line(f"{where}: expected section.key=value, e.g. model.num_layers=4"))
        section, name = parts[0], parts[1]
        try:
            if section not in SECTIONS:
                raise _unknown_section(section)
            fields = _fields(SECTIONS[section])
            if name not in fields:
                raise _unknown_key(section, name)
            hint, meta = _hints(SECTIONS[section])[name], fields[name].metadata
            if len(parts) == 3 and typing.get_origin(hint) is not dict:
                raise _Problem(f"{section}.{name}", f"has no sub-key {_name(parts[2])}")
            target_hint = typing.get_args(hint)[1] | None if len(parts) == 3 else hint
            try:
                value = _parse_override_value(raw, target_hint)
            except (yaml.YAMLError, RecursionError) as e:
                problem = getattr(e, "problem", None) or str(e)
                raise _Problem(key, f"cannot read value {_show(raw)} as YAML: {problem}") from None
            if len(parts) == 3:
                table = dict(data[section][name])
                if value is None:
                    table.pop(parts[2], None)
                else:
                    table[parts[2]] = _typed(key, value, str, {})
                value, key = table, f"{section}.{name}"
            data[section][name] = _typed(key, value, hint, meta)
        except _Problem as p:
            raise p.error(where) from None
        keys.append((key, item))
    cfg = Config(**{s: SECTIONS[s](**data[s]) for s in SECTIONS})
    try:
        _check_types(cfg)  # the base config may have been built (wrongly) in Python
        _check_values(cfg)
    except _Problem as p:
        # Blame the last override that set the key at fault (or one it involves); else the whole --set.
        involved = (p.key.split("[")[0], *p.related)
        culprit = next(
            (
                item
                for key, item in reversed(keys)
                if any(k == key or k.startswith(key + ".") for k in involved)
            ),
            None,
        )
        raise p.error(f"{source} {_clip(culprit, 80)}" if culprit else source) from None
    return cfg


def count_parameters(config: Config, vocab_size: int | None = None) -> int:
    """Parameters of our GPT for `config`, counted analytically; the LM head is tied to the token embedding.

    Embedding rows as GPT.from_config picks them: model.vocab_size when set, else `vocab_size` (the loaded
    tokenizer's, if given), else tokenizer.vocab_size. The count:

    token embedding V*d + learned positions T*d
    + per block: 2 LayerNorms, qkv (3d^2 + 3d), attention out (d^2 + d), fc (d*ff + ff), fc out (ff*d + d)
    + final LayerNorm. Without biases the LayerNorms have weights only and the Linear layers no bias terms.
    """
    m = config.model
    vocab = m.vocab_size or vocab_size or config.tokenizer.vocab_size
    d, ff, b = m.embed_dim, m.ff_dim, int(m.bias)
    norm = d + b * d
    block = 2 * norm + (3 * d * d + b * 3 * d) + (d * d + b * d) + (d * ff + b * ff) + (ff * d + b * d)
    return vocab * d + m.max_seq_len * d + m.num_layers * block + norm


# ----------------------------------------------------------------------------------------------------------
# The reference (`--describe`) and the CLI


def _rows() -> list[tuple[str, str, str, str, str]]:
    rows = []
    for section, cls in SECTIONS.items():
        hints = _hints(cls)
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
Every key is optional and takes the default below when left out; `configs/` holds the presets
(`small.yaml`, `default.yaml`, `large.yaml`). A file is checked when it is loaded: an unknown key
(with a "did you mean" suggestion), a wrong type or an out-of-range value stops the run with one line
naming the file and the key, e.g. `configs/x.yaml: model.heads: 5 does not divide model.embed_dim (128)`.

- Check a file: `python -m gptrs.config --check configs/small.yaml`
- Override from the command line: `python -m gptrs.train --set model.num_layers=4 --set training.mixed_precision=bf16`
  (values are read as YAML: `data.paths=[a.txt,b.txt]`; `tokenizer.special_tokens.unk=<|unk|>` sets one token)
- Show the resolved config: `python -m gptrs.config --show configs/small.yaml --set model.num_layers=4`
- Convert a legacy JSON config: `python -m gptrs.convert_config --input config.json --output config.yaml`

Rules between keys: `model.heads` divides `model.embed_dim`; `training.warmup_steps` < `training.max_steps`
(unless `training.epochs` is set, which needs `data.sampling: epochs`); `training.min_lr` <=
`training.learning_rate`; `tokenizer.vocab_size` >= 256 + the number of special tokens + 1;
`model.vocab_size`, when set, >= `tokenizer.vocab_size`; source `files` needs `data.paths`, source `hub`
needs `data.dataset_name` (and neither is accepted with another source); `data.separator` names a special
token that exists; `data.max_eval_tokens` covers at least one window of `model.max_seq_len + 1` tokens.

Parameter counts (`gptrs.config.count_parameters`, what `--check` prints) count every parameter once:
the token embedding (V x d, tied to the LM head), learned positions (T x d), per block two LayerNorms,
the fused QKV projection (3d^2 + 3d), the attention output (d^2 + d), the feed-forward layers
(d x ff + ff and ff x d + d), and the final LayerNorm.
"""


def describe(markdown: bool = False) -> str:
    """The configuration reference: section, key, type, default and meaning of every field."""
    rows = _rows()
    if markdown:

        def cell(text: str, code: bool = False) -> str:
            text = text.replace("|", "\\|")  # a pipe would end the table cell, even inside backticks
            return text if code else text.replace("<", "&lt;").replace(">", "&gt;")

        out = [
            "# Configuration reference",
            "",
            "<!-- generated by `python -m gptrs.config --describe --markdown`; edit python/gptrs/config.py -->",
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
    header = ("section", "key", "type", "default", "meaning")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
        for r in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gptrs.config", description="Describe, check or show gptrs configuration files."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--describe", action="store_true", help="print the reference of every key")
    what.add_argument(
        "--check", nargs="+", metavar="FILE", help="validate config files (exit 2 on a problem)"
    )
    what.add_argument("--show", metavar="FILE", help="print the resolved config (defaults filled in) as YAML")
    parser.add_argument("--markdown", action="store_true", help="with --describe: a Markdown table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    if args.markdown and not args.describe:
        parser.error("--markdown goes with --describe")
    if args.describe:
        sys.stdout.write(describe(markdown=args.markdown))
        return 0
    status = 0
    for path in args.check or [args.show]:
        try:
            cfg = apply_overrides(load_config(path), args.set)
        except GptrsError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        if args.show:
            sys.stdout.write(_dump_yaml(config_to_dict(cfg)))
        else:
            print(f"{path}: ok ({count_parameters(cfg):,} parameters)")
    return status


if __name__ == "__main__":
    sys.exit(main())
