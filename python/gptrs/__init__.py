"""gptrs: a GPT you can read end to end and train yourself, from tokenizer to text generation.

The common names are importable from the top level; they load lazily, so ``import gptrs`` stays cheap
(torch is imported only when a model-side name is first used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptrs.config import Config, load_config, save_config
    from gptrs.data import prepare_data
    from gptrs.model import GPT, NanoChat, build_model, load_model
    from gptrs.tokenizer import BPETokenizer
    from gptrs.training import Trainer

__version__ = "0.1.0"

_WHERE = {
    "Config": "gptrs.config",
    "load_config": "gptrs.config",
    "save_config": "gptrs.config",
    "GPT": "gptrs.model",
    "NanoChat": "gptrs.model",
    "build_model": "gptrs.model",
    "load_model": "gptrs.model",
    "BPETokenizer": "gptrs.tokenizer",
    "Trainer": "gptrs.training",
    "prepare_data": "gptrs.data",
}

__all__ = [
    "GPT",
    "BPETokenizer",
    "Config",
    "NanoChat",
    "Trainer",
    "__version__",
    "build_model",
    "load_config",
    "load_model",
    "prepare_data",
    "save_config",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'gptrs' has no attribute {name!r}")
