"""Export a gptrs model to Hugging Face ``transformers``: GPT-2 (``model.arch: gpt2``) or NanoChat (``nanochat``).

    python -m gptrs.export --model-path runs/small --format hf --out hf_model [--tokenizer tok.json]

``--model-path`` is a model directory (``save_pretrained``), a checkpoint, or a run directory (then its best
checkpoint, else the last, as ``gptrs.generate`` picks it). The export writes ``config.json`` +
``model.safetensors`` that ``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same logits
(a ``GPT2LMHeadModel`` or a ``NanoChatForCausalLM``, as the switches say; mapped by ``model/hf.py``),
and the tokenizer as a Hugging Face ``tokenizer.json`` when one is given or found in the model directory.
A combination neither class computes is refused with one line naming the switch. ``transformers`` is not
needed to export, only to load the result.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from gptrs.cli import make_parser, run_main, setup_logging, summary
from gptrs.errors import GptrsError
from gptrs.files import (
    CHECKPOINTS_DIR,
    HF_CONFIG_FILE,
    MODEL_FILE,
    MODEL_JSON,
    TOKENIZER_FILE,
    atomic_path,
    atomic_write_text,
)
from gptrs.model import GPT, hf, load_model
from gptrs.model.hf import ExportError
from gptrs.training.checkpoint import resolve_model_dir

# The mappings live in gptrs.model.hf; these names stay importable from here.
hf_gpt2_config = hf.hf_config
hf_gpt2_state_dict = hf.hf_state_dict


def _save_tokenizer(path: Path, out: Path, explicit: bool) -> tuple[int | None, int | None]:
    """Write the tokenizer's Hugging Face tokenizer.json; return its (eos, bos) ids when it knows them.

    A tokenizer that cannot be read is skipped with a warning (an error when given with --tokenizer); one
    that cannot be written (a full disk, a read-only directory) is an error: the export would be incomplete.
    """
    try:
        import gptrs_tok

        tok = gptrs_tok.Tokenizer.load(str(path))
    except GptrsError:
        raise
    except Exception as e:
        if explicit:
            raise ExportError(
                f"{path}: cannot export tokenizer ({str(e).splitlines()[0] if str(e) else e!r})"
            ) from None
        warnings.warn(f"{path}: tokenizer not exported ({e!r})", stacklevel=2)
        return None, None
    with atomic_path(out / TOKENIZER_FILE) as tmp:  # a write error is one OSError naming the file
        tok.save_hf(str(tmp))
    ids = []
    for attr in ("eos_token_id", "bos_token_id"):
        value = getattr(tok, attr, None)
        ids.append(value if isinstance(value, int) else None)
    return ids[0], ids[1]


def _model_dir(model_path: Path) -> tuple[Path, list[Path]]:
    """The directory to load, and where its tokenizer may be. A run directory (``checkpoints/`` and no
    ``model.json``) gives its best checkpoint, as ``gptrs.generate`` picks it, with the run's tokenizer as
    a fallback; any other path is loaded as it is (``load_model`` says what is wrong with it)."""
    if not (model_path / MODEL_JSON).exists() and (model_path / CHECKPOINTS_DIR).is_dir():
        directory = resolve_model_dir(model_path)
        return directory, [directory / TOKENIZER_FILE, model_path / TOKENIZER_FILE]
    return model_path, [model_path / TOKENIZER_FILE]


def _hf_files(model: GPT) -> tuple[Callable[..., dict[str, Any]], dict[str, torch.Tensor]]:
    """The ``config.json`` builder (eos/bos ids as keywords) and the tensors under HF's names. Refuses
    (ExportError naming the switch) what no transformers class can express, before anything is written."""
    return functools.partial(hf.hf_config, model), hf.hf_state_dict(model)


def _check_out(out: Path) -> None:
    """Refuse an output directory that cannot be one (a file is in the way) or cannot be written (a read-only
    file system: permissions do not stop root), before anything is loaded or written."""
    parent = out
    while not parent.exists() and parent != parent.parent:  # the nearest part of the path that exists
        parent = parent.parent
    if not parent.is_dir():
        what = "is a file" if parent == out else f"{parent} is a file"
        raise ExportError(f"{out}: {what}, not a directory; choose a directory for --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gptrs-export-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"{out}: cannot write there: {e.strerror or e}") from None


def export_hf(model_path: str | Path, out: str | Path, tokenizer: str | Path | None = None) -> Path:
    """Export ``model_path`` (a model, checkpoint or run directory) to a transformers directory ``out``
    (GPT2LMHeadModel or NanoChatForCausalLM, as ``model.json``'s arch says); return ``out``. Every file is
    written atomically."""
    out = Path(out)
    _check_out(out)
    directory, tok_candidates = _model_dir(Path(model_path))
    model = load_model(directory)
    tok_path = (
        Path(tokenizer) if tokenizer is not None else next((p for p in tok_candidates if p.is_file()), None)
    )
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise ExportError(f"tokenizer file not found: {tokenizer}")
    make_config, tensors = _hf_files(model)
    out.mkdir(parents=True, exist_ok=True)
    eos = bos = None
    if tok_path is not None:
        eos, bos = _save_tokenizer(tok_path, out, explicit=tokenizer is not None)
    config = make_config(eos_token_id=eos, bos_token_id=bos)
    with atomic_path(out / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    atomic_write_text(out / HF_CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m gptrs.export") -> int:
    parser = make_parser(prog, summary(__doc__))
    parser.add_argument(
        "--model-path",
        required=True,
        metavar="DIR",
        help="model directory (model.json + model.safetensors), checkpoint, or run directory",
    )
    parser.add_argument(
        "--format",
        choices=["hf"],
        default="hf",
        help="output format: hf (transformers GPT2LMHeadModel or NanoChatForCausalLM, by the model's arch)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument(
        "--tokenizer", metavar="PATH", help="tokenizer file to export (default: the model's tokenizer.json)"
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    def body() -> None:
        path = export_hf(args.model_path, args.out, args.tokenizer)
        print(f"wrote {path} (load with transformers.AutoModelForCausalLM.from_pretrained({str(path)!r}))")

    return run_main(body, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
