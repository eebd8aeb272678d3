"""The build: cleaning, filters, PII hook, exact and near dedup, bad input, shards, resume, determinism."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jijian.config import DataConfig
from jijian.data import PackedTokens, build_dataset, read_manifest
from jijian.data.shards import DatasetError, verify_checksums
from jijian.data.sources import SourceError

WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "po", "ru", "si", "ta", "vu", "ze") for b in "aeiouxyz"]


def prose(seed: int, n_words: int = 300) -> str:
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return "\n".join(" ".join(words[i : i + 12]) + "." for i in range(0, n_words, 12))


def config(tmp_path, sources, **fields) -> DataConfig:
    base = {"sources": [str(s) for s in sources], "output_dir": tmp_path / "out", "workers": 0}
    base.setdefault("validation_fraction", 0.0)
    return DataConfig(**{**base, **fields})


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def documents(directory, tokenizer, split="train") -> list[str]:
    """Every document in the shards, decoded (EOS marks the ends)."""
    tokens = PackedTokens(directory, split)
    flat = np.empty(len(tokens), dtype=np.int64)
    tokens.read_into(0, flat)
    bounds = [*tokens.doc_starts.tolist(), len(flat)]
    docs = []
    for start, end in itertools.pairwise(bounds):
        assert flat[end - 1] == tokenizer.eos_id
        docs.append(tokenizer.decode(flat[start : end - 1].tolist()))
    return docs


def test_exact_and_near_copies_are_removed_and_distinct_documents_stay(tmp_path, tokenizer):
    distinct = [prose(seed) for seed in range(8)]
    near = distinct[1].split(" ")
    near[40] = "different"  # one word of 300: Jaccard of word 5-grams stays far above 0.8
    texts = [*distinct, distinct[0], " ".join(near), distinct[5]]
    result = build_dataset(config(tmp_path, [write_jsonl(tmp_path / "c.jsonl", texts)]), tokenizer)
    totals = result.manifest["stats"]["totals"]
    assert totals["exact_duplicates"] == 2 and totals["near_duplicates"] == 1
    assert totals["kept_documents"] == 8
    assert documents(result.directory, tokenizer) == distinct


def test_near_duplicate_threshold_is_configurable(tmp_path, tokenizer):
    a = prose(1)
    words = a.split(" ")
    b = " ".join(w if i % 10 else "changed" for i, w in enumerate(words))  # every 10th word: Jaccard ~0.4
    corpus = write_jsonl(tmp_path / "c.jsonl", [a, b])
    assert build_dataset(config(tmp_path, [corpus]), tokenizer).manifest["stats"]["totals"]["kept_documents"] == 2
    strict = config(tmp_path, [corpus], near_dup_threshold=0.2, output_dir=tmp_path / "loose")
    assert build_dataset(strict, tokenizer).manifest["stats"]["totals"]["near_duplicates"] == 1


def test_cleaning_normalises_and_filters_name_their_reason(tmp_path, tokenizer):
    good = "Cafe\u0301 au lait\x07 with\r\nmilk and sugar, served hot in the morning.\n"
    texts = [
        good,
        "tiny",  # too_short
        "=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-=-",  # low_alnum
        "same line again\n" * 10,  # repeated_lines
        "x" * 5000,  # long_lines
    ]
    result = build_dataset(config(tmp_path, [write_jsonl(tmp_path / "c.jsonl", texts)]), tokenizer)
    assert result.manifest["stats"]["dropped"] == {"too_short": 1, "low_alnum": 1, "repeated_lines": 1, "long_lines": 1}
    assert documents(result.directory, tokenizer) == ["Café au lait with\nmilk and sugar, served hot in the morning.\n"]


def test_pii_hook_redacts_by_default_and_accepts_another_redactor(tmp_path, tokenizer):
    text = "Write to jane.doe@example.com or call +86 138 0013 8000 about version 3.11.7 of the release.\n"
    corpus = write_jsonl(tmp_path / "c.jsonl", [text])
    result = build_dataset(config(tmp_path, [corpus]), tokenizer)
    [doc] = documents(result.directory, tokenizer)
    assert doc == "Write to [EMAIL] or call [PHONE] about version 3.11.7 of the release.\n"
    assert result.manifest["stats"]["pii_redacted_documents"] == 1
    custom = build_dataset(config(tmp_path, [corpus], output_dir=tmp_path / "custom"), tokenizer, redactor=str.upper)
    assert documents(custom.directory, tokenizer) == [text.upper()]
    off = build_dataset(config(tmp_path, [corpus], output_dir=tmp_path / "off", redact_pii=False), tokenizer)
    assert documents(off.directory, tokenizer) == [text]


def test_bad_records_are_counted_with_file_and_line_not_fatal(tmp_path, tokenizer):
    corpus = tmp_path / "c.jsonl"
    good = [prose(1), prose(2)]
    corpus.write_bytes(
        (json.dumps({"text": good[0]}) + "\n{not json\n" + json.dumps({"body": "x"}) + "\n").encode()
        + b'{"text": "\xff\xfe"}\n'
        + (json.dumps({"text": good[1]}) + "\n").encode()
    )
    result = build_dataset(config(tmp_path, [corpus]), tokenizer)
    stats = result.manifest["stats"]
    assert stats["totals"]["read_errors"] == 3 and stats["totals"]["kept_documents"] == 2
    assert [e.split(": ", 1)[0] for e in stats["errors"]] == [f"{corpus}:2", f"{corpus}:3", f"{corpus}:4"]
    assert "invalid JSON" in stats["errors"][0] and "'text'" in stats["errors"][1]
    with pytest.raises(SourceError, match=f"{corpus}:2: invalid JSON"):
        build_dataset(config(tmp_path, [corpus], strict=True, output_dir=tmp_path / "strict"), tokenizer)


def test_parquet_and_fsspec_url_sources(tmp_path, tokenizer):
    import fsspec

    pq.write_table(pa.table({"content": [prose(1), prose(2), None]}), tmp_path / "a.parquet")
    with fsspec.open("memory://jijian-test/b.jsonl", "w") as handle:
        handle.write(json.dumps({"content": prose(3)}) + "\n")
    cfg = config(tmp_path, [tmp_path / "a.parquet", "memory://jijian-test/*.jsonl"], text_field="content")
    result = build_dataset(cfg, tokenizer)
    assert documents(result.directory, tokenizer) == [prose(1), prose(2), prose(3)]  # sources in sorted order
    assert result.manifest["stats"]["totals"]["read_errors"] == 1  # the null row, named by row number
    assert result.manifest["stats"]["errors"] == [f"{tmp_path / 'a.parquet'}:3: field 'content' is not a string"]


def test_shards_have_fixed_size_checksums_and_offsets(tmp_path, tokenizer):
    texts = [prose(seed) for seed in range(30)]
    cfg = config(tmp_path, [write_jsonl(tmp_path / "c.jsonl", texts)], shard_size_mb=4096 / (1 << 20))
    result = build_dataset(cfg, tokenizer)
    manifest = read_manifest(result.directory)
    shards = manifest["splits"]["train"]["shards"]
    assert manifest["dtype"] == "uint16" and manifest["shard_tokens"] == 2048
    assert len(shards) > 3 and all(s["tokens"] == 2048 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 2048
    assert verify_checksums(result.directory, manifest) == []
    assert documents(result.directory, tokenizer) == texts
    (result.directory / shards[1]["file"]).write_bytes(b"\0" * 4096)
    assert verify_checksums(result.directory, manifest) == [shards[1]["file"]]


def test_validation_split_is_chosen_by_content(tmp_path, tokenizer):
    texts = [prose(seed, 60) for seed in range(200)]
    result = build_dataset(
        config(tmp_path, [write_jsonl(tmp_path / "c.jsonl", texts)], validation_fraction=0.1), tokenizer
    )
    train, val = documents(result.directory, tokenizer), documents(result.directory, tokenizer, "val")
    assert 5 <= len(val) <= 40 and sorted(train + val) == sorted(texts)
    reversed_ = build_dataset(
        config(
            tmp_path,
            [write_jsonl(tmp_path / "r.jsonl", texts[::-1])],
            validation_fraction=0.1,
            output_dir=tmp_path / "r",
        ),
        tokenizer,
    )
    assert sorted(documents(reversed_.directory, tokenizer, "val")) == sorted(val)


class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_without_redoing_finished_shards(tmp_path, tokenizer):
    files = []
    for i in range(12):
        files.append(write_jsonl(tmp_path / f"part{i:02d}.jsonl", [prose(100 * i + j) for j in range(4)]))
    cfg = config(tmp_path, files, shard_size_mb=4096 / (1 << 20), validation_fraction=0.1)
    out = cfg.output_dir

    def stop_after_first(shard):
        raise Interrupt(shard.file)

    with pytest.raises(Interrupt):
        build_dataset(cfg, tokenizer, on_shard=stop_after_first)
    first = out / "train_00000.bin"
    assert first.is_file() and not (out / "manifest.json").exists()
    with pytest.raises(DatasetError, match="resume"):
        read_manifest(out)
    before = first.stat()

    seen = []
    resumed = build_dataset(cfg, tokenizer, on_shard=lambda shard: seen.append(shard.file))
    assert resumed.resumed_shards == 1 and "train_00000.bin" not in seen
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    fresh = build_dataset(
        config(tmp_path, files, shard_size_mb=4096 / (1 << 20), validation_fraction=0.1, output_dir=tmp_path / "fresh"),
        tokenizer,
    )
    assert resumed.manifest["splits"] == fresh.manifest["splits"]
    assert resumed.manifest["stats"]["totals"] == fresh.manifest["stats"]["totals"]


def test_a_finished_build_is_reused_until_its_inputs_or_settings_change(tmp_path, tokenizer):
    corpus = write_jsonl(tmp_path / "c.jsonl", [prose(1), prose(2)])
    (tmp_path / "out").mkdir()
    for name in ("notes.txt", "train_data.bin"):  # not the build's own: a rebuild must leave them alone
        (tmp_path / "out" / name).write_text("keep me")
    assert not build_dataset(config(tmp_path, [corpus]), tokenizer).reused
    assert build_dataset(config(tmp_path, [corpus]), tokenizer).reused
    assert not build_dataset(config(tmp_path, [corpus], min_chars=100), tokenizer).reused
    write_jsonl(corpus, [prose(1), prose(2), prose(3)])
    again = build_dataset(config(tmp_path, [corpus], min_chars=100), tokenizer)
    assert not again.reused and again.manifest["stats"]["totals"]["kept_documents"] == 3
    assert all((tmp_path / "out" / name).read_text() == "keep me" for name in ("notes.txt", "train_data.bin"))


def test_worker_processes_produce_identical_shards(tmp_path, tokenizer, corpus_texts):
    corpus = write_jsonl(tmp_path / "c.jsonl", [*corpus_texts, corpus_texts[0]])
    inline = build_dataset(config(tmp_path, [corpus], validation_fraction=0.1), tokenizer)
    pooled = build_dataset(
        config(tmp_path, [corpus], validation_fraction=0.1, workers=2, output_dir=tmp_path / "pool"), tokenizer
    )
    assert pooled.manifest["splits"] == inline.manifest["splits"]
    assert pooled.manifest["stats"]["totals"]["exact_duplicates"] == 1


def test_shards_refuse_another_tokenizer_naming_both_fingerprints(tmp_path, tokenizer):
    result = build_dataset(config(tmp_path, [write_jsonl(tmp_path / "c.jsonl", [prose(1)])]), tokenizer)
    with pytest.raises(DatasetError) as info:
        PackedTokens(result.directory, tokenizer_fingerprint="f" * 64)
    assert tokenizer.fingerprint() in str(info.value) and "f" * 64 in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail a.b@example.com now", "mail [EMAIL] now"),
        ("call +86 138 0013 8000.", "call [PHONE]."),
        ("tel 13800138000", "tel [PHONE]"),
        ("card 4111 1111 1111 1111 ok", "card [CREDIT_CARD] ok"),
        ("python 3.11.7, port 8080, 2024-01-15, x13800138000, @decorator", None),
    ],
)
def test_default_pii_redaction(text, expected):
    from jijian.data.pii import redact_pii

    assert redact_pii(text) == (text if expected is None else expected)


def test_a_build_with_a_bound_redactor_is_reused(tmp_path, tokenizer):
    import functools

    from jijian.data.pii import redact_pii

    corpus = write_jsonl(tmp_path / "c.jsonl", [prose(1)])
    hook = functools.partial(redact_pii)
    assert not build_dataset(config(tmp_path, [corpus]), tokenizer, redactor=hook).reused
    assert build_dataset(config(tmp_path, [corpus]), tokenizer, redactor=functools.partial(redact_pii)).reused
