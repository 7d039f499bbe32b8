"""More hostile inputs, as an attacker would write them: configs (YAML alias bombs, recursive values, absurd
numbers and sizes), the tokenizer and export CLIs, model files that describe absurd models, training runs
(resumed with another tokenizer, one-document corpora, models no device holds) and full or read-only disks
(a real tmpfs, mounted for the case; skipped where mounting is not permitted).

The cases use ``hostile_cases.Case`` and run the same way (``hostile_cases.all_cases`` includes them): every CLI
case in a child process under an address-space cap and a timeout, so an unbounded allocation or a hang fails.
Run by ``tests/test_hostile_config.py``, ``tests/test_hostile_cli.py`` and ``tests/test_hostile_disk.py``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.reliability.hostile_cases import Case, Fixtures, _env, make_model, make_tokenizer, tiny_sets

# ---------------------------------------------------------------------------------------------------------
# Helpers: files written for a case, tmpfs mounts


def _file(name: str, content: str | bytes) -> Callable[[Fixtures], Path]:
    def make(fx: Fixtures) -> Path:
        p = fx.path(name)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        fx.extra["path"] = str(p)
        return p

    return make


def _laughs(depth: int = 9, width: int = 9, inline: bool = True) -> str:
    """A 'billion laughs' value: each level an anchor repeating the previous one `width` times."""
    names = [f"l{i}" for i in range(depth)]
    first = f"&{names[0]} [{', '.join(['lol'] * width)}]"
    levels = [first] + [f"&{n} [{', '.join(['*' + p] * width)}]" for p, n in itertools.pairwise(names)]
    return f"[{', '.join(levels)}]" if inline else levels[-1]


def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root on Linux, outside most containers' restrictions)."""
    if os.name != "posix" or shutil.which("mount") is None:
        return False
    with tempfile.TemporaryDirectory(prefix="gptrs-mount-") as d:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True)
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", d], capture_output=True)
    return True


def tmpfs(fx: Fixtures, name: str, size: str = "2m") -> Path:
    """A fresh tmpfs of `size` at a case directory (unmounted by ``unmount_all`` after the case)."""
    d = fx.path(name)
    unmount(d)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], check=True, capture_output=True
    )
    fx.extra.setdefault("mounts", []).append(str(d))
    return d


def unmount(d: Path) -> None:
    with contextlib.suppress(OSError):
        if os.path.ismount(d):
            subprocess.run(["umount", "-l", str(d)], capture_output=True)


def unmount_all(fx: Fixtures) -> None:
    for d in fx.extra.pop("mounts", []):
        unmount(Path(d))


def fill(d: Path, leave: int = 0) -> None:
    """Fill the file system at `d`, leaving about `leave` bytes free."""
    free = shutil.disk_usage(d).free - leave
    with open(d / "filler", "wb") as f:
        chunk = b"\0" * 65536
        try:
            while free > 0:
                f.write(chunk[: min(len(chunk), free)])
                free -= len(chunk)
            f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise


def read_only(d: Path) -> Path:
    subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True, capture_output=True)
    return d


def full_tmpfs(name: str, size: str = "2m") -> Callable[[Fixtures], Path]:
    def make(fx: Fixtures) -> Path:
        d = tmpfs(fx, name, size)
        fill(d)
        return d

    return make


def ro_tmpfs(name: str) -> Callable[[Fixtures], Path]:
    return lambda fx: read_only(tmpfs(fx, name, "1m"))


# ---------------------------------------------------------------------------------------------------------
# Configs: python -m gptrs.config --check (no torch: a fraction of a second each)

_BOMB = f"model:\n  activation: {_laughs()}\n"
_PATHS_BOMB = f"data:\n  source: files\n  paths: {_laughs()}\n"
_MERGE_BOMB = "\n".join(
    ["x0: &x0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}"]
    + [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 8)]
    + ["model: {heads: 4}", "data:", "  paths: *x7"]
)
_RECURSIVE = "data:\n  source: files\n  paths: &a [x, *a]\n"


def _cfg(fx: Fixtures, name: str, text: str | bytes) -> str:
    return str(_file(name, text)(fx))


def _check_argv(name: str, text: str | bytes, *more: str) -> Callable[[Fixtures], list[str]]:
    return lambda fx: ["gptrs.config", "--check", _cfg(fx, name, text), *more]


def _set_argv(*sets: str, show: bool = False) -> Callable[[Fixtures], list[str]]:
    args = ["--show" if show else "--check", "small"]
    for s in sets:
        args += ["--set", s]
    return lambda _fx: ["gptrs.config", *args]


def _fifo(fx: Fixtures) -> list[str]:
    p = fx.path("fifo.yaml")
    if p.exists():
        p.unlink()
    os.mkfifo(p)
    fx.extra["path"] = str(p)
    return ["gptrs.config", "--check", str(p)]


_LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d (DEBUG|INFO) ")


def _short_line(limit: int = 600) -> Callable[[Any, Fixtures], str | None]:
    def check(proc: Any, fx: Fixtures) -> str | None:
        # Progress logging (INFO lines) may come first; what is refused is said once, in one line.
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not _LOG_LINE.match(ln)]
        if len(lines) != 1:
            return f"{len(lines)} lines on stderr: {proc.stderr[:300]!r}"
        return None if len(lines[0]) <= limit else f"the message is {len(lines[0])} characters long"

    return check


def _no_marker_file(proc: Any, fx: Fixtures) -> str | None:
    return "a YAML tag ran code" if (fx.root / "cases" / "PWNED_YAML").exists() else None


def config_cases() -> list[Case]:
    S = "config"
    big = "9" * 99
    cases = [
        ("billion laughs in a choices field", _check_argv("bomb.yaml", _BOMB), r"^error: {path}: line 2, column \d+: the value here expands to more than 100000 values"),
        ("billion laughs in a list field", _check_argv("bomb_paths.yaml", _PATHS_BOMB), r"^error: {path}: line 3, column \d+: the value here expands"),
        ("billion laughs through merge-free mapping aliases", _check_argv("bomb_maps.yaml", _MERGE_BOMB), r"^error: {path}: line \d+, column \d+: the value here expands"),
        ("billion laughs with --show (refused before rendering)", _set_argv(f"data.paths={_laughs()}", show=True), r"^error: --set data\.paths=.*: data\.paths: cannot read value .* the value here expands"),
        ("billion laughs as a --set value", _set_argv(f"training.mixed_precision={_laughs()}"), r"^error: --set training\.mixed_precision=.*: training\.mixed_precision: cannot read value .*expands to more than"),
        ("billion laughs as a special token", _set_argv(f"tokenizer.special_tokens={{bos: {_laughs()}}}"), r"^error: --set tokenizer\.special_tokens=.*: tokenizer\.special_tokens: cannot read value"),
        ("recursive alias in a file", _check_argv("recursive.yaml", _RECURSIVE), r"^error: {path}: line 3, column \d+: an alias refers to the value that contains it"),
        ("recursive alias as a --set value", _set_argv("data.paths=&a [a, *a]"), r"^error: --set data\.paths=&a \[a, \*a\]: data\.paths: cannot read value .*recursive"),
        ("5000-digit integer", _check_argv("bigint.yaml", "model:\n  num_layers: 1" + "0" * 5000 + "\n"), r"^error: {path}: line 2, column 15: an integer written with 5001 characters is out of any range"),
        ("5000-digit hexadecimal --set", _set_argv("model.embed_dim=0x" + "f" * 5000), r"^error: --set model\.embed_dim=0xf+\.\.\.: model\.embed_dim: cannot read value .*an integer written with 5002 characters"),
        ("99-digit layer count", _check_argv("layers99.yaml", f"model:\n  num_layers: {big}\n"), r"^error: {path}: model\.num_layers: 9{20}.*no single machine has that"),
        ("a trillion layers", _set_argv("model.num_layers=1000000000000"), r"^error: --set model\.num_layers=1000000000000: model\.num_layers: .*parameters that needs about .* to train.*no single machine"),
        ("embed_dim 2**40", _set_argv("model.embed_dim=1099511627776", "model.heads=1"), r"^error: --set model\.embed_dim=1099511627776: model\.embed_dim: .*no single machine"),
        ("ff_dim 2**50", _set_argv("model.ff_dim=1125899906842624"), r"^error: --set model\.ff_dim=1125899906842624: model\.ff_dim: .*no single machine"),
        ("batch of 10**12 sequences", _set_argv("training.batch_size=1000000000000"), r"^error: --set training\.batch_size=1000000000000: training\.batch_size: .*activations at training\.batch_size"),
        ("vocabulary of 2**32 tokens", _set_argv("tokenizer.vocab_size=4294967296", "model.embed_dim=4096", "model.heads=4"), r"^error: --set .*: tokenizer\.vocab_size: 4294967296 makes a model of .*no single machine"),
        ("context of 10**12 tokens", _set_argv("model.max_seq_len=1000000000000", "data.max_eval_tokens=1000000000001"), r"^error: --set .*: model\.max_seq_len: .*no single machine"),
        ("200k-character value for a choices field", _check_argv("longchoice.yaml", "model:\n  activation: " + "x" * 200_000 + "\n"), r"^error: {path}: model\.activation: 'x+\.\.\. is not one of 'gelu', 'gelu_tanh'"),
        ("1000-character key", _check_argv("longkey.yaml", "model:\n  " + "k" * 1000 + ": 1\n"), r"^error: {path}: model\.'k+\.\.\.: unknown key"),
        ("100k nested lists", _check_argv("nested.yaml", "data:\n  paths: " + "[" * 100_000 + "]" * 100_000 + "\n"), r"^error: {path}: .*(nested too deeply|expected a string)"),
        ("a flat YAML list of 150k values (no alias)", _check_argv("flatlist.yaml", "- a\n" * 150_000), r"^error: {path}: line \d+, column \d+: the document holds more than 100000 values; a config has a few dozen; refused$"),
        ("a 2 MB config file", _check_argv("huge.yaml", "# padding\n" * 210_000 + "model:\n  heads: 4\n"), r"^error: {path}: \d+ bytes is too large for a config file \(limit 1048576\)"),
        ("a FIFO for a config file", _fifo, r"^error: {path}: not a regular file"),
        ("a directory for a config file", lambda fx: ["gptrs.config", "--check", str(fx.root)], r"^error: .*: is a directory, not a config file"),
        ("Latin-1 bytes in a config", _check_argv("latin1.yaml", b"model:\n  activation: gel\xfc\n"), r"^error: {path}: line 2: not UTF-8 text \(byte 0xfc\)"),
        ("python/object tag", _check_argv("tag.yaml", "model: !!python/object/apply:os.system [\"touch PWNED_YAML\"]\n"), r"^error: {path}: line 1, column 8: invalid YAML: could not determine a constructor for the tag"),
        ("duplicate section", _check_argv("dup.yaml", "model:\n  heads: 4\nmodel:\n  heads: 2\n"), r"^error: {path}: line 3, column 1: invalid YAML: duplicate key 'model'"),
        ("two YAML documents", _check_argv("twodocs.yaml", "model:\n  heads: 4\n---\nmodel:\n  heads: 2\n"), r"^error: {path}: line 3, column 1: invalid YAML: expected a single document"),
        ("learning rate 1e999", _set_argv("training.learning_rate=1e999"), r"^error: --set training\.learning_rate=1e999: training\.learning_rate: must be a finite number, got inf"),
        ("dropout .nan", _set_argv("model.dropout=.nan"), r"^error: --set model\.dropout=\.nan: model\.dropout: must be a finite number, got nan"),
        ("seed 2**64", _set_argv("training.seed=18446744073709551616"), r"^error: --set training\.seed=18446744073709551616: training\.seed: must be in \[0, 18446744073709551615\]"),
        ("10000 special-token roles", _check_argv("roles.yaml", "tokenizer:\n  special_tokens: {" + ", ".join(f"r{i}: t{i}" for i in range(10_000)) + "}\n"), r"^error: {path}: tokenizer\.special_tokens\.r0: unknown role"),
        ("a newline in a --set key", _set_argv("model.hea\nds=4"), r"^error: --set model\.hea\\nds=4: model\.'hea\\nds': unknown key"),
    ]  # fmt: skip
    return [
        Case(S, name, argv=argv, match=m, check=_no_marker_file if "tag" in name else _short_line())
        for name, argv, m in cases
    ]


# ---------------------------------------------------------------------------------------------------------
# The tokenizer and export CLIs; model files that describe absurd models; generation arguments


def _input_text(fx: Fixtures) -> str:
    p = fx.path("input.txt")
    if not p.exists():
        p.write_text("def f(x):\n    return x + 1\n" * 200, encoding="utf-8")
    return str(p)


def _tok_train(
    *args: str, output: Callable[[Fixtures], str] | None = None
) -> Callable[[Fixtures], list[str]]:
    def argv(fx: Fixtures) -> list[str]:
        out = output(fx) if output else str(fx.path("tok_out.json"))
        return [
            "gptrs.tokenizer",
            "train",
            "--input",
            _input_text(fx),
            "--output",
            out,
            "--no-progress",
            *args,
        ]

    return argv


def _model_json(name: str, **change: Any) -> Callable[[Fixtures], Path]:
    """A copy of the fixture checkpoint whose model.json describes another (absurd) model."""

    def make(fx: Fixtures) -> Path:
        src = make_model(fx.root)
        d = fx.path(name)
        if d.exists():
            shutil.rmtree(d)
        shutil.copytree(src, d)
        meta = json.loads((d / "model.json").read_text())
        meta["config"].update(change)
        (d / "model.json").write_text(json.dumps(meta))
        fx.extra["path"] = str(d)
        return d

    return make


def _export(out: Callable[[Fixtures], Path | str], *more: str) -> Callable[[Fixtures], list[str]]:
    return lambda fx: ["gptrs.export", "--model-path", str(make_model(fx.root)), "--out", str(out(fx)), *more]


def _a_file(fx: Fixtures) -> Path:
    p = fx.path("a_file")
    p.write_text("not a directory")
    fx.extra["path"] = str(p)
    return p


def _gen(*args: str) -> Callable[[Fixtures], list[str]]:
    return lambda fx: ["gptrs.generate", "--model-path", str(make_model(fx.root)), "--device", "cpu", *args]


def cli_cases() -> list[Case]:
    S = "cli"
    table: list[tuple[str, Callable[[Fixtures], list[str]], str]] = [
        ("tokenizer train: --vocab-size 2**64", _tok_train("--vocab-size", str(2**64)), r"^error: argument --vocab-size: 18446744073709551616: out of range \(at most 4294967296\)"),
        ("tokenizer train: --vocab-size 10**30", _tok_train("--vocab-size", str(10**30)), r"^error: argument --vocab-size: 1000000000000000000000000000000: out of range"),
        ("tokenizer train: --vocab-size with 4000 digits", _tok_train("--vocab-size", "9" * 4000), r"^error: argument --vocab-size: 9{20}\.\.\. \(4000 characters\): out of range"),
        ("tokenizer train: --vocab-size -1", _tok_train("--vocab-size", "-1"), r"^error: vocab_size -1 is too small"),
        ("tokenizer train: --min-frequency 2**70", _tok_train("--vocab-size", "300", "--min-frequency", str(2**70)), r"^error: argument --min-frequency: 1180591620717411303424: out of range \(at most 9223372036854775807\)"),
        ("tokenizer train: one string for two roles", _tok_train("--vocab-size", "300", "--special", "eos=<|x|>", "bos=<|x|>"), r"^error: --special 'bos=<\|x\|>': '<\|x\|>' is also the 'eos' token"),
        ("tokenizer train: --output is a directory", _tok_train("--vocab-size", "300", output=lambda fx: str(fx.root)), r"^error: cannot write .*: Is a directory"),
        ("tokenizer demo: --vocab-size 2**64", lambda fx: ["gptrs.tokenizer", "demo", "--vocab-size", str(2**64)], r"^error: argument --vocab-size: 18446744073709551616: out of range"),
        ("tokenizer decode: id 2**64", lambda fx: ["gptrs.tokenizer", "decode", "--tokenizer", str(make_tokenizer(fx.root)), "--ids", str(2**64)], r"^error: argument --ids: 18446744073709551616: out of range \(at most 4294967295\)"),
        ("export: --out is a regular file", _export(_a_file), r"^error: {path}: is a file, not a directory"),
        ("export: --out below a regular file", _export(lambda fx: _a_file(fx) / "sub"), r"^error: {path}: .*a_file is a file, not a directory"),
        ("export: --model-path missing", lambda fx: ["gptrs.export", "--model-path", str(fx.root / "nope"), "--out", str(fx.path("exp_missing"))], r"^error: .*nope"),
        ("export: --tokenizer missing", _export(lambda fx: fx.path("exp_tok"), "--tokenizer", "/nonexistent/tok.json"), r"^error: tokenizer file not found: /nonexistent/tok\.json"),
        ("model.json: 10**9 layers (refused before building)", lambda fx: ["gptrs.generate", "--model-path", str(_model_json("layers_1e9", num_layers=10**9)(fx)), "--device", "cpu", "--prompt", "x"], r"^gptrs-generate: error: {path}/model\.json: describes a model of [\d,]+ parameters, more than model\.safetensors holds"),
        ("model.json: embed_dim 2**31", lambda fx: ["gptrs.generate", "--model-path", str(_model_json("wide", embed_dim=2**31, heads=1)(fx)), "--device", "cpu", "--prompt", "x"], r"^gptrs-generate: error: {path}/model\.json: describes a model of"),
        ("model.json: heads do not divide the width", lambda fx: ["gptrs.generate", "--model-path", str(_model_json("heads3", heads=3)(fx)), "--device", "cpu", "--prompt", "x"], r"^gptrs-generate: error: {path}/model\.json: model\.heads: 3 does not divide model\.embed_dim \(32\)"),
        ("generate: --max-new-tokens 10**30", _gen("--prompt", "x", "--max-new-tokens", str(10**30)), r"^gptrs-generate: error: argument --max-new-tokens: 10{30}: out of range"),
        ("generate: --temperature nan", _gen("--prompt", "x", "--temperature", "nan"), r"^gptrs-generate: error: --temperature must be a number >= 0"),
        ("generate: --top-p nan", _gen("--prompt", "x", "--top-p", "nan"), r"^gptrs-generate: error: --top-p must be in \(0, 1\]"),
    ]  # fmt: skip
    return [
        Case(S, name, argv=argv, match=m, check=_short_line(), needs_model=True) for name, argv, m in table
    ]


# ---------------------------------------------------------------------------------------------------------
# Training runs (each starts torch and prepares data: tens of seconds; the bulk is marked slow)


def _train(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return ["gptrs.train", "--out", str(out), "--device", "cpu", *tiny_sets(), *more]


def _fresh(fx: Fixtures, name: str) -> Path:
    d = fx.path(name)
    if d.exists():
        shutil.rmtree(d)
    return d


def _trained_run(fx: Fixtures) -> Path:
    """A complete tiny run (3 steps), trained once per fixture directory; cases copy it."""
    run = fx.root / "trained_run"
    if not (run / "checkpoints" / "last" / "COMPLETE").exists():
        subprocess.run(
            [sys.executable, "-m", *_train(fx, run)], check=True, capture_output=True, env=_env(), timeout=600
        )
    return run


def _resume_changed(name: str, *sets: str) -> Callable[[Fixtures], list[str]]:
    def argv(fx: Fixtures) -> list[str]:
        run = _fresh(fx, name)
        shutil.copytree(_trained_run(fx), run)
        fx.extra["config_before"] = (run / "config.yaml").read_text()
        fx.extra["run"] = str(run)
        more = [a for s in sets for a in ("--set", s)]
        return _train(fx, run, "--resume", *more)

    return argv


def _config_kept(proc: Any, fx: Fixtures) -> str | None:
    now = (Path(fx.extra["run"]) / "config.yaml").read_text()
    return None if now == fx.extra["config_before"] else "the run's config.yaml was rewritten"


def _one_document(fx: Fixtures) -> list[str]:
    p = fx.path("one_document.txt")
    p.write_text(" ".join(f"word{i % 97}" for i in range(60_000)), encoding="utf-8")  # no blank line
    return _train(fx, _fresh(fx, "one_doc_run"), "--set", "data.source=files", "--set", f"data.paths=[{p}]")


def train_cases() -> list[Case]:
    S = "train"
    quick = [
        ("model too large for the device (refused before data)", lambda fx: _train(fx, _fresh(fx, "huge"), "--set", "model.num_layers=100000"), r"^gptrs-train: error: model\.num_layers: 100000 makes a model of .* the device \(cpu\) has"),
        ("batch too large for the device", lambda fx: _train(fx, _fresh(fx, "hugebatch"), "--set", "training.batch_size=100000000"), r"^gptrs-train: error: training\.batch_size: 100000000 makes a model of .*the device \(cpu\) has"),
    ]  # fmt: skip
    slow = [
        ("--resume with another tokenizer.vocab_size", _resume_changed("resume_vocab", "tokenizer.vocab_size=400"), r"^gptrs-train: error: .*checkpoints/last was trained with another tokenizer config \(tokenizer\.vocab_size: 300 there, 400 here\)"),
        ("--resume with another special token", _resume_changed("resume_special", "tokenizer.special_tokens.eos=<|end|>"), r"^gptrs-train: error: .*another tokenizer config \(tokenizer\.special_tokens: .* there, .* here\)"),
        ("--resume with another pattern", _resume_changed("resume_pattern", "tokenizer.pattern=gpt2"), r"^gptrs-train: error: .*another tokenizer config \(tokenizer\.pattern: 'gpt4' there, 'gpt2' here\)"),
        ("--resume with another model width", _resume_changed("resume_width", "model.embed_dim=64"), r"^gptrs-train: error: .*another model config \(model\.embed_dim: 32 there, 64 here\)"),
        ("a corpus of one huge document", _one_document, r"^gptrs-train: error: data: the corpus is 1 document \(\d+ tokens\), too few to split into training and validation"),
    ]  # fmt: skip
    cases = [Case(S, n, argv=a, match=m, check=_short_line(), timeout=300) for n, a, m in quick]
    cases += [
        Case(
            S,
            n,
            argv=a,
            match=m,
            check=_config_kept if "resume" in n else _short_line(),
            timeout=600,
            slow=True,
        )
        for n, a, m in slow
    ]
    return cases


# ---------------------------------------------------------------------------------------------------------
# Nothing lost: resumes of damaged runs and edited configs (the files that existed must be byte-identical after
# a refusal), damaged models, and messages that must say what is wrong


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``; the run lock is left out (its content is the pid of its holder)."""
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _damaged_run(
    name: str, damage: Callable[[Path], None], *, resume: bool = True
) -> Callable[[Fixtures], list[str]]:
    """A copy of the trained run with every checkpoint damaged by ``damage``; the hashes of all its files are
    kept to compare after the case."""

    def argv(fx: Fixtures) -> list[str]:
        run = _fresh(fx, name)
        shutil.copytree(_trained_run(fx), run)
        for ckpt in sorted((run / "checkpoints").iterdir()):
            damage(ckpt)
        fx.extra["run"], fx.extra["hashes"] = str(run), _hashes(run)
        return _train(fx, run, *(["--resume"] if resume else []), "--max-steps", "5")

    return argv


def _truncate_state(ckpt: Path) -> None:
    f = ckpt / "trainer_state.pt"
    f.write_bytes(f.read_bytes()[:64])


def _garbage_state(ckpt: Path) -> None:
    f = ckpt / "trainer_state.pt"
    f.write_bytes(b"\x00" * f.stat().st_size)  # COMPLETE still matches: only loading can tell


def _nan_weights(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file
    from tests.reliability.hostile_cases import rewrite_complete

    tensors = load_file(ckpt / "model.safetensors")
    tensors["transformer.h.0.mlp.c_fc.weight"][0, 0] = float("nan")
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    rewrite_complete(ckpt)


def _nothing_changed(proc: Any, fx: Fixtures) -> str | None:
    now = _hashes(Path(fx.extra["run"]))
    before = fx.extra["hashes"]
    changed = sorted(k for k in before if now.get(k) != before[k])
    added = sorted(set(now) - set(before))
    if changed or added:
        return f"files changed: {changed[:5]}, added: {added[:5]}"
    return _short_line()(proc, fx)


def _edited_config(name: str, old: str, new: str) -> Callable[[Fixtures], list[str]]:
    """A copy of the trained run whose config.yaml the user edited (``old`` -> ``new``), resumed."""

    def argv(fx: Fixtures) -> list[str]:
        run = _fresh(fx, name)
        shutil.copytree(_trained_run(fx), run)
        text = (run / "config.yaml").read_text()
        assert old in text, f"{old!r} not in the run's config.yaml"
        (run / "config.yaml").write_text(text.replace(old, new))
        fx.extra["run"], fx.extra["hashes"] = str(run), _hashes(run)
        fx.extra["config_before"] = (run / "config.yaml").read_text()
        return ["gptrs.train", "--out", str(run), "--device", "cpu", "--resume"]

    return argv


def _edit_honoured(proc: Any, fx: Fixtures) -> str | None:
    from gptrs.training.checkpoint import find_latest

    run = Path(fx.extra["run"])
    latest = find_latest(run / "checkpoints")
    if latest is None or latest.step != 5:
        return f"trained to {latest}, not step 5 as the edited config.yaml says"
    if "training.max_steps: 3 -> 5" not in proc.stderr:
        return "the changed setting is not logged"
    if "trained 2 steps" not in proc.stdout or "from step 3 to step 5" not in proc.stdout:
        return f"the summary does not count this invocation: {proc.stdout[:200]!r}"
    return _config_kept(proc, fx)


def _fell_back(proc: Any, fx: Fixtures) -> str | None:
    """Resumed past the NaN 'last': a WARNING names it, it is kept aside unchanged, and the run went on."""
    from gptrs.training.checkpoint import find_latest

    run = Path(fx.extra["run"])
    warned = [ln for ln in proc.stderr.splitlines() if " WARNING " in ln and "checkpoints/last" in ln]
    if not any("non-finite" in ln for ln in warned):
        return f"no WARNING naming the skipped checkpoint: {proc.stderr[-600:]!r}"
    kept = {k.split("/", 2)[2]: v for k, v in fx.extra["hashes"].items() if k.startswith("checkpoints/last/")}
    aside = _hashes(run / "checkpoints" / "damaged-last")
    if aside != kept:
        return "the damaged checkpoint was not kept as it was"
    latest = find_latest(run / "checkpoints")
    return None if latest is not None and latest.step == 5 else f"the newest checkpoint is {latest}"


def _nan_last_only(fx: Fixtures) -> list[str]:
    run = _fresh(fx, "resume_nan_last")
    shutil.copytree(_trained_run(fx), run)
    _nan_weights(run / "checkpoints" / "last")
    fx.extra["run"], fx.extra["hashes"] = str(run), _hashes(run)
    return _train(fx, run, "--resume", "--max-steps", "5")


def _nan_model(fx: Fixtures) -> Path:
    src = make_model(fx.root)
    d = fx.path("nan_model")
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(src, d)
    _nan_weights(d)
    fx.extra["path"] = str(d)
    return d


def _special_data(kind: str) -> Callable[[Fixtures], list[str]]:
    def argv(fx: Fixtures) -> list[str]:
        if kind == "fifo":
            p = fx.path("data_fifo.txt")
            if p.exists():
                p.unlink()
            os.mkfifo(p)
        elif kind == "socket":
            import socket

            p = fx.path("data_socket.txt")
            if p.exists():
                p.unlink()
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(p))  # left bound: the file is the point, nobody connects
            fx.extra["socket"] = sock
        else:
            p = Path("/dev/null")
        fx.extra["path"] = str(p)
        return _train(
            fx, _fresh(fx, f"data_{kind}_run"), "--set", "data.source=files", "--set", f"data.paths=[{p}]"
        )

    return argv


def _latin1_file(fx: Fixtures) -> list[str]:
    p = fx.path("latin1.txt")
    p.write_bytes(b"def f():\n    return 'caf" + b"\xe9'\n")
    fx.extra["path"] = str(p)
    return ["gptrs.tokenizer", "encode", "--tokenizer", str(make_tokenizer(fx.root)), "--file", str(p)]


def _fifo_file(fx: Fixtures) -> list[str]:
    p = fx.path("encode_fifo.txt")
    if p.exists():
        p.unlink()
    os.mkfifo(p)
    fx.extra["path"] = str(p)
    return ["gptrs.tokenizer", "encode", "--tokenizer", str(make_tokenizer(fx.root)), "--file", str(p)]


def _digits_only_tokenizer(fx: Fixtures) -> Path:
    p = fx.path("digits_tok.json")
    if not p.exists():
        from gptrs.tokenizer import BPETokenizer

        tok = BPETokenizer(vocab_size=300, pattern=r"\d+")
        tok.train(["x = 1 + 22\n" * 50])
        tok.save(str(p))
    return p


def _encode_vanishing(fx: Fixtures) -> list[str]:
    return [
        "gptrs.tokenizer",
        "encode",
        "--tokenizer",
        str(_digits_only_tokenizer(fx)),
        "--file",
        _input_text(fx),
    ]


def _vanishing_ids(proc: Any, fx: Fixtures) -> str | None:
    return None if proc.stdout.strip() == "" or proc.stdout.strip().split() else "no ids printed"


def _closed_stdin(fx: Fixtures) -> subprocess.CompletedProcess[str]:
    """``--interactive`` with standard input closed (``0<&-``: no file descriptor 0 at all, not an empty one)."""
    import shlex

    cmd = [
        sys.executable,
        "-m",
        "gptrs.generate",
        "--model-path",
        str(make_model(fx.root)),
        "--device",
        "cpu",
        "--interactive",
    ]
    return subprocess.run(
        ["bash", "-c", f"exec {shlex.join(cmd)} 0<&-"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def _closed_stdin_refused(proc: Any, fx: Fixtures) -> str | None:
    if proc.returncode != 2 or "Traceback" in proc.stderr:
        return f"exit {proc.returncode}: {proc.stderr[-400:]!r}"
    last = proc.stderr.strip().splitlines()[-1]
    if not re.search(r"^gptrs-generate: error: --interactive: standard input is closed", last):
        return f"last line {last!r}"
    return None


def _out_file(below: bool) -> Callable[[Fixtures], list[str]]:
    def argv(fx: Fixtures) -> list[str]:
        p = _a_file(fx)
        return _train(fx, p / "sub" if below else p)

    return argv


def nothing_lost_cases() -> list[Case]:
    S = "nothing lost"
    slow = [
        ("--resume when every trainer state is truncated", _damaged_run("all_truncated", _truncate_state), 2, r"^gptrs-train: error: cannot resume: no checkpoint in .*/checkpoints loads \(best: trainer_state\.pt is 64 bytes, COMPLETE says [\d,]+; last: .*\); nothing was changed.*another --out", _nothing_changed),
        ("--resume when every trainer state is garbage of the same size", _damaged_run("all_garbage", _garbage_state), 2, r"^gptrs-train: error: cannot resume: no checkpoint in .* loads \((best|last): trainer_state\.pt: not a valid trainer state.*\); nothing was changed", _nothing_changed),
        ("--resume when every checkpoint has NaN weights", _damaged_run("all_nan", _nan_weights), 2, r"^gptrs-train: error: cannot resume: no checkpoint in .* loads \((best|last): model\.safetensors: tensor transformer\.h\.0\.mlp\.c_fc\.weight holds 1 non-finite values", _nothing_changed),
        ("no --resume on a run whose checkpoints are all damaged", _damaged_run("all_truncated_fresh", _truncate_state, resume=False), 2, r"^gptrs-train: error: .* already holds a run whose checkpoints are damaged \(best, last\)", _nothing_changed),
        ("--resume past NaN weights in 'last' (WARNING, kept aside)", _nan_last_only, 0, r"", _fell_back),
        ("--resume after editing config.yaml's model width", _edited_config("edit_width", "embed_dim: 32", "embed_dim: 64"), 2, r"^gptrs-train: error: .*checkpoints/last was trained with another model config \(model\.embed_dim: 32 there, 64 here\)", _nothing_changed),
        ("--resume after editing config.yaml's max_steps (honoured, file kept)", _edited_config("edit_steps", "max_steps: 3", "max_steps: 5"), 0, r"", _edit_honoured),
        ("data path is a FIFO", _special_data("fifo"), 2, r"^gptrs-train: error: data\.paths: {path} is a FIFO \(named pipe\), not a regular file", _short_line()),
        ("data path is a socket", _special_data("socket"), 2, r"^gptrs-train: error: data\.paths: {path} is a socket, not a regular file", _short_line()),
        ("data path is a device", _special_data("device"), 2, r"^gptrs-train: error: data\.paths: /dev/null is a character device, not a regular file", _short_line()),
        ("train with a split pattern that matches almost nothing", lambda fx: _train(fx, _fresh(fx, "vanishing_run"), "--set", "data.num_training_samples=4", "--set", r"tokenizer.pattern=\bqqq\b"), 2, r"^gptrs-train: error: corpus too small: .*; the split pattern '\\\\bqqq\\\\b' matched only 0% of the corpus's bytes", _short_line()),
        ("--out is a regular file", _out_file(False), 2, r"^gptrs-train: error: --out {path}: is a file, not a directory", _short_line()),
        ("--out below a regular file", _out_file(True), 2, r"^gptrs-train: error: --out {path}/sub: is below {path}, which is a file", _short_line()),
    ]  # fmt: skip
    quick = [
        ("generate with NaN weights", lambda fx: ["gptrs.generate", "--model-path", str(_nan_model(fx)), "--device", "cpu", "--prompt", "x", "--temperature", "0"], 2, r"^gptrs-generate: error: {path}/model\.safetensors: tensor transformer\.h\.0\.mlp\.c_fc\.weight holds 1 non-finite values \(NaN or inf\)", _short_line()),
        ("export with NaN weights", lambda fx: ["gptrs.export", "--model-path", str(_nan_model(fx)), "--out", str(_fresh(fx, "nan_export"))], 2, r"^error: {path}/model\.safetensors: tensor transformer\.h\.0\.mlp\.c_fc\.weight holds 1 non-finite", _short_line()),
        ("tokenizer encode --file not UTF-8", _latin1_file, 2, r"^error: --file {path}: not UTF-8 text \(byte 0xe9 at byte offset 24\)", _short_line()),
        ("tokenizer encode --file a FIFO (never opened)", _fifo_file, 2, r"^error: --file {path}: is a FIFO \(named pipe\), not a regular file", _short_line()),
        ("tokenizer encode with a pattern that matches almost nothing", _encode_vanishing, 0, r"^warning: the split pattern '\\\\d\+' matched only \d+% of --file .*: encoding drops the text", _vanishing_ids),
        ("generate --seed 2**64 (before loading)", _gen("--prompt", "x", "--seed", str(2**64)), 2, r"^gptrs-generate: error: argument --seed: 18446744073709551616: out of range \(at most 18446744073709551615\)", _short_line()),
        ("generate --top-k 2**64", _gen("--prompt", "x", "--top-k", str(2**64)), 2, r"^gptrs-generate: error: argument --top-k: 18446744073709551616: out of range", _short_line()),
        ("train --max-steps 2**64", lambda fx: _train(fx, _fresh(fx, "max_steps_huge"), "--max-steps", str(2**64)), 2, r"^gptrs-train: error: argument --max-steps: 18446744073709551616: out of range", _short_line()),
    ]  # fmt: skip
    cases = [
        Case(S, n, argv=a, status=st, match=m, check=c, timeout=600, slow=True, needs_model=True)
        for n, a, st, m, c in slow
    ]
    cases += [
        Case(S, n, argv=a, status=st, match=m, check=c, timeout=300, needs_model=True)
        for n, a, st, m, c in quick
    ]
    cases.append(
        Case(S, "generate --interactive with standard input closed", fn=_closed_stdin, check=_closed_stdin_refused, needs_model=True, timeout=180)
    )  # fmt: skip
    return cases


# ---------------------------------------------------------------------------------------------------------
# Full and read-only disks: a real tmpfs (root only)

NO_SPACE = r"no space left on device"


def _save_checkpoint_on_full_disk(fx: Fixtures) -> Any:
    """A checkpoint save on a full disk: one OSError naming the path, and the previous checkpoint intact."""
    from gptrs.model import GPT
    from gptrs.training import checkpoint as ck

    d = tmpfs(fx, "full_ckpt", "1m")
    src = make_model(fx.root)
    shutil.copytree(src, d / "step_000001")
    fill(d)
    model = GPT.from_pretrained(src)
    state = {"version": 1, "step": 2, "tokens": 0, "optimizer": {}, "ranks": [], "history": []}
    problems = []
    try:
        ck.save_checkpoint(d, "step_000002", step=2, model=model, trainer_state=state)
        problems.append("saved on a full disk?")
    except OSError as e:
        if "no space left on device" not in str(e) or str(d) not in str(e) or "\n" in str(e):
            problems.append(f"message: {e}")
    if not ck.is_complete(d / "step_000001"):
        problems.append("the previous checkpoint is no longer complete")
    GPT.from_pretrained(d / "step_000001")
    return problems or "ok"


def _save_pretrained_on_full_disk(fx: Fixtures) -> Any:
    from gptrs.model import GPT

    d = full_tmpfs("full_pretrained", "1m")(fx)
    fx.extra["path"] = str(d)
    GPT.from_pretrained(make_model(fx.root)).save_pretrained(d / "model")


def _export_full(fx: Fixtures) -> Path:
    d = full_tmpfs("full_export", "1m")(fx)
    fx.extra["path"] = str(d)
    return d / "hf"


def _cache_on_full_disk(fx: Fixtures) -> list[str]:
    d = full_tmpfs("full_cache", "1m")(fx)
    fx.extra["path"] = str(d)
    return _train(
        fx,
        _fresh(fx, "cache_run"),
        "--tokenizer",
        str(make_tokenizer(fx.root)),
        "--set",
        f"data.cache_dir={d}",
    )


def _resume_on_full_disk(fx: Fixtures) -> list[str]:
    """A run resumed for more steps on a disk with room for its small files but not a checkpoint."""
    d = tmpfs(fx, "full_run", "16m")
    run = d / "run"
    shutil.copytree(_trained_run(fx), run, ignore=shutil.ignore_patterns("data", ".lock"))
    fx.extra["run"] = str(run)
    fill(d, leave=64 << 10)
    return _train(
        fx, run, "--resume", "--set", f"data.cache_dir={fx.path('resume_cache')}", "--max-steps", "6"
    )


def _previous_checkpoint_intact(proc: Any, fx: Fixtures) -> str | None:
    from gptrs.model import GPT
    from gptrs.training.checkpoint import find_latest, is_complete

    latest = find_latest(Path(fx.extra["run"]) / "checkpoints")
    if latest is None or latest.step != 3 or not is_complete(latest.path):
        return f"the newest complete checkpoint is {latest}"
    GPT.from_pretrained(latest.path)
    return _short_line()(proc, fx)


def disk_cases() -> list[Case]:
    S = "disk"
    full_out = lambda name: lambda fx: str(full_tmpfs(name, "1m")(fx) / "tok.json")  # noqa: E731
    ro_out = lambda name: lambda fx: str(ro_tmpfs(name)(fx) / "tok.json")  # noqa: E731
    cases = [
        Case(S, "checkpoint save on a full disk (previous checkpoint intact)", fn=_save_checkpoint_on_full_disk, check=lambda r, fx: None if r == "ok" else str(r), isolate=True, needs_model=True),
        Case(S, "save_pretrained on a full disk", fn=_save_pretrained_on_full_disk, raises="OSError", match=r"cannot write {path}/model/model\.safetensors: " + NO_SPACE, isolate=True, needs_model=True),
        Case(S, "export to a full disk", argv=_export(_export_full), match=r"^error: cannot write {path}/hf/.*: " + NO_SPACE, check=_short_line(), needs_model=True),
        Case(S, "export to a read-only disk", argv=_export(lambda fx: ro_tmpfs("ro_export")(fx) / "hf"), match=r"^error: .*ro_export/hf: cannot write there: Read-only file system", check=_short_line(), needs_model=True),
        Case(S, "tokenizer train --output on a full disk", argv=_tok_train("--vocab-size", "300", output=full_out("full_tok")), match=r"^error: cannot write .*full_tok/tok\.json: " + NO_SPACE, check=_short_line()),
        Case(S, "tokenizer train --output on a read-only disk", argv=_tok_train("--vocab-size", "300", output=ro_out("ro_tok")), match=r"^error: .*ro_tok/tok\.json: .*Read-only file system", check=_short_line()),
        Case(S, "token cache on a full disk", argv=_cache_on_full_disk, match=r"^gptrs-train: error: .*" + NO_SPACE, check=_short_line(), timeout=300, slow=True),
        Case(S, "resumed run on a full disk (previous checkpoint intact)", argv=_resume_on_full_disk, match=r"^gptrs-train: error: cannot write .*: " + NO_SPACE, check=_previous_checkpoint_intact, timeout=600, slow=True),
    ]  # fmt: skip
    return [c.with_mount() for c in cases]


def all_more_cases() -> list[Case]:
    return config_cases() + cli_cases() + train_cases() + nothing_lost_cases() + disk_cases() + export_cases()


# ---------------------------------------------------------------------------------------------------------
# Export over what it reads or over the user's files (issue 22): refused, every file that existed before
# unchanged (by hash); an earlier export is overwritten; a killed export's temporary file is cleaned up.


def _hashes(root: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _run_copy(fx: Fixtures, name: str) -> Path:
    """A fresh copy of the fixture run (config.yaml, tokenizer.json, checkpoints/step_000001) in its own
    case directory, with the hashes of every file in it recorded for ``_files_kept``."""
    make_model(fx.root)
    case = _fresh(fx, name)
    shutil.copytree(fx.run_dir, case / "run")
    (case / "mine").mkdir()  # the user's own files, for --out that is not an export
    (case / "mine" / "notes.txt").write_text("my notes\n")
    (case / "mine" / "config.json").write_text('{"mine": true}\n')
    fx.extra["case_dir"] = str(case)
    fx.extra["before"] = _hashes(case)
    return case


def _export_from(name: str, model: str, out: str, *more: str) -> Callable[[Fixtures], list[str]]:
    """``gptrs.export`` from ``model`` to ``out`` (paths relative to a fresh copy of the run's case dir)."""

    def argv(fx: Fixtures) -> list[str]:
        case = _run_copy(fx, name)
        return ["gptrs.export", "--model-path", str(case / model), "--out", str(case / out), *more]

    return argv


def _files_kept(added: bool = False, replaced: str = "") -> Callable[[Any, Fixtures], str | None]:
    """Every file that existed before (but ``replaced``) is there with the same bytes; with ``added`` False,
    nothing new."""

    def check(proc: Any, fx: Fixtures) -> str | None:
        before, after = fx.extra["before"], _hashes(Path(fx.extra["case_dir"]))
        changed = [f for f in before if after.get(f) != before[f] and f != replaced]
        if changed:
            return f"changed or removed: {changed[:5]}"
        new = sorted(set(after) - set(before))
        if new and not added:
            return f"written although refused: {new[:5]}"
        return _short_line()(proc, fx) if proc.returncode else None

    return check


def _exported_to(out: str) -> Callable[[Any, Fixtures], str | None]:
    """The run is untouched, ``out`` is a complete export (config.json last, marked) and holds no stray
    temporary file."""

    def check(proc: Any, fx: Fixtures) -> str | None:
        problem = _files_kept(added=True)(proc, fx)
        if problem:
            return problem
        d = Path(fx.extra["case_dir"]) / out
        names = sorted(p.name for p in d.iterdir())
        strays = [n for n in names if n.endswith(".tmp")]
        if strays:
            return f"stray temporary files in {d}: {strays}"
        if not {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(names):
            return f"incomplete export: {names}"
        if "gptrs_export" not in json.loads((d / "config.json").read_text()):
            return "config.json lacks the gptrs_export marker"
        return None

    return check


def _after_killed_export(fx: Fixtures) -> list[str]:
    """An export SIGKILLed while writing tokenizer.json (a real kill, at the fault point before its rename),
    then the same export again."""
    case = _run_copy(fx, "export_killed")
    out = case / "run" / "hf"
    code = (
        "import os, signal, sys\n"
        "from gptrs import faults\n"
        "from gptrs.export import export_hf\n"
        "faults.set_hook(lambda name, info: os.kill(os.getpid(), signal.SIGKILL)"
        " if name == 'rename' and info['path'].name == 'tokenizer.json' else None)\n"
        "export_hf(sys.argv[1], sys.argv[2])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(case / "run"), str(out)],
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    strays = [p.name for p in out.glob(".tokenizer.json.*.tmp")] if out.is_dir() else []
    if proc.returncode != -9 or not strays:
        raise AssertionError(
            f"the kill left no temporary tokenizer file (status {proc.returncode}): {strays}"
        )
    fx.extra["before"] = {k: v for k, v in _hashes(case).items() if not k.startswith("run/hf/")}
    return ["gptrs.export", "--model-path", str(case / "run"), "--out", str(out)]


def _over_earlier_export(fx: Fixtures) -> list[str]:
    from gptrs.export import export_hf

    case = _run_copy(fx, "export_again")
    export_hf(case / "run", case / "run" / "hf")
    fx.extra["before"] = {k: v for k, v in _hashes(case).items() if not k.startswith("run/hf/")}
    return ["gptrs.export", "--model-path", str(case / "run"), "--out", str(case / "run" / "hf")]


def export_cases() -> list[Case]:
    S = "cli"
    ck = "run/checkpoints/step_000001"
    refused = [
        ("export: --out is the checkpoint it reads", _export_from("exp_self", ck, ck), r"^error: --out .*: is the checkpoint it exports"),
        ("export: --out is the run directory", _export_from("exp_run", "run", "run"), r"^error: --out .*: contains the checkpoint it exports .*choose a fresh directory such as .*/run/hf"),
        ("export: --out is the run's checkpoints/", _export_from("exp_ckdir", "run", "run/checkpoints"), r"^error: --out .*: contains the checkpoint it exports"),
        ("export: --out contains the run", _export_from("exp_parent", "run", "."), r"^error: --out .*: contains the checkpoint it exports"),
        ("export: --out inside the checkpoint", _export_from("exp_inside", "run", f"{ck}/hf"), r"^error: --out .*: is inside a checkpoint or model directory"),
        ("export: --out inside checkpoints/", _export_from("exp_under", "run", "run/checkpoints/hf"), r"^error: --out .*: is inside the run's checkpoints/"),
        ("export: --out holds the user's files", _export_from("exp_mine", "run", "mine"), r"^error: --out .*mine: not empty and not an earlier gptrs export \(it holds config\.json, notes\.txt\); .*--force"),
        ("export: --out is another run directory, even with --force", _export_from("exp_other_run", f"{ck}", "run", "--force"), r"^error: --out .*: (contains the checkpoint|is a run directory)"),
    ]  # fmt: skip
    cases = [Case(S, n, argv=a, match=m, check=_files_kept(), needs_model=True) for n, a, m in refused]
    return [
        *cases,
        Case(S, "export: a fresh RUN/hf is fine", argv=_export_from("exp_fresh", "run", "run/hf"), status=0, check=_exported_to("run/hf"), needs_model=True),
        Case(S, "export: --force writes beside the user's files, keeping them", argv=_export_from("exp_force", "run", "mine", "--force"), status=0, check=_files_kept(added=True, replaced="mine/config.json"), needs_model=True),
        Case(S, "export: over an earlier export (allowed)", argv=_over_earlier_export, status=0, check=_exported_to("run/hf"), needs_model=True),
        Case(S, "export: after a killed export (its temporary file removed)", argv=_after_killed_export, status=0, check=_exported_to("run/hf"), needs_model=True),
    ]  # fmt: skip
