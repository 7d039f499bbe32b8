"""Describe, check or show gptrs configuration files, or list the presets that ship with gptrs.

    python -m gptrs.config --describe [--markdown]                 # every key: type, default, meaning
    python -m gptrs.config --check configs/small.yaml              # validate files (exit 2 on a problem)
    python -m gptrs.config --show small --set model.num_layers=4   # the config with defaults, as YAML
    python -m gptrs.config --list                                  # the presets shipped in the package

A FILE may be a path or a preset name (small, default, large).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gptrs.cli import make_parser, run_main, setup_logging, summary
from gptrs.config.budget import estimate, host_memory, human_bytes
from gptrs.config.io import PRESETS_DIR, apply_overrides, dump_yaml, load_config, preset_names
from gptrs.config.problems import show
from gptrs.config.schema import Config, config_to_dict, count_parameters, describe, resolve_model
from gptrs.errors import GptrsError

PROG = "python -m gptrs.config"


def list_presets() -> str:
    """One line per packaged preset, smallest first: name, parameter count, shape."""
    rows = []
    for name in preset_names():
        cfg = load_config(PRESETS_DIR / f"{name}.yaml")
        m, vocab = cfg.model, cfg.model.vocab_size or cfg.tokenizer.vocab_size
        shape = f"{m.num_layers} layers x {m.embed_dim} wide, {m.heads} heads, context {m.max_seq_len}"
        rows.append((count_parameters(cfg), name, f"{shape}, vocab {vocab}"))
    width = max((len(n) for _, n, _ in rows), default=0)
    return "".join(f"{name:<{width}}  {n:>13,} parameters  {shape}\n" for n, name, shape in sorted(rows))


def _check(paths: Sequence[str], overrides: list[str], as_yaml: bool) -> int:
    """Check (or show) each file; a bad one is an error line and exit status 2, the others still run."""
    status = 0
    for path in paths:
        try:
            cfg = apply_overrides(load_config(path), overrides)
        except GptrsError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 2
            continue
        if as_yaml:
            sys.stdout.write(_show(cfg))
            continue
        print(f"{path}: ok ({count_parameters(cfg):,} parameters)")
        est, here = estimate(cfg), host_memory()
        if here is not None and est.total > here:  # meant for a bigger machine, maybe: the trainer decides
            print(
                f"warning: {path}: a training step needs about {human_bytes(est.total)}, more than this machine's "
                f"{human_bytes(here)} of memory; it needs a larger device (the trainer checks the one it runs on)",
                file=sys.stderr,
            )
    return status


def _show(cfg: Config) -> str:
    """The config as YAML, each null model key followed by the value it resolves to, as a comment."""
    resolved, lines = resolve_model(cfg.model), dump_yaml(config_to_dict(cfg)).splitlines()
    section = ""
    for i, line in enumerate(lines):
        section = line[:-1] if not line.startswith(" ") else section
        key = line.strip().removesuffix(": null")
        if section == "model" and line.endswith(": null") and getattr(resolved, key, None) is not None:
            lines[i] = f"{line}  # {show(getattr(resolved, key))}"
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    parser = make_parser(prog, summary(__doc__))
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--describe", action="store_true", help="print the reference of every key")
    what.add_argument(
        "--check", nargs="+", metavar="FILE", help="validate config files or presets (exit 2 on a problem)"
    )
    show_help = "print the config with its defaults as YAML (what model.arch fills in as comments)"
    what.add_argument("--show", metavar="FILE", help=show_help)
    what.add_argument("--list", action="store_true", help="list the presets with their parameter counts")
    parser.add_argument("--markdown", action="store_true", help="with --describe: a Markdown table")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key")
    args = parser.parse_args(argv)
    if args.markdown and not args.describe:
        parser.error("--markdown goes with --describe")
    setup_logging(args.log_level)

    def body() -> int:
        if args.describe or args.list:
            sys.stdout.write(describe(markdown=args.markdown) if args.describe else list_presets())
            return 0
        return _check(args.check or [args.show], args.set, as_yaml=bool(args.show))

    return run_main(body, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main())
