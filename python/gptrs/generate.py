"""Generate text with a trained gptrs model: ``python -m gptrs.generate`` (or ``gptrs-generate``).

    python -m gptrs.generate --model-path runs/small --prompt "def parse(" --max-new-tokens 100
    python -m gptrs.generate --model-path runs/small --interactive     # prompts until EOF or /quit

``--model-path`` is a checkpoint directory or a run directory (then its best checkpoint, else the last).
Tokens are printed as they are generated; bytes of a character split across tokens are held back until
the character is complete. ``--quantize int8`` runs the Linear layers as dynamically quantized int8 on CPU.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import io
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptrs.cli import bounded_int, make_parser, run_main, setup_logging, summary
from gptrs.errors import CheckpointError, GptrsError
from gptrs.files import CONFIG_FILE, TOKENIZER_FILE
from gptrs.host_memory import tune_host_allocator

log = logging.getLogger("gptrs.generate")

TAG = "gptrs-generate"  # the console script; error lines start with it


@dataclass
class Sampling:
    """Generation settings; interactive mode keeps them between prompts (and ``/set`` changes them)."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int | None = None

    def check(self) -> None:
        """The checks of ``SamplingParams`` (one place), named by their flags; the CLI also wants >= 1 token."""
        from gptrs.model.sampling import SamplingParams  # torch: imported only once a model is wanted

        if self.max_new_tokens < 1:
            raise GptrsError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        try:
            SamplingParams(self.max_new_tokens, self.temperature, self.top_k, self.top_p, seed=self.seed)
        except ValueError as e:
            field, _, rest = str(e).partition(" ")  # "top_p must be in (0, 1], got 7.0"
            raise GptrsError(f"--{field.replace('_', '-')} {rest}") from None


def encode_prompt(tok: Any, prompt: str, separator: str = "eos") -> list[int]:
    """Prompt ids, preceded by the document separator so the model sees the start of a document, as in
    training (documents follow an EOS, or begin with a BOS)."""
    ids = list(tok.encode_ordinary(prompt))
    sep = tok.bos_token_id if separator == "bos" else tok.eos_token_id
    return ([int(sep)] if sep is not None else []) + ids


def _token_bytes_fn(tok: Any) -> tuple[Callable[[int], bytes], set[int]]:
    raw = getattr(tok, "tok", None)
    if raw is not None and hasattr(raw, "token_bytes"):
        return raw.token_bytes, set(raw.special_tokens.values())
    specials = {i for i in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) if i is not None}
    return (lambda i: tok.decode([i]).encode("utf-8")), specials


def stream_text(model: Any, tok: Any, ids: Any, **sampling: Any) -> Iterator[str]:
    """Yield decoded text as tokens are generated: complete characters only (a multi-byte character split
    over tokens is held until its last byte arrives; invalid bytes become U+FFFD). Stops at EOS."""
    token_bytes, specials = _token_bytes_fn(tok)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in model.generate_stream(ids, eos_token_id=tok.eos_token_id, **sampling):
        t = int(token[0])
        if t in specials:
            if t == tok.eos_token_id:
                break
            continue
        text = decoder.decode(token_bytes(t))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


def load_for_inference(model_path: str, device: Any, quantize: str | None) -> tuple[Any, Any, str]:
    """(model, tokenizer, separator) from a checkpoint or run directory."""
    from gptrs.model import load_model
    from gptrs.tokenizer import BPETokenizer
    from gptrs.training.checkpoint import resolve_model_dir

    directory = resolve_model_dir(model_path)
    log.info("loading %s", directory)
    model = load_model(directory, map_location=device)  # either family, as model.json says
    candidates = [directory / TOKENIZER_FILE, directory.parent.parent / TOKENIZER_FILE]
    tok_path = next((p for p in candidates if p.is_file()), None)
    if tok_path is None:
        raise CheckpointError(f"{directory}: no {TOKENIZER_FILE} beside the model")
    try:
        tok = BPETokenizer.load(str(tok_path))
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{tok_path}: cannot load the tokenizer: {e}") from None
    if model.config.vocab_size is not None and tok.get_vocab_size() > model.config.vocab_size:
        raise CheckpointError(
            f"{tok_path}: tokenizer has {tok.get_vocab_size()} tokens but the model only {model.config.vocab_size}"
        )
    separator = "eos"
    if (directory / CONFIG_FILE).is_file():
        from gptrs.config import load_config

        separator = load_config(directory / CONFIG_FILE).data.separator
    model.eval()
    if quantize == "int8":
        import torch
        from torch import nn

        from gptrs.model.kernels import as_plain_linears

        with warnings.catch_warnings():  # torch announces the move of this API to torchao; it still works
            warnings.simplefilter("ignore")
            plain = as_plain_linears(model)  # quantize_dynamic matches nn.Linear by exact type
            model = torch.ao.quantization.quantize_dynamic(plain, {nn.Linear}, dtype=torch.qint8)
    return model, tok, separator


def _generate_one(
    model: Any, tok: Any, prompt: str, separator: str, s: Sampling, device: Any, echo: bool
) -> None:
    import torch

    if prompt == "":
        raise GptrsError("the prompt is empty (give some text to continue)")
    ids = torch.tensor([encode_prompt(tok, prompt, separator)], device=device)
    out = sys.stdout
    if echo:
        out.write(prompt)
        out.flush()
    with torch.no_grad():
        for piece in stream_text(
            model,
            tok,
            ids,
            max_new_tokens=s.max_new_tokens,
            temperature=s.temperature,
            top_k=s.top_k,
            top_p=s.top_p,
            seed=s.seed,
        ):
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()


_SETTABLE: dict[str, Callable[[str], Any]] = {
    "max_new_tokens": int,
    "temperature": float,
    "top_k": lambda v: None if v.lower() == "none" else int(v),
    "top_p": lambda v: None if v.lower() == "none" else float(v),
    "seed": lambda v: None if v.lower() == "none" else int(v),
}

_HELP = (
    "type a prompt and press Enter. /set NAME=VALUE (or /set NAME VALUE) changes a setting: "
    f"{', '.join(_SETTABLE)} (temperature 0 = greedy; 'none' clears top_k, top_p, seed); "
    "/settings shows them; /help shows this; /quit or EOF ends"
)


def _show(value: Any) -> str:
    return "none" if value is None else str(value)


def _set(arg: str, s: Sampling) -> str:
    """Apply ``/set NAME=VALUE`` or ``/set NAME VALUE`` to ``s``; return the line to print: the new value
    (and the old one), or one error line with the setting left as it was."""
    name, eq, value = arg.partition("=")
    if not eq:
        name, _, value = arg.strip().partition(" ")
    name, value = name.strip().lower().replace("-", "_"), value.strip()
    if not name or not value:
        return f"error: /set needs NAME=VALUE, e.g. /set temperature=0.5 (settings: {', '.join(_SETTABLE)})"
    if name not in _SETTABLE:
        return f"error: /set {name}: no such setting (settings: {', '.join(_SETTABLE)})"
    old = getattr(s, name)
    try:
        new = _SETTABLE[name](value)
    except ValueError:
        kind = "a number" if _SETTABLE[name] is float or name == "top_p" else "an integer"
        return f"error: /set {name}={value}: not {kind}{' or none' if name in ('top_k', 'top_p', 'seed') else ''}"
    setattr(s, name, new)
    try:
        s.check()
    except GptrsError as e:
        setattr(s, name, old)
        return f"error: {e}; {name} stays {_show(old)}"
    return f"{name}={_show(new)} (was {_show(old)})"


def _command(line: str, s: Sampling) -> bool:
    """Handle an interactive /command; False means quit."""
    cmd, _, arg = line.strip().partition(" ")
    cmd = cmd.lower()
    if cmd in ("/quit", "/exit", "/q"):
        return False
    if cmd == "/settings":
        sys.stderr.write(" ".join(f"{k}={_show(v)}" for k, v in dataclasses.asdict(s).items()) + "\n")
    elif cmd == "/set":
        sys.stderr.write(_set(arg, s) + "\n")
    elif cmd in ("/help", "/?"):
        sys.stderr.write(f"{_HELP}\n")
    else:
        sys.stderr.write(f"error: unknown command {cmd}; {_HELP}\n")
    return True


def interactive(model: Any, tok: Any, separator: str, s: Sampling, device: Any) -> None:
    sys.stderr.write(f"{_HELP}\n")
    while True:
        sys.stderr.write(">>> ")
        sys.stderr.flush()
        try:
            line = sys.stdin.readline() if sys.stdin is not None else ""
        except (OSError, ValueError):  # standard input closed under us: the same as its end
            line = ""
        if not line:  # EOF
            sys.stderr.write("\n")
            return
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            if not _command(line, s):
                return
            continue
        _generate_one(model, tok, line, separator, s, device, echo=False)


def _stdin_open() -> bool:
    """Whether standard input exists at all (``0<&-`` closes it: Python then has no ``sys.stdin``). A stream
    with no file descriptor (an ``io.StringIO`` put there by a caller) is open."""
    if sys.stdin is None:
        return False
    try:
        os.fstat(sys.stdin.fileno())
    except io.UnsupportedOperation:
        return True
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _int_or_none(value: str) -> int | None:
    if value.strip().lower() in ("none", "off"):
        return None
    return bounded_int()(value)


def build_parser(prog: str = TAG) -> argparse.ArgumentParser:
    p = make_parser(prog, summary(__doc__), tag=TAG)
    p.add_argument(
        "--model-path", required=True, metavar="DIR", help="checkpoint directory, or a run directory"
    )
    p.add_argument("--prompt", metavar="TEXT", help="text to continue (required unless --interactive)")
    d = Sampling()
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, metavar="N", help="default 200")
    p.add_argument(
        "--temperature", type=float, default=d.temperature, metavar="T", help="0 = greedy (default 0.8)"
    )
    p.add_argument(
        "--top-k",
        type=_int_or_none,
        default=d.top_k,
        metavar="K",
        help="sample from the K most likely tokens (default 50; 'none' for all)",
    )
    p.add_argument(
        "--top-p", type=float, default=d.top_p, metavar="P", help="nucleus sampling threshold in (0, 1]"
    )
    p.add_argument(
        "--seed",
        type=bounded_int(-(2**63), 2**64 - 1),  # what torch.Generator.manual_seed takes
        metavar="N",
        help="seed for reproducible sampling",
    )
    p.add_argument("--interactive", action="store_true", help="read prompts from stdin until EOF or /quit")
    p.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantization of Linear layers (CPU)")
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda or mps")
    return p


def generate(args: argparse.Namespace) -> int:
    from gptrs.training.distributed import resolve_device

    s = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)
    s.check()
    if args.interactive and not _stdin_open():
        raise GptrsError(
            "--interactive: standard input is closed; give --prompt instead, or run it from a terminal or a pipe"
        )
    if not args.interactive:
        if args.prompt is None:
            raise GptrsError("--prompt is required (or use --interactive)")
        if args.prompt == "":
            raise GptrsError("--prompt is empty (give some text to continue)")
    device = resolve_device("cpu" if args.quantize and args.device == "auto" else args.device)
    if args.quantize and device.type != "cpu":
        raise GptrsError(f"--quantize {args.quantize} runs on the CPU; use --device cpu")
    if not Path(args.model_path).exists():
        raise CheckpointError(f"--model-path {args.model_path}: no such directory")
    model, tok, separator = load_for_inference(args.model_path, device, args.quantize)
    if args.interactive:
        if args.prompt:
            _generate_one(model, tok, args.prompt, separator, s, device, echo=True)
        interactive(model, tok, separator, s, device)
    else:
        _generate_one(model, tok, args.prompt, separator, s, device, echo=True)
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str = TAG) -> int:
    """Entry point of ``gptrs-generate`` and ``python -m gptrs.generate``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.log_level)
    tune_host_allocator()
    return run_main(lambda: generate(args), tag=TAG, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main(prog="python -m gptrs.generate"))
