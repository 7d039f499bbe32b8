"""Saving and loading models: ``model.safetensors`` (weights) + ``model.json`` (configuration). No pickle.

Layout of a model directory (trainer checkpoints add config.yaml, tokenizer.json and trainer state beside
these; loading needs only the two files):

    model.json         {"format": "gptrs-model", "format_version": 1, "config": {ModelConfig fields,
                        vocab_size resolved}, "pad_token_id": int | null}
    model.safetensors  every tensor of ``state_dict()`` except ``lm_head.weight``, which is the token
                        embedding (tied) and is stored once as ``transformer.wte.weight``

Anything wrong with a directory (missing files, bad JSON, corrupt safetensors, missing, unexpected or
misshapen tensors) raises :class:`gptrs.errors.CheckpointError` with one line naming the file and tensors.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gptrs.config import ModelConfig
from gptrs.errors import CheckpointError, GptrsError

if TYPE_CHECKING:
    from gptrs.model.gpt import GPT

FORMAT = "gptrs-model"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model.json"
TIED_KEYS = ("lm_head.weight",)  # aliases of transformer.wte.weight, not stored


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def save_pretrained(model: GPT, directory: str | os.PathLike[str]) -> None:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (each file replaced atomically)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().contiguous().cpu() for name, t in model.state_dict().items() if name not in TIED_KEYS
    }
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS_NAME)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        "pad_token_id": model.pad_token_id,
    }
    tmp = out / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / CONFIG_NAME)


def read_model_json(directory: str | os.PathLike[str]) -> tuple[ModelConfig, int | None]:
    """The ModelConfig and pad_token_id stored in ``directory/model.json``; CheckpointError if unusable."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"model directory not found: {root}")
    path = root / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a model directory written by save_pretrained?)")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f'{path}: not a {FORMAT} file (no "format": "{FORMAT}")')
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (this gptrs reads up to {FORMAT_VERSION})"
        )
    fields = meta.get("config")
    if not isinstance(fields, dict):
        raise CheckpointError(f'{path}: "config" must be an object of model settings')
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown config keys: {_names(unknown)}")
    pad = meta.get("pad_token_id")
    if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool)):
        raise CheckpointError(f"{path}: pad_token_id must be an integer or null, got {pad!r}")
    return ModelConfig(**fields), pad


def load_pretrained(directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GPT:
    """Build the model described by ``model.json`` and load ``model.safetensors`` into it, exactly."""
    from gptrs.model.gpt import GPT

    cfg, pad = read_model_json(directory)
    config_path = Path(directory) / CONFIG_NAME
    if cfg.vocab_size is None:
        raise CheckpointError(f"{config_path}: config.vocab_size is missing")
    try:
        with torch.device("meta"):  # no memory and no init work: every tensor comes from the file
            model = GPT.from_config(cfg, pad_token_id=pad)
    except (GptrsError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    expected = {name: t.shape for name, t in model.state_dict().items() if name not in TIED_KEYS}
    state: dict[str, Any] = {}
    try:
        with safe_open(str(path), framework="pt", device=str(torch.device(map_location))) as f:
            stored = list(f.keys())
            missing = sorted(set(expected) - set(stored))
            unexpected = sorted(set(stored) - set(expected))
            if missing or unexpected:
                parts = []
                if missing:
                    parts.append(f"missing tensors: {_names(missing)}")
                if unexpected:
                    parts.append(f"unexpected tensors: {_names(unexpected)}")
                raise CheckpointError(f"{path}: " + "; ".join(parts))
            for name in stored:
                t = f.get_tensor(name)
                if tuple(t.shape) != tuple(expected[name]):
                    raise CheckpointError(
                        f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name])}"
                    )
                if not t.is_floating_point():
                    raise CheckpointError(f"{path}: tensor {name} has non-float dtype {t.dtype}")
                state[name] = t
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError / RuntimeError on corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({first})") from None
    model.load_state_dict(state, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie: assign replaced the embedding Parameter
    return model
