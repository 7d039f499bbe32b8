"""Export a gptrs model to Hugging Face ``transformers``: GPT-2 (``model.arch: gpt2``) or NanoChat (``nanochat``).

    python -m gptrs.export --model-path runs/small --format hf --out hf_model [--tokenizer tok.json]

``--model-path`` is a model directory (``save_pretrained``), a checkpoint, or a run directory (then its best
checkpoint, else the last, as ``gptrs.generate`` picks it). The export writes ``config.json`` +
``model.safetensors`` that ``transformers.AutoModelForCausalLM.from_pretrained`` loads with the same logits
(a ``GPT2LMHeadModel`` or a ``NanoChatForCausalLM``, as the switches say; mapped by ``model/hf.py``; a
combination neither class computes is refused with one line naming the switch), and the tokenizer when one
is given or found in the model directory: ``tokenizer.json`` (its special tokens
included), ``tokenizer_config.json`` and ``special_tokens_map.json``, with ``bos_token_id``/``eos_token_id``/
``pad_token_id`` in ``config.json`` and ``generation_config.json``. gptrs.generate puts the document separator
(``data.separator``: ``<|endoftext|>`` in every preset) before each prompt, so that the prompt reads as the
start of a document as in training; the exported tokenizer adds the same token, and HF's bos token is it, so
``AutoTokenizer`` + ``generate`` or ``pipeline("text-generation")`` continue a prompt as gptrs does. The
generation config carries gptrs.generate's default sampling (temperature 0.8, top-k 50).

``--out`` must be new, empty or an earlier export (``config.json`` marked ``gptrs_export``; overwritten file
by file, each atomically); other files there need ``--force``. An ``--out`` that is or holds the checkpoint,
lies inside a checkpoint or the run's ``checkpoints/``, or is a run directory is refused: a fresh ``RUN/hf``
is the place. ``transformers`` is not needed to export, only to load the result.
"""

from __future__ import annotations

import contextlib
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

from gptrs import __version__
from gptrs.cli import make_parser, run_main, setup_logging, summary
from gptrs.config import load_config
from gptrs.errors import GptrsError
from gptrs.files import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    HF_CONFIG_FILE,
    MODEL_FILE,
    MODEL_JSON,
    TOKENIZER_FILE,
    atomic_path,
    atomic_write_text,
)
from gptrs.generate import Sampling, encode_prompt
from gptrs.model import GPT, hf, load_model
from gptrs.model.hf import ExportError
from gptrs.tokenizer import BPETokenizer
from gptrs.training.checkpoint import resolve_model_dir

HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_SPECIAL_TOKENS_MAP = "special_tokens_map.json"
HF_GENERATION_CONFIG = "generation_config.json"
EXPORT_FILES = (
    TOKENIZER_FILE, HF_TOKENIZER_CONFIG, HF_SPECIAL_TOKENS_MAP, MODEL_FILE, HF_GENERATION_CONFIG, HF_CONFIG_FILE,
)  # fmt: skip
EXPORT_MARKER = "gptrs_export"  # a config.json key: this directory is a gptrs export (may be overwritten)

# The mappings live in gptrs.model.hf; these names stay importable from here.
hf_gpt2_config = hf.hf_config
hf_gpt2_state_dict = hf.hf_state_dict


def _load_tokenizer(path: Path, explicit: bool) -> BPETokenizer | None:
    """The tokenizer at ``path`` with its special-token roles. One that cannot be read is skipped with a
    warning (an error when given with --tokenizer)."""
    try:
        return BPETokenizer.load(path)
    except GptrsError:
        raise
    except Exception as e:
        if explicit:
            raise ExportError(
                f"{path}: cannot export tokenizer ({str(e).splitlines()[0] if str(e) else e!r})"
            ) from None
        warnings.warn(f"{path}: tokenizer not exported ({e!r})", stacklevel=2)
        return None


def prompt_prefix(directory: Path, tok: BPETokenizer) -> str | None:
    """The special token ``gptrs.generate`` puts before every prompt: the document separator the model was
    trained with (``data.separator`` of the checkpoint's config.yaml, default eos), so that a prompt reads
    as the start of a document."""
    separator = "eos"
    if (directory / CONFIG_FILE).is_file():
        separator = load_config(directory / CONFIG_FILE).data.separator
    ids = encode_prompt(tok, "", separator)  # gptrs.generate's rule, in one place
    return next((s for s, i in tok.tok.special_tokens.items() if ids and i == ids[0]), None)


def hf_tokenizer_files(tok: BPETokenizer, prefix: str | None, max_len: int, data: dict) -> dict[str, str]:
    """``tokenizer.json`` (``data``, what ``save_hf`` wrote, with a post-processor that puts ``prefix``
    before every text, as gptrs.generate does), ``tokenizer_config.json`` and ``special_tokens_map.json``:
    what ``AutoTokenizer`` needs to encode a prompt into the ids gptrs.generate feeds the model. HF's bos
    token is that prefix (for the usual eos separator ``<|endoftext|>``, as in GPT-2)."""
    if prefix is not None:
        first = {"SpecialToken": {"id": prefix, "type_id": 0}}
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [first, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                first,
                {"Sequence": {"id": "A", "type_id": 0}},
                first,
                {"Sequence": {"id": "B", "type_id": 0}},
            ],
            "special_tokens": {prefix: {"id": prefix, "ids": [tok.token_to_id(prefix)], "tokens": [prefix]}},
        }
    roles = tok.special_tokens
    specials = {f"{role}_token": s for role, s in roles.items() if role in ("eos", "pad", "unk")}
    if prefix is not None:
        specials["bos_token"] = prefix
    extra = [s for s in tok.tok.special_tokens if s not in specials.values()]
    if extra:
        specials["additional_special_tokens"] = extra  # type: ignore[assignment]
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": prefix is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # decode gives the bytes' text, as gptrs does
        "model_max_length": max_len,
        "padding_side": "left",  # a batch of prompts is continued from its right end
    }
    return {
        TOKENIZER_FILE: json.dumps(data, ensure_ascii=False),
        HF_TOKENIZER_CONFIG: json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n",
        HF_SPECIAL_TOKENS_MAP: json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
    }


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


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


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


def _check_not_source(out: Path, model_path: Path, directory: Path) -> None:
    """Refuse an ``--out`` whose files would replace what the model was read from or any checkpoint: the
    checkpoint itself, a directory holding it (the run, its ``checkpoints/``), a directory inside a model
    or checkpoint, or another run directory. A fresh ``RUN/hf`` is fine."""
    o, ckpt = out.resolve(), directory.resolve()
    run = model_path.resolve() if model_path.resolve() != ckpt else None
    if run is None and ckpt.parent.name == CHECKPOINTS_DIR:
        run = ckpt.parent.parent
    hint = f"; choose a fresh directory such as {run / 'hf' if run else out.parent / 'hf'}"
    if _inside(ckpt, o):
        what = "is the checkpoint" if o == ckpt else "contains the checkpoint"
        raise ExportError(
            f"--out {out}: {what} it exports ({directory}); writing there would replace it{hint}"
        )
    for p in (o, *o.parents):
        if (p / MODEL_JSON).exists():
            raise ExportError(f"--out {out}: is inside a checkpoint or model directory ({p}){hint}")
        if p.name == CHECKPOINTS_DIR and (run is not None and p == run / CHECKPOINTS_DIR):
            raise ExportError(f"--out {out}: is inside the run's {CHECKPOINTS_DIR}/ ({p}){hint}")
    if (o / CHECKPOINTS_DIR).is_dir():
        raise ExportError(f"--out {out}: is a run directory (it has {CHECKPOINTS_DIR}/){hint}")


def _is_export_file(name: str) -> bool:
    """A file an export writes, or the temporary file of one (``atomic_path``'s ``.NAME.PID.tmp``) that a
    killed export left behind."""
    return name in EXPORT_FILES or any(
        name.startswith(f".{f}.") and name.endswith(".tmp") for f in EXPORT_FILES
    )


def _check_overwrite(out: Path, force: bool) -> None:
    """A non-empty ``--out`` must be an earlier gptrs export (only files an export writes, and its
    ``config.json`` marked as ours), else ``--force`` is needed: the user's own files are not ours to
    replace."""
    if not out.is_dir() or force:
        return
    foreign = [p.name for p in out.iterdir() if not _is_export_file(p.name)]
    if (out / HF_CONFIG_FILE).exists():  # a config.json not marked as ours is the user's (or another tool's)
        try:
            ours = json.loads((out / HF_CONFIG_FILE).read_text(encoding="utf-8")).get(EXPORT_MARKER)
        except (OSError, ValueError, AttributeError):
            ours = None
        if not ours:
            foreign.append(HF_CONFIG_FILE)
    foreign.sort()
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ExportError(
            f"--out {out}: not empty and not an earlier gptrs export (it holds {shown}); "
            "choose an empty directory, or pass --force to write there anyway"
        )


def _remove_strays(out: Path) -> None:
    """Delete temporary files a killed export left (a running export's have a live pid, but two exports
    into one directory at once are not supported)."""
    for p in out.iterdir():
        if p.name not in EXPORT_FILES and _is_export_file(p.name):
            with contextlib.suppress(OSError):
                p.unlink()


def _file_mode() -> int:
    """rw for everyone the umask allows (0644 under the usual 022), as open() gives the other files;
    safetensors creates its file 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def export_hf(
    model_path: str | Path, out: str | Path, tokenizer: str | Path | None = None, *, force: bool = False
) -> Path:
    """Export ``model_path`` (a model, checkpoint or run directory) to a transformers directory ``out``
    (GPT2LMHeadModel or NanoChatForCausalLM, as ``model.json``'s arch says); return ``out``. Every file is
    written atomically; ``out`` must be new, empty, or an earlier export (else ``force``)."""
    out = Path(out)
    _check_out(out)
    directory, tok_candidates = _model_dir(Path(model_path))
    _check_not_source(out, Path(model_path), directory)
    _check_overwrite(out, force)
    model = load_model(directory)
    tok_path = (
        Path(tokenizer) if tokenizer is not None else next((p for p in tok_candidates if p.is_file()), None)
    )
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise ExportError(f"tokenizer file not found: {tokenizer}")
    make_config, tensors = _hf_files(model)
    tok = _load_tokenizer(tok_path, explicit=tokenizer is not None) if tok_path is not None else None
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None}
    prefix = prompt_prefix(directory, tok) if tok is not None else None
    if tok is not None:
        ids = {"bos_token_id": tok.token_to_id(prefix) if prefix else None, "eos_token_id": tok.eos_token_id}
    config = make_config(**ids)
    pad = config.get("pad_token_id")
    if pad is None and tok is not None:
        pad = config["pad_token_id"] = tok.pad_token_id
    config[EXPORT_MARKER] = {"version": __version__, "arch": model.config.arch}
    sampling = Sampling()  # gptrs.generate's defaults, so that transformers samples the same way
    generation = {
        **ids,
        "pad_token_id": pad if pad is not None else ids["eos_token_id"],
        "do_sample": sampling.temperature > 0,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
    }
    out.mkdir(parents=True, exist_ok=True)
    _remove_strays(out)
    if tok is not None:
        # save_hf writes the temporary file itself, so a killed export leaves nothing but a .tmp beside
        # the target, which the next export removes (_remove_strays)
        with atomic_path(out / TOKENIZER_FILE) as tmp:
            tok.tok.save_hf(str(tmp))
            files = hf_tokenizer_files(tok, prefix, model.config.max_seq_len, json.loads(tmp.read_bytes()))
            tmp.write_text(files.pop(TOKENIZER_FILE), encoding="utf-8")
        for name, text in files.items():
            atomic_write_text(out / name, text)
    with atomic_path(out / MODEL_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, _file_mode())
    atomic_write_text(out / HF_GENERATION_CONFIG, json.dumps(generation, indent=2) + "\n")
    atomic_write_text(out / HF_CONFIG_FILE, json.dumps(config, indent=2) + "\n")  # last: marks it done
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty --out that is not an earlier gptrs export (its other files are kept)",
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    def body() -> None:
        path = export_hf(args.model_path, args.out, args.tokenizer, force=args.force)
        print(f"wrote {path} (load with transformers.AutoModelForCausalLM.from_pretrained({str(path)!r}))")

    return run_main(body, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
