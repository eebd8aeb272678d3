"""`jijian data build`: sources → clean → filter → PII hook → dedup → tokenise → packed shards.

Files are read in a fixed order and streamed in small chunks through a process pool, whose results are
consumed in submission order: the output is byte-identical whatever the number of workers, and memory
stays bounded by the chunks in flight. Workers do the per-document work (cleaning, filters, hashing,
MinHash, tokenising); the parent keeps the only cross-document state (the dedup index and the shard
writers). After every finished shard the parent saves its whole state atomically, so an interrupted
build resumes from the last shard instead of starting again. The state is JSON plus a NumPy `.npz`
of plain arrays (loaded with `allow_pickle=False`), never pickle: an output directory may be shared,
and unpickling a file someone else wrote runs their code. A state file from an older version
(`build_state.pkl`) is ignored and removed, and the build starts again.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import os
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console

from jijian.config import DataConfig
from jijian.data.clean import QualityFilter, normalize_text
from jijian.data.dedup import Deduplicator, content_hash, minhash_signature
from jijian.data.pii import Redactor, redact_pii
from jijian.data.progress import BuildProgress
from jijian.data.shards import (
    FORMAT,
    MANIFEST,
    SPLITS,
    ShardInfo,
    ShardWriter,
    read_manifest,
    token_dtype,
)
from jijian.data.sources import BadRecord, Record, SourceError, iter_records, resolve_inputs, source_size
from jijian.files import write_atomic, write_json_atomic

if TYPE_CHECKING:  # at run time workers never import jijian.model, which would pull in torch (seconds)
    from tokenizers import Tokenizer as Backend

    from jijian.model.tokenizer import Tokenizer

STATE_FILE = "build_state.json"
STATE_ARRAYS = "build_state.npz"
LEGACY_STATE_FILE = "build_state.pkl"  # pickled by older versions: never read, removed by the next build
REPORT_FILE = "report.json"
TOKENIZER_DIR = "tokenizer"
CHUNK_RECORDS = 64
CHUNK_BYTES = 1 << 20
MAX_LISTED_ERRORS = 100
_OWN_FILE = re.compile(
    r"((train|val)_\d{5}\.(bin|idx\.npy)|manifest\.json|report\.json|build_state\.(?:pkl|json|npz))(\.tmp(\.npy)?)?"
)


@dataclass(frozen=True)
class DocumentSettings:
    """What workers need to process a document (picklable)."""

    quality: QualityFilter
    near_dup: bool
    num_perm: int
    dtype: str


@dataclass
class Processed:
    """A worker's verdict on one record: dropped (with the reason) or kept (with hash, MinHash, tokens)."""

    source: str
    line: int
    nbytes: int
    reason: str | None = None
    error: str | None = None
    digest: str = ""
    signature: np.ndarray | None = None
    tokens: np.ndarray | None = None
    redacted: bool = False


@dataclass
class BuildResult:
    """A finished build: where it is, its manifest, and what this invocation did."""

    directory: Path
    manifest: dict[str, Any]
    resumed_shards: int = 0
    reused: bool = False
    elapsed_s: float = 0.0
    input_bytes: int = 0


@dataclass
class _State:
    """Everything needed to continue a build after its last finished shard."""

    key: str
    file_index: int = 0
    item_index: int = 0
    writers: dict[str, ShardWriter] = field(default_factory=dict)
    dedup: Deduplicator | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, list[int]] = field(default_factory=dict)
    elapsed_s: float = 0.0


_worker: tuple[Backend, int, DocumentSettings, Redactor | None] | None = None


def _init_worker(backend: Backend, eos_id: int, settings: DocumentSettings, redactor: Redactor | None) -> None:
    # One tokenizer thread per worker: parallelism comes from the worker count, not from oversubscription.
    os.environ["RAYON_NUM_THREADS"] = "1"
    global _worker
    _worker = (backend, eos_id, settings, redactor)


def _process_chunk(chunk: list[Record | BadRecord]) -> list[Processed]:
    assert _worker is not None, "worker not initialised"
    backend, eos_id, settings, redactor = _worker
    results: list[Processed] = []
    texts: list[str] = []
    kept: list[Processed] = []
    for record in chunk:
        if isinstance(record, BadRecord):
            results.append(Processed(record.source, record.line, record.nbytes, error=record.message))
            continue
        text = normalize_text(record.text)
        item = Processed(record.source, record.line, record.nbytes)
        item.reason = settings.quality.reject_reason(text)
        if item.reason is None:
            if redactor is not None:
                scrubbed = redactor(text)
                item.redacted = scrubbed != text
                text = scrubbed
            item.digest = content_hash(text)
            if settings.near_dup:
                item.signature = minhash_signature(text, settings.num_perm)
            texts.append(text)
            kept.append(item)
        results.append(item)
    if texts:
        # The raw `tokenizers` backend, as Tokenizer.encode_batch uses it (no special tokens), plus EOS.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        for item, encoding in zip(kept, encode(texts, add_special_tokens=False), strict=True):
            item.tokens = np.array([*encoding.ids, eos_id], dtype=settings.dtype)
    return results


def build_dataset(
    config: DataConfig,
    tokenizer: Tokenizer,
    *,
    sources: Sequence[str] | None = None,
    output_dir: Path | None = None,
    base_dir: Path | None = None,
    redactor: Redactor | None = redact_pii,
    force: bool = False,
    console: Console | None = None,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> BuildResult:
    """Build (or resume, or reuse) the packed dataset that `config` describes; returns its manifest.

    `redactor` is the PII hook (None turns it off; `config.redact_pii = false` too). `on_shard` is
    called after each shard is durably committed (tests use it to interrupt a build).
    """
    started = time.perf_counter()
    out = Path(output_dir or config.output_dir)
    if tokenizer.eos_id is None:
        raise SourceError("the tokenizer has no EOS token; documents could not be separated in the shards")
    inputs = resolve_inputs(list(sources if sources is not None else config.sources), base_dir)
    if not inputs:
        raise SourceError("no data sources: set [data] sources or pass paths to `jijian data build`")
    sizes = [source_size(s) for s in inputs]
    if not config.redact_pii:
        redactor = None
    dtype = token_dtype(tokenizer.vocab_size)
    shard_tokens = max(1, int(config.shard_size_mb * (1 << 20)) // dtype.itemsize)
    settings = DocumentSettings(_quality_filter(config), config.dedup_near, config.minhash_permutations, dtype.str)
    key = _build_key(config, inputs, sizes, tokenizer, redactor, shard_tokens)

    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).is_file() and not force:
        manifest = read_manifest(out)
        if manifest.get("build_key") == key:
            return BuildResult(out, manifest, reused=True, input_bytes=sum(sizes))
    state = None if force else _load_state(out, key)
    if state is None:
        _clear(out)
        state = _State(
            key=key,
            writers={s: ShardWriter(out, s, shard_tokens, dtype) for s in SPLITS},
            dedup=Deduplicator(
                exact=config.dedup_exact,
                near=config.dedup_near,
                threshold=config.near_dup_threshold,
                num_perm=config.minhash_permutations,
            ),
            stats=_empty_stats(len(inputs), sum(sizes)),
        )
    resumed_shards = len(state.writers["train"].shards) + len(state.writers["val"].shards)
    assert state.dedup is not None
    current = state.sources.get(inputs[state.file_index], [0, 0, 0]) if state.file_index < len(inputs) else [0, 0, 0]
    done_bytes = sum(sizes[: state.file_index]) + current[2]
    progress = BuildProgress(sum(sizes), console=console, completed=done_bytes)

    def commit() -> None:
        state.elapsed_s += time.perf_counter() - clock[0]
        clock[0] = time.perf_counter()
        _save_state(out, state)

    clock = [time.perf_counter()]
    stats = state.stats
    with progress, _executor(config.workers, (tokenizer.backend, tokenizer.eos_id, settings, redactor)) as run_chunk:
        for file_index, item_index, item in _ordered_results(
            inputs, state, config.text_field, run_chunk, config.workers
        ):
            progress.advance(item.nbytes)
            per_source = state.sources.setdefault(item.source, [0, 0, 0])
            per_source[0] += 1
            per_source[2] += item.nbytes
            state.file_index, state.item_index = file_index, item_index + 1
            stats["records"] += 1
            if item.error is not None:
                message = f"{item.source}:{item.line}: {item.error}" if item.line else f"{item.source}: {item.error}"
                if config.strict:
                    raise SourceError(f"{message} (strict mode; the finished shards are kept)")
                stats["read_errors"] += 1
                if len(stats["errors"]) < MAX_LISTED_ERRORS:
                    stats["errors"].append(message)
                continue
            verdict = item.reason or state.dedup.check(item.digest, item.signature)
            if verdict is not None:
                stats["dropped"][verdict] += 1
                continue
            assert item.tokens is not None
            per_source[1] += 1
            stats["kept_documents"] += 1
            stats["pii_redacted_documents"] += int(item.redacted)
            split = "val" if _is_validation(item.digest, config.validation_fraction) else "train"
            finished = state.writers[split].add(item.tokens)
            if finished:
                commit()
                for shard in finished:
                    progress.event({"event": "shard", "file": shard.file, "tokens": shard.tokens})
                    if on_shard is not None:
                        on_shard(shard)
        final = [s for split in SPLITS for s in state.writers[split].finish()]
        for shard in final:
            progress.event({"event": "shard", "file": shard.file, "tokens": shard.tokens})
    state.elapsed_s += time.perf_counter() - clock[0]
    manifest = _manifest(state, tokenizer, inputs, config, shard_tokens, dtype)
    report = {
        **manifest["stats"],
        "sources": {k: dict(zip(("records", "kept", "bytes"), v, strict=True)) for k, v in state.sources.items()},
    }
    write_json_atomic(out / REPORT_FILE, report)
    # The dataset carries its tokenizer, so `jijian data inspect` can decode it with nothing else at hand.
    tokenizer.save(out / TOKENIZER_DIR)
    write_json_atomic(out / MANIFEST, manifest)
    (out / STATE_FILE).unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    progress.event({"event": "done", **manifest["stats"]["totals"]})
    return BuildResult(out, manifest, resumed_shards=resumed_shards, elapsed_s=elapsed, input_bytes=sum(sizes))


def _quality_filter(config: DataConfig) -> QualityFilter:
    return QualityFilter(
        min_chars=config.min_chars,
        max_chars=config.max_chars,
        min_mean_line_length=config.min_mean_line_length,
        max_mean_line_length=config.max_mean_line_length,
        min_alnum_fraction=config.min_alnum_fraction,
        max_repeated_line_fraction=config.max_repeated_line_fraction,
    )


def _build_key(
    config: DataConfig,
    inputs: list[str],
    sizes: list[int],
    tokenizer: Tokenizer,
    redactor: Redactor | None,
    shard_tokens: int,
) -> str:
    # Everything that changes the output bytes; a different key means "stale: build again".
    settings = config.model_dump(mode="json", exclude={"sources", "output_dir", "workers", "strict"})
    redactor_name = None if redactor is None else _callable_name(redactor)
    blob = json.dumps(
        [settings, inputs, sizes, tokenizer.fingerprint(), redactor_name, shard_tokens], sort_keys=True
    ).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def _callable_name(func: Callable[..., Any]) -> str:
    # Stable across processes (no memory addresses): module, qualified name and a partial's bound arguments.
    bound = ""
    if isinstance(func, functools.partial):
        bound = repr((func.args, sorted(func.keywords.items())))
        func = func.func
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', type(func).__qualname__)}{bound}"


def _is_validation(digest: str, fraction: float) -> bool:
    # By content, not position: the split does not move when files are added or reordered.
    return fraction > 0 and int(digest[:8], 16) < fraction * (1 << 32)


def _empty_stats(files: int, nbytes: int) -> dict[str, Any]:
    return {
        "input_files": files,
        "input_bytes": nbytes,
        "records": 0,
        "read_errors": 0,
        "errors": [],
        "dropped": Counter(),
        "kept_documents": 0,
        "pii_redacted_documents": 0,
    }


def _save_state(out: Path, state: _State) -> None:
    """Arrays first, then the JSON that names their digest: the JSON's atomic rename is the commit."""
    assert state.dedup is not None
    dedup_settings, dedup_arrays = state.dedup.to_state()
    arrays = {f"dedup_{name}": array for name, array in dedup_arrays.items()}
    writers = {}
    for split, writer in state.writers.items():
        pending = np.concatenate(writer.pending) if writer.pending else np.zeros(0, dtype=writer.dtype)
        arrays[f"pending_{split}"] = pending.astype(writer.dtype, copy=False)
        writers[split] = {
            "shard_tokens": writer.shard_tokens, "dtype": np.dtype(writer.dtype).str,
            "shards": [asdict(info) for info in writer.shards], "pending_starts": writer.pending_starts,
            "pending_tokens": writer.pending_tokens, "written_tokens": writer.written_tokens,
        }  # fmt: skip
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **arrays)
    data = buffer.getvalue()
    write_atomic(out / STATE_ARRAYS, data)
    document = {
        "version": 1, "key": state.key, "file_index": state.file_index, "item_index": state.item_index,
        "stats": state.stats, "sources": state.sources, "elapsed_s": state.elapsed_s,
        "writers": writers, "dedup": dedup_settings, "arrays_sha256": hashlib.sha256(data).hexdigest(),
    }  # fmt: skip
    write_atomic(out / STATE_FILE, json.dumps(document).encode("utf-8"))


def _load_state(out: Path, key: str) -> _State | None:
    """The saved state of an interrupted build of the same inputs and settings, or None (start again)."""
    path = out / STATE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("version") != 1 or document.get("key") != key:
            return None
        data = (out / STATE_ARRAYS).read_bytes()
        if hashlib.sha256(data).hexdigest() != document["arrays_sha256"]:
            return None  # the arrays belong to another save (interrupted between the two writes)
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        writers = {}
        for split, w in document["writers"].items():
            pending = arrays[f"pending_{split}"]
            writers[split] = ShardWriter(
                out, split, int(w["shard_tokens"]), np.dtype(w["dtype"]),
                shards=[ShardInfo(**info) for info in w["shards"]],
                pending=[pending] if len(pending) else [], pending_starts=[int(x) for x in w["pending_starts"]],
                pending_tokens=int(w["pending_tokens"]), written_tokens=int(w["written_tokens"]),
            )  # fmt: skip
        dedup_arrays = {name.removeprefix("dedup_"): a for name, a in arrays.items() if name.startswith("dedup_")}
        stats = document["stats"]
        stats["dropped"] = Counter(stats.get("dropped", {}))
        return _State(
            key=key, file_index=int(document["file_index"]), item_index=int(document["item_index"]),
            writers=writers, dedup=Deduplicator.from_state(document["dedup"], dedup_arrays), stats=stats,
            sources={k: [int(x) for x in v] for k, v in document["sources"].items()},
            elapsed_s=float(document["elapsed_s"]),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, from an older version, or damaged: the build starts again (nothing is lost)


def _clear(out: Path) -> None:
    # Only files this module writes: an output_dir pointed at a populated directory keeps everything else.
    for path in out.iterdir():
        if path.is_file() and _OWN_FILE.fullmatch(path.name):
            path.unlink()


def _read_items(inputs: list[str], state: _State, text_field: str) -> Iterator[tuple[int, int, Record | BadRecord]]:
    for file_index in range(state.file_index, len(inputs)):
        skip = state.item_index if file_index == state.file_index else 0
        for item_index, record in enumerate(iter_records(inputs[file_index], text_field)):
            if item_index >= skip:
                yield file_index, item_index, record


def _chunks(
    items: Iterator[tuple[int, int, Record | BadRecord]],
) -> Iterator[list[tuple[int, int, Record | BadRecord]]]:
    chunk: list[tuple[int, int, Record | BadRecord]] = []
    nbytes = 0
    for item in items:
        chunk.append(item)
        nbytes += item[2].nbytes
        if len(chunk) >= CHUNK_RECORDS or nbytes >= CHUNK_BYTES:
            yield chunk
            chunk, nbytes = [], 0
    if chunk:
        yield chunk


# Chunks handed to the workers, in input order: their (file, item) positions and the pending result.
_InFlight = deque[tuple[list[tuple[int, int]], "Future[list[Processed]] | list[Processed]"]]


def _ordered_results(
    inputs: list[str],
    state: _State,
    text_field: str,
    run_chunk: Callable[[list[Any]], Future[list[Processed]] | list[Processed]],
    workers: int,
) -> Iterator[tuple[int, int, Processed]]:
    in_flight: _InFlight = deque()
    # A few chunks per worker in flight: enough to keep them busy, few enough to bound memory.
    limit = max(1, 3 * workers)
    for chunk in _chunks(_read_items(inputs, state, text_field)):
        in_flight.append(([(f, i) for f, i, _ in chunk], run_chunk([r for _, _, r in chunk])))
        while len(in_flight) >= limit:
            yield from _drain_one(in_flight)
    while in_flight:
        yield from _drain_one(in_flight)


def _drain_one(in_flight: _InFlight) -> Iterator[tuple[int, int, Processed]]:
    positions, pending = in_flight.popleft()
    results = pending.result() if isinstance(pending, Future) else pending
    for (file_index, item_index), item in zip(positions, results, strict=True):
        yield file_index, item_index, item


@contextmanager
def _executor(
    workers: int, worker_args: tuple[Backend, int, DocumentSettings, Redactor | None]
) -> Iterator[Callable[[list[Any]], Future[list[Processed]] | list[Processed]]]:
    """A function that processes one chunk: in a process pool of `workers`, or inline for 0."""
    if workers == 0:
        global _worker
        saved = _worker
        _worker = worker_args
        try:
            yield _process_chunk
        finally:
            _worker = saved
        return
    # forkserver: children start from a clean process that preloaded this module, never from a parent
    # that may hold torch/OpenMP or tokenizer threads (unsafe to fork).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=worker_args)
    try:
        yield lambda chunk: pool.submit(_process_chunk, chunk)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _manifest(
    state: _State, tokenizer: Tokenizer, inputs: list[str], config: DataConfig, shard_tokens: int, dtype: np.dtype
) -> dict[str, Any]:
    stats = state.stats
    splits = {}
    for split in SPLITS:
        writer = state.writers[split]
        splits[split] = {
            "tokens": writer.written_tokens,
            "documents": sum(s.documents for s in writer.shards),
            "shards": [asdict(s) for s in writer.shards],
        }
    dropped = dict(stats["dropped"])
    totals = {
        "records": stats["records"],
        "kept_documents": stats["kept_documents"],
        "train_tokens": splits["train"]["tokens"],
        "val_tokens": splits["val"]["tokens"],
        "exact_duplicates": dropped.get("exact_duplicate", 0),
        "near_duplicates": dropped.get("near_duplicate", 0),
        "filtered": sum(v for k, v in dropped.items() if not k.endswith("_duplicate")),
        "read_errors": stats["read_errors"],
    }
    return {
        "format": FORMAT,
        "build_key": state.key,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": {
            "fingerprint": tokenizer.fingerprint(),
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        },
        "dtype": dtype.name,
        "shard_tokens": shard_tokens,
        "splits": splits,
        "settings": config.model_dump(mode="json", exclude={"output_dir"}),
        "stats": {
            "totals": totals,
            "input_files": stats["input_files"],
            "input_bytes": stats["input_bytes"],
            "dropped": dropped,
            "pii_redacted_documents": stats["pii_redacted_documents"],
            "errors": stats["errors"],
            "build_seconds": round(state.elapsed_s, 3),
        },
    }
