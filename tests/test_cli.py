"""The command-line tools: an end-to-end run on a slice of the built-in corpus (train, checkpoint, SIGTERM,
resume, generate), and the table of user errors (one line on stderr, exit status 2, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gptrs import export as export_cli
from gptrs import generate as generate_cli
from gptrs import train as train_cli
from gptrs.model import GPT
from gptrs.tokenizer import BPETokenizer
from gptrs.training import checkpoint as ckpt
from gptrs.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "python"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# A model and corpus small enough to train in seconds: 40 stdlib files, 1 layer, a 300-token vocabulary.
TINY = [
    "data.num_training_samples=40",
    "data.max_eval_tokens=2048",
    "tokenizer.vocab_size=300",
    "model.num_layers=1",
    "model.embed_dim=32",
    "model.ff_dim=64",
    "model.heads=2",
    "model.max_seq_len=32",
    "training.batch_size=4",
    "training.eval_interval=3",
    "training.save_interval=3",
    "training.log_interval=1",
    "training.sample_tokens=20",
    "training.peak_flops=1e11",
]


def sets(*extra: str) -> list[str]:
    out = []
    for s in (*TINY, *extra):
        out += ["--set", s]
    return out


def run(module: str, *args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        input=stdin,
        timeout=timeout,
    )


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"}


def test_train_interrupt_resume_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    r = run("gptrs.train", "--out", str(out), "--device", "cpu", *sets(), "--max-steps", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "validation loss" in r.stdout and "unigram baseline loss" in r.stdout
    assert "--- sample" in r.stdout and "Traceback" not in r.stderr
    assert ckpt.find_latest(out / "checkpoints").step == 6
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best", "last", "step_000003"}
    assert (out / "tokenizer.json").is_file() and (out / "loss.png").is_file()
    assert sorted(train_losses(out)) == [1, 2, 3, 4, 5, 6]

    # starting over in a run dir that holds a run is refused; --resume continues it
    assert train_cli.main(["--out", str(out), *sets(), "--max-steps", "6"]) == 2
    assert "already holds a run (checkpoint last at step 6): add --resume" in capsys.readouterr().err
    r = run("gptrs.train", "--out", str(out), "--device", "cpu", "--resume", "--max-steps", "9")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr
    assert sorted(train_losses(out)) == list(range(1, 10))

    # SIGTERM mid-run: the step finishes, a checkpoint is saved, exit status 143
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptrs.train", *("--out", str(out), "--resume", "--max-steps", "5000")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=ROOT,
    )
    deadline = time.time() + 120
    while max(train_losses(out)) < 11 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    stopped = ckpt.find_latest(out / "checkpoints")
    assert stopped.name == "last" and 11 <= stopped.step < 5000
    assert max(train_losses(out)) == stopped.step

    # generate from the run dir (best checkpoint): streams the prompt's continuation
    r = run("gptrs.generate", "--model-path", str(out), "--prompt", "def ", "--max-new-tokens", "12")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("def ") and len(r.stdout) > len("def \n")
    r = run(
        "gptrs.generate",
        *("--model-path", str(out / "checkpoints" / "last"), "--interactive", "--seed", "3"),
        *("--max-new-tokens", "8", "--quantize", "int8"),
        stdin="import\n\nimport\n/set max_new_tokens 3\n/set top_p 7\nclass\n/quit\nnever reached\n",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # stdout = A A B: one completion per prompt (each ends in a newline), nothing for the empty line and
    # the commands; the same seed is used for every prompt, so the two 'import' completions are equal
    out_text = r.stdout
    halves = [k for k in range(1, len(out_text) // 2 + 1) if out_text[:k] == out_text[k : 2 * k]]
    assert any(out_text[:k].endswith("\n") and len(out_text) > 2 * k for k in halves), out_text
    assert "--top-p must be in (0, 1], got 7.0" in r.stderr


# ------------------------------------------------------------------------------------------ error table


@pytest.fixture(scope="module")
def corrupt_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("corrupt")
    torch.manual_seed(0)
    ckpt.save_checkpoint(d, "last", step=1, model=GPT(300, 16, 32, 1, 2, 8, None), trainer_state={"step": 1})
    (d / "last" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return d / "last"


def bad_yaml(tmp: Path) -> str:
    p = tmp / "bad.yaml"
    p.write_text("model:\n  num_layers: [1, 2\n")
    return str(p)


def empty_text_corpus(tmp: Path) -> list[str]:
    (tmp / "empty.txt").write_text("")
    return ["--set", "data.source=files", "--set", f"data.paths=[{tmp / 'empty.txt'}]"]


TRAIN_ERRORS = [
    ("missing config", lambda t: ["--config", str(t / "nope.yaml")], "nope.yaml"),
    ("unknown preset", lambda t: ["--config", "tiny"], "no such file, nor a preset"),
    ("yaml syntax", lambda t: ["--config", bad_yaml(t)], "bad.yaml"),
    ("config dir", lambda t: ["--config", str(t / "run")], "run"),
    ("bad override", lambda t: ["--set", "model.heads=5"], "model.heads"),
    ("unknown key", lambda t: ["--set", "model.layers=2"], "model.layers"),
    ("no cuda", lambda t: ["--device", "cuda"], "CUDA is not available"),
    ("bad device", lambda t: ["--device", "tpu"], "unknown device"),
    ("bad flag", lambda t: ["--epochs", "3"], "unrecognized arguments: --epochs 3"),
    ("bad max steps", lambda t: ["--max-steps", "0"], "--max-steps: must be >= 1"),
    (
        "max steps not int",
        lambda t: ["--max-steps", "x"],
        "argument --max-steps: invalid int value: 'x'",
    ),
    (
        "max steps past 64 bits",
        lambda t: ["--max-steps", str(2**63)],
        "argument --max-steps: 9223372036854775808: out of range (at most 9223372036854775807)",
    ),
    ("empty dataset", empty_text_corpus, "produced no documents"),
    ("missing tokenizer", lambda t: ["--tokenizer", str(t / "tok.json")], "tok.json"),
]


@pytest.mark.parametrize(("case", "args", "message"), TRAIN_ERRORS, ids=[c[0] for c in TRAIN_ERRORS])
def test_train_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], case, args, message) -> None:
    if case == "no cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = ["--out", str(tmp_path / "run"), *args(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(train_cli.main(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("gptrs-train: error: ")
    assert "Traceback" not in err


def test_debug_log_level_adds_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = train_cli.main(["--config", str(tmp_path / "nope.yaml"), "--log-level", "DEBUG"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "nope.yaml" in err.splitlines()[-1]


GENERATE_ERRORS = [
    ("missing dir", lambda t, c: ["--model-path", str(t / "nope"), "--prompt", "x"], "no such directory"),
    ("not a checkpoint", lambda t, c: ["--model-path", str(t), "--prompt", "x"], "not a checkpoint"),
    ("corrupt checkpoint", lambda t, c: ["--model-path", str(c), "--prompt", "x"], "model.safetensors"),
    ("empty prompt", lambda t, c: ["--model-path", str(c), "--prompt", ""], "--prompt is empty"),
    ("no prompt", lambda t, c: ["--model-path", str(c)], "--prompt is required"),
    (
        "top_p",
        lambda t, c: ["--model-path", str(c), "--prompt", "x", "--top-p", "1.5"],
        "--top-p must be in (0, 1]",
    ),
    ("temperature", lambda t, c: ["--model-path", str(c), "--prompt", "x", "--temperature", "-1"], ">= 0"),
    (
        "top_k",
        lambda t, c: ["--model-path", str(c), "--prompt", "x", "--top-k", "0"],
        "--top-k must be an integer >= 1",
    ),
    (
        "seed",
        lambda t, c: ["--model-path", str(c), "--prompt", "x", "--seed", "abc"],
        "argument --seed: invalid int value: 'abc'",
    ),
    (
        "seed past 64 bits",  # refused while parsing, before the model loads
        lambda t, c: ["--model-path", str(t / "nope"), "--prompt", "x", "--seed", str(2**64)],
        "argument --seed: 18446744073709551616: out of range (at most 18446744073709551615)",
    ),
    (
        "max tokens of 10**30",
        lambda t, c: ["--model-path", str(t / "nope"), "--prompt", "x", "--max-new-tokens", str(10**30)],
        "argument --max-new-tokens: 1000000000000000000000000000000: out of range",
    ),
    ("max tokens", lambda t, c: ["--model-path", str(c), "--prompt", "x", "--max-new-tokens", "0"], ">= 1"),
    (
        "quantize cuda",
        lambda t, c: ["--model-path", str(c), "--prompt", "x", "--quantize", "int4"],
        "invalid choice",
    ),
    ("no model path", lambda t, c: ["--prompt", "x"], "--model-path"),
]


@pytest.mark.parametrize(("case", "args", "message"), GENERATE_ERRORS, ids=[c[0] for c in GENERATE_ERRORS])
def test_generate_user_errors(
    tmp_path: Path, corrupt_checkpoint: Path, capsys: pytest.CaptureFixture[str], case, args, message
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(generate_cli.main(args(tmp_path, corrupt_checkpoint)))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and message in lines[0], err
    assert lines[0].startswith("gptrs-generate: error: ")
    assert "Traceback" not in err


def test_train_help_lists_every_flag() -> None:
    text = train_cli.build_parser().format_help()
    for flag in (
        "--config",
        "--device",
        "--resume",
        "--out",
        "--log-level",
        "--set",
        "--tokenizer",
        "--max-steps",
    ):
        assert flag in text
    text = generate_cli.build_parser().format_help()
    for flag in (
        "--model-path",
        "--prompt",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
    ):
        assert flag in text
    assert "--interactive" in text and "--quantize" in text


def test_stream_text_holds_back_split_characters() -> None:
    """A character whose UTF-8 bytes arrive over several tokens is printed once, when complete."""

    class Raw:  # gptrs_tok's interface: the bytes of each token, and the special tokens
        special_tokens: ClassVar[dict[str, int]] = {"<eos>": 256}

        def token_bytes(self, i: int) -> bytes:
            return bytes([i])

    class ByteTok:  # ids are raw bytes; 256 is EOS
        eos_token_id, bos_token_id, pad_token_id = 256, None, None
        tok = Raw()

    text = "añ€😀!"
    ids = [*text.encode(), 256, 65]

    class Model:
        def generate_stream(self, prompt, eos_token_id=None, **kw):
            for t in ids:
                yield torch.tensor([t])

    pieces = list(generate_cli.stream_text(Model(), ByteTok(), None))
    assert "".join(pieces) == text  # stops at EOS: the 'A' after it never shows
    assert all("\ufffd" not in p for p in pieces)
    assert pieces == ["a", "ñ", "€", "😀", "!"]


def test_export_takes_a_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gptrs.export --model-path RUN_DIR` exports the run's best checkpoint (as gptrs.generate picks it)."""
    from safetensors.torch import load_file

    run_dir = tmp_path / "run"
    models = {}
    for seed, name in ((0, "best"), (1, "last")):  # two different models: the export must take 'best'
        torch.manual_seed(seed)
        models[name] = GPT(300, 16, 32, 1, 2, 8, None)
        ckpt.save_checkpoint(run_dir / "checkpoints", name, step=1, model=models[name], trainer_state={})
    tok = BPETokenizer(vocab_size=300).train(["def f(x):\n    return x + 1\n" * 50])
    tok.save(run_dir / "tokenizer.json")  # the run's tokenizer, beside checkpoints/

    out = tmp_path / "hf"
    assert export_cli.main(["--model-path", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    exported = load_file(str(out / "model.safetensors"))
    for name, model in models.items():
        same = torch.equal(exported["transformer.wte.weight"], model.transformer.wte.weight)
        assert same == (name == "best"), name
    config = json.loads((out / "config.json").read_text())
    assert (config["n_layer"], config["n_embd"], config["vocab_size"]) == (1, 16, 300)
    hf_tok = json.loads((out / "tokenizer.json").read_text())  # the run's tokenizer, in HF's format
    assert hf_tok["model"]["type"] == "BPE" and len(hf_tok["model"]["vocab"]) == tok.get_vocab_size() - 3
    assert sorted(p.name for p in out.iterdir()) == sorted(export_cli.EXPORT_FILES)

    # a run directory without a complete checkpoint is one line, exit 2
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    assert export_cli.main(["--model-path", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no complete checkpoint" in err and err.count("\n") == 1


def test_a_run_validates_the_config_it_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The preset is validated when loaded, the result of --set once more, and each later check (saving it
    into the run directory and its checkpoints; a fraction of a millisecond each) sees that same config."""
    from gptrs.config import validation

    checked: list[str] = []
    real = validation.check_relations  # a step of every validation

    def counting(cfg):
        checked.append(f"{cfg.model.num_layers} layers")
        return real(cfg)

    monkeypatch.setattr(validation, "check_relations", counting)
    argv = ["--out", str(tmp_path / "run"), "--device", "cpu", *sets("training.sample_tokens=0")]
    assert train_cli.main([*argv, "--max-steps", "3"]) == 0, capsys.readouterr().err
    assert checked[:2] == ["5 layers", "1 layers"]  # the small preset, then the preset with --set applied
    assert set(checked[2:]) == {"1 layers"}
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last" / "config.yaml").is_file()


def test_interactive_settings_and_bounded_set(capsys: pytest.CaptureFixture[str]) -> None:
    """/settings prints name=value pairs, not a dataclass repr; /set of an absurd max_new_tokens is refused
    with one line and the old value kept."""
    from gptrs.generate import Sampling, _command

    s = Sampling()
    assert _command("/set max_new_tokens 99999999999", s)
    assert s.max_new_tokens == 200
    assert "error: --max-new-tokens must be at most 16,777,216" in capsys.readouterr().err
    assert _command("/settings", s)
    assert (
        capsys.readouterr().err.strip() == "max_new_tokens=200 temperature=0.8 top_k=50 top_p=none seed=none"
    )


def test_a_run_names_its_files_and_the_next_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each checkpoint and loss.png write is logged; the closing lines name the run directory and the generate,
    export and resume commands with its real path and this interpreter, and those commands work as printed in
    a new shell whose PATH has no ``python`` of the venv."""
    import shlex

    out = tmp_path / "my run"  # a space: the printed commands must quote it
    argv = ["--out", str(out), "--device", "cpu", *sets("training.sample_tokens=0")]
    assert train_cli.main([*argv, "--max-steps", "3"]) == 0
    captured = capsys.readouterr()
    assert f"saved checkpoint {out / 'checkpoints' / 'last'} (step 3)" in captured.err
    assert f"saved checkpoint {out / 'checkpoints' / 'best'} (step 3)" in captured.err
    assert f"wrote the loss curves to {out / 'loss.png'}" in captured.err
    lines = captured.out.splitlines()
    assert "trained 3 steps (" in lines[0]
    assert f"run directory: {out} (checkpoints in {out / 'checkpoints'}, metrics.jsonl, loss.png)" in lines
    printed = {
        line.split()[2]: line.split("   #")[0].strip()
        for line in lines
        if line.startswith("  ") and " -m gptrs." in line
    }
    commands = {k: shlex.split(v) for k, v in printed.items()}
    assert sorted(commands) == ["gptrs.export", "gptrs.generate", "gptrs.train"]
    assert {c[0] for c in commands.values()} == {sys.executable}
    assert commands["gptrs.generate"][3:5] == ["--model-path", str(out)]
    assert commands["gptrs.export"][3:] == [
        "--model-path",
        str(out),
        "--format",
        "hf",
        "--out",
        str(out / "hf"),
    ]
    assert commands["gptrs.train"][3:] == ["--out", str(out), "--resume", "--set", "training.max_steps=6"]

    # A new shell: no venv on PATH (PYTHONPATH stays: this suite runs the working tree's gptrs).
    shell = {**ENV, "PATH": "/usr/bin:/bin"}

    def paste(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, env=shell, cwd=tmp_path, timeout=300
        )

    gen = paste(printed["gptrs.generate"].replace("--max-new-tokens 100", "--max-new-tokens 5"))
    assert gen.returncode == 0, gen.stderr[-2000:]
    exp = paste(printed["gptrs.export"])
    assert exp.returncode == 0 and (out / "hf" / "config.json").is_file(), exp.stderr[-2000:]
    more = paste(printed["gptrs.train"] + " --device cpu")
    assert more.returncode == 0, more.stderr[-2000:]
    assert max(train_losses(out)) == 6
    assert "trained 3 steps (" in more.stdout and "from step 3 to step 6" in more.stdout  # not 'trained 6'


def test_the_summary_lists_only_files_that_exist_and_says_when_nothing_was_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without matplotlib no loss.png is listed; resuming a finished run says there was nothing to train."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "run"
    argv = ["--out", str(out), "--device", "cpu", *sets("training.sample_tokens=0")]
    assert train_cli.main([*argv, "--max-steps", "3"]) == 0
    captured = capsys.readouterr()
    assert not (out / "loss.png").exists() and "skipping the loss plot" in captured.err
    assert f"run directory: {out} (checkpoints in {out / 'checkpoints'}, metrics.jsonl)" in captured.out
    assert train_cli.main(["--out", str(out), "--device", "cpu", "--resume"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "nothing left to train: the run was already at step 3 of training.max_steps 3 "
        "(add --set training.max_steps=N to train on)"
    )


HELP_COMMANDS = [
    ("gptrs.train",),
    ("gptrs.generate",),
    ("gptrs.export",),
    ("gptrs.tokenizer",),
    ("gptrs.tokenizer", "train"),
    ("gptrs.tokenizer", "encode"),
    ("gptrs.config",),
    ("gptrs.convert_config",),
    ("benches",),
]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=[" ".join(c) for c in HELP_COMMANDS])
def test_help_is_plain_text_and_names_the_command_run(command: tuple[str, ...]) -> None:
    """`python -m X --help`: the usage line shows what was run, and no reStructuredText markup shows."""
    r = run(*command, "--help", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(f"usage: python -m {' '.join(command)} "), r.stdout[:200]
    assert "`" not in r.stdout, r.stdout


def test_config_describe_lines_fit_a_terminal() -> None:
    from gptrs.config import describe

    assert max(len(line) for line in describe().splitlines()) <= 104


@pytest.mark.parametrize(
    ("argv", "steps", "warmup"),
    [
        (["--max-steps", "20"], 20, 2),
        (["--set", "training.max_steps=20"], 20, 2),  # the same as --max-steps, not a warmup error
        (["--set", "training.max_steps=100"], 100, 10),
        (["--set", "training.max_steps=500"], 500, 100),  # the preset's warmup fits: kept
        (["--set", "training.max_steps=20", "--set", "training.warmup_steps=5"], 20, 5),
    ],
)
def test_a_short_run_fits_its_warmup(argv: list[str], steps: int, warmup: int) -> None:
    cfg, _ = train_cli.load_run_config(train_cli.build_parser().parse_args(argv), None)
    assert (cfg.training.max_steps, cfg.training.warmup_steps) == (steps, warmup)


@given(st.integers(), st.integers(-(2**70), 2**70), st.integers(0, 2**70))
def test_bounded_int_accepts_exactly_its_range(value: int, lo: int, width: int) -> None:
    """Every CLI's integer flags parse through bounded_int: in range it is the number, out of range a
    one-line refusal saying which bound, never Python's own overflow."""
    import argparse

    from gptrs.cli import bounded_int

    hi = lo + width
    parse = bounded_int(lo, hi)
    if lo <= value <= hi:
        assert parse(str(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="at most" if value > hi else "at least"):
            parse(str(value))
    assert bounded_int()(str(value)) == value if -(2**63) <= value < 2**63 else True


def test_bounded_int_on_absurd_text() -> None:
    import argparse

    from gptrs.cli import bounded_int

    with pytest.raises(argparse.ArgumentTypeError, match=r"^9{20}\.\.\. \(5000 characters\): out of range"):
        bounded_int()("9" * 5000)
    with pytest.raises(argparse.ArgumentTypeError, match="invalid int value: '1e3'"):
        bounded_int()("1e3")
    assert bounded_int()("1_000") == 1000
