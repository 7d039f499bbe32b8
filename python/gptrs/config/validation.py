"""Validation: plain data (YAML, JSON, ``--set``) to a typed Config, and every rule a config must follow, once.

Types come from the dataclass fields (``coerce``), ranges and choices from their metadata (``check_field``), the
rules between fields are ``check_relations``, and the model's shape rules (``check_model``, which the model runs
too) are checked on the resolved switches. A broken rule is a ``Problem`` at a key path.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from gptrs.config.budget import check_absolute
from gptrs.config.problems import Problem, name_of, show, suggest, what
from gptrs.config.schema import (
    SECTIONS,
    SPECIAL_TOKEN_ROLES,
    Config,
    ModelConfig,
    fields_of,
    hints_of,
    options,
    resolve_model,
)

_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
_NAMES |= {dict: "a mapping of strings to strings"}  # dict[str, str]
_PLURALS = {str: "strings", int: "integers"}  # list[str], list[int]


def _expected(hint: Any) -> str:
    def name(t: Any) -> str:
        if typing.get_origin(t) is list:
            return f"a list of {_PLURALS[typing.get_args(t)[0]]}"
        return _NAMES[typing.get_origin(t) or t]

    return " or ".join(name(t) for t in options(hint))


def _choices_problem(key: str, value: Any, choices: Sequence[Any]) -> Problem:
    message = f"{show(value)} is not one of {', '.join(show(c) for c in choices)}"
    hint = suggest(value, [c for c in choices if isinstance(c, str)]) if isinstance(value, str) else None
    return Problem(key, message + (f"; did you mean {show(hint)}?" if hint else ""))


def _is(value: Any, t: Any) -> bool:
    """Whether `value` is of the plain type `t`: an int is a float too, a bool is never a number."""
    if isinstance(value, bool) and t is not bool:
        return False
    return value is None if t is type(None) else isinstance(value, (int, float) if t is float else t)


def coerce(key: str, value: Any, hint: Any, meta: Mapping[str, Any] | None = None) -> Any:
    """`value` as the field type `hint` names, or a Problem at the offending element (``data.paths[1]``)."""
    for t in options(hint):
        origin = typing.get_origin(t)
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(t)
            return [coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        if origin is dict and isinstance(value, Mapping):
            for k in value:
                if not isinstance(k, str):
                    raise Problem(key, f"keys must be strings, got {what(k)}")
            return {k: coerce(f"{key}.{name_of(k)}", v, typing.get_args(t)[1]) for k, v in value.items()}
        if origin is None and _is(value, t):
            if t is float:  # ints past float range become inf, which the finiteness check then reports
                huge = isinstance(value, int) and abs(value) >= 2**1023
                return (math.inf if value > 0 else -math.inf) if huge else float(value)
            return value
    if meta and "choices" in meta:
        raise _choices_problem(key, value, meta["choices"])
    raise Problem(key, f"expected {_expected(hint)}, got {what(value)}")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**64 else repr(x)


def check_field(key: str, value: Any, meta: Mapping[str, Any]) -> None:
    """One typed field against its metadata: choices, finite numbers, bounds, non-empty valid text."""
    if value is None:
        return
    choices = meta.get("choices")
    if choices is not None and not any(type(value) is type(c) and value == c for c in choices):
        raise _choices_problem(key, value, choices)
    if isinstance(value, float) and not math.isfinite(value):
        raise Problem(key, f"must be a finite number, got {show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = meta.get("ge", meta.get("gt")), meta.get("le", meta.get("lt"))
        low = lo is not None and (value < lo if "ge" in meta else value <= lo)
        high = hi is not None and (value > hi if "le" in meta else value >= hi)
        if lo is not None and hi is not None and (low or high):
            interval = f"{'[' if 'ge' in meta else '('}{_num(lo)}, {_num(hi)}{']' if 'le' in meta else ')'}"
            raise Problem(key, f"must be in {interval}, got {show(value)}")
        if low or high:
            op = (">=" if "ge" in meta else ">") if low else ("<=" if "le" in meta else "<")
            raise Problem(key, f"must be {op} {_num(lo if low else hi)}, got {show(value)}")
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):  # list[int]: each in bounds
        for i, v in enumerate(value):
            check_field(f"{key}[{i}]", v, meta)
        return
    if isinstance(value, list):
        strings = [(f"{key}[{i}]", s) for i, s in enumerate(value)]
    elif isinstance(value, dict):
        strings = [(f"{key}.{name_of(k)}", s) for k, v in value.items() for s in (k, v)]
    else:
        strings = [(key, value)] if isinstance(value, str) else []
    for where, s in strings:  # every element is a string by now (coerce)
        if not s and not meta.get("allow_empty"):
            raise Problem(where, "must not be empty")
        if lone := re.search(r"[\ud800-\udfff]", s):
            raise Problem(where, f"contains a lone surrogate at index {lone.start()}; not valid Unicode text")


def unknown_section(name: str) -> Problem:
    owners = [f"{s}.{name}" for s, cls in SECTIONS.items() if name in fields_of(cls)]
    if owners:  # a flat key at the top level, e.g. `embed_dim: 128`
        tail = f"; did you mean {owners[0]}? (keys go under their section)"
    elif hint := suggest(name, SECTIONS):
        tail = f"; did you mean {hint}?"
    else:
        tail = f" (sections: {', '.join(SECTIONS)})"
    return Problem(name_of(name), f"unknown section{tail}")


def unknown_key(section: str, key: str) -> Problem:
    fields = fields_of(SECTIONS[section])
    others = {f: f"{s}.{f}" for s, cls in reversed(SECTIONS.items()) if s != section for f in fields_of(cls)}
    if hint := suggest(key, fields):
        tail = f"; did you mean {section}.{hint}?"
    elif hint := (key if key in others else suggest(key, others)):
        tail = f"; did you mean {others[hint]}?"
    else:
        tail = f" ({section} keys: {', '.join(fields)})"
    return Problem(f"{section}.{name_of(key)}", f"unknown key{tail}")


def build(data: Any) -> Config:
    """A Config from nested plain data, every value converted to its field's type; values not yet checked."""
    if not isinstance(data, Mapping):
        top = f"expected a mapping with sections {', '.join(SECTIONS)} at the top, got {what(data)}"
        raise Problem("", top)
    sections = {}
    for name, body in data.items():
        if not isinstance(name, str):
            raise Problem("", f"section names must be strings, got {what(name)}")
        if name not in SECTIONS:
            raise unknown_section(name)
        body = {} if body is None else body  # a section whose keys are all commented out
        if not isinstance(body, Mapping):
            raise Problem(name, f"expected a mapping of keys, got {what(body)}")
        fields, hints = fields_of(SECTIONS[name]), hints_of(SECTIONS[name])
        kwargs = {}
        for key, value in body.items():
            if not isinstance(key, str):
                raise Problem(name, f"keys must be strings, got {what(key)}")
            if key not in fields:
                raise unknown_key(name, key)
            kwargs[key] = coerce(f"{name}.{key}", value, hints[key], fields[key].metadata)
        sections[name] = SECTIONS[name](**kwargs)
    return Config(**sections)


# The rules
def _check_section(section: str, body: Any) -> None:
    """Every field of one section: its type (a config built in Python may hold anything), then its value."""
    cls = SECTIONS[section]
    if not isinstance(body, cls):
        raise Problem(section, f"expected a {cls.__name__}, got {what(body)}")
    for name, f in fields_of(cls).items():
        coerce(f"{section}.{name}", getattr(body, name), hints_of(cls)[name], f.metadata)
        check_field(f"{section}.{name}", getattr(body, name), f.metadata)


def _rule(holds: bool, key: str, message: str, *related: str) -> None:
    """A rule between keys: ``key`` is the one to change, ``related`` the others it involves."""
    if not holds:
        raise Problem(key, message, related)


def _check_shape(mc: ModelConfig) -> None:
    """The model's shape, on its resolved switches."""
    m = resolve_model(mc)
    h, kv, width, hd = m.heads, m.kv_heads or m.heads, m.embed_dim, m.embed_dim // m.heads
    _rule(width % h == 0, "model.heads", f"{h} does not divide model.embed_dim ({width})", "model.embed_dim")
    _rule(h % kv == 0, "model.kv_heads", f"{kv} does not divide model.heads ({h})", "model.heads")
    odd = f"{h} heads make an odd head size ({hd}); rotary positions need an even one"
    rotary = ("model.embed_dim", "model.positions", "model.arch")
    _rule(m.positions != "rotary" or hd % 2 == 0, "model.heads", odd, *rotary)


def check_model(mc: ModelConfig) -> None:
    """Every rule on a model's config, for a model built from it (``vocab_size`` set): raises a one-line
    ConfigError naming the key, e.g. ``model.heads: 3 does not divide model.embed_dim (32)``."""
    try:
        _check_section("model", mc)
        _rule(mc.vocab_size is not None, "model.vocab_size", "is null; a model needs its vocabulary size")
        _check_shape(mc)
    except Problem as p:
        raise p.error(None) from None


def check_relations(cfg: Config) -> None:
    """Rules between fields; each names the key to change and shows the other one's value."""
    d, tok, m, t = cfg.data, cfg.tokenizer, cfg.model, cfg.training
    for source, key, given, needs in (
        ("files", "data.paths", bool(d.paths), "at least one path"),
        ("hub", "data.dataset_name", d.dataset_name is not None, "a dataset name"),
    ):
        _rule(d.source != source or given, key, f"data.source {source!r} needs {needs}", "data.source")
        only = f"only used with data.source {source!r} (it is {d.source!r})"
        _rule(d.source == source or not given, key, only, "data.source")
    tokens, window = d.max_eval_tokens, m.max_seq_len + 1
    too_few = f"{tokens} is less than one evaluation window (model.max_seq_len + 1 = {window})"
    _rule(tokens >= window, "data.max_eval_tokens", too_few, "model.max_seq_len")
    seen: dict[str, str] = {}
    for role, token in tok.special_tokens.items():
        key, hint = f"tokenizer.special_tokens.{name_of(role)}", suggest(role, SPECIAL_TOKEN_ROLES)
        unknown = f"; did you mean {hint}?" if hint else f" (roles: {', '.join(SPECIAL_TOKEN_ROLES)})"
        _rule(role in SPECIAL_TOKEN_ROLES, key, f"unknown role{unknown}")
        _rule(token not in seen, key, f"{show(token)} is also the {seen.get(token)} token")
        seen[token] = role
    separator = f"{d.separator!r} needs a tokenizer.special_tokens.{d.separator} token"
    _rule(d.separator in tok.special_tokens, "data.separator", separator, "tokenizer.special_tokens")
    specials = len(tok.special_tokens)
    least = 256 + specials + 1  # 256 bytes, the special tokens and at least one merge
    small = f"is too small: needs at least {least} (256 bytes + {specials} special tokens + 1 merge)"
    _rule(tok.vocab_size >= least, "tokenizer.vocab_size", f"{tok.vocab_size} {small}")
    _check_shape(m)
    if m.vocab_size is not None:
        _rule(m.vocab_size >= least, "model.vocab_size", f"{m.vocab_size} {small}")
        smaller = f"{m.vocab_size} is smaller than tokenizer.vocab_size ({tok.vocab_size})"
        fits = tok.path is not None or m.vocab_size >= tok.vocab_size
        _rule(fits, "model.vocab_size", smaller, "tokenizer.vocab_size")
    epochs = f"needs data.sampling 'epochs' (it is {d.sampling!r})"
    _rule(t.epochs is None or d.sampling == "epochs", "training.epochs", epochs, "data.sampling")
    warmup = f"{t.warmup_steps} must be less than training.max_steps ({t.max_steps})"
    warm = t.epochs is not None or t.warmup_steps < t.max_steps
    _rule(warm, "training.warmup_steps", warmup, "training.max_steps")
    for i, rows in enumerate(t.batch_size_schedule):
        more = f"{rows} is more than training.batch_size ({t.batch_size})"
        _rule(rows <= t.batch_size, f"training.batch_size_schedule[{i}]", more, "training.batch_size")
    min_lr = f"{show(t.min_lr)} is greater than training.learning_rate ({show(t.learning_rate)})"
    _rule(t.min_lr <= t.learning_rate, "training.min_lr", min_lr, "training.learning_rate")
    prompt = "must not be empty when training.sample_tokens > 0 (set it to 0 to skip the sample)"
    has_prompt = t.sample_tokens == 0 or bool(t.sample_prompt)
    _rule(has_prompt, "training.sample_prompt", prompt, "training.sample_tokens")


def check(config: Any) -> None:
    """Every rule, as Problems: each section's types and values, the rules between fields, and a size no
    machine could train (budget.py; whether this device can is the trainer's check)."""
    if not isinstance(config, Config):
        raise Problem("", f"expected a gptrs.config.Config, got {what(config)}")
    for section in SECTIONS:
        _check_section(section, getattr(config, section))
    check_relations(config)
    check_absolute(config)


def config_from_dict(data: Any, source: str = "<dict>") -> Config:
    """A validated Config from nested plain data ({"model": {"heads": 4}, ...}); missing keys take defaults."""
    try:
        cfg = build(data)
        check(cfg)
    except Problem as p:
        raise p.error(source) from None
    return cfg


def validate(config: Config, source: str = "<overrides>") -> None:
    """Check a Config (built or changed in Python) by the same rules as a file; ConfigError naming `source`."""
    try:
        check(config)
    except Problem as p:
        raise p.error(source) from None
