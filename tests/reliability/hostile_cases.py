"""Hostile and broken inputs, one table per surface: each case, what it must raise (or return) and the message.

Surfaces: tokenizer files, checkpoints, tokenizer inputs, generation. A case passes when the input is refused
with the expected exception type (or CLI exit status) and a one-line message matching ``match``, or, for
inputs that are valid, when the result is right (``check``); never with a traceback, a Rust panic
(``pyo3_runtime.PanicException``), a crash of the process, a hang (every case has a timeout) or a silent
wrong result. Configs have their own table in ``tests/test_config.py``.

Cases that could take the process down (anything inside the Rust extension: an allocation failure aborts)
run in a child process with a 4 GiB address-space limit; CLI cases run ``python -m gptrs.<tool>`` under the
same limit (torch and a tiny training run fit in it; at 3 GiB importing torch already fails). Every case has a
timeout, so an unbounded allocation or a hang is a failed case. More tables (configs, CLIs, training runs,
full and read-only disks) are in ``hostile_more.py``.
``tests/test_hostile_*.py`` run these tables under pytest; ``tests/reliability/reliability.py`` counts them.

    python tests/reliability/hostile_cases.py [SUBSTRING ...]    # run every case (or the matching ones)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability import zygote

REPO = Path(__file__).resolve().parents[2]
ADDRESS_SPACE_LIMIT = 4 << 30
MARKER = "PWNED"  # the file a malicious pickle would create


@dataclass(frozen=True)
class Case:
    """One hostile input.

    API cases call ``fn(fixtures)``: with ``raises`` set, it must raise that type (by class name, anywhere in
    the MRO) with a one-line message matching ``match``; without, it must return and ``check(result,
    fixtures)`` must return None (else it returns what is wrong). CLI cases run ``python -m <argv(fixtures)>``
    and expect ``status`` and ``match`` on the last line of stderr (``check`` may look at the whole
    CompletedProcess). ``isolate`` runs an API case in a child process.
    """

    surface: str
    name: str
    fn: Callable[[Fixtures], Any] | None = None
    raises: str | None = None
    match: str = ""
    check: Callable[[Any, Fixtures], str | None] | None = None
    argv: Callable[[Fixtures], list[str]] | None = None
    status: int = 2
    isolate: bool = False
    timeout: float = 120.0
    needs_model: bool = False
    slow: bool = False  # pytest runs it with -m slow only (a training run: tens of seconds)
    needs_mount: bool = False  # mounts a tmpfs (root only): skipped where mounting is not permitted

    def with_mount(self) -> Case:
        return dataclasses.replace(self, needs_mount=True)

    @property
    def id(self) -> str:
        return f"{self.surface}: {self.name}"


@dataclass
class Outcome:
    ok: bool
    detail: str
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# Fixtures: a small trained tokenizer, and a tiny model saved as a checkpoint next to it


@dataclass
class Fixtures:
    root: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer.json"

    @property
    def model_dir(self) -> Path:
        return self.root / "run" / "checkpoints" / "step_000001"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def path(self, name: str) -> Path:
        p = self.root / "cases" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


TINY_SETS = {
    "data.num_training_samples": 40,
    "data.max_eval_tokens": 256,
    "tokenizer.vocab_size": 300,
    "model.embed_dim": 32,
    "model.ff_dim": 64,
    "model.num_layers": 1,
    "model.heads": 2,
    "model.max_seq_len": 32,
    "training.batch_size": 2,
    "training.max_steps": 3,
    "training.warmup_steps": 1,
    "training.mixed_precision": "false",
    "training.peak_flops": "1e11",
    "training.sample_tokens": 0,
}


def tiny_sets() -> list[str]:
    out = []
    for k, v in TINY_SETS.items():
        out += ["--set", f"{k}={v}"]
    return out


def make_tokenizer(root: Path) -> Path:
    """Train the fixture tokenizer (300 tokens, the usual specials) on a few stdlib files; cached in ``root``."""
    path = root / "tokenizer.json"
    if path.exists():
        return path
    from gptrs.data import stdlib_paths
    from gptrs.tokenizer import BPETokenizer

    texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_paths()[:12]]
    tok = BPETokenizer(vocab_size=300).train(texts)
    root.mkdir(parents=True, exist_ok=True)
    tok.save(root / "tokenizer.json.tmp")
    os.replace(root / "tokenizer.json.tmp", path)
    return path


def make_model(root: Path) -> Path:
    """A tiny GPT saved as a complete trainer checkpoint (``run/checkpoints/step_000001``); cached."""
    fx = Fixtures(root)
    if (fx.model_dir / "COMPLETE").exists():
        return fx.model_dir
    import torch

    from gptrs.config import Config, apply_overrides, save_config
    from gptrs.model import GPT
    from gptrs.tokenizer import BPETokenizer
    from gptrs.training import checkpoint as ck

    tok = BPETokenizer.load(make_tokenizer(root))
    cfg = apply_overrides(Config(), [f"{k}={v}" for k, v in TINY_SETS.items()])
    torch.manual_seed(0)
    model = GPT.from_config(cfg, vocab_size=tok.get_vocab_size(), pad_token_id=tok.pad_token_id)
    fx.run_dir.mkdir(parents=True, exist_ok=True)
    tok.save(fx.run_dir / "tokenizer.json")
    save_config(cfg, fx.run_dir / "config.yaml")
    state = {"version": 1, "step": 1, "tokens": 0, "optimizer": {}, "ranks": [], "history": []}
    ck.save_checkpoint(
        fx.run_dir / ck.CHECKPOINTS_DIR, "step_000001", step=1, model=model, trainer_state=state,
        config=cfg, tokenizer=tok,
    )  # fmt: skip
    return fx.model_dir


def rewrite_complete(directory: Path) -> None:
    """Make a tampered checkpoint look complete again (sizes in COMPLETE match), as an attacker would."""
    record = json.loads((directory / "COMPLETE").read_text())
    record["files"] = {n: (directory / n).stat().st_size for n in record["files"]}
    (directory / "COMPLETE").write_text(json.dumps(record))


def checkpoint_copy(fx: Fixtures, name: str) -> Path:
    """A copy of the fixture run (run dir + checkpoint) to tamper with; returns the checkpoint dir."""
    import shutil

    dst = fx.path(name)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(fx.run_dir, dst, ignore=shutil.ignore_patterns(".lock", "data"))
    return dst / "checkpoints" / "step_000001"


# ---------------------------------------------------------------------------------------------------------
# Tokenizer files


def _tok_json(fx: Fixtures) -> dict[str, Any]:
    return json.loads(fx.tokenizer.read_text())


def _write(fx: Fixtures, name: str, content: Any) -> Path:
    p = fx.path(name)
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content, encoding="utf-8")
    else:
        p.write_text(json.dumps(content))
    return p


def _load_tok(make: Callable[[Fixtures], Path]) -> Callable[[Fixtures], Any]:
    def fn(fx: Fixtures) -> Any:
        import gptrs_tok

        return gptrs_tok.Tokenizer.load(make(fx))

    return fn


def _variant(name: str, change: Callable[[dict[str, Any]], Any]) -> Callable[[Fixtures], Path]:
    def make(fx: Fixtures) -> Path:
        data = _tok_json(fx)
        out = change(data)
        return _write(fx, name, data if out is None else out)

    return make


def _truncated(fx: Fixtures) -> Path:
    text = fx.tokenizer.read_text()
    return _write(fx, "truncated.json", text[: len(text) // 2])


def _sparse_gigabyte(fx: Fixtures) -> Path:
    p = fx.path("garbage_1gb.json")
    with open(p, "wb") as f:
        f.write(b"\x00garbage\xff" * 100)
        f.truncate(1 << 30)  # sparse: 1 GiB on paper, nothing on disk
    return p


def _garbage(fx: Fixtures) -> Path:
    return _write(fx, "garbage.json", bytes(range(256)) * 64)


def _doubling(fx: Fixtures) -> Path:
    # 41 merges, each token twice the previous one: token 296 would be 2**41 bytes long.
    merges = [[97, 97]] + [[256 + i, 256 + i] for i in range(40)]
    data = {**_tok_json(fx), "merges": merges, "special_tokens": {}}
    return _write(fx, "doubling.json", data)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.__setitem__(key, value)


def _rss_below(mb: float) -> Callable[[Any, Fixtures], str | None]:
    """For isolated cases: the child's peak RSS (``fx.extra['rss_mb']``) stays under ``mb``."""

    def check(_: Any, fx: Fixtures) -> str | None:
        rss = fx.extra.get("rss_mb")
        return None if rss is None or rss < mb else f"peak RSS {rss:.0f} MB (limit {mb:.0f} MB)"

    return check


def _bpe_load(path: Path) -> Any:
    from gptrs.tokenizer import BPETokenizer

    return BPETokenizer.load(path)


def _same_vocab(tok: Any, fx: Fixtures) -> str | None:
    import gptrs_tok

    base = gptrs_tok.Tokenizer.load(fx.tokenizer)
    same = tok.merges() == base.merges() and tok.special_tokens == base.special_tokens
    return None if same else "loaded, but not the same vocabulary"


def _tokenizer_file_cases() -> list[Case]:
    S = "tokenizer file"
    name_re = r"{path}: .*"  # every message names the file first

    def merges_plus(extra: list[list[int]]) -> Callable[[dict[str, Any]], None]:
        return lambda d: d.__setitem__("merges", d["merges"] + extra)

    table: list[tuple[str, Callable[[Fixtures], Path], str, str]] = [
        # name, file maker, exception, message pattern (after the path)
        ("truncated JSON", _truncated, "ValueError", r"invalid or truncated JSON"),
        ("empty file", lambda fx: _write(fx, "empty.json", b""), "ValueError", r"invalid or truncated JSON"),
        ("binary garbage", _garbage, "ValueError", r"not a gptrs_tok tokenizer file"),
        ("JSON but not an object", lambda fx: _write(fx, "list.json", [1, 2, 3]), "ValueError", r"not a gptrs_tok tokenizer file"),
        ("deeply nested JSON", lambda fx: _write(fx, "nested.json", "[" * 100_000 + "]" * 100_000), "ValueError", r"invalid or truncated JSON"),
        ("wrong version", _variant("v2.json", _set("version", 2)), "ValueError", r"unsupported version 2"),
        ("version not an integer", _variant("vstr.json", _set("version", "1")), "ValueError", r"version"),
        ("wrong format tag", _variant("fmt.json", _set("format", "tiktoken")), "ValueError", r"not a gptrs_tok tokenizer file"),
        ("merge refers to an unknown id", _variant("unknown_id.json", merges_plus([[100000, 5]])), "ValueError", r"uses an id that is not defined"),
        ("merge refers to a later id", _variant("forward_id.json", _set("merges", [[257, 97], [97, 98]])), "ValueError", r"uses an id that is not defined"),
        ("duplicate merge", _variant("dup.json", lambda d: d.__setitem__("merges", [*d["merges"], d["merges"][0]])), "ValueError", r"repeats merge 0"),
        ("merge id over u32", _variant("huge_id.json", _set("merges", [[2**40, 1]])), "ValueError", r"1099511627776"),
        ("negative merge id", _variant("neg_id.json", _set("merges", [[-1, 1]])), "ValueError", r"-1"),
        ("merge is not a pair", _variant("triple.json", _set("merges", [[97, 98, 99]])), "ValueError", r"bad tokenizer file"),
        ("special id over u32", _variant("special_huge.json", _set("special_tokens", {"<|x|>": 2**33})), "ValueError", r"8589934592"),
        ("special token id collides with a merge", _variant("special_collide.json", _set("special_tokens", {"<|bos|>": 256})), "ValueError", r"special ids must be"),
        ("two special tokens share an id", _variant("special_dup.json", lambda d: d.__setitem__("special_tokens", {"<|a|>": 297, "<|b|>": 297})), "ValueError", r"special"),
        ("empty special token", _variant("special_empty.json", lambda d: d.__setitem__("special_tokens", {"": 297})), "ValueError", r"non-empty"),
        ("invalid pattern", _variant("badregex.json", _set("pattern", "(unclosed")), "ValueError", r"invalid pre-tokenization pattern"),
        ("token length doubling (2**41 bytes)", _doubling, "ValueError", r""),
        ("1 GiB sparse garbage file", _sparse_gigabyte, "ValueError", r"larger than any tokenizer file"),
        ("a directory", lambda fx: fx.root, "OSError", r""),
        ("missing file", lambda fx: fx.root / "nope.json", "FileNotFoundError", r""),
    ]  # fmt: skip
    cases = [
        Case(
            S,
            "unknown top-level key (ignored: wrappers keep metadata there)",
            fn=_load_tok(_variant("extra.json", _set("surprise", {"roles": 1}))),
            check=_same_vocab,
            isolate=True,
        )
    ]
    cases += [
        Case(
            S,
            name,
            fn=_load_tok(make),
            raises=exc,
            match=name_re + pattern,
            isolate=True,
            check=_rss_below(200) if "1 GiB" in name else None,
        )
        for name, make, exc, pattern in table
    ]
    # Through the command line and through BPETokenizer, which the trainer and generator use.
    cases += [
        Case(
            S,
            "CLI: truncated file",
            argv=lambda fx: ["gptrs.tokenizer", "encode", "--tokenizer", str(_truncated(fx)), "--text", "hi"],
            match=r"^error: {path}: not a gptrs_tok tokenizer file",
        ),
        Case(
            S,
            "CLI: 1 GiB sparse garbage file",
            argv=lambda fx: [
                "gptrs.tokenizer",
                "decode",
                "--tokenizer",
                str(_sparse_gigabyte(fx)),
                "--ids",
                "1",
            ],
            match=r"^error: {path}: file is 1073741824 bytes",
        ),
        Case(
            S,
            "BPETokenizer.load: wrong version",
            fn=lambda fx: _bpe_load(_variant("v3.json", _set("version", 3))(fx)),
            raises="ValueError",
            match=r"{path}: unsupported version 3",
            isolate=True,
        ),
    ]
    return cases


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def _tamper_weights(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[Fixtures], Path]:
    def make(fx: Fixtures) -> Path:
        from safetensors.torch import load_file, save_file

        d = checkpoint_copy(fx, name)
        tensors = load_file(str(d / "model.safetensors"))
        change(tensors)
        save_file(tensors, str(d / "model.safetensors"))
        rewrite_complete(d)
        return d

    return make


def _drop_tensor(t: dict[str, Any]) -> None:
    t.pop("transformer.h.0.attn.c_attn.weight")


def _reshape_tensor(t: dict[str, Any]) -> None:
    import torch

    t["transformer.wpe.weight"] = torch.zeros(16, 32)


def _extra_tensor(t: dict[str, Any]) -> None:
    import torch

    t["backdoor.weight"] = torch.zeros(2)


def _int_tensor(t: dict[str, Any]) -> None:
    import torch

    t["transformer.wpe.weight"] = t["transformer.wpe.weight"].to(torch.int32)


def _tamper_bytes(name: str, change: Callable[[bytes], bytes]) -> Callable[[Fixtures], Path]:
    def make(fx: Fixtures) -> Path:
        d = checkpoint_copy(fx, name)
        f = d / "model.safetensors"
        f.write_bytes(change(f.read_bytes()))
        rewrite_complete(d)
        return d

    return make


def _corrupt_header(b: bytes) -> bytes:
    n = int.from_bytes(b[:8], "little")
    return b[:8] + b"{" + b"\x00garbage" * (n // 8) + b[8 + 1 + (n // 8) * 8 :]


class _Evil:
    """Unpickling this runs ``exec``, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def _malicious_state(name: str, *, zipped: bool) -> Callable[[Fixtures], Path]:
    def make(fx: Fixtures) -> Path:
        import pickle

        import torch

        d = checkpoint_copy(fx, name)
        marker = d.parent.parent / MARKER
        marker.unlink(missing_ok=True)
        f = d / "trainer_state.pt"
        if zipped:  # torch.save's zip format, the evil object inside a plausible state
            torch.save({"step": 1, "optimizer": {}, "payload": _Evil(marker)}, f)
        else:  # a bare pickle stream (the legacy torch format)
            f.write_bytes(pickle.dumps({"step": 1, "payload": _Evil(marker)}, protocol=2))
        rewrite_complete(d)
        return d

    return make


def _no_marker(_: Any, fx: Fixtures) -> str | None:
    found = list((fx.root / "cases").rglob(MARKER))
    return f"the malicious pickle RAN: {found[0]} was created" if found else None


def _load_model(make: Callable[[Fixtures], Path]) -> Callable[[Fixtures], Any]:
    def fn(fx: Fixtures) -> Any:
        from gptrs.model import GPT

        d = make(fx)
        fx.extra["path"] = str(d)
        return GPT.from_pretrained(d)

    return fn


def _load_state(make: Callable[[Fixtures], Path]) -> Callable[[Fixtures], Any]:
    def fn(fx: Fixtures) -> Any:
        from gptrs.training.checkpoint import load_trainer_state

        d = make(fx)
        fx.extra["path"] = str(d)
        try:
            return load_trainer_state(d)
        finally:
            problem = _no_marker(None, fx)
            if problem:
                raise AssertionError(problem)

    return fn


def _checkpoint_cases() -> list[Case]:
    S = "checkpoint"
    E = "CheckpointError"
    st = r"{path}/model\.safetensors: "
    table: list[tuple[str, Callable[[Fixtures], Any], str]] = [
        ("missing tensor", _load_model(_tamper_weights("missing", _drop_tensor)), st + r"missing tensors: transformer\.h\.0\.attn\.c_attn\.weight"),
        ("wrong shape", _load_model(_tamper_weights("shape", _reshape_tensor)), st + r"tensor transformer\.wpe\.weight has shape \(16, 32\), expected \(32, 32\)"),
        ("unexpected tensor", _load_model(_tamper_weights("extra", _extra_tensor)), st + r"unexpected tensors: backdoor\.weight"),
        ("integer tensor", _load_model(_tamper_weights("dtype", _int_tensor)), st + r"tensor transformer\.wpe\.weight has non-float dtype"),
        ("corrupt safetensors header", _load_model(_tamper_bytes("header", _corrupt_header)), st + r"not a readable safetensors file"),
        ("header length past the end", _load_model(_tamper_bytes("hdrlen", lambda b: (1 << 60).to_bytes(8, "little") + b[8:])), st + r"not a readable safetensors file"),
        ("truncated safetensors", _load_model(_tamper_bytes("trunc", lambda b: b[: len(b) // 2])), st + r"not a readable safetensors file"),
        ("empty safetensors", _load_model(_tamper_bytes("empty", lambda b: b"")), st + r"not a readable safetensors file"),
        ("model.json not JSON", _load_model(lambda fx: _tamper_json(fx, "badjson", None)), r"{path}/model\.json: invalid JSON"),
        ("model.json negative size", _load_model(lambda fx: _tamper_json(fx, "negdim", ("embed_dim", -4))), r"{path}/model\.json: .*embed_dim"),
        ("model.json missing", _load_model(lambda fx: _remove(fx, "nojson", "model.json")), r"{path}/model\.json: missing"),
        ("trainer state: malicious pickle (torch.save zip)", _load_state(_malicious_state("evil_zip", zipped=True)), r"{path}/trainer_state\.pt: not a valid trainer state"),
        ("trainer state: malicious pickle (bare pickle)", _load_state(_malicious_state("evil_raw", zipped=False)), r"{path}/trainer_state\.pt: not a valid trainer state"),
        ("trainer state: random bytes", _load_state(lambda fx: _garbage_state(fx)), r"{path}/trainer_state\.pt: not a valid trainer state"),
        ("trainer state: not a dict", _load_state(lambda fx: _list_state(fx)), r"{path}/trainer_state\.pt: not a valid trainer state"),
    ]  # fmt: skip
    cases = [
        Case(S, name, fn=fn, raises=E, match=pattern, check=_no_marker, needs_model=True)
        for name, fn, pattern in table
    ]
    cases += [
        Case(
            S,
            "CLI generate: missing tensor",
            argv=lambda fx: _gen_argv(_tamper_weights("cli_missing", _drop_tensor)(fx), "--prompt", "x"),
            match=r"^gptrs-generate: error: .*model\.safetensors: missing tensors",
            needs_model=True,
        ),
        Case(
            S,
            "CLI generate: corrupt safetensors header",
            argv=lambda fx: _gen_argv(_tamper_bytes("cli_header", _corrupt_header)(fx), "--prompt", "x"),
            match=r"^gptrs-generate: error: .*not a readable safetensors file",
            needs_model=True,
        ),
        Case(
            S,
            "CLI generate: corrupt tokenizer.json in the checkpoint",
            argv=lambda fx: _gen_argv(_bad_tokenizer_ckpt(fx), "--prompt", "x"),
            match=r"^gptrs-generate: error: .*tokenizer\.json: .*not a gptrs_tok tokenizer file",
            needs_model=True,
        ),
        Case(
            S,
            "CLI train --resume: malicious pickle trainer state",
            argv=lambda fx: [
                "gptrs.train",
                "--out",
                str(_malicious_state("cli_evil", zipped=True)(fx).parent.parent),
                "--resume",
                "--device",
                "cpu",
                *tiny_sets(),
            ],
            match=r"^gptrs-train: error: .*trainer_state\.pt: not a valid trainer state",
            check=lambda proc, fx: _no_marker(proc, fx),
            needs_model=True,
            timeout=300,
        ),
    ]
    return cases


def _tamper_json(fx: Fixtures, name: str, change: tuple[str, Any] | None) -> Path:
    d = checkpoint_copy(fx, name)
    f = d / "model.json"
    if change is None:
        f.write_text("{")
    else:
        meta = json.loads(f.read_text())
        meta["config"][change[0]] = change[1]
        f.write_text(json.dumps(meta))
    rewrite_complete(d)
    return d


def _remove(fx: Fixtures, name: str, file: str) -> Path:
    d = checkpoint_copy(fx, name)
    (d / file).unlink()
    return d


def _garbage_state(fx: Fixtures) -> Path:
    d = checkpoint_copy(fx, "state_garbage")
    (d / "trainer_state.pt").write_bytes(bytes(range(256)) * 16)
    rewrite_complete(d)
    return d


def _list_state(fx: Fixtures) -> Path:
    import torch

    d = checkpoint_copy(fx, "state_list")
    torch.save([1, 2, 3], d / "trainer_state.pt")
    rewrite_complete(d)
    return d


def _bad_tokenizer_ckpt(fx: Fixtures) -> Path:
    d = checkpoint_copy(fx, "cli_badtok")
    text = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(text[: len(text) // 3])
    rewrite_complete(d)
    return d


def _gen_argv(model_dir: Path, *args: str) -> list[str]:
    return ["gptrs.generate", "--model-path", str(model_dir), "--device", "cpu", *args]


# ---------------------------------------------------------------------------------------------------------
# Tokenizer inputs


def _tok(fx: Fixtures) -> Any:
    import gptrs_tok

    return gptrs_tok.Tokenizer.load(fx.tokenizer)


def _bpe(fx: Fixtures) -> Any:
    from gptrs.tokenizer import BPETokenizer

    return BPETokenizer.load(fx.tokenizer)


def _expect(value: Any) -> Callable[[Any, Fixtures], str | None]:
    return lambda got, fx: None if got == value else f"got {got!r:.200}, expected {value!r:.200}"


def _round_trip(text: str) -> Callable[[Fixtures], Any]:
    """encode_ordinary -> decode gives the text back; encode_batch (lists and numpy) agrees with encode."""

    def fn(fx: Fixtures) -> Any:
        t = _tok(fx)
        ids = t.encode_ordinary(text)
        problems = []
        if t.decode(ids) != text:
            problems.append("decode(encode_ordinary(text)) != text")
        batch = t.encode_batch([text, text], allowed_special=(), disallowed_special=())
        if batch != [ids, ids]:
            problems.append("encode_batch differs from encode_ordinary")
        arr = t.encode_batch([text], as_numpy=True, allowed_special=(), disallowed_special=())[0]
        if arr.tolist() != ids:
            problems.append("encode_batch(as_numpy=True) differs")
        if t.decode(arr) != text:
            problems.append("decode(numpy ids) != text")
        return problems or "ok"

    return fn


def _surrogates(fx: Fixtures) -> Any:
    """Lone surrogates are encoded as U+FFFD (documented), the same way by every encoding entry point."""
    t, b = _tok(fx), _bpe(fx)
    bad, good = "a\ud800b\udfffc", "a\ufffdb\ufffdc"
    want = t.encode_ordinary(good)
    got = {
        "encode_ordinary": t.encode_ordinary(bad),
        "encode": t.encode(bad),
        "encode_batch": t.encode_batch([bad])[0],
        "encode_batch numpy": t.encode_batch([bad], as_numpy=True)[0].tolist(),
        "BPETokenizer.encode_ordinary": b.encode_ordinary(bad),
    }
    wrong = [k for k, v in got.items() if v != want]
    return f"differs from U+FFFD in: {wrong}" if wrong else "ok"


def _million_specials(fx: Fixtures) -> Any:
    t = _tok(fx)
    eos = t.special_tokens["<|endoftext|>"]
    text = "<|endoftext|>" * 1_000_000
    ids = t.encode(text, allowed_special="all")
    problems = []
    if len(ids) != 1_000_000 or set(ids) != {eos}:
        problems.append(f"allowed: {len(ids)} ids, distinct {sorted(set(ids))[:5]}")
    if t.decode(ids) != text:
        problems.append("decode(encode(text)) != text")
    ordinary = t.encode_ordinary(text)
    if eos in ordinary or t.decode(ordinary) != text:
        problems.append("encode_ordinary made special ids or does not round trip")
    return problems or "ok"


def _million_specials_disallowed(fx: Fixtures) -> Any:
    return _tok(fx).encode("<|endoftext|>" * 1_000_000)


def _empty_everything(fx: Fixtures) -> Any:
    t, b = _tok(fx), _bpe(fx)
    got = {
        "encode_ordinary('')": t.encode_ordinary(""),
        "encode('')": t.encode(""),
        "decode([])": t.decode([]),
        "decode_bytes([])": t.decode_bytes([]),
        "encode_batch([])": t.encode_batch([]),
        "encode_batch([], numpy)": t.encode_batch([], as_numpy=True),
        "encode_batch([''])": t.encode_batch([""]),
        "encode_batch([''], numpy)": [a.tolist() for a in t.encode_batch([""], as_numpy=True)],
        "decode_batch([])": t.decode_batch([]),
        "decode_batch([[]])": t.decode_batch([[]]),
        "BPETokenizer.encode('', add_special_tokens=False)": b.encode("", add_special_tokens=False),
        "BPETokenizer.encode_batch([])": b.encode_batch([]),
        "BPETokenizer.decode([])": b.decode([]),
    }
    want = {
        "encode_ordinary('')": [],
        "encode('')": [],
        "decode([])": "",
        "decode_bytes([])": b"",
        "encode_batch([])": [],
        "encode_batch([], numpy)": [],
        "encode_batch([''])": [[]],
        "encode_batch([''], numpy)": [[]],
        "decode_batch([])": [],
        "decode_batch([[]])": [""],
        "BPETokenizer.encode('', add_special_tokens=False)": [],
        "BPETokenizer.encode_batch([])": [],
        "BPETokenizer.decode([])": "",
    }
    wrong = {k: got[k] for k in want if got[k] != want[k]}
    return f"wrong: {wrong}" if wrong else "ok"


def _decode_numpy_oor(fx: Fixtures) -> Any:
    import numpy as np

    return _tok(fx).decode(np.array([70000], dtype=np.uint32))


def _tokenizer_input_cases() -> list[Case]:
    S = "tokenizer input"
    ok = _expect("ok")
    rng_text = "".join(chr(c) for c in range(0x21, 0x7F) if not chr(c).isspace())
    oor = r"token id {id} is out of range"
    cases = [
        Case(S, "lone surrogates (replaced by U+FFFD everywhere)", fn=_surrogates, check=ok),
        Case(S, "NUL bytes round trip", fn=_round_trip("a\x00b\x00\x00def\x00"), check=ok),
        Case(S, "control characters and BOM round trip", fn=_round_trip("\ufeff\x01\x7f\x1b[0m\r\n\t\x0b"), check=ok),
        Case(S, "10 MB without whitespace (ASCII letters)", fn=_round_trip("ab" * 5_000_000), check=ok, timeout=300),
        Case(S, "10 MB without whitespace (punctuation)", fn=_round_trip(rng_text * (10_000_000 // len(rng_text))), check=ok, timeout=300),
        Case(S, "10 MB without whitespace (2-byte letters)", fn=_round_trip("\u00e9" * 5_000_000), check=ok, timeout=300),
        Case(S, "10 MB of digits", fn=_round_trip("1234567890" * 1_000_000), check=ok, timeout=300),
        Case(S, "1 million special-token strings", fn=_million_specials, check=ok, timeout=300),
        Case(S, "1 million disallowed special tokens", fn=_million_specials_disallowed, raises="ValueError", match=r"disallowed special token"),
        Case(S, "decode id == n_vocab", fn=lambda fx: _tok(fx).decode([300]), raises="ValueError", match=oor.format(id=300)),
        Case(S, "decode negative id", fn=lambda fx: _tok(fx).decode([5, -1]), raises="ValueError", match=oor.format(id=-1)),
        Case(S, "decode id 2**70", fn=lambda fx: _tok(fx).decode([2**70]), raises="ValueError", match=r"out of range"),
        Case(S, "decode numpy uint32 id out of range", fn=_decode_numpy_oor, raises="ValueError", match=oor.format(id=70000)),
        Case(S, "decode_bytes out of range", fn=lambda fx: _tok(fx).decode_bytes([1, 99999]), raises="ValueError", match=oor.format(id=99999)),
        Case(S, "decode_batch with one bad row", fn=lambda fx: _tok(fx).decode_batch([[1], [99999]]), raises="ValueError", match=oor.format(id=99999)),
        Case(S, "token_bytes out of range", fn=lambda fx: _tok(fx).token_bytes(300), raises="ValueError", match=oor.format(id=300)),
        Case(S, "BPETokenizer.decode out of range", fn=lambda fx: _bpe(fx).decode([1, 300]), raises="ValueError", match=oor.format(id=300)),
        Case(S, "BPETokenizer.decode negative", fn=lambda fx: _bpe(fx).decode([-7]), raises="ValueError", match=oor.format(id=-7)),
        Case(S, "empty strings and empty batches", fn=_empty_everything, check=ok),
        Case(S, "bytes instead of str", fn=lambda fx: _tok(fx).encode_ordinary(b"abc"), raises="TypeError", match=r"must be str"),
        Case(S, "None in a batch", fn=lambda fx: _tok(fx).encode_batch(["a", None]), raises="TypeError", match=r"must be str"),
        Case(S, "a str where a batch is expected", fn=lambda fx: _bpe(fx).encode_batch("abc"), raises="ValueError", match=r"not a single str"),
    ]  # fmt: skip
    return [dataclasses.replace(c, isolate=True) for c in cases]


# ---------------------------------------------------------------------------------------------------------
# Generation


def _model(fx: Fixtures) -> Any:
    from gptrs.model import GPT

    if "model" not in fx.extra:
        fx.extra["model"] = GPT.from_pretrained(make_model(fx.root)).eval()
    return fx.extra["model"]


def _empty_prompt(fx: Fixtures) -> Any:
    import torch

    return _model(fx).generate(torch.zeros(1, 0, dtype=torch.long), 4)


def _long_prompt(fx: Fixtures) -> Any:
    """100 tokens into a 32-token context: one warning, and exactly the output of the last 32 tokens."""
    import warnings

    import torch

    model = _model(fx)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 300, (1, 100), generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model.generate(prompt, 6, temperature=0)
    cropped = model.generate(prompt[:, -32:], 6, temperature=0)
    problems = []
    msgs = [str(w.message) for w in caught]
    if len(msgs) != 1 or not re.search(r"longer than the context", msgs[0]) or "\n" in msgs[0]:
        problems.append(f"warnings: {msgs}")
    if tuple(out.shape) != (1, 106) or not torch.equal(out[:, :100], prompt):
        problems.append(f"output shape {tuple(out.shape)}")
    elif not torch.equal(out[:, 100:], cropped[:, 32:]):
        problems.append("new tokens differ from generating on the last 32 tokens")
    return problems or "ok"


def _generation_cases() -> list[Case]:
    S = "generation"
    V = "ValueError"

    def gen_case(name: str, kw: dict[str, Any], match: str) -> Case:
        def fn(fx: Fixtures, kw: dict[str, Any] = kw) -> Any:
            import torch

            kw = dict(kw)
            prompt = kw.pop("prompt", torch.tensor([[1, 2, 3]]))
            return _model(fx).generate(prompt, kw.pop("max_new_tokens", 4), **kw)

        return Case(S, name, fn=fn, raises=V, match=match, needs_model=True)

    cases = [
        Case(S, "empty prompt", fn=_empty_prompt, raises=V, match=r"at least one token", needs_model=True),
        Case(S, "empty prompt list", fn=lambda fx: _model(fx).generate([], 4), raises=V, match=r"at least one token", needs_model=True),
        gen_case("top_p = 0", {"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0"),
        gen_case("top_p = 1.5", {"top_p": 1.5}, r"top_p must be in \(0, 1\], got 1\.5"),
        gen_case("top_p < 0", {"top_p": -0.1}, r"top_p must be in \(0, 1\]"),
        gen_case("top_p = nan", {"top_p": float("nan")}, r"top_p must be in \(0, 1\]"),
        gen_case("negative temperature", {"temperature": -1.0}, r"temperature must be a number >= 0, got -1"),
        gen_case("temperature = nan", {"temperature": float("nan")}, r"temperature must be a number >= 0"),
        gen_case("top_k = 0", {"top_k": 0}, r"top_k must be an integer >= 1, got 0"),
        gen_case("top_k = 2.5", {"top_k": 2.5}, r"top_k must be an integer >= 1"),
        gen_case("seed = 1.5", {"seed": 1.5}, r"seed must be an integer, got 1\.5"),
        gen_case("seed = '42'", {"seed": "42"}, r"seed must be an integer, got '42'"),
        gen_case("max_new_tokens = -1", {"max_new_tokens": -1}, r"max_new_tokens must be an integer >= 0"),
        gen_case("prompt id out of range", {"prompt": [[1, 300]]}, r"token id 300, outside the vocabulary"),
        Case(S, "prompt longer than the context: cropped with one warning", fn=_long_prompt, check=_expect("ok"), needs_model=True),
    ]  # fmt: skip
    mp = ["--max-new-tokens", "3", "--seed", "1"]
    cli = [
        ("empty prompt", ["--prompt", ""], r"^gptrs-generate: error: --prompt is empty"),
        ("top-p 0", ["--prompt", "x", "--top-p", "0"], r"^gptrs-generate: error: --top-p must be in \(0, 1\], got 0"),
        ("top-p 1.5", ["--prompt", "x", "--top-p", "1.5"], r"^gptrs-generate: error: --top-p must be in \(0, 1\], got 1\.5"),
        ("negative temperature", ["--prompt", "x", "--temperature", "-1"], r"^gptrs-generate: error: --temperature must be a number >= 0"),
        ("top-k 0", ["--prompt", "x", "--top-k", "0"], r"^gptrs-generate: error: --top-k must be an integer >= 1"),
        ("seed 1.5", ["--prompt", "x", "--seed", "1.5"], r"^gptrs-generate: error: argument --seed: invalid int value: '1\.5'"),
    ]  # fmt: skip
    cases += [
        Case(
            S,
            f"CLI: {name}",
            argv=lambda fx, a=args: _gen_argv(make_model(fx.root), *a),
            match=m,
            needs_model=True,
        )
        for name, args, m in cli
    ]
    cases.append(
        Case(
            S,
            "CLI: prompt longer than the context (warning, exit 0)",
            argv=lambda fx: _gen_argv(make_model(fx.root), "--prompt", "def f(x): return x\n" * 40, *mp),
            status=0,
            match=r"",
            check=_cropped_cli,
            needs_model=True,
        )
    )
    return cases


def _cropped_cli(proc: Any, fx: Fixtures) -> str | None:
    warn = [ln for ln in proc.stderr.splitlines() if "longer than the context" in ln]
    if len(warn) != 1 or "WARNING" not in warn[0]:
        return f"expected one WARNING line about cropping, stderr: {proc.stderr[-500:]!r}"
    if not proc.stdout.startswith("def f(x): return x"):
        return f"stdout does not start with the prompt: {proc.stdout[:100]!r}"
    return None


# ---------------------------------------------------------------------------------------------------------
# Running a case


def all_cases() -> list[Case]:
    from tests.reliability.hostile_more import all_more_cases

    return (
        _tokenizer_file_cases()
        + _checkpoint_cases()
        + _tokenizer_input_cases()
        + _generation_cases()
        + all_more_cases()
    )


def cases_for(surface: str) -> list[Case]:
    return [c for c in all_cases() if c.surface == surface]


def _pattern(case: Case, fx: Fixtures) -> str:
    """``match`` with ``{path}`` replaced by the (escaped) directory of the case files or checkpoint."""
    where = fx.extra.get("path") or str(fx.root)
    return case.match.replace("{path}", re.escape(where) + r"[^ ]*")


def judge(case: Case, fx: Fixtures, result: Any = None, exc: BaseException | None = None) -> Outcome:
    """Whether an API case's result or exception is what the table says."""
    if exc is not None:
        mro = [c.__name__ for c in type(exc).__mro__]
        msg = str(exc)
        if "PanicException" in mro:
            return Outcome(False, f"Rust panic: {msg[:300]}")
        if case.raises is None:
            return Outcome(False, f"unexpected {type(exc).__name__}: {msg[:300]}")
        if case.raises not in mro:
            return Outcome(False, f"raised {type(exc).__name__} ({msg[:200]}), expected {case.raises}")
        if "\n" in msg.strip():
            return Outcome(False, f"message is not one line: {msg[:300]!r}")
        if not re.search(_pattern(case, fx), msg):
            return Outcome(False, f"message {msg[:300]!r} does not match {case.match!r}")
    elif case.raises is not None:
        return Outcome(False, f"no error (expected {case.raises}); returned {result!r:.200}")
    if case.check is not None:
        problem = case.check(result, fx)
        if problem:
            return Outcome(False, problem)
    return Outcome(True, f"{type(exc).__name__}: {str(exc)[:200]}" if exc else "ok")


def run_api(case: Case, fx: Fixtures) -> Outcome:
    assert case.fn is not None
    t0 = time.perf_counter()
    try:
        result = case.fn(fx)
    except BaseException as e:  # PanicException derives from BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        out = judge(case, fx, exc=e)
    else:
        out = judge(case, fx, result=result)
    out.seconds = time.perf_counter() - t0
    return out


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["RUST_BACKTRACE"] = "0"  # a crash reports its first line, not a backtrace
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO / "python"), str(REPO), env.get("PYTHONPATH")) if p
    )
    return env


def run_isolated(case: Case, fx: Fixtures) -> Outcome:
    """Run an API case in a child process (address space capped): a crash there is a failed case, not ours."""
    code = "import sys; from tests.reliability.hostile_cases import _child_main; sys.exit(_child_main(sys.argv[1:]))"
    t0 = time.perf_counter()
    proc = _run_child(
        "isolated", [case.id, str(fx.root)], [sys.executable, "-c", code], case.timeout, cap=False
    )
    if proc is None:
        return Outcome(False, f"hang: no answer within {case.timeout:.0f} s", time.perf_counter() - t0)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or "").strip().splitlines()[-3:]
        return Outcome(
            False, f"the process died (status {proc.returncode}): {' | '.join(tail)[:400]}",
            time.perf_counter() - t0,
        )  # fmt: skip
    answer = json.loads(lines[-1])
    return Outcome(answer["ok"], answer["detail"], time.perf_counter() - t0)


def _child_main(argv: Sequence[str]) -> int:
    import resource

    case_id, root = argv
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    case = next(c for c in all_cases() if c.id == case_id)
    assert case.fn is not None
    fx = Fixtures(Path(root))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result, exc = None, None
    try:
        result = case.fn(fx)
    except BaseException as e:  # PanicException derives from BaseException
        exc = e
    # The peak RSS the case added (what the interpreter and imports took before is not its doing).
    fx.extra["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    out = judge(case, fx, result=result, exc=exc)
    from tests.reliability.hostile_more import unmount_all

    unmount_all(fx)
    print(json.dumps({"ok": out.ok, "detail": out.detail}))
    return 0


def _run_child(
    kind: str, args: list[str], command: list[str], timeout: float, cap: bool
) -> subprocess.CompletedProcess[str] | None:
    """Run a case's process: a fork of the zygote (``zygote.py``: torch already imported), else
    ``command`` with subprocess. None when it ran past ``timeout`` (it is killed). An isolated case caps its
    own address space once its fixtures are built (``_child_main``); a CLI case is capped from the start."""
    server = zygote.get(_env())
    if server is not None:
        limit = ADDRESS_SPACE_LIMIT if cap else resource.RLIM_INFINITY
        r = server.run(kind, args, timeout, limit)
        return None if r.timed_out else subprocess.CompletedProcess(command, r.returncode, r.stdout, r.stderr)
    try:
        return subprocess.run(
            command, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=timeout,
            preexec_fn=_cap_address_space if cap else None,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return None


def _cap_address_space() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_cli(case: Case, fx: Fixtures) -> Outcome:
    assert case.argv is not None
    argv = case.argv(fx)
    fx.extra["path"] = str(fx.root)
    t0 = time.perf_counter()
    # The address space is capped: an unbounded allocation fails the case, not the machine.
    proc = _run_child("module", list(argv), [sys.executable, "-m", *argv], case.timeout, cap=True)
    if proc is None:
        return Outcome(False, f"hang: no exit within {case.timeout:.0f} s", time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    err = proc.stderr.strip()
    last = err.splitlines()[-1] if err else ""
    if "Traceback" in err:
        return Outcome(False, f"traceback on stderr: {err[-400:]!r}", dt)
    if "panicked" in err or "PanicException" in err:
        return Outcome(False, f"Rust panic: {err[-400:]!r}", dt)
    if proc.returncode != case.status:
        return Outcome(False, f"exit status {proc.returncode} (expected {case.status}); stderr: {last!r}", dt)
    if case.match and not re.search(_pattern(case, fx), last):
        return Outcome(False, f"last stderr line {last!r} does not match {case.match!r}", dt)
    if case.check is not None:
        problem = case.check(proc, fx)
        if problem:
            return Outcome(False, problem, dt)
    return Outcome(True, last or "ok", dt)


def prepare(root: Path, *, model: bool) -> Fixtures:
    """The fixtures under ``root`` (built once): the tokenizer, and with ``model`` the tiny checkpoint."""
    make_tokenizer(root)
    if model:
        make_model(root)
    return Fixtures(root)


def run_case(case: Case, root: Path) -> Outcome:
    """Run one case with fixtures under ``root`` (built on first use)."""
    from tests.reliability.hostile_more import unmount_all

    fx = prepare(root, model=case.needs_model)
    fx.extra.pop("path", None)
    try:
        if case.argv is not None:
            return run_cli(case, fx)
        if case.isolate:
            return run_isolated(case, fx)
        return run_api(case, fx)
    finally:
        unmount_all(fx)


def main(argv: Sequence[str]) -> int:
    """Run every case (or those whose id contains one of ``argv``) and print one line per case."""
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gptrs-hostile-") as tmp:
        for case in all_cases():
            if argv and not any(a in case.id for a in argv):
                continue
            out = run_case(case, Path(tmp))
            failures += not out.ok
            print(f"{'ok  ' if out.ok else 'FAIL'} {out.seconds:6.2f}s  {case.id}: {out.detail[:160]}")
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main(sys.argv[1:]))
