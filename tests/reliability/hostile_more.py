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
        ("tokenizer train: --vocab-size 2**64", _tok_train("--vocab-size", str(2**64)), r"^error: --vocab-size 18446744073709551616: too large \(at most 4294967296\)"),
        ("tokenizer train: --vocab-size 10**30", _tok_train("--vocab-size", str(10**30)), r"^error: --vocab-size 1000000000000000000000000000000: too large"),
        ("tokenizer train: --vocab-size with 4000 digits", _tok_train("--vocab-size", "9" * 4000), r"^error: --vocab-size 9{20}\.\.\. \(4000 digits\): too large"),
        ("tokenizer train: --vocab-size -1", _tok_train("--vocab-size", "-1"), r"^error: vocab_size -1 is too small"),
        ("tokenizer train: --min-frequency 2**70", _tok_train("--vocab-size", "300", "--min-frequency", str(2**70)), r"^error: --min-frequency 1180591620717411303424: too large"),
        ("tokenizer train: one string for two roles", _tok_train("--vocab-size", "300", "--special", "eos=<|x|>", "bos=<|x|>"), r"^error: --special 'bos=<\|x\|>': '<\|x\|>' is also the 'eos' token"),
        ("tokenizer train: --output is a directory", _tok_train("--vocab-size", "300", output=lambda fx: str(fx.root)), r"^error: cannot write .*: Is a directory"),
        ("tokenizer demo: --vocab-size 2**64", lambda fx: ["gptrs.tokenizer", "demo", "--vocab-size", str(2**64)], r"^error: --vocab-size 18446744073709551616: too large"),
        ("tokenizer decode: id 2**64", lambda fx: ["gptrs.tokenizer", "decode", "--tokenizer", str(make_tokenizer(fx.root)), "--ids", str(2**64)], r"^error: token id 18446744073709551616 is out of range"),
        ("export: --out is a regular file", _export(_a_file), r"^error: {path}: is a file, not a directory"),
        ("export: --out below a regular file", _export(lambda fx: _a_file(fx) / "sub"), r"^error: {path}: .*a_file is a file, not a directory"),
        ("export: --model-path missing", lambda fx: ["gptrs.export", "--model-path", str(fx.root / "nope"), "--out", str(fx.path("exp_missing"))], r"^error: .*nope"),
        ("export: --tokenizer missing", _export(lambda fx: fx.path("exp_tok"), "--tokenizer", "/nonexistent/tok.json"), r"^error: tokenizer file not found: /nonexistent/tok\.json"),
        ("model.json: 10**9 layers (refused before building)", lambda fx: ["gptrs.generate", "--model-path", str(_model_json("layers_1e9", num_layers=10**9)(fx)), "--device", "cpu", "--prompt", "x"], r"^gptrs-generate: error: {path}/model\.json: describes a model of [\d,]+ parameters, more than model\.safetensors holds"),
        ("model.json: embed_dim 2**31", lambda fx: ["gptrs.generate", "--model-path", str(_model_json("wide", embed_dim=2**31, heads=1)(fx)), "--device", "cpu", "--prompt", "x"], r"^gptrs-generate: error: {path}/model\.json: describes a model of"),
        ("model.json: heads do not divide the width", lambda fx: ["gptrs.generate", "--model-path", str(_model_json("heads3", heads=3)(fx)), "--device", "cpu", "--prompt", "x"], r"^gptrs-generate: error: {path}/model\.json: model\.heads \(3\) must divide model\.embed_dim \(32\)"),
        ("generate: --max-new-tokens 10**30", _gen("--prompt", "x", "--max-new-tokens", str(10**30)), r"^gptrs-generate: error: --max-new-tokens"),
        ("generate: --temperature nan", _gen("--prompt", "x", "--temperature", "nan"), r"^gptrs-generate: error: --temperature must be a number >= 0"),
        ("generate: --top-p nan", _gen("--prompt", "x", "--top-p", "nan"), r"^gptrs-generate: error: --top-p must be in \(0, 1\]"),
    ]  # fmt: skip
    return [
        Case(S, name, argv=argv, match=m, check=_short_line(), needs_model=True) for name, argv, m in table
    ]


# ---------------------------------------------------------------------------------------------------------
# Training runs (each starts torch and prepares data: tens of seconds; the bulk is marked slow)


def _train(fx: Fixtures, out: Path, *more: str) -> list[str]:
    return ["gptrs.train", "--config", "small", "--out", str(out), "--device", "cpu", *tiny_sets(), *more]


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
    return config_cases() + cli_cases() + train_cases() + disk_cases()
