"""Run configuration: dataclass sections (data, tokenizer, model, training) read from YAML and validated.

    cfg = load_config("configs/small.yaml")                  # or a preset by name: load_config("small")
    cfg = apply_overrides(cfg, ["model.num_layers=4"])       # what `--set` does on the command line
    save_config(cfg, "run/config.yaml")                      # atomic: temp file, fsync, rename
    mc = resolve_model(cfg.model)                            # every model switch concrete (model.arch's)

In reading order: ``schema`` (the fields, the model switches, the reference), ``problems`` (how a problem is
worded), ``validation`` (every rule, once), ``budget`` (the memory of a training step), ``io`` (YAML files, presets,
``--set``), ``__main__`` (``python -m gptrs.config --describe/--check/--show/--list``).
"""

from __future__ import annotations

from gptrs.config.io import (
    MAX_CONFIG_BYTES,
    PRESETS_DIR,
    apply_overrides,
    load_config,
    preset_names,
    resolve_config_path,
    save_config,
)
from gptrs.config.schema import (
    ARCH_DEFAULTS,
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
from gptrs.config.validation import check_model, config_from_dict, validate

__all__ = [
    "ARCH_DEFAULTS", "MAX_CONFIG_BYTES", "PRESETS_DIR", "SECTIONS", "SPECIAL_TOKEN_ROLES", "Config",
    "DataConfig", "ModelConfig", "TokenizerConfig", "TrainingConfig", "apply_overrides", "check_model",
    "config_from_dict", "config_to_dict", "count_parameters", "describe", "load_config", "preset_names",
    "resolve_config_path", "resolve_model", "save_config", "validate",
]  # fmt: skip
