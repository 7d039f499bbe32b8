"""How a configuration problem is shown: a ``Problem`` at a key path, and the spelling of values in messages.

Messages quote values the way the user wrote them in YAML (``5``, ``true``, ``null``, ``'text'``), quote odd
keys, and suggest the closest known name ("did you mean model.embed_dim?").
"""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

from gptrs.errors import ConfigError

__all__ = ["Problem", "brief", "clip", "name_of", "one_line", "show", "suggest", "what"]


class Problem(Exception):
    """A broken rule at a key path; becomes a ConfigError once the source (file, --set) is known.

    ``related`` names the other keys the rule involves (to blame the right ``--set``). ``plain`` is the
    sentence for a model built without a config file (``GPT(...)``), where there is no source to name.
    """

    def __init__(
        self, key: str, message: str, related: tuple[str, ...] = (), plain: str | None = None
    ) -> None:
        super().__init__(message)
        self.key = key  # "model.heads", or "" for the whole file
        self.message = message
        self.related = related
        self.plain = plain if plain is not None else f"{key}: {message}"

    def error(self, source: str, key: str | None = None) -> ConfigError:
        key = self.key if key is None else key
        return ConfigError(
            one_line(f"{source}: {key}: {self.message}" if key else f"{source}: {self.message}")
        )


def one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Past this many bits an int is described, not printed: str() of a huge int is slow, and past 4300 digits
# Python refuses it (ValueError), which would replace the message about the value with one about printing.
_PRINTABLE_INT_BITS = 4096


def _int_text(value: int) -> str:
    if value.bit_length() <= _PRINTABLE_INT_BITS:
        return str(value)
    return f"{'-' if value < 0 else ''}an integer of {value.bit_length()} bits"


class _BoundedRepr(reprlib.Repr):
    """repr() that never renders more than a few hundred characters of a value, however big or nested.

    A YAML value built from nested aliases can stand for billions of elements; rendering it whole (to quote it
    in a message) would take minutes and gigabytes. Short values read exactly as repr() writes them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 4
        self.maxlist = self.maxtuple = self.maxset = self.maxdict = 30
        self.maxstring = self.maxother = 200
        self.maxlong = 200

    def repr_int(self, x: int, level: int) -> str:
        return clip(_int_text(x), self.maxlong)


_REPR = _BoundedRepr()


def brief(value: Any) -> str:
    """repr(value), bounded: at most a few hundred characters whatever the value's size (Python spelling)."""
    return _REPR.repr(value)


def show(value: Any) -> str:
    """A value as the user wrote it (YAML spelling): 5, 0.1, true, null, 'text'. Never renders more than a
    bounded prefix of the value, so quoting a huge value costs no more than quoting a small one."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return clip(repr(value if len(value) <= 1000 else value[:1000]))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return clip(_int_text(value), 40)
    return clip(brief(value))


def what(value: Any) -> str:
    """A value with its kind, for type errors: 'the string '4'', '4.5', 'a list'."""
    if isinstance(value, str):
        return f"the string {show(value)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__}"
    if isinstance(value, Mapping):
        return "a mapping"
    if value is None or isinstance(value, (bool, int, float)):
        return show(value)
    return f"a {type(value).__name__}"


def name_of(key: Any) -> str:
    """A key as shown in a key path; odd ones (spaces, newlines, very long) are quoted."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_\-]{1,60}", key):
        return key
    return show(key)


def suggest(word: str, options: Iterable[str]) -> str | None:
    """The option closest to ``word`` (case-insensitive), for "did you mean"; None when nothing is close."""
    by_lower = {o.lower(): o for o in options}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[match[0]] if match else None
