"""User-facing errors: one clear line, exit status 2 from the CLIs, no traceback unless asked for."""

from __future__ import annotations


class GptrsError(Exception):
    """An error the user can fix (bad config, file, flag or input). Its message is one line."""


class ConfigError(GptrsError, ValueError):
    """A configuration file or override is invalid; the message names the file and the key path."""


class CheckpointError(GptrsError, ValueError):
    """A model directory or checkpoint is missing, incomplete or corrupt."""


class DataError(GptrsError, ValueError):
    """A data source is missing, empty, unreachable or malformed."""
