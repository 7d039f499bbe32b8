"""Config files and ``--set``: reading YAML (safely, with one-line errors), writing it atomically, the packaged
presets (in ``gptrs/config/presets/`` so that they are in the wheel; ``configs/`` in the repository links to
them), and command-line overrides (``--set section.key=value``, the result validated as a whole)."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from gptrs.config.problems import Problem, clip, name_of, one_line, show
from gptrs.config.schema import SECTIONS, Config, config_to_dict, fields_of, hints_of, options
from gptrs.config.validation import check, coerce, config_from_dict, unknown_key, unknown_section, validate
from gptrs.errors import ConfigError
from gptrs.files import atomic_write_text

MAX_CONFIG_BYTES = 1 << 20  # no real config comes near this; a bigger file is a mistake, not a config
PRESETS_DIR = Path(__file__).resolve().parent / "presets"
# Values in one document, counting each alias as the whole value it repeats. Aliases let a few hundred bytes
# stand for billions of values (the "billion laughs" document); anything that walks such a value (validation,
# copying, a message quoting it) would run for minutes and take gigabytes. No real config comes near this.
MAX_YAML_NODES = 100_000
MAX_INT_DIGITS = 100  # an integer literal longer than this is a mistake; Python refuses > 4300 digits anyway


class TooLargeError(yaml.constructor.ConstructorError):
    """A document refused for its size (expanded aliases, a recursive alias, an absurd number literal)."""


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def check_expanded_size(root: yaml.Node, limit: int = MAX_YAML_NODES) -> None:
    """Refuse a composed document of more than ``limit`` values, counting each alias as the whole value it
    repeats, or one that refers to itself. Counts without expanding: each distinct node once (memoised)."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()  # the nodes being counted: meeting one again is a cycle
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            on_path.discard(id(node))
            sizes[id(node)] = size = 1 + sum(sizes[id(c)] for c in _children(node))
            if size > limit:
                why = f"the value here expands to more than {limit} values (aliases repeat it); refused"
                raise TooLargeError(None, None, why, node.start_mark)
        elif id(node) in on_path:
            why = "an alias refers to the value that contains it (a recursive value); refused"
            raise TooLargeError(None, None, why, node.start_mark)
        elif id(node) not in sizes:
            on_path.add(id(node))
            stack.append((node, True))
            stack += [(c, False) for c in _children(node) if id(c) not in sizes]


class Loader(yaml.SafeLoader):
    """SafeLoader that reads 3e-4 as a float (YAML 1.1 wants 3.0e-4), refuses duplicate keys, and refuses a
    document by its size before anything is built from it: more than MAX_YAML_NODES values written out
    (counted as they are read), or expanded by aliases (``check_expanded_size``), or a number too long."""

    def compose_document(self) -> yaml.Node | None:
        self.written = 0
        node = super().compose_document()
        if node is not None:
            check_expanded_size(node)
        return node

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        self.written += 1
        if self.written > MAX_YAML_NODES:
            why = f"the document holds more than {MAX_YAML_NODES} values; a config has a few dozen; refused"
            raise TooLargeError(None, None, why, self.peek_event().start_mark)
        return super().compose_node(parent, index)  # type: ignore[misc]


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes the strings Loader would read as floats ('1e5')."""


_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
for _cls in (Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789"))


def _construct_mapping(loader: Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        with contextlib.suppress(TypeError):  # unhashable keys: the base constructor reports them
            if key in seen:
                why = f"duplicate key {show(key)}"
                raise yaml.constructor.ConstructorError(None, None, why, key_node.start_mark)
            seen.add(key)
    return loader.construct_mapping(node, deep=True)


def _construct_int(loader: Loader, node: yaml.ScalarNode) -> int:
    if len(node.value) > MAX_INT_DIGITS:
        why = f"an integer written with {len(node.value)} characters is out of any range; refused"
        raise TooLargeError(None, None, why, node.start_mark)
    return int(loader.construct_yaml_int(node))


Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=Loader)  # a SafeLoader: no Python objects are built
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = e.problem or e.context
        # Some problems only make sense after their context: "expected a single document ... but found another"
        if e.problem and e.problem.startswith("but ") and e.context:
            problem = f"{e.context} {e.problem}"
        what = problem if isinstance(e, TooLargeError) else f"invalid YAML: {problem}"
        raise ConfigError(one_line(f"{source}: {where}{what}")) from None
    except yaml.reader.ReaderError as e:  # a control character; the reader reports a character offset
        line = text.count("\n", 0, e.position) + 1
        what = f"unacceptable character #x{e.character:04x}: {e.reason}"
        raise ConfigError(f"{source}: line {line}: invalid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(one_line(f"{source}: invalid YAML: {e}")) from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None


def read_text(path: str | os.PathLike[str], source: str, limit: int = MAX_CONFIG_BYTES) -> str:
    """The file's text, or a one-line ConfigError: missing, a directory, not a regular file, too big, not UTF-8."""
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{source}: is a directory, not a config file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device could block or never end
            raise ConfigError(f"{source}: not a regular file")
        if st.st_size > limit:
            raise ConfigError(f"{source}: {st.st_size} bytes is too large for a config file (limit {limit})")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{source}: no such file") from None
    except OSError as e:
        raise ConfigError(one_line(f"{source}: cannot read: {e.strerror or e}")) from None
    if len(raw) > limit:
        raise ConfigError(f"{source}: more than {limit} bytes is too large for a config file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, start) + 1
        raise ConfigError(f"{source}: line {line}: not UTF-8 text (byte 0x{raw[start]:02x})") from None
    if not text.strip():
        raise ConfigError(f"{source}: the file is empty")
    return text


def preset_names() -> list[str]:
    """The presets shipped in the package (small, nanochat-small, ...)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def resolve_config_path(value: str | os.PathLike[str]) -> Path:
    """A config path as given, or the packaged preset of that name when ``value`` is a bare word (no
    directory, no suffix) that names no file here. An existing file always wins over a preset."""
    path = Path(value).expanduser()
    text = os.fspath(value)
    if path.exists() or os.sep in text or "/" in text or path.suffix:
        return path
    preset = PRESETS_DIR / f"{text}.yaml"
    if preset.is_file():
        return preset
    raise ConfigError(f"{text}: no such file, nor a preset ({', '.join(preset_names()) or 'none found'})")


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML config (a path, or a preset name such as "small"); any problem is a one-line
    ConfigError naming the file and key path."""
    source = os.fspath(path)
    data = _parse_yaml(read_text(resolve_config_path(path), source), source)
    if data is None:
        raise ConfigError(f"{source}: the file has no settings, only comments")
    return config_from_dict(data, source)


def dump_yaml(data: dict[str, Any]) -> str:
    """Nested plain data as YAML that ``Loader`` reads back to the same data."""
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
    if yaml.load(text, Loader=Loader) != data:  # PyYAML mangles a few characters (NEL, U+0085) unescaped
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=False, width=1000)
    return text


def save_config(config: Config, path: str | os.PathLike[str], comment: str | None = None) -> None:
    """Write `config` as YAML, atomically and durably, after validating it (ConfigError naming `path`)."""
    path = Path(path)
    validate(config, source=str(path))
    header = "# gptrs configuration; `python -m gptrs.config --describe` explains every key.\n"
    if comment:
        header += "".join(f"# {line}\n" for line in comment.splitlines())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, header + dump_yaml(config_to_dict(config)))


# Command-line overrides (--set)
def _parse_value(raw: str, hint: Any) -> Any:
    """A --set value: YAML for numbers, bools and lists; strings as typed (YAML would strip `def ` to `def`)."""
    args = options(hint)
    if str in args and bool not in args and raw[:1] not in ("'", '"'):
        if type(None) in args and raw.strip() in ("", "null", "~"):
            return None
        return raw
    return yaml.load(raw, Loader=Loader) if raw.strip() else None


def _apply_one(data: dict[str, dict[str, Any]], item: str) -> str:
    """Set one `section.key[.sub]=value` in `data` (typed, not yet checked); return the key path it set."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or len(parts) not in (2, 3) or not all(parts):
        raise Problem("", "expected section.key=value, e.g. model.num_layers=4")
    section, name = parts[0], parts[1]
    if section not in SECTIONS:
        raise unknown_section(section)
    fields = fields_of(SECTIONS[section])
    if name not in fields:
        raise unknown_key(section, name)
    hint, meta = hints_of(SECTIONS[section])[name], fields[name].metadata
    if len(parts) == 3 and typing.get_origin(hint) is not dict:
        raise Problem(f"{section}.{name}", f"has no sub-key {name_of(parts[2])}")
    target_hint = typing.get_args(hint)[1] | None if len(parts) == 3 else hint
    try:
        value = _parse_value(raw, target_hint)
    except (yaml.YAMLError, RecursionError) as e:
        problem = getattr(e, "problem", None) or str(e)
        raise Problem(key, f"cannot read value {show(raw)} as YAML: {problem}") from None
    if len(parts) == 3:  # one entry of a mapping (a special token): null removes it
        table = dict(data[section][name])
        if value is None:
            table.pop(parts[2], None)
        else:
            table[parts[2]] = coerce(key, value, str)
        value, key = table, f"{section}.{name}"
    data[section][name] = coerce(key, value, hint, meta)
    return key


def apply_overrides(config: Config, overrides: Sequence[str], source: str = "--set") -> Config:
    """A new Config with `section.key=value` overrides applied (values read as YAML), validated as a whole;
    `tokenizer.special_tokens.unk=<|unk|>` sets one special token (`=null` removes it). A problem names the
    override at fault (`--set model.heads=x: model.heads: ...`), for a rule the last that set one of its keys."""
    data = config_to_dict(config)
    keys: list[tuple[str, str]] = []  # (key path, the override as typed), to blame the right one at the end
    for item in overrides:
        try:
            keys.append((_apply_one(data, item), item))
        except Problem as p:
            raise p.error(f"{source} {clip(item, 80)}") from None
    cfg = Config(**{s: SECTIONS[s](**data[s]) for s in SECTIONS})
    try:
        check(cfg)  # the base config too: it may have been built (wrongly) in Python
    except Problem as p:
        involved = (p.key.split("[")[0], *p.related)
        for key, item in reversed(keys):
            if any(k == key or k.startswith(key + ".") for k in involved):
                raise p.error(f"{source} {clip(item, 80)}") from None
        raise p.error(source) from None  # the base config was at fault
    return cfg
