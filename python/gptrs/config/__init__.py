"""Run configuration: dataclass sections (data, tokenizer, model, training) read from YAML and validated.

    cfg = load_config("configs/small.yaml")                  # or a preset by name: load_config("small")
    cfg = apply_overrides(cfg, ["model.num_layers=4"])       # what `--set` does on the command line
    save_config(cfg, "run/config.yaml")                      # atomic: temp file, fsync, rename

Every problem is one line, ``<file>: <section>.<key>: <what is wrong>``, e.g.
``configs/x.yaml: model.heads: 5 does not divide model.embed_dim (128)``.

The package, in reading order: ``schema`` (the dataclasses, each field's help and limits, the reference
``describe`` prints, ``count_parameters``), ``problems`` (how a problem is worded), ``validation`` (types,
ranges and the rules between fields, each once; ``check_model`` for a model's shape), ``io`` (YAML files,
atomic writes, the presets in ``presets/``), ``overrides`` (``--set``), and ``__main__``
(``python -m gptrs.config --describe/--check/--show/--list``).
"""

from __future__ import annotations

from gptrs.config.io import (
    MAX_CONFIG_BYTES,
    PRESETS_DIR,
    load_config,
    preset_names,
    resolve_config_path,
    save_config,
)
from gptrs.config.overrides import apply_overrides
from gptrs.config.schema import (
    SECTIONS,
    SPECIAL_TOKEN_ROLES,
    Config,
    DataConfig,
    ModelConfig,
    TokenizerConfig,
    TrainingConfig,
    config_to_dict,
    count_parameters,
    describe,
    resolve_model,
)
from gptrs.config.validation import check_model, config_from_dict, is_validated, validate

__all__ = [
    "MAX_CONFIG_BYTES",
    "PRESETS_DIR",
    "SECTIONS",
    "SPECIAL_TOKEN_ROLES",
    "Config",
    "DataConfig",
    "ModelConfig",
    "TokenizerConfig",
    "TrainingConfig",
    "apply_overrides",
    "check_model",
    "config_from_dict",
    "config_to_dict",
    "count_parameters",
    "describe",
    "is_validated",
    "load_config",
    "preset_names",
    "resolve_config_path",
    "resolve_model",
    "save_config",
    "validate",
]
