"""Token streams for training: documents tokenised into one array, served as random windows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from jijian.model.tokenizer import Tokenizer


def tokenize_documents(documents: Iterable[str], tokenizer: Tokenizer, batch_size: int = 256) -> np.ndarray:
    """Concatenate every document's tokens, each followed by EOS, into one compact array."""
    if tokenizer.eos_id is None:
        raise ValueError("the tokenizer has no EOS token; documents could not be separated")
    dtype = np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32
    chunks: list[np.ndarray] = []
    batch: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode_batch(batch, add_eos=True):
            chunks.append(np.asarray(ids, dtype=dtype))
        batch.clear()

    for document in documents:
        batch.append(document)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)


class TokenWindows:
    """Endless random (input, target) windows of `seq_len` tokens from a token array.

    Deterministic given the seed, and resumable: `state_dict()` records how many batches were drawn.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int = 0) -> None:
        if len(tokens) < seq_len + 1:
            raise ValueError(f"corpus has {len(tokens)} tokens; need at least seq_len + 1 = {seq_len + 1}")
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.batches_drawn = 0
        self._rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = self._rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        windows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        self.batches_drawn += 1
        batch = torch.from_numpy(windows)
        return batch[:, :-1], batch[:, 1:]

    def fixed_batches(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """`count` batches from a generator seeded apart from training (for evaluation)."""
        other = TokenWindows(self.tokens, self.seq_len, self.batch_size, seed=self.seed + 1_000_003)
        return [next(other) for _ in range(count)]

    def state_dict(self) -> dict[str, Any]:
        """Position in the stream (the generator's exact state), for checkpoints."""
        return {"seed": self.seed, "batches_drawn": self.batches_drawn, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream exactly where `state` left it."""
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = state["rng"]
