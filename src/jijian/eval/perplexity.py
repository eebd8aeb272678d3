"""`jijian eval perplexity`: a model's held-out perplexity on the validation split of packed shards.

The split is read as consecutive windows of `seq_len + 1` tokens (documents packed back to back,
separated by EOS, as training saw them); every token after a window's first is predicted from the
tokens before it in that window. Perplexity is exp of the mean negative log-likelihood per token.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jijian.config.errors import UserInputError
from jijian.data.loader import PackedTokens
from jijian.model.hf import load_hf


def evaluate_perplexity(
    model_dir: Path,
    data_dir: Path,
    *,
    split: str = "val",
    seq_len: int | None = None,
    batch_size: int = 4,
    max_tokens: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Perplexity of the HF-format model in `model_dir` on `split` of the dataset in `data_dir`."""
    if not (model_dir / "config.json").is_file():
        raise UserInputError(f"{model_dir}: not a model directory (no config.json); export one with jijian train")
    model, tokenizer = load_hf(model_dir, device=device)
    fingerprint = tokenizer.fingerprint() if tokenizer is not None else None
    tokens = PackedTokens(data_dir, split, tokenizer_fingerprint=fingerprint)
    length = min(seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
    windows = len(tokens) // (length + 1)
    if max_tokens is not None:
        windows = min(windows, max(1, max_tokens // length))
    if windows == 0:
        raise UserInputError(
            f"{data_dir}: the {split!r} split holds {len(tokens)} tokens, fewer than one window of {length + 1}; "
            "build with a larger validation_fraction or pass a smaller --seq-len"
        )
    started = time.perf_counter()
    total_nll, counted = 0.0, 0
    buffer = np.empty((batch_size, length + 1), dtype=np.int64)
    with torch.inference_mode():
        for first in range(0, windows, batch_size):
            rows = min(batch_size, windows - first)
            for row in range(rows):
                tokens.read_into((first + row) * (length + 1), buffer[row])
            batch = torch.from_numpy(buffer[:rows]).to(device)
            logits = model(batch[:, :-1]).float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            counted += rows * length
    mean_nll = total_nll / counted
    return {
        "model": str(model_dir),
        "data": str(data_dir),
        "split": split,
        "seq_len": length,
        "windows": windows,
        "tokens": counted,
        "loss": mean_nll,
        "perplexity": math.exp(mean_nll),
        "seconds": time.perf_counter() - started,
    }
