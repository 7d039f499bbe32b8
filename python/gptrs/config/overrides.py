"""Command-line overrides: ``--set section.key=value`` applied to a Config, the result validated as a whole."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import yaml

from gptrs.config.io import Loader
from gptrs.config.problems import Problem, clip, name_of, show
from gptrs.config.schema import SECTIONS, Config, config_to_dict, fields_of, hints_of, options
from gptrs.config.validation import check, coerce, unknown_key, unknown_section


def _parse_value(raw: str, hint: Any) -> Any:
    """A --set value: YAML for numbers, bools and lists; strings as typed (YAML would strip `def ` to `def`)."""
    args = options(hint)
    quoted = raw[:1] in ("'", '"')
    if str in args and bool not in args and not quoted:
        if type(None) in args and raw.strip() in ("", "null", "~"):
            return None
        return raw
    return yaml.load(raw, Loader=Loader) if raw.strip() else None


def _apply_one(data: dict[str, dict[str, Any]], item: str) -> str:
    """Set one `section.key[.sub]=value` in `data` (typed, not yet checked); return the key path it set."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or len(parts) not in (2, 3) or not all(parts):
        raise Problem("", "expected section.key=value, e.g. model.num_layers=4")
    section, name = parts[0], parts[1]
    if section not in SECTIONS:
        raise unknown_section(section)
    fields = fields_of(SECTIONS[section])
    if name not in fields:
        raise unknown_key(section, name)
    hint, meta = hints_of(SECTIONS[section])[name], fields[name].metadata
    if len(parts) == 3 and typing.get_origin(hint) is not dict:
        raise Problem(f"{section}.{name}", f"has no sub-key {name_of(parts[2])}")
    target_hint = typing.get_args(hint)[1] | None if len(parts) == 3 else hint
    try:
        value = _parse_value(raw, target_hint)
    except (yaml.YAMLError, RecursionError) as e:
        problem = getattr(e, "problem", None) or str(e)
        raise Problem(key, f"cannot read value {show(raw)} as YAML: {problem}") from None
    if len(parts) == 3:  # one entry of a mapping (a special token): null removes it
        table = dict(data[section][name])
        if value is None:
            table.pop(parts[2], None)
        else:
            table[parts[2]] = coerce(key, value, str)
        value, key = table, f"{section}.{name}"
    data[section][name] = coerce(key, value, hint, meta)
    return key


def apply_overrides(config: Config, overrides: Sequence[str], source: str = "--set") -> Config:
    """A new Config with `section.key=value` overrides applied (values read as YAML), validated as a whole.

    `tokenizer.special_tokens.unk=<|unk|>` sets one special token (`=null` removes it). A problem is a
    ConfigError naming the override at fault (`--set model.heads=x: model.heads: ...`): for a rule between
    keys, the last override that set one of them.
    """
    data = config_to_dict(config)
    keys: list[tuple[str, str]] = []  # (key path, the override as typed), to blame the right one at the end
    for item in overrides:
        where = f"{source} {clip(item, 80)}"
        try:
            keys.append((_apply_one(data, item), item))
        except Problem as p:
            raise p.error(where) from None
    cfg = Config(**{s: SECTIONS[s](**data[s]) for s in SECTIONS})
    try:
        check(cfg)  # the base config too: it may have been built (wrongly) in Python
    except Problem as p:
        involved = (p.key.split("[")[0], *p.related)
        for key, item in reversed(keys):
            if any(k == key or k.startswith(key + ".") for k in involved):
                raise p.error(f"{source} {clip(item, 80)}") from None
        raise p.error(source) from None  # the base config was at fault
    return cfg
