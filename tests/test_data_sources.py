"""Text sources: the stdlib corpus, local .txt/.jsonl/.json/.parquet files made here, the Hub's offline error,
and the deterministic train/validation split."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptrs.config import DataConfig
from gptrs.data import iter_documents, sources, split_documents, stdlib_paths
from gptrs.errors import DataError


def _files(paths: list[Path | str], **kw) -> list[str]:
    return list(iter_documents(DataConfig(source="files", paths=[str(p) for p in paths], **kw)))


# ------------------------------------------------------------------------------------------------------ stdlib


def test_stdlib_paths_sorted_utf8_python_files_without_site_packages() -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = stdlib_paths()
    assert len(paths) > 500
    assert paths == sorted(paths)
    assert len(set(paths)) == len(paths)
    assert root / "os.py" in paths and root / "json" / "__init__.py" in paths
    for p in paths:
        assert p.suffix == ".py"
        rel = p.relative_to(root).parts
        assert "site-packages" not in rel and "dist-packages" not in rel
    koi8 = root / "test" / "encoded_modules" / "module_koi8_r.py"  # deliberately not UTF-8
    if koi8.exists():
        assert koi8 not in paths


def test_stdlib_documents_are_the_files_in_order_capped() -> None:
    docs = list(iter_documents(DataConfig(num_training_samples=25)))
    expected = [t for t in (p.read_text(encoding="utf-8") for p in stdlib_paths()) if t][:25]
    assert docs == expected


# ------------------------------------------------------------------------------------------------ local files


def test_txt_one_document_per_file_sorted_empty_skipped(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("second file\n\nstill second\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first file: héllo ✓\n", encoding="utf-8")
    (tmp_path / "c.txt").write_text("", encoding="utf-8")
    (tmp_path / "d.txt").write_text("windows\r\nlines\r\n", encoding="utf-8")
    docs = _files([tmp_path / "*.txt"])
    # Text mode: universal newlines become "\n", as Python's open() does.
    assert docs == ["first file: héllo ✓\n", "second file\n\nstill second\n", "windows\nlines\n"]
    assert _files([tmp_path / "*.txt"], num_training_samples=2) == docs[:2]


def test_large_or_lone_txt_splits_at_blank_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "big.txt"
    big.write_text("para one\nline two\n\npara two\n\n\npara three\n", encoding="utf-8")
    small = tmp_path / "small.txt"
    small.write_text("tiny\n\nfile\n", encoding="utf-8")
    assert _files([big]) == ["para one\nline two", "para two", "\npara three\n"]  # lone file
    assert _files([small, big]) == ["tiny\n\nfile\n", big.read_text()]  # under the size limit
    monkeypatch.setattr(sources, "LARGE_TEXT_BYTES", 30)
    assert _files([small, big]) == ["tiny\n\nfile\n", "para one\nline two", "para two", "\npara three\n"]


def test_jsonl_json_and_parquet_with_text_field(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"content": "alpha", "id": 1}, {"content": None, "id": 2}, {"content": "béta\n", "id": 3}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps([{"content": "gamma", "id": 4}]), encoding="utf-8")
    pq.write_table(pa.table({"content": ["delta", "", "epsilon"], "n": [1, 2, 3]}), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("zeta", encoding="utf-8")
    paths = [tmp_path / "d.txt", tmp_path / "a.jsonl", tmp_path / "b.json", tmp_path / "c.parquet"]
    # The order of data.paths is kept; None and empty texts are skipped.
    assert _files(paths, text_field="content") == ["zeta", "alpha", "béta\n", "gamma", "delta", "epsilon"]
    assert _files([tmp_path / "c.parquet"], text_field="content", num_training_samples=1) == ["delta"]
    with pytest.raises(
        DataError, match=r"c\.parquet: no column 'text' \(columns: content, n\); set data\.text_field"
    ):
        _files([tmp_path / "c.parquet"])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"cannot read .*bad\.parquet: "):
        _files([tmp_path / "bad.parquet"])


@pytest.mark.parametrize(
    ("make", "pattern", "message"),
    [
        (None, "missing.txt", r"data\.paths: file not found: .*missing\.txt"),
        (None, "nothing/*.jsonl", r"data\.paths: '.*nothing/\*\.jsonl' matched no files"),
        ("notes.csv", "notes.csv", r"unsupported file type: .*notes\.csv \(supported: \.txt"),
        ("sub/x.txt", "sub", r"'.*sub' is a directory; give files or a glob like"),
    ],
)
def test_bad_paths_name_the_culprit(tmp_path: Path, make: str | None, pattern: str, message: str) -> None:
    if make:
        (tmp_path / make).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / make).write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        _files([tmp_path / pattern])


def test_empty_paths_is_an_error() -> None:
    with pytest.raises(DataError, match=r"data\.paths is empty"):
        list(iter_documents(DataConfig(source="files", paths=[])))


def test_missing_field_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"b\.jsonl: no field 'text' \(fields: body\); set data\.text_field"):
        _files([tmp_path / "*.jsonl"])


def test_non_utf8_text_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 latin-1")
    with pytest.raises(DataError, match=r"cannot read .*b\.txt: UnicodeDecodeError"):
        _files([tmp_path / "*.txt"])


def test_unknown_source() -> None:
    with pytest.raises(DataError, match="unknown source 'ftp'"):
        list(iter_documents(DataConfig(source="ftp")))


# ------------------------------------------------------------------------------------------------------- Hub


@pytest.mark.parametrize("var", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_hub_offline_fails_at_once_saying_how_to_use_files(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "1")

    def no_network(name: str) -> str:
        raise AssertionError("must not touch the network when offline")

    monkeypatch.setattr(sources, "_hub_revision_cached", no_network)
    cfg = DataConfig(source="hub", dataset_name="HuggingFaceFW/fineweb", dataset_subset="sample-10BT")
    with pytest.raises(DataError) as err:
        list(iter_documents(cfg))
    msg = str(err.value)
    assert "'HuggingFaceFW/fineweb'" in msg and f"{var} is set" in msg
    assert "data.source: files" in msg and "data.paths" in msg
    assert "\n" not in msg
    with pytest.raises(DataError, match="HuggingFaceFW/fineweb"):
        sources.source_fingerprint(cfg)


def test_prepare_data_offline_hub_fails_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gptrs.config import Config
    from gptrs.data import prepare_data

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = Config(data=DataConfig(source="hub", dataset_name="HuggingFaceFW/fineweb"))
    with pytest.raises(
        DataError, match=r"cannot stream Hub dataset 'HuggingFaceFW/fineweb': HF_DATASETS_OFFLINE"
    ):
        prepare_data(cfg, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no tokenizer trained, no cache started


def test_hub_unreachable_is_a_data_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(name: str) -> str:
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(sources, "_hub_revision_cached", unreachable)
    with pytest.raises(
        DataError, match=r"cannot reach Hub dataset 'org/data' \(ConnectionError: .*data\.source: files"
    ):
        list(iter_documents(DataConfig(source="hub", dataset_name="org/data")))
    with pytest.raises(DataError, match=r"data\.dataset_name is not set"):
        list(iter_documents(DataConfig(source="hub")))


def test_hub_streams_at_the_pinned_revision_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "_hub_revision_cached", lambda name: "0123abcd")
    calls: list[tuple] = []
    rows = {"content": [f"web page {i}" for i in range(5000)], "url": ["u"] * 5000}

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict(rows).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(
        source="hub",
        dataset_name="org/web",
        dataset_subset="sample",
        dataset_split="train",
        text_field="content",
        num_training_samples=1500,
    )
    assert list(iter_documents(cfg)) == rows["content"][:1500]
    assert calls == [(("org/web", "sample"), {"split": "train", "streaming": True, "revision": "0123abcd"})]
    fp = sources.source_fingerprint(cfg)
    assert fp["revision"] == "0123abcd" and fp["num_training_samples"] == 1500

    def dropped_connection(*args, **kwargs):
        def gen():
            yield {"content": "first"}
            raise ConnectionError("connection reset by peer")

        return datasets.IterableDataset.from_generator(gen)

    monkeypatch.setattr(datasets, "load_dataset", dropped_connection)
    with pytest.raises(
        DataError, match=r"cannot stream Hub dataset 'org/web' \(sample\): ConnectionError: connection reset"
    ):
        list(iter_documents(cfg))


# ------------------------------------------------------------------------------------------------------ split


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 300),
    f=st.floats(0.001, 0.999),
    seed=st.integers(0, 2**32 - 1),
    block_docs=st.integers(2, 50),
    block_bytes=st.integers(1, 400),
)
def test_split_exact_fraction_deterministic_order_kept(
    n: int, f: float, seed: int, block_docs: int, block_bytes: int
) -> None:
    docs = [f"doc {i}" for i in range(n)]
    saved = sources.SPLIT_BLOCK_DOCS, sources.SPLIT_BLOCK_BYTES
    # Small blocks (by count or by size) exercise the block-by-block draw.
    sources.SPLIT_BLOCK_DOCS, sources.SPLIT_BLOCK_BYTES = block_docs, block_bytes
    try:
        out = list(split_documents(iter(docs), f, seed))
        again = list(split_documents(docs, f, seed))
    finally:
        sources.SPLIT_BLOCK_DOCS, sources.SPLIT_BLOCK_BYTES = saved
    assert out == again
    assert [d for d, _ in out] == docs
    n_val = sum(v for _, v in out)
    expected = int(n * f + 0.5)
    if expected == 0 and n >= 2:
        expected = 1  # never an empty validation split when there are two documents
    assert n_val == expected


def test_split_depends_on_seed() -> None:
    docs = [str(i) for i in range(1000)]
    a = [v for _, v in split_documents(docs, 0.1, 1)]
    b = [v for _, v in split_documents(docs, 0.1, 2)]
    assert sum(a) == sum(b) == 100
    assert a != b


@pytest.mark.parametrize("f", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fraction(f: float) -> None:
    with pytest.raises(DataError, match="validation_split must be in"):
        list(split_documents(["a", "b"], f, 0))


def test_prepare_data_fault_points(tmp_path: Path) -> None:
    """The pipeline announces its risky stretches (gptrs.faults): training and saving the tokenizer, building
    the cache; a second run reuses both and announces nothing. A hook that raises stops the run there."""
    from gptrs import faults
    from gptrs.config import Config, ModelConfig, TokenizerConfig
    from gptrs.data import prepare_data

    text = "\n\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(300))
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    cfg = Config(
        data=DataConfig(source="files", paths=[str(tmp_path / "a.txt")], validation_split=0.2),
        tokenizer=TokenizerConfig(vocab_size=300),
        model=ModelConfig(max_seq_len=16),
    )
    seen: list[str] = []
    with faults.install(lambda name, info: seen.append(name)):
        prepare_data(cfg, tmp_path / "run", progress=False)
    points = [n for n in seen if n in ("tokenizer", "tokenizer_done", "cache", "cache_done")]
    assert points == ["tokenizer", "tokenizer_done", "cache", "cache_done"]
    assert seen.index("tokenizer_done") < seen.index("write")  # the tokenizer file is written after training

    seen.clear()
    with faults.install(lambda name, info: seen.append(name)):
        prepare_data(cfg, tmp_path / "run", progress=False)
    assert seen == []

    def stop_at_cache(name: str, info: dict) -> None:
        if name == "cache":
            raise OSError(28, "No space left on device")

    with faults.install(stop_at_cache), pytest.raises(OSError):
        prepare_data(cfg, tmp_path / "run2", progress=False)
    assert (tmp_path / "run2" / "tokenizer.json").is_file()  # done before the cache started
    assert not (tmp_path / "run2" / "data" / "cache.json").exists()
