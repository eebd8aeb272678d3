"""Data sources (files, directories, globs, JSONL, the stdlib corpus) and token windows for training."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from jijian.data import python_stdlib_files, read_documents, resolve_sources, tokenize_documents
from jijian.data.sources import SourceError
from jijian.data.tokens import TokenWindows
from jijian.model.tokenizer import train_tokenizer

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.\n"
    "Large language models are trained on text; the text is split into tokens, and tokens into windows.\n"
)
PYTHON = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def small_tokenizer():
    texts = [ENGLISH * 4, PYTHON * 4, "Numbers 0123456789 and punctuation: ,.;:!?()[]{}<>\n" * 4]
    return train_tokenizer(texts, 400)


# --- resolve_sources ---------------------------------------------------------------------------------------


def test_resolve_single_files(tmp_path):
    a = write(tmp_path / "a.txt", "a")
    b = write(tmp_path / "b.bin", "b")  # a file named explicitly is taken whatever its suffix
    assert resolve_sources([str(b), a]) == [a, b]


def test_resolve_directory_recursive_text_suffixes_only(tmp_path):
    root = tmp_path / "corpus"
    kept = [
        write(root / "a.txt", "a"),
        write(root / "sub" / "b.md", "b"),
        write(root / "sub" / "deep" / "c.py", "c"),
        write(root / "d.jsonl", '{"text": "d"}\n'),
    ]
    write(root / "image.png", "not text")
    write(root / "sub" / "blob.bin", "not text")
    write(root / "noext", "no suffix")
    (root / "empty_dir.txt").mkdir()  # a directory with a text suffix is not a file
    assert resolve_sources([root]) == sorted(kept)


def test_resolve_glob(tmp_path):
    a = write(tmp_path / "x" / "a.txt", "a")
    b = write(tmp_path / "y" / "b.txt", "b")
    write(tmp_path / "y" / "c.md", "c")
    assert resolve_sources([str(tmp_path / "*" / "*.txt")]) == [a, b]
    assert resolve_sources([str(tmp_path / "**" / "*.txt")]) == [a, b]


def test_resolve_relative_to_base_dir(tmp_path, monkeypatch):
    a = write(tmp_path / "data" / "a.txt", "a")
    b = write(tmp_path / "data" / "more" / "b.txt", "b")
    monkeypatch.chdir(tmp_path / "data" / "more")
    assert resolve_sources(["data/a.txt", "data/more", "data/*.txt"], base_dir=tmp_path) == [a, b]


def test_resolve_deduplicates_and_sorts(tmp_path):
    a = write(tmp_path / "a.txt", "a")
    b = write(tmp_path / "b.txt", "b")
    assert resolve_sources([b, a, tmp_path, str(tmp_path / "*.txt")]) == [a, b]


def test_resolve_empty_list():
    assert resolve_sources([]) == []


def test_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere" / "corpus.txt"
    with pytest.raises(SourceError) as info:
        resolve_sources([str(missing)])
    assert str(missing) in str(info.value)


def test_missing_relative_path_names_it_and_where_it_looked(tmp_path):
    with pytest.raises(SourceError) as info:
        resolve_sources(["gone.txt"], base_dir=tmp_path)
    assert "gone.txt" in str(info.value)
    assert str(tmp_path / "gone.txt") in str(info.value)


def test_glob_matching_nothing_is_an_error(tmp_path):
    write(tmp_path / "a.txt", "a")
    pattern = str(tmp_path / "*.parquet")
    with pytest.raises(SourceError) as info:
        resolve_sources([pattern])
    assert pattern in str(info.value)
    assert "glob" in str(info.value)


def test_source_error_is_a_value_error():
    assert issubclass(SourceError, ValueError)


def test_glob_matching_only_directories_is_not_silently_empty(tmp_path):
    a = write(tmp_path / "shard-1" / "a.txt", "a")
    try:
        result = resolve_sources([str(tmp_path / "shard-*")])
    except SourceError:
        return
    assert result == [a]


# --- read_documents -----------------------------------------------------------------------------------------


def test_read_text_files(tmp_path):
    a = write(tmp_path / "a.txt", "first document\n")
    b = write(tmp_path / "b.py", PYTHON)
    assert list(read_documents([a, b])) == ["first document\n", PYTHON]


def test_read_text_with_invalid_utf8_is_replaced(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"ok \xff end")
    assert list(read_documents([path])) == ["ok \ufffd end"]


def test_read_jsonl_one_document_per_line(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "one"}, {"text": "two", "id": 2}])
    # Blank lines are skipped.
    path.write_text(path.read_text(encoding="utf-8") + "\n   \n" + json.dumps({"text": "three"}) + "\n")
    assert list(read_documents([path])) == ["one", "two", "three"]


def test_read_jsonl_custom_text_field(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"content": "alpha", "text": 1}, {"content": "beta"}])
    assert list(read_documents([path], text_field="content")) == ["alpha", "beta"]


def test_read_mixed_files_in_order(tmp_path):
    a = write(tmp_path / "a.txt", "plain")
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": "x"}, {"text": "y"}])
    assert list(read_documents([a, b])) == ["plain", "x", "y"]


def test_jsonl_line_without_field_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "a"}, {"text": "b"}, {"body": "c"}])
    with pytest.raises(SourceError) as info:
        list(read_documents([path]))
    assert f"{path}:3" in str(info.value)
    assert "'text'" in str(info.value)


@pytest.mark.parametrize("record", [{"text": None}, {"text": 5}, ["text"], "text"])
def test_jsonl_line_with_non_string_text_is_refused(tmp_path, record):
    path = write_jsonl(tmp_path / "docs.jsonl", [record])
    with pytest.raises(SourceError) as info:
        list(read_documents([path]))
    assert f"{path}:1" in str(info.value)


def test_invalid_json_on_first_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "docs.jsonl", '{"text": "unterminated\n')
    with pytest.raises(SourceError) as info:
        list(read_documents([path]))
    assert f"{path}:1" in str(info.value)
    assert "invalid JSON" in str(info.value)


def test_invalid_json_later_line_names_its_line(tmp_path):
    path = write(tmp_path / "docs.jsonl", '{"text": "a"}\n{"text": "b"}\n{bad json\n')
    with pytest.raises(SourceError) as info:
        list(read_documents([path]))
    assert f"{path}:3" in str(info.value)


def test_jsonl_with_invalid_utf8_is_a_source_error(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "a"}\n\xff\xfe\n')
    with pytest.raises(SourceError) as info:
        list(read_documents([path]))
    assert str(path) in str(info.value)


def test_unreadable_file_is_a_source_error(tmp_path):
    missing = tmp_path / "vanished.txt"
    with pytest.raises(SourceError) as info:
        list(read_documents([missing]))
    assert str(missing) in str(info.value)


def test_read_documents_is_lazy(tmp_path):
    good = write(tmp_path / "a.txt", "fine")
    docs = read_documents([good, tmp_path / "vanished.txt"])
    assert next(docs) == "fine"
    with pytest.raises(SourceError):
        next(docs)


# --- python_stdlib_files ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stdlib_sample():
    budget = 200_000
    return budget, python_stdlib_files(max_bytes=budget)


def test_stdlib_files_within_budget(stdlib_sample):
    budget, chosen = stdlib_sample
    assert chosen
    assert all(p.suffix == ".py" and p.is_file() for p in chosen)
    assert all("site-packages" not in p.parts for p in chosen)
    assert sum(p.stat().st_size for p in chosen) <= budget
    assert len(set(chosen)) == len(chosen)
    # Shuffled, so a budget samples across the library rather than one package's first files.
    assert len({p.parent for p in chosen}) > 1


@pytest.fixture
def fake_stdlib(tmp_path, monkeypatch):
    """A small stand-in for the stdlib tree (walking the real one takes about a second per call)."""
    root = tmp_path / "lib" / "python3"
    for i in range(30):
        write(root / f"pkg{i % 4}" / f"mod{i}.py", "x = 1\n" * (i + 1))
    write(root / "README.txt", "not python")
    write(root / "site-packages" / "third_party.py", "import this\n")
    monkeypatch.setattr(sysconfig, "get_paths", lambda *a, **k: {"stdlib": str(root)})
    return root


def test_stdlib_files_deterministic_per_seed(fake_stdlib):
    first = python_stdlib_files(max_bytes=300, seed=3)
    assert first
    assert python_stdlib_files(max_bytes=300, seed=3) == first
    assert python_stdlib_files(max_bytes=300, seed=4) != first
    assert python_stdlib_files(seed=3) != python_stdlib_files(seed=4)


def test_stdlib_files_without_budget_is_every_py_file(fake_stdlib):
    everything = python_stdlib_files()
    assert len(everything) == 30
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in everything)
    assert set(python_stdlib_files(max_bytes=100)) <= set(everything)


def test_stdlib_files_budget_is_respected_and_filled(fake_stdlib):
    for budget in (0, 6, 50, 500, 10_000):
        chosen = python_stdlib_files(max_bytes=budget, seed=1)
        total = sum(p.stat().st_size for p in chosen)
        assert total <= budget
        # Files that did not fit are skipped, not the end of the walk: whatever is left out is too big.
        left = [p for p in python_stdlib_files(seed=1) if p not in chosen]
        assert all(total + p.stat().st_size > budget for p in left)


# --- TokenWindows -----------------------------------------------------------------------------------------------


def test_windows_shapes_and_shift():
    tokens = np.arange(1000, dtype=np.uint16)
    windows = TokenWindows(tokens, seq_len=16, batch_size=4, seed=0)
    x, y = next(windows)
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # Windows are contiguous slices of the corpus (arange makes every row consecutive).
    assert torch.equal(y, x + 1)
    assert int(x.min()) >= 0
    assert int(y.max()) <= 999
    assert windows.batches_drawn == 1


def test_windows_are_slices_of_real_tokens():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 400, size=500).astype(np.uint16)
    x, y = next(TokenWindows(tokens, seq_len=8, batch_size=6, seed=2))
    for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
        row = np.concatenate([row_x, row_y[-1:]])
        starts = [s for s in range(len(tokens) - 8) if np.array_equal(tokens[s : s + 9], row)]
        assert starts


def test_windows_deterministic_per_seed():
    tokens = np.arange(5000, dtype=np.uint32)
    a = TokenWindows(tokens, 32, 4, seed=7)
    b = TokenWindows(tokens, 32, 4, seed=7)
    c = TokenWindows(tokens, 32, 4, seed=8)
    batches_a = [next(a) for _ in range(3)]
    batches_b = [next(b) for _ in range(3)]
    batches_c = [next(c) for _ in range(3)]
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(xa, xb)
        assert torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(batches_a, batches_c, strict=True))


def test_windows_state_dict_resumes_the_exact_next_batch():
    tokens = np.arange(5000, dtype=np.uint16)
    original = TokenWindows(tokens, 16, 4, seed=11)
    for _ in range(5):
        next(original)
    state = original.state_dict()
    assert state["batches_drawn"] == 5
    expected = [next(original) for _ in range(3)]

    resumed = TokenWindows(tokens, 16, 4, seed=999)
    resumed.load_state_dict(state)
    assert resumed.seed == 11
    assert resumed.batches_drawn == 5
    for (x, y), (ex, ey) in zip((next(resumed) for _ in range(3)), expected, strict=True):
        assert torch.equal(x, ex)
        assert torch.equal(y, ey)
    assert resumed.batches_drawn == 8


def test_windows_state_survives_json(tmp_path):
    tokens = np.arange(3000, dtype=np.uint16)
    original = TokenWindows(tokens, 16, 2, seed=5)
    next(original)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(original.state_dict()), encoding="utf-8")
    resumed = TokenWindows(tokens, 16, 2, seed=0)
    resumed.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
    assert torch.equal(next(resumed)[0], next(original)[0])


def test_fixed_batches_are_stable_and_apart_from_training():
    tokens = np.arange(5000, dtype=np.uint16)
    windows = TokenWindows(tokens, 16, 4, seed=3)
    first = windows.fixed_batches(2)
    next(windows)
    second = windows.fixed_batches(2)
    assert len(first) == 2
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2)
        assert torch.equal(y1, y2)
    assert windows.batches_drawn == 1


def test_corpus_of_exactly_seq_len_plus_one():
    tokens = np.arange(9, dtype=np.uint16)
    x, y = next(TokenWindows(tokens, seq_len=8, batch_size=3))
    assert torch.equal(x, torch.arange(8).repeat(3, 1))
    assert torch.equal(y, torch.arange(1, 9).repeat(3, 1))


@pytest.mark.parametrize("length", [0, 1, 8])
def test_too_short_corpus_raises(length):
    with pytest.raises(ValueError, match="seq_len"):
        TokenWindows(np.arange(length, dtype=np.uint16), seq_len=8, batch_size=2)


# --- tokenize_documents ---------------------------------------------------------------------------------------


def test_tokenize_documents_eos_after_each(small_tokenizer):
    docs = [ENGLISH, PYTHON, "short", "x = 1\n", ENGLISH[:40]]
    tokens = tokenize_documents(docs, small_tokenizer, batch_size=2)
    eos = small_tokenizer.eos_id
    assert tokens.dtype == np.uint16
    assert tokens.ndim == 1
    assert int(tokens[-1]) == eos
    assert int((tokens == eos).sum()) == len(docs)
    expected = [t for doc in docs for t in [*small_tokenizer.encode(doc), eos]]
    assert tokens.tolist() == expected
    # Splitting at EOS gives back each document.
    pieces = np.split(tokens, np.flatnonzero(tokens == eos) + 1)[:-1]
    assert [small_tokenizer.decode(p.tolist()) for p in pieces] == docs


def test_tokenize_documents_batch_size_does_not_change_result(small_tokenizer):
    docs = [f"document {i}: {ENGLISH[: 20 + i]}" for i in range(7)]
    one = tokenize_documents(docs, small_tokenizer, batch_size=1)
    many = tokenize_documents(iter(docs), small_tokenizer, batch_size=256)
    assert np.array_equal(one, many)


def test_tokenize_empty_documents(small_tokenizer):
    empty = tokenize_documents([], small_tokenizer)
    assert empty.shape == (0,)
    assert empty.dtype == np.uint16
    only_eos = tokenize_documents(["", ""], small_tokenizer)
    assert only_eos.tolist() == [small_tokenizer.eos_id] * 2


def test_small_tokenizer_has_at_most_400_tokens(small_tokenizer):
    assert small_tokenizer.vocab_size <= 400
    assert small_tokenizer.eos_id is not None


def test_tokenize_then_windows(small_tokenizer):
    tokens = tokenize_documents([ENGLISH * 3, PYTHON * 3], small_tokenizer)
    x, y = next(TokenWindows(tokens, seq_len=12, batch_size=2, seed=0))
    assert x.shape == (2, 12)
    assert int(x.max()) < small_tokenizer.vocab_size
    assert torch.equal(x[:, 1:], y[:, :-1])
