"""Validation: plain data (YAML, JSON, ``--set``) to a typed Config, and every rule a config must follow.

Each rule lives here once: the type of every field (``typed``), its range and choices (``check_field``,
driven by the schema's metadata), and the rules between fields (``check_relations``). The model's shape
rules are also a public function, :func:`check_model`, which ``GPT`` calls when it is built.

A broken rule is a ``Problem`` at a key path (``problems.py``); it becomes a one-line ``ConfigError`` once
the source is known: ``<file>: <section>.<key>: <what is wrong>``, e.g.
``configs/x.yaml: model.heads: 5 does not divide model.embed_dim (128)``.

A Config that passed validation remembers it (see :func:`is_validated`), so a run's config is validated once,
when it is loaded or overridden, and saving or handing it to the trainer does not check it again.
"""

from __future__ import annotations

import contextlib
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from gptrs.config.budget import check_absolute
from gptrs.config.problems import Problem, brief, name_of, one_line, show, suggest, what
from gptrs.config.schema import (
    SECTIONS,
    SPECIAL_TOKEN_ROLES,
    Config,
    ModelConfig,
    fields_of,
    hints_of,
    resolve_model,
)
from gptrs.errors import ConfigError

__all__ = [
    "build",
    "check_model",
    "config_from_dict",
    "is_validated",
    "mark_validated",
    "validate",
]


# ----------------------------------------------------------------------------------------------------------
# Types: what each field accepts


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


def _choices_problem(key: str, value: Any, choices: Sequence[Any]) -> Problem:
    message = f"{show(value)} is not one of {', '.join(show(c) for c in choices)}"
    if isinstance(value, str):
        hint = suggest(value, [c for c in choices if isinstance(c, str)])
        if hint is not None:
            message += f"; did you mean {show(hint)}?"
    plain = f"{key} must be one of {', '.join(str(c) for c in choices)}, got {brief(value)}"
    return Problem(key, message, plain=plain)


def _positive_int(meta: Mapping[str, Any]) -> bool:
    """A size (heads, layers, widths): the model's messages call these 'positive integers'."""
    return meta.get("ge") == 1


def typed(key: str, value: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    """Convert one field's value, or raise a Problem that points at the offending element."""
    try:
        return _coerce(value, hint)
    except TypeError:
        pass
    origin = typing.get_origin(hint)
    if origin is list and isinstance(value, list):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise Problem(f"{key}[{i}]", f"expected a string, got {what(item)}")
    if origin is dict and isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise Problem(key, f"keys must be strings, got {what(k)}")
            if not isinstance(v, str):
                raise Problem(f"{key}.{name_of(k)}", f"expected a string, got {what(v)}")
    if "choices" in meta:
        raise _choices_problem(key, value, meta["choices"])
    plain = f"{key} must be a positive integer, got {brief(value)}" if _positive_int(meta) else None
    raise Problem(key, f"expected {_expected(hint)}, got {what(value)}", plain=plain)


# ----------------------------------------------------------------------------------------------------------
# Building a Config from plain data (YAML, JSON, --set)


def unknown_section(name: str) -> Problem:
    qualified = {f"{s}.{f}": f for s, cls in SECTIONS.items() for f in fields_of(cls)}
    owners = [q for q, f in qualified.items() if f == name]
    if owners:  # a flat key at the top level, e.g. `embed_dim: 128`
        return Problem(
            name_of(name), f"unknown section; did you mean {owners[0]}? (keys go under their section)"
        )
    hint = suggest(name, SECTIONS)
    if hint:
        return Problem(name_of(name), f"unknown section; did you mean {hint}?")
    return Problem(name_of(name), f"unknown section (sections: {', '.join(SECTIONS)})")


def unknown_key(section: str, key: str) -> Problem:
    path = f"{section}.{name_of(key)}"
    hint = suggest(key, fields_of(SECTIONS[section]))
    if hint:
        return Problem(path, f"unknown key; did you mean {section}.{hint}?")
    elsewhere = {f"{s}.{f}": f for s, cls in SECTIONS.items() if s != section for f in fields_of(cls)}
    for qualified, name in elsewhere.items():
        if name == key:
            return Problem(path, f"unknown key; did you mean {qualified}?")
    hint = suggest(key, elsewhere.values())
    if hint:
        owner = next(q for q, f in elsewhere.items() if f == hint)
        return Problem(path, f"unknown key; did you mean {owner}?")
    return Problem(path, f"unknown key ({section} keys: {', '.join(fields_of(SECTIONS[section]))})")


def _build_section(section: str, body: Any) -> Any:
    cls = SECTIONS[section]
    if body is None:  # a section whose keys are all commented out
        body = {}
    if not isinstance(body, Mapping):
        raise Problem(section, f"expected a mapping of keys, got {what(body)}")
    fields, hints = fields_of(cls), hints_of(cls)
    kwargs = {}
    for key, value in body.items():
        if not isinstance(key, str):
            raise Problem(section, f"keys must be strings, got {what(key)}")
        if key not in fields:
            raise unknown_key(section, key)
        kwargs[key] = typed(f"{section}.{key}", value, hints[key], fields[key].metadata)
    return cls(**kwargs)


def build(data: Any) -> Config:
    """A Config from nested plain data, every value converted to its field's type; values not yet checked."""
    if not isinstance(data, Mapping):
        raise Problem(
            "", f"expected a mapping with sections {', '.join(SECTIONS)} at the top, got {what(data)}"
        )
    sections = {}
    for name, body in data.items():
        if not isinstance(name, str):
            raise Problem("", f"section names must be strings, got {what(name)}")
        if name not in SECTIONS:
            raise unknown_section(name)
        sections[name] = _build_section(name, body)
    return Config(**sections)


def _check_section_types(section: str, body: Any) -> None:
    hints = hints_of(SECTIONS[section])
    for name, f in fields_of(SECTIONS[section]).items():
        typed(f"{section}.{name}", getattr(body, name), hints[name], f.metadata)


def check_types(config: Any) -> None:
    """For a Config built in Python: every section is the right class and every field the right type."""
    if not isinstance(config, Config):
        raise Problem("", f"expected a gptrs.config.Config, got {what(config)}")
    for section, cls in SECTIONS.items():
        body = getattr(config, section)
        if not isinstance(body, cls):
            raise Problem(section, f"expected a {cls.__name__}, got {what(body)}")
        _check_section_types(section, body)


# ----------------------------------------------------------------------------------------------------------
# Values: ranges, choices and the rules that tie fields together


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**64 else repr(x)


def _range_problem(key: str, value: float, meta: Mapping[str, Any]) -> Problem | None:
    lo = meta.get("ge", meta.get("gt"))
    hi = meta.get("le", meta.get("lt"))
    too_low = lo is not None and (value < lo if "ge" in meta else value <= lo)
    too_high = hi is not None and (value > hi if "le" in meta else value >= hi)
    if not (too_low or too_high):
        return None
    if lo is not None and hi is not None:
        interval = f"{'[' if 'ge' in meta else '('}{_num(lo)}, {_num(hi)}{']' if 'le' in meta else ')'}"
        message = f"must be in {interval}, got {show(value)}"
    else:
        op, bound = (">=" if "ge" in meta else ">", lo) if too_low else ("<=" if "le" in meta else "<", hi)
        message = f"must be {op} {_num(bound)}, got {show(value)}"
    if too_low and _positive_int(meta) and isinstance(value, int):
        return Problem(key, message, plain=f"{key} must be a positive integer, got {brief(value)}")
    return Problem(key, message, plain=f"{key} {message}")


def check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """One (already typed) field against its metadata: choices, finite numbers, bounds, non-empty text."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and not any(type(value) is type(c) and value == c for c in choices):
        raise _choices_problem(key, value, choices)
    if isinstance(value, float) and not math.isfinite(value):
        raise Problem(
            key,
            f"must be a finite number, got {show(value)}",
            plain=f"{key} must be a finite number, got {value!r}",
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        problem = _range_problem(key, value, meta)
        if problem is not None:
            raise problem
    if isinstance(value, list):
        strings = [(f"{key}[{i}]", s) for i, s in enumerate(value)]
    elif isinstance(value, dict):
        strings = [(f"{key}.{name_of(k)}", s) for k, v in value.items() for s in (k, v)]
    else:
        strings = [(key, value)]
    for where, s in strings:
        if not isinstance(s, str):
            continue
        if not s and not meta.get("allow_empty"):
            raise Problem(where, "must not be empty")
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as e:
            raise Problem(
                where, f"contains a lone surrogate at index {e.start}; not valid Unicode text"
            ) from None


def _check_section_values(section: str, body: Any) -> None:
    for name, f in fields_of(SECTIONS[section]).items():
        check_field(f"{section}.{name}", getattr(body, name), f.metadata)


def check_values(cfg: Config) -> None:
    """Every field's range and choices, then the rules between fields (types already checked)."""
    for section in SECTIONS:
        _check_section_values(section, getattr(cfg, section))
    check_relations(cfg)
    check_absolute(cfg)  # a size no machine could train (budget.py); the device check is the trainer's


def _check_model_shape(m: ModelConfig) -> None:
    """The rule between the model's own fields: attention heads split the width evenly."""
    if m.embed_dim % m.heads:
        raise Problem(
            "model.heads",
            f"{m.heads} does not divide model.embed_dim ({m.embed_dim})",
            ("model.embed_dim",),
            plain=f"model.heads ({m.heads}) must divide model.embed_dim ({m.embed_dim})",
        )


def _check_arch(m: ModelConfig) -> None:
    """The rules between the resolved switches: rotary positions rotate half-head pairs, grouped-query
    attention shares each key/value head evenly."""
    r = resolve_model(m)
    if r.positions == "rotary" and (m.embed_dim // m.heads) % 2:
        raise Problem(
            "model.heads",
            f"{m.heads} heads make an odd head size ({m.embed_dim // m.heads}); rotary positions need an even one",
            ("model.embed_dim",),
        )
    if m.kv_heads is not None and m.heads % m.kv_heads:
        raise Problem(
            "model.kv_heads", f"{m.kv_heads} does not divide model.heads ({m.heads})", ("model.heads",)
        )


def check_model(mc: ModelConfig) -> None:
    """Every rule on a model's shape, for a model built from it: each field's type and range (positive sizes,
    dropout in [0, 1), a known activation and attention), a set ``vocab_size``, and heads dividing embed_dim.

    Raises a one-line ConfigError naming the field, e.g. ``model.heads (3) must divide model.embed_dim (32)``.
    ``GPT`` calls it when it is built; config validation runs the same rules (and reports them against the
    file: ``<file>: model.heads: 3 does not divide model.embed_dim (32)``), where ``vocab_size`` may be null.
    """
    try:
        _check_section_types("model", mc)
        _check_section_values("model", mc)
        if mc.vocab_size is None:
            raise Problem(
                "model.vocab_size",
                "is not set",
                plain="model.vocab_size must be a positive integer, got None",
            )
        _check_model_shape(mc)
        _check_arch(mc)
    except Problem as p:
        raise ConfigError(one_line(p.plain)) from None


def _check_data(cfg: Config) -> None:
    d, m = cfg.data, cfg.model
    if d.source == "files" and not d.paths:
        raise Problem("data.paths", "data.source 'files' needs at least one path", ("data.source",))
    if d.source != "files" and d.paths:
        raise Problem(
            "data.paths", f"only used with data.source 'files' (it is {d.source!r})", ("data.source",)
        )
    if d.source == "hub" and d.dataset_name is None:
        raise Problem("data.dataset_name", "data.source 'hub' needs a dataset name", ("data.source",))
    if d.source != "hub" and d.dataset_name is not None:
        raise Problem(
            "data.dataset_name", f"only used with data.source 'hub' (it is {d.source!r})", ("data.source",)
        )
    if d.max_eval_tokens < m.max_seq_len + 1:
        raise Problem(
            "data.max_eval_tokens",
            f"{d.max_eval_tokens} is less than one evaluation window (model.max_seq_len + 1 = {m.max_seq_len + 1})",
            ("model.max_seq_len",),
        )


def _check_vocabulary(cfg: Config) -> None:
    """Special tokens (known roles, distinct strings, the separator's one), and vocabulary sizes that hold
    them: 256 bytes + the special tokens + at least one merge."""
    d, tok, m = cfg.data, cfg.tokenizer, cfg.model
    seen: dict[str, str] = {}
    for role, token in tok.special_tokens.items():
        key = f"tokenizer.special_tokens.{name_of(role)}"
        if role not in SPECIAL_TOKEN_ROLES:
            hint = suggest(role, SPECIAL_TOKEN_ROLES)
            extra = f"; did you mean {hint}?" if hint else f" (roles: {', '.join(SPECIAL_TOKEN_ROLES)})"
            raise Problem(key, f"unknown role{extra}")
        if not token:
            raise Problem(key, "must not be empty")
        if token in seen:
            raise Problem(key, f"{show(token)} is also the {seen[token]} token")
        seen[token] = role
    if d.separator not in tok.special_tokens:
        raise Problem(
            "data.separator",
            f"{d.separator!r} needs a tokenizer.special_tokens.{d.separator} token",
            ("tokenizer.special_tokens",),
        )
    smallest = 256 + len(tok.special_tokens) + 1
    why = f"256 bytes + {len(tok.special_tokens)} special tokens + 1 merge"
    if tok.vocab_size < smallest:
        raise Problem(
            "tokenizer.vocab_size", f"{tok.vocab_size} is too small: needs at least {smallest} ({why})"
        )
    _check_model_shape(m)  # here, so a config with several problems reports them in the same order as ever
    _check_arch(m)
    if m.vocab_size is not None:
        if m.vocab_size < smallest:
            raise Problem(
                "model.vocab_size", f"{m.vocab_size} is too small: needs at least {smallest} ({why})"
            )
        if tok.path is None and m.vocab_size < tok.vocab_size:
            raise Problem(
                "model.vocab_size",
                f"{m.vocab_size} is smaller than tokenizer.vocab_size ({tok.vocab_size})",
                ("tokenizer.vocab_size",),
            )


def _check_training(cfg: Config) -> None:
    d, t = cfg.data, cfg.training
    if t.epochs is not None and d.sampling != "epochs":
        raise Problem(
            "training.epochs", f"needs data.sampling 'epochs' (it is {d.sampling!r})", ("data.sampling",)
        )
    if t.epochs is None and t.warmup_steps >= t.max_steps:
        raise Problem(
            "training.warmup_steps",
            f"{t.warmup_steps} must be less than training.max_steps ({t.max_steps})",
            ("training.max_steps",),
        )
    if t.min_lr > t.learning_rate:
        raise Problem(
            "training.min_lr",
            f"{show(t.min_lr)} is greater than training.learning_rate ({show(t.learning_rate)})",
            ("training.learning_rate",),
        )
    if t.sample_tokens > 0 and not t.sample_prompt:
        raise Problem(
            "training.sample_prompt",
            "must not be empty when training.sample_tokens > 0 (set it to 0 to skip the sample)",
            ("training.sample_tokens",),
        )


def check_relations(cfg: Config) -> None:
    """Rules between fields; each names the key to change and shows the other one's value."""
    _check_data(cfg)
    _check_vocabulary(cfg)
    _check_training(cfg)


# ----------------------------------------------------------------------------------------------------------
# Validated once

# A Config that passed validation carries its repr from that moment. repr tells 4 from 4.0 and True from 1,
# so any later edit (even one that compares equal) makes the config unvalidated again.
_VALIDATED = "_gptrs_validated_as"


def mark_validated(config: Config) -> Config:
    """Record that ``config``, as it is now, passed validation; returns it."""
    setattr(config, _VALIDATED, repr(config))
    return config


def is_validated(config: Any) -> bool:
    """Whether ``config`` passed validation and has not been changed since."""
    stamp = getattr(config, _VALIDATED, None)
    return stamp is not None and isinstance(config, Config) and stamp == repr(config)


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    """A validated Config from nested plain data ({"model": {"heads": 4}, ...}); missing keys take defaults."""
    try:
        cfg = build(data)
        check_values(cfg)
    except Problem as p:
        raise p.error(source) from None
    return mark_validated(cfg)


def validate(config: Config, source: str = "<overrides>") -> None:
    """Check a Config built or changed in Python by the same rules as a file; raise ConfigError naming `source`.

    A config that already passed (from ``load_config``, ``apply_overrides``...) and has not changed since is
    not checked again.
    """
    if is_validated(config):
        return
    try:
        check_types(config)
        check_values(config)
    except Problem as p:
        raise p.error(source) from None
    mark_validated(config)
