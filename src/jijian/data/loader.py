"""The packed loader: memory-mapped shards served as shuffled, rank-sharded, exactly resumable batches.

The token stream of a split is cut into sequences of `seq_len + 1` tokens that overlap by one (the last
target of one is the first input of the next), so every token is predicted once per epoch. The stream
of sequence indices is the concatenation of per-epoch permutations drawn from the seed; position `g` of
that stream goes to rank `g % world_size`. A rank's batch `b` is therefore a pure function of
(seed, b, rank, world_size): resuming needs only `b`, and ranks never overlap.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jijian.data.shards import DatasetError, check_tokenizer, read_manifest, split_shards

GROUP_TOKENS = 1 << 18


class PackedTokens:
    """One split of a built dataset as a single virtual token array over memory-mapped shards."""

    def __init__(self, directory: Path, split: str = "train", *, tokenizer_fingerprint: str | None = None) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        if tokenizer_fingerprint is not None:
            check_tokenizer(self.manifest, tokenizer_fingerprint, self.directory)
        if split not in self.manifest["splits"]:
            raise DatasetError(f"{directory}: no split {split!r}")
        dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        shards = split_shards(self.manifest, split)
        self.shards: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        for shard in shards:
            path = self.directory / shard.file
            if not path.is_file() or path.stat().st_size != shard.tokens * dtype.itemsize:
                raise DatasetError(f"{path}: missing or not {shard.tokens} tokens long; rebuild the dataset")
            # A plain ndarray view of the mapping: slicing an np.memmap runs Python-level bookkeeping each time.
            self.shards.append(np.memmap(path, dtype=dtype, mode="r", shape=(shard.tokens,)).view(np.ndarray))
            starts.append(np.load(self.directory / shard.index_file))
        sizes = np.array([s.tokens for s in shards], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.doc_starts = np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Copy tokens [start, start + len(out)) into `out` (any integer dtype), across shards if needed."""
        end = start + len(out)
        shard = int(np.searchsorted(self.offsets, start, side="right")) - 1
        pos = 0
        while pos < len(out):
            local = start + pos - int(self.offsets[shard])
            take = min(len(out) - pos, int(self.offsets[shard + 1]) - start - pos)
            out[pos : pos + take] = self.shards[shard][local : local + take]
            pos += take
            shard += 1
        assert start + pos == end

    def document_ids(self, start: int, length: int) -> np.ndarray:
        """For tokens [start, start + length): the index of the document each belongs to, 0 for the first."""
        positions = np.arange(start, start + length, dtype=np.int64)
        first = np.searchsorted(self.doc_starts, start, side="right")
        return np.searchsorted(self.doc_starts, positions, side="right") - first


class PackedLoader:
    """Endless (inputs, targets) int64 batches of shape (batch_size, seq_len) for one data-parallel rank.

    With `document_ids=True` each batch also carries a (batch_size, seq_len) tensor numbering the
    documents inside each input sequence (0, 1, ...), for block-diagonal attention masks.
    """

    def __init__(
        self,
        tokens: PackedTokens,
        *,
        seq_len: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        prefetch: int = 4,
        document_ids: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.prefetch = prefetch
        self.with_document_ids = document_ids
        self.num_sequences = max(0, (len(tokens) - 1) // seq_len)
        if self.num_sequences < world_size:
            raise DatasetError(
                f"{tokens.directory}: {len(tokens)} tokens make {self.num_sequences} sequences of "
                f"seq_len {seq_len}; need at least one per rank ({world_size})"
            )
        self.batches_yielded = 0
        # Global stream positions of a batch's rows, relative to the batch's first position.
        self._row_positions = np.arange(batch_size, dtype=np.int64) * world_size + rank
        self._epoch_cache: tuple[int, np.ndarray] | None = None
        self._ready: deque[tuple[torch.Tensor, ...]] = deque()
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue[Any] | None = None
        self._stop = threading.Event()

    @property
    def batches_per_epoch(self) -> float:
        """Batches per rank that make one pass over every sequence."""
        return self.num_sequences / (self.batch_size * self.world_size)

    def sequence_indices(self, batch: int) -> np.ndarray:
        """Indices of the sequences in this rank's batch number `batch` (a pure function: no state)."""
        positions = batch * self.batch_size * self.world_size + self._row_positions
        n = self.num_sequences
        first_epoch, last_epoch = int(positions[0]) // n, int(positions[-1]) // n
        if first_epoch == last_epoch:  # the usual case: the whole batch inside one epoch
            within = positions - first_epoch * n
            return self._permutation(first_epoch)[within] if self.shuffle else within
        epochs, within = np.divmod(positions, n)
        if not self.shuffle:
            return within
        return np.array([self._permutation(int(e))[int(i)] for e, i in zip(epochs, within, strict=True)])

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_cache = (epoch, rng.permutation(self.num_sequences))
        return self._epoch_cache[1]

    def make_batch(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Build this rank's batch number `batch`."""
        window = self.seq_len + 1
        out = np.empty((self.batch_size, window), dtype=np.int64)
        starts = self.sequence_indices(batch) * self.seq_len
        tokens = self.tokens
        offsets = tokens.offsets
        if len(tokens.shards) == 1:
            shard_ids = np.zeros(len(starts), dtype=np.int64)
        else:
            shard_ids = np.searchsorted(offsets, starts, side="right") - 1
        # Plain slice copies (with the cast to int64 fused in) for windows inside one shard; only the rare
        # window that straddles two shards takes the general path.
        for row, (shard_id, start) in enumerate(zip(shard_ids.tolist(), starts.tolist(), strict=True)):
            begin = start - int(offsets[shard_id])
            shard = tokens.shards[shard_id]
            if begin + window <= len(shard):
                out[row] = shard[begin : begin + window]
            else:
                tokens.read_into(start, out[row])
        # Views of one buffer (numpy slicing + from_numpy is several times cheaper than slicing a tensor).
        inputs, targets = torch.from_numpy(out[:, :-1]), torch.from_numpy(out[:, 1:])
        if not self.with_document_ids:
            return inputs, targets
        docs = np.stack([tokens.document_ids(int(s), self.seq_len) for s in starts])
        return inputs, targets, torch.from_numpy(docs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        if self.prefetch <= 0:
            batch = self.make_batch(self.batches_yielded)
        else:
            if not self._ready:
                if self._thread is None:
                    self._start_prefetch()
                assert self._queue is not None
                group = self._queue.get()
                if isinstance(group, BaseException):
                    raise group
                self._ready.extend(group)
            batch = self._ready.popleft()
        self.batches_yielded += 1
        return batch

    def _start_prefetch(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        # Numpy copies release the GIL, so the next batches are gathered while the model computes.
        self._thread = threading.Thread(
            target=self._produce,
            args=(self.batches_yielded, self._queue, self._stop),
            name="jijian-prefetch",
            daemon=True,
        )
        self._thread.start()

    def _produce(self, first: int, out: queue.Queue[Any], stop: threading.Event) -> None:
        # Batches travel in groups of about GROUP_TOKENS tokens: one hand-over between threads costs
        # more than gathering a small batch, so handing them over one by one would halve throughput.
        group_size = max(1, GROUP_TOKENS // (self.batch_size * (self.seq_len + 1)))
        batch = first
        while not stop.is_set():
            try:
                item: Any = [self.make_batch(b) for b in range(batch, batch + group_size)]
            except BaseException as exc:  # handed to the consumer, which re-raises it
                item = exc
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return
            batch += group_size

    def close(self) -> None:
        """Stop the prefetch thread (it is a daemon, so forgetting this never blocks exit)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._queue = None
        self._ready.clear()

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is in the stream, for checkpoints."""
        return {
            "batches_yielded": self.batches_yielded,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_sequences": self.num_sequences,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where `state` left off: the next batch is the one that would have come next."""
        for key in ("seed", "seq_len", "batch_size", "rank", "world_size", "num_sequences"):
            if state.get(key) != getattr(self, key):
                raise DatasetError(
                    f"loader state was saved with {key} = {state.get(key)!r} but this loader has "
                    f"{getattr(self, key)!r}; it cannot resume the same stream"
                )
        self.close()
        self.batches_yielded = int(state["batches_yielded"])

    def fixed_batches(self, count: int) -> list[tuple[torch.Tensor, ...]]:
        """The first `count` unshuffled batches (or fewer when the split is small): for evaluation."""
        count = min(count, max(1, self.num_sequences // (self.batch_size * self.world_size)))
        ordered = PackedLoader(
            self.tokens,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            shuffle=False,
            prefetch=0,
        )
        return [ordered.make_batch(b) for b in range(count)]
