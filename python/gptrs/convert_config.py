"""Convert a legacy JSON config to the gptrs YAML schema: ``python -m gptrs.convert_config --input config.json
--output config.yaml``. Flat (``{"embed_dim": 256, ...}``) or sectioned (``{"model": {...}, ...}``), in the
schema's names or other projects' (nanoGPT's ``n_layer``, Hugging Face's ``num_train_epochs``...). A key it
cannot map, or two keys setting one thing differently, stop it with one line naming the key.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gptrs.cli import make_parser, run_main, setup_logging
from gptrs.config.io import read_text, save_config
from gptrs.config.problems import Problem, name_of, one_line, show, suggest, what
from gptrs.config.schema import SECTIONS, SPECIAL_TOKEN_ROLES, Config, fields_of
from gptrs.config.validation import build, check
from gptrs.errors import ConfigError

# Other projects' spellings of each setting; every setting also maps from its own name (but for the two after
# the table). A name may appear once only (a test checks it). nanoGPT decays the learning rate over
# lr_decay_iters, gptrs over max_steps: so they must agree.
_SPELLINGS = """
data.source: data_source
data.paths: data_files files train_files data_path data_paths
data.text_field: text_column text_key
data.dataset_name: hf_dataset hub_dataset
data.dataset_subset: dataset_config dataset_config_name subset
data.dataset_split: split
data.num_training_samples: num_samples max_samples max_train_samples
data.validation_split: val_split validation_fraction val_fraction test_size
tokenizer.vocab_size: n_vocab
tokenizer.pattern: split_pattern pat_str
tokenizer.min_frequency: min_freq
tokenizer.path: tokenizer_path tokenizer_file
model.embed_dim: n_embd d_model hidden_size embedding_dim
model.ff_dim: n_inner ffn_dim d_ff intermediate_size
model.num_layers: n_layer n_layers num_hidden_layers
model.heads: n_head n_heads num_heads num_attention_heads
model.kv_heads: n_kv_head num_key_value_heads
model.max_seq_len: block_size max_block_size n_positions n_ctx context_length seq_len max_position_embeddings
model.positions: position_embedding_type
model.activation: activation_function
model.bias: use_bias
model.tie_embeddings: tie_word_embeddings
model.logit_softcap: final_logit_softcapping
model.dropout: dropout_rate resid_pdrop embd_pdrop attn_pdrop
model.attention: attn_implementation
model.compile: torch_compile
training.batch_size: train_batch_size micro_batch_size per_device_train_batch_size
training.gradient_accumulation_steps: grad_accum_steps accumulation_steps
training.max_steps: max_iters num_steps total_steps lr_decay_iters
training.epochs: num_epochs num_train_epochs n_epochs
training.learning_rate: lr max_lr peak_lr
training.min_lr: min_learning_rate
training.warmup_steps: warmup_iters num_warmup_steps
training.beta1: adam_beta1
training.beta2: adam_beta2
training.adam_eps: adam_epsilon
training.max_grad_norm: grad_clip clip_grad_norm gradient_clipping
training.mixed_precision: amp use_amp
training.eval_interval: eval_steps eval_every
training.eval_batches: eval_iters
training.log_interval: logging_steps log_every
training.save_interval: save_steps save_every checkpoint_interval
training.keep_last: save_total_limit
training.early_stopping_patience: patience
training.seed: random_seed
"""
_EXTRA = dict(line.split(": ") for line in _SPELLINGS.strip().splitlines())
ALIASES: dict[str, tuple[str, ...]] = {
    f"{s}.{k}": (k, *_EXTRA.get(f"{s}.{k}", "").split())
    for s, cls in SECTIONS.items()
    for k in fields_of(cls)
}
ALIASES["tokenizer.path"] = tuple(_EXTRA["tokenizer.path"].split())  # a flat "path" could mean anything
del ALIASES["model.vocab_size"]  # a flat vocab_size is the tokenizer's

# Keys handled by hand below: they set part of a setting, or several, or depend on their value.
SPECIAL = ("betas", "fp16", "bf16", "dtype", "decay_lr", "bos_token", "eos_token", "pad_token", "unk_token")
# Keys dropped when their value is what gptrs does anyway; any other value is refused.
HARMLESS: dict[str, tuple[Any, ...]] = {
    "decay_lr": (True,), "always_save_checkpoint": (True,), "init_from": ("scratch",), "wandb_log": (False,),
    "eval_only": (False,), "model_type": ("gpt", "gpt2"),
}  # fmt: skip
# Why some common keys have no place in a config file.
_FLAGS = {"device": "--device", "out_dir": "--out", "output_dir": "--out", "resume": "--resume"}
HINTS = {key: f"pass {flag} to python -m gptrs.train" for key, flag in _FLAGS.items()}
HINTS["dataset"] = "for a Hub dataset use dataset_name, for local files data_files"
SECTION_NAMES = {"data": "data", "dataset": "data", "tokenizer": "tokenizer", "model": "model"}
SECTION_NAMES |= dict.fromkeys(("training", "train", "trainer", "optimizer"), "training")
# Other projects' values for the same setting.
_VALUES: dict[str, dict[Any, Any]] = {
    "model.activation": {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"},
    "model.attention": {"flash": "sdpa", "eager": "reference"},
    "model.positions": {"absolute": "learned"},
}
_DTYPES: dict[str, str | bool] = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16"}
_DTYPES |= {"half": "fp16", "float32": False, "fp32": False, "float": False, "auto": True}
_TARGET = {alias: target for target, aliases in ALIASES.items() for alias in aliases}
StrPath = str | os.PathLike[str]


def _same(a: Any, b: Any) -> bool:
    """Equal as settings: 256 and 256.0 are, true and 1 are not."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    numbers = isinstance(a, (int, float)) and isinstance(b, (int, float))
    return a == b if numbers else type(a) is type(b) and a == b


def _role(name: Any) -> Any:
    return name.lower().removesuffix("_token") if isinstance(name, str) else name


class _Converter:
    """Settings collected from a legacy file, each remembering the key it came from; conflicts refused."""

    def __init__(self, source: str, ignore: Sequence[str]) -> None:
        self.source, self.ignore = source, set(ignore)
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}

    def refuse(self, origin: str, message: str) -> ConfigError:
        return ConfigError(one_line(f"{self.source}: {origin}: {message}"))

    def set(self, target: str, value: Any, origin: str) -> None:
        if target in self.values and not _same(self.values[target], value):
            first = f"{self.origin[target]}: {show(self.values[target])}"
            raise self.refuse(origin, f"{show(value)} conflicts with {first} (both set {target})")
        self.values.setdefault(target, value)
        self.origin.setdefault(target, origin)

    def key(self, section: str | None, key: str, value: Any, origin: str) -> None:
        """Record one legacy key (`section`: the schema section it sat in, if any)."""
        if not isinstance(key, str):  # JSON's never are; a mapping given in Python may hold any
            raise self.refuse(origin, f"keys must be strings, got {what(key)}")
        if key in self.ignore or origin in self.ignore:
            return
        in_section = section is not None and key in fields_of(SECTIONS[section])
        target = f"{section}.{key}" if in_section else _TARGET.get(key, "")
        if target == "data.paths" and isinstance(value, Mapping):  # Hugging Face style {"train": [...]}
            if set(value) != {"train"}:
                why = "only a 'train' split can be mapped; gptrs holds out data.validation_split"
                raise self.refuse(origin, why)
            value = value["train"]
        if target == "data.paths" and isinstance(value, str):
            value = [value]
        elif target == "tokenizer.special_tokens":
            if not isinstance(value, Mapping):
                raise self.refuse(origin, "expected a mapping of role (bos, eos, pad, unk) to token string")
            value = {_role(k): v for k, v in value.items()}
        elif target in _VALUES and isinstance(value, str):
            value = _VALUES[target].get(value, value)
        if target:
            self.set(target, value, origin)
        elif key == "betas":
            if not (isinstance(value, list) and len(value) == 2):
                raise self.refuse(origin, f"expected [beta1, beta2], got {show(value)}")
            self.set("training.beta1", value[0], origin)
            self.set("training.beta2", value[1], origin)
        elif key in ("fp16", "bf16"):
            if not isinstance(value, bool):
                raise self.refuse(origin, f"expected true or false, got {show(value)}")
            # false: full precision, unless another key turns it on (see finish)
            self.set("training.mixed_precision" if value else f"_off.{key}", key if value else False, origin)
        elif key == "dtype":
            if not isinstance(value, str) or value not in _DTYPES:
                raise self.refuse(origin, f"cannot map {show(value)} (known: {', '.join(_DTYPES)})")
            self.set("training.mixed_precision", _DTYPES[value], origin)
        elif key == "decay_lr" and value is False:
            self.set("_constant_lr", True, origin)
        elif key.endswith("_token") and _role(key) in SPECIAL_TOKEN_ROLES:
            self.set(f"_special.{_role(key)}", value, origin)
        elif key in HARMLESS:
            if not any(_same(value, ok) for ok in HARMLESS[key]):
                raise self.refuse(origin, f"cannot map {show(value)} (or --ignore {origin} to drop it)")
        else:
            drop = f"--ignore {origin} to drop it"
            guess = suggest(key, [*_TARGET, *SPECIAL, *HARMLESS, *SECTION_NAMES])
            if key in HINTS:
                raise self.refuse(origin, f"cannot map this key: {HINTS[key]} (or {drop})")
            if guess:
                raise self.refuse(origin, f"cannot map this key; did you mean {guess}? (or {drop})")
            raise self.refuse(origin, f"cannot map this key to the gptrs schema ({drop})")

    def finish(self) -> dict[str, dict[str, Any]]:
        """Settings implied by others (source from dataset_name, sampling from epochs...), as nested data."""
        v, origin = self.values, self.origin
        specials = {k.split(".", 1)[1]: val for k, val in v.items() if k.startswith("_special.")}
        if specials:
            v.setdefault("tokenizer.special_tokens", Config().tokenizer.special_tokens).update(specials)
        if any(k.startswith("_off.") for k in v):
            v.setdefault("training.mixed_precision", False)
        if v.get("_constant_lr"):  # nanoGPT's decay_lr: false keeps the peak rate: a cosine from lr to lr
            v["training.min_lr"] = v.get("training.learning_rate", Config().training.learning_rate)
        if "model.vocab_size" in v and "tokenizer.vocab_size" not in v:  # the seed kept it under model
            v["tokenizer.vocab_size"] = v.pop("model.vocab_size")
            origin["tokenizer.vocab_size"] = origin["model.vocab_size"]
        width = v.get("model.embed_dim")
        if isinstance(width, int) and not isinstance(width, bool) and "model.ff_dim" not in v:
            v["model.ff_dim"] = 4 * width  # GPT-2 and nanoGPT
            origin["model.ff_dim"] = origin["model.embed_dim"]
        if "data.source" not in v:
            if "data.dataset_name" in v and "data.paths" in v:
                why = "both files and a Hub dataset given; set source to choose"
                raise self.refuse(origin["data.paths"], why)
            if "data.dataset_name" in v:
                v["data.source"] = "hub"
            elif "data.paths" in v:
                v["data.source"] = "files"
        if "training.epochs" in v:
            v.setdefault("data.sampling", "epochs")
        nested: dict[str, dict[str, Any]] = {}
        for target, value in v.items():
            if not target.startswith("_"):
                section, key = target.split(".")
                nested.setdefault(section, {})[key] = value
        return nested


def convert(legacy: Any, source: str = "<json>", ignore: Sequence[str] = ()) -> Config:
    """Map a legacy config (flat or sectioned plain data) onto the schema and validate it."""
    if not isinstance(legacy, Mapping):
        raise ConfigError(f"{source}: expected a JSON object at the top, got {type(legacy).__name__}")
    out = _Converter(source, ignore)
    for key, value in legacy.items():
        section = SECTION_NAMES.get(key)
        if key in out.ignore or (section is not None and value is None):
            continue
        if section is not None and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                out.key(section, sub, sub_value, f"{key}.{name_of(sub)}")
        elif key in SECTIONS:
            raise out.refuse(name_of(key), f"expected an object of {section} settings, got {show(value)}")
        else:
            out.key(None, key, value, name_of(key))
    try:
        cfg = build(out.finish())
        check(cfg)
    except Problem as p:  # name the legacy key the value came from, beside the schema's
        origin = out.origin.get(p.key.split("[")[0])
        raise p.error(source, p.key if origin in (None, p.key) else f"{origin} ({p.key})") from None
    return cfg


def read_legacy(path: StrPath) -> Any:
    """The parsed JSON of a legacy config; any problem is a one-line ConfigError naming the file."""
    source = os.fspath(path)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ConfigError(f"{source}: invalid JSON: duplicate key {show(key)}")
            result[key] = value
        return result

    try:
        return json.loads(read_text(path, source), object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as e:
        where = f"line {e.lineno}, column {e.colno}"
        raise ConfigError(one_line(f"{source}: {where}: invalid JSON: {e.msg}")) from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid JSON: nested too deeply") from None


def convert_file(
    input: StrPath, output: StrPath, *, force: bool = False, ignore: Sequence[str] = ()
) -> Config:
    """Convert the JSON config at `input` and write it as YAML to `output` (atomically)."""
    cfg = convert(read_legacy(input), os.fspath(input), ignore)
    if Path(output).exists() and not force:
        raise ConfigError(f"{os.fspath(output)}: already exists (use --force to overwrite it)")
    if Path(output).is_dir():
        raise ConfigError(f"{os.fspath(output)}: is a directory")
    save_config(cfg, output, comment=f"converted from {Path(input).name} by python -m gptrs.convert_config")
    return cfg


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m gptrs.convert_config") -> int:
    parser = make_parser(prog, "Convert a legacy JSON config to gptrs YAML.")
    parser.add_argument("--input", required=True, help="legacy config.json (flat or sectioned)")
    parser.add_argument("--output", required=True, help="YAML file to write")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY", help="drop a legacy key")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)

    def body() -> None:
        convert_file(args.input, args.output, force=args.force, ignore=args.ignore)
        print(f"wrote {args.output}; check it with: python -m gptrs.config --check {args.output}")

    return run_main(body, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
