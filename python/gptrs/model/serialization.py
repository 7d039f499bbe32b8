"""Saving and loading models: ``model.safetensors`` (weights) + ``model.json`` (configuration). No pickle.

Layout of a model directory (trainer checkpoints add config.yaml, tokenizer.json and trainer state beside
these; loading needs only the two files):

    model.json         {"format": "gptrs-model", "format_version": 2, "config": {ModelConfig fields,
                        every switch and vocab_size resolved}, "pad_token_id": int | null}
    model.safetensors  every tensor of ``state_dict()``; a tied ``lm_head.weight`` is the token embedding
                        and is stored once, as ``transformer.wte.weight``

Older directories load as what they describe. Version 1 wrote the switches its family implied (``arch``
fills them in), and its nanochat models kept queries, keys and values in three matrices (``attn.c_q``,
``c_k``, ``c_v``), which are stacked into the one ``attn.c_attn`` on load.

Anything wrong with a directory (missing files, bad JSON, corrupt safetensors, missing, unexpected or
misshapen tensors) raises :class:`gptrs.errors.CheckpointError` with one line naming the file and tensors.
This module knows no model class: ``GPT`` calls it with its ``config`` and a builder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from gptrs.config import Config, ModelConfig, check_model, count_parameters
from gptrs.errors import CheckpointError, GptrsError
from gptrs.files import MODEL_FILE, MODEL_JSON, atomic_path, atomic_write_text

FORMAT = "gptrs-model"
FORMAT_VERSION = 2
LEGACY_QKV = ("attn.c_q.weight", "attn.c_k.weight", "attn.c_v.weight")  # version 1 nanochat

M = TypeVar("M", bound=nn.Module)


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _tied(model: nn.Module) -> dict[str, str]:
    """Parameters registered under a second name (tied weights, e.g. ``lm_head.weight``, which is
    ``transformer.wte.weight``): {second name: first name}. Only the first name is stored."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


def save_pretrained(
    model: nn.Module, directory: str | os.PathLike[str], config: ModelConfig, pad_token_id: int | None
) -> None:
    """Write ``model.safetensors`` (the model's state_dict, tied weights once) and ``model.json`` (``config``
    and ``pad_token_id``) into ``directory``, each file replaced atomically and durably."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tied = _tied(model)
    tensors = {
        name: t.detach().contiguous().cpu() for name, t in model.state_dict().items() if name not in tied
    }
    with atomic_path(out / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "pad_token_id": pad_token_id,
    }
    atomic_write_text(out / MODEL_JSON, json.dumps(meta, indent=2) + "\n")


def read_model_json(directory: str | os.PathLike[str]) -> tuple[ModelConfig, int | None]:
    """The ModelConfig and pad_token_id stored in ``directory/model.json``; CheckpointError if unusable."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"model directory not found: {root}")
    path = root / MODEL_JSON
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


def _check_size_against_file(cfg: ModelConfig, config_path: Path, weights: Path) -> None:
    """A model.json that describes more parameters than model.safetensors can hold (at least a byte each) is
    refused before anything is built: building even an empty (meta) model of 10**9 layers takes hours."""
    try:
        check_model(cfg)
        n = count_parameters(Config(model=cfg))
    except (GptrsError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    size = weights.stat().st_size if weights.is_file() else None
    # Below 2**27 parameters building is quick, and the reader then says what is wrong with the file itself.
    if size is not None and n > max(size, 2**27):
        raise CheckpointError(
            f"{config_path}: describes a model of {n:,} parameters, more than {weights.name} holds "
            f"({size:,} bytes)"
        )


def load_pretrained(
    directory: str | os.PathLike[str],
    build: Callable[[ModelConfig, int | None], M],
    map_location: str | torch.device = "cpu",
) -> M:
    """``build(config, pad_token_id)`` from ``model.json``, then ``model.safetensors`` loaded into it, exactly
    (names, shapes and float dtypes checked; tied weights tied again)."""
    cfg, pad = read_model_json(directory)
    config_path = Path(directory) / MODEL_JSON
    if cfg.vocab_size is None:
        raise CheckpointError(f"{config_path}: config.vocab_size is missing")
    _check_size_against_file(cfg, config_path, Path(directory) / MODEL_FILE)
    try:
        with torch.device("meta"):  # no memory and no init work: every tensor comes from the file
            model = build(cfg, pad)
    except (GptrsError, ValueError, TypeError) as e:
        raise CheckpointError(f"{config_path}: {e}") from None

    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    tied = _tied(model)
    model.load_state_dict(read_weights(model, path, map_location), strict=False, assign=True)
    for name, first in tied.items():  # re-tie: assign replaced the first name's Parameter
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(first))
    return model


def read_weights(
    model: nn.Module, path: Path, map_location: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (a model.safetensors) for ``model``'s ``state_dict``, tied weights once: names,
    shapes, float dtypes and finite values checked, an older layout renamed (see the module docstring)."""
    tied = _tied(model)
    expected = {name: t.shape for name, t in model.state_dict().items() if name not in tied}
    legacy = _legacy_layout(path, expected)
    state = _read_tensors(path, legacy or expected, map_location)
    return _stack_qkv(state) if legacy else state


def _legacy_layout(path: Path, expected: dict[str, torch.Size]) -> dict[str, torch.Size] | None:
    """The tensors a version-1 nanochat file holds instead of ``expected`` (q, k, v apart), when ``path``
    is such a file; else None."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if not any(k.endswith(LEGACY_QKV[0]) for k in f.keys()):
                return None
    except Exception:
        return None  # _read_tensors says what is wrong with the file
    out: dict[str, torch.Size] = {}
    for name, shape in expected.items():
        if not name.endswith("attn.c_attn.weight"):
            out[name] = shape
            continue
        prefix = name[: -len("attn.c_attn.weight")]
        rows = shape[0]
        q = int(expected[prefix + "attn.c_proj.weight"][1])  # the output projection reads the query heads
        kv = (rows - q) // 2
        for leaf, n in zip(LEGACY_QKV, (q, kv, kv), strict=True):
            out[prefix + leaf] = torch.Size((n, shape[1]))
    return out


def _stack_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Version-1 nanochat tensors -> today's names: ``attn.c_q/c_k/c_v`` stacked into ``attn.c_attn``."""
    out = {n: t for n, t in state.items() if not n.endswith(LEGACY_QKV)}
    for name in state:
        if name.endswith(LEGACY_QKV[0]):
            prefix = name[: -len(LEGACY_QKV[0])]
            out[prefix + "attn.c_attn.weight"] = torch.cat([state[prefix + leaf] for leaf in LEGACY_QKV])
    return out


def _read_tensors(
    path: Path, expected: dict[str, torch.Size], map_location: str | torch.device
) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, which must hold exactly ``expected`` (names and shapes), floats."""
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
                bad = t.numel() - int(torch.isfinite(t).sum())
                if bad:  # a diverged run or a damaged file: refused here, before it samples garbage
                    raise CheckpointError(
                        f"{path}: tensor {name} holds {bad:,} non-finite values (NaN or inf) of {t.numel():,}: "
                        "the weights are damaged"
                    )
                state[name] = t
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises SafetensorError / OSError / RuntimeError on corrupt files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable safetensors file ({first})") from None
    return state
