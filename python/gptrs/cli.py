"""Plumbing shared by the command-line tools (``gptrs.train``, ``gptrs.generate``).

A user's mistake (bad config, missing file, bad flag, corrupt checkpoint) prints one line on stderr and
exits with status 2; ``--log-level DEBUG`` adds the traceback. Anything else is a bug and keeps its
traceback. Log lines go through ``tqdm.write`` so they do not tear the progress bar.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any, NoReturn

import torch
from tqdm import tqdm

from gptrs.errors import GptrsError

EXIT_USER_ERROR = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (not usage + error) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USER_ERROR)


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="console log level; DEBUG also shows tracebacks of errors (default INFO)",
    )


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
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def run_main(body: Callable[[], int | None], *, prog: str, log_level: str = "INFO") -> int:
    """Run a CLI body and turn user errors into one line on stderr and an exit status."""
    debug = log_level.upper() == "DEBUG"

    def fail(e: BaseException, status: int, prefix: str = "error") -> int:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: {prefix}: {one_line(e)}\n")
        sys.stderr.flush()
        return status

    try:
        return int(body() or 0)
    except KeyboardInterrupt as e:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: interrupted{': ' + one_line(e) if str(e) else ''}\n")
        return EXIT_SIGINT
    except torch.OutOfMemoryError as e:
        return fail(e, 1, "out of memory (lower training.batch_size or model size)")
    except (GptrsError, ValueError, OSError, UnicodeError) as e:
        return fail(e, EXIT_USER_ERROR)
