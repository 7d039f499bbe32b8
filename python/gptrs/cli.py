"""What every command-line tool shares: its parser, its logging and how it ends.

The tools: ``python -m gptrs.train``, ``gptrs.generate``, ``gptrs.export``, ``gptrs.tokenizer``,
``gptrs.config`` and ``gptrs.convert_config``. Each builds its parser with :func:`make_parser` and runs
its body through :func:`run_main`, so they all follow one convention:

- exit status 0 when done; 2 for a user's mistake (bad config, missing file, bad flag, corrupt checkpoint),
  reported as one line on stderr; 1 for an internal error (a bug), reported with its traceback;
  130/143 when stopped by SIGINT/SIGTERM;
- ``--log-level`` (default INFO); DEBUG also prints the traceback of a user error;
- the usage line shows the command the user ran (``python -m gptrs.train``, or the console script
  ``gptrs-train``); error lines start with the tool's console-script name when it has one
  (``gptrs-train: error: ...``), else with ``error: ...``.

Log lines go through ``tqdm.write`` so they do not tear a progress bar.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

from tqdm import tqdm

from gptrs.errors import GptrsError

EXIT_OK = 0
EXIT_INTERNAL_ERROR = 1
EXIT_USER_ERROR = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
USER_ERRORS = (GptrsError, ValueError, OSError, UnicodeError)  # what a user can fix: bad input, files, flags


def error_prefix(tag: str | None) -> str:
    """``"gptrs-train: error: "`` for a tool with a console script, else ``"error: "``."""
    return f"{tag}: error: " if tag else "error: "


def summary(doc: str | None) -> str:
    """The first paragraph of a module docstring as plain text for ``--help``: ``literal`` and :role:`x`
    markup removed, lines joined."""
    first = (doc or "").strip().split("\n\n")[0]
    text = re.sub(r":[a-z]+:`([^`]*)`", r"\1", first)
    return " ".join(text.replace("``", "").split())


INT64 = (-(2**63), 2**63 - 1)


def _shown(text: str) -> str:
    """A flag's value as the user typed it, shortened when it is thousands of digits long."""
    return text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"


def bounded_int(lo: int | None = INT64[0], hi: int | None = INT64[1]) -> Callable[[str], int]:
    """An argparse ``type`` for an integer flag in ``[lo, hi]``: a value out of range is refused while the
    flags are parsed, naming the flag (``argument --seed: ...: out of range (at most ...)``), not after the model
    has loaded with a message about C longs."""

    def parse(text: str) -> int:
        digits = text.strip().replace("_", "")
        if not re.fullmatch(r"[+-]?\d+", digits):
            raise argparse.ArgumentTypeError(f"invalid int value: {_shown(text)!r}")
        if len(digits.lstrip("+-")) > 4000:  # int() refuses more than 4300 digits anyway
            value = -(10**4000) if digits.startswith("-") else 10**4000
        else:
            value = int(digits)
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{_shown(text)}: out of range (at most {hi})")
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"{_shown(text)}: out of range (at least {lo})")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not usage + error) and exit status 2, and every ``type=int``
    flag is range-checked while parsing (64-bit unless the flag says otherwise with :func:`bounded_int`).

    ``tag`` starts the error line (see :func:`error_prefix`); subcommand parsers inherit it.
    """

    def __init__(self, *args: Any, tag: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tag = tag
        self.register("type", int, bounded_int())  # ``type=int``, in groups too, parses through it

    def add_subparsers(self, **kwargs: Any) -> Any:
        kwargs.setdefault("parser_class", functools.partial(ArgumentParser, tag=self.tag))
        return super().add_subparsers(**kwargs)

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{error_prefix(self.tag)}{message} (see --help)\n")
        sys.exit(EXIT_USER_ERROR)


def make_parser(prog: str, description: str, *, tag: str | None = None) -> ArgumentParser:
    """A tool's parser: usage shows ``prog`` (what the user ran), errors start with ``tag``, and
    ``--log-level`` is already there."""
    parser = ArgumentParser(prog=prog, description=description, tag=tag)
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="console log level; DEBUG also shows tracebacks of errors (default INFO)",
    )
    return parser


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "INFO") -> None:
    """Route the ``gptrs`` loggers to stderr at ``level`` (idempotent)."""
    logger = logging.getLogger("gptrs")
    logger.setLevel(getattr(logging, level.upper(), logging.INFO))
    for h in list(logger.handlers):
        if isinstance(h, _TqdmHandler):
            logger.removeHandler(h)
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.propagate = False
    warnings.showwarning = _show_warning


def _show_warning(
    message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Python warnings (e.g. a prompt cropped to the context) as one log line, not two with source."""
    logging.getLogger("gptrs").warning("%s", " ".join(str(message).split()))


def one_line(e: BaseException) -> str:
    """An error as one line; an OSError shows its reason, with its file name in front when it has one."""
    raw = e.strerror if isinstance(e, OSError) and e.strerror else str(e)  # no "[Errno 2]" in front
    text = " ".join(line.strip() for line in raw.splitlines() if line.strip()) or type(e).__name__
    filename = getattr(e, "filename", None)
    if isinstance(e, OSError) and filename is not None and str(filename) not in text:
        text = f"{filename}: {text}"
    return text


def _is_out_of_memory(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never imported: then it cannot have run out of memory
    return torch is not None and isinstance(e, torch.OutOfMemoryError)


def run_main(body: Callable[[], int | None], *, tag: str | None = None, log_level: str = "INFO") -> int:
    """Run a tool's body and turn what it raises into a line on stderr and an exit status (see above)."""
    debug = log_level.upper() == "DEBUG"
    prefix = error_prefix(tag)

    def fail(e: BaseException, status: int, what: str = "", *, bug: bool = False) -> int:
        if debug or bug:
            traceback.print_exc()
        sys.stderr.write(f"{prefix}{what}{one_line(e)}\n")
        sys.stderr.flush()
        return status

    try:
        return int(body() or 0)
    except KeyboardInterrupt as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{tag + ': ' if tag else ''}interrupted{': ' + one_line(e) if str(e) else ''}\n")
        return EXIT_SIGINT
    except Exception as e:
        if _is_out_of_memory(e):
            return fail(e, EXIT_INTERNAL_ERROR, "out of memory (lower training.batch_size or model size): ")
        if isinstance(e, USER_ERRORS):
            return fail(e, EXIT_USER_ERROR)
        return fail(e, EXIT_INTERNAL_ERROR, "internal error (a bug; the traceback is above): ", bug=True)
