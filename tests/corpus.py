"""Test data from the built-in corpus: this interpreter's stdlib ``.py`` files, in sorted order.

Shared by the tokenizer tests (train, encode, files) so that they all train on the same text.
"""

from __future__ import annotations

import sysconfig
from functools import cache
from pathlib import Path


@cache
def stdlib_texts(max_bytes: int, skip: int = 0) -> tuple[str, ...]:
    """The files' texts after the first ``skip`` files, up to about ``max_bytes`` characters in all."""
    out, n = [], 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))[skip:]:
        out.append(path.read_text(encoding="utf-8", errors="replace"))
        n += len(out[-1])
        if n >= max_bytes:
            break
    return tuple(out)


def stdlib_text(max_bytes: int, skip: int = 0) -> str:
    """:func:`stdlib_texts` as one string."""
    return "".join(stdlib_texts(max_bytes, skip))
