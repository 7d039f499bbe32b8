"""How a configuration problem is shown: one line, ``<source>: <section>.<key>: <what is wrong>`` (``source``
is the file or the ``--set``; a model built without a config has none), values spelled as YAML writes them."""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

from gptrs.errors import ConfigError


class Problem(Exception):
    """A broken rule at a key path (``related``: the other keys the rule involves, to blame the right --set)."""

    def __init__(self, key: str, message: str, related: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.key, self.message, self.related = key, message, related

    def error(self, source: str | None, key: str | None = None) -> ConfigError:
        parts = [p for p in (source, self.key if key is None else key, self.message) if p]
        return ConfigError(one_line(": ".join(parts)))


def one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_text(value: int) -> str:
    # str() of a huge int is slow, and past 4300 digits Python refuses it: describe it instead.
    if value.bit_length() <= 4096:
        return str(value)
    return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"


class _BoundedRepr(reprlib.Repr):
    """repr() bounded to a few hundred characters: a value built from nested YAML aliases may stand for
    billions of elements, and quoting it whole would take minutes."""

    def repr_int(self, x: int, level: int) -> str:
        return clip(_int_text(x), self.maxlong)


_bounded = _BoundedRepr()
_bounded.maxlevel = 4
_bounded.maxlist = _bounded.maxtuple = _bounded.maxset = _bounded.maxdict = 30
_bounded.maxstring = _bounded.maxother = _bounded.maxlong = 200
brief = _bounded.repr  # repr(value), Python spelling, bounded


def show(value: Any) -> str:
    """A value as the user wrote it in YAML (5, 0.1, true, null, 'text'), bounded in length."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return clip(repr(value[:1000]))
    if isinstance(value, int):
        return clip(_int_text(value), 40)
    return repr(value) if isinstance(value, float) else clip(brief(value))


def what(value: Any) -> str:
    """A value with its kind, for type errors: 'the string '4'', '4.5', 'a list'."""
    if isinstance(value, str):
        return f"the string {show(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None or isinstance(value, (bool, int, float)):
        return show(value)
    return f"a {type(value).__name__}"


def name_of(key: Any) -> str:
    """A key as shown in a key path; odd ones (spaces, newlines, very long) are quoted."""
    return key if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_\-]{1,60}", key) else show(key)


def suggest(word: str, options: Iterable[str]) -> str | None:
    """The option closest to ``word`` (case-insensitive), for "did you mean"; None when nothing is close."""
    by_lower = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None
