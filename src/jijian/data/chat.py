"""Chat SFT data: OpenAI-style `messages` rows, rendered with the chat template, loss on assistant tokens only.

Each dialogue becomes tokens plus a mask of the tokens the model is trained to produce (the
assistant turns as the template renders them, end-of-turn marker included). Dialogues are packed
whole into rows of `seq_len + 1` tokens; every row carries document ids so attention stays inside
one dialogue and positions restart at each, which makes a packed batch compute exactly what the
dialogues would compute one by one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jijian.data.shards import DatasetError
from jijian.files import iter_json_lines
from jijian.model.tokenizer import Tokenizer

IGNORE = -100  # target id the loss skips (cross_entropy's ignore_index)
ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 512  # bound on one row: a dialogue longer than this is almost certainly malformed input


@dataclass
class Dialogue:
    """A rendered dialogue: token ids and, per token, whether the loss covers predicting it."""

    tokens: list[int]
    trained: list[bool]
    source: str


def read_dialogues(paths: Sequence[str | Path], field: str = "messages") -> Iterator[tuple[str, list[dict[str, str]]]]:
    """(`file:line`, messages) of every JSONL row; a malformed row is an error naming its file and line."""
    for path in paths:
        for where, _, row in iter_json_lines(path, error=DatasetError):
            yield where, _check_messages(row, field, where)


def _check_messages(row: Any, field: str, where: str) -> list[dict[str, str]]:
    messages = row.get(field) if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: expected an object with a non-empty {field!r} list")
    if len(messages) > MAX_MESSAGES:
        raise DatasetError(f"{where}: {len(messages)} messages; at most {MAX_MESSAGES} per dialogue")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise DatasetError(f"{where}: {field}[{i}] must be {{role: {'|'.join(ROLES)}, content: string}}")
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{where}: no assistant turn in {field}: nothing to train on")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_dialogue(tokenizer: Tokenizer, messages: list[dict[str, str]], source: str = "") -> Dialogue:
    """Tokens of the templated dialogue; `trained` marks what each assistant turn adds to the rendering.

    The text an assistant turn contributes is the full rendering up to it minus the rendering of the
    prompt before it (with the generation prompt), so whatever the template puts around a reply
    (headers, end-of-turn tokens) is attributed as it would be at inference time.
    """
    if tokenizer.chat_template is None:
        raise DatasetError(f"{source}: the tokenizer has no chat template to render `messages` with")
    tokens: list[int] = []
    trained: list[bool] = []
    rendered = ""
    # BOS first, unless the template writes it itself (Llama 3's does).
    bos = tokenizer.bos_token
    if tokenizer.bos_id is not None and not (bos and tokenizer.apply_chat_template(messages[:1]).startswith(bos)):
        tokens.append(tokenizer.bos_id)
        trained.append(False)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True) if i else ""
        full = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise DatasetError(f"{source}: the chat template does not render this dialogue as a growing prefix")
        for text, is_reply in ((prompt[len(rendered) :], False), (full[len(prompt) :], True)):
            ids = tokenizer.encode(text) if text else []
            tokens.extend(ids)
            trained.extend([is_reply] * len(ids))
        rendered = full
    return Dialogue(tokens, trained, source)


def pack_dialogues(dialogues: Sequence[Dialogue], seq_len: int, pad_id: int) -> tuple[np.ndarray, ...]:
    """(inputs, targets, document_ids) rows of `seq_len`: whole dialogues, first fit, in order.

    A dialogue longer than seq_len + 1 tokens is cut at that length. Padding is its own document
    with every target ignored.
    """
    rows: list[list[Dialogue]] = []
    room: list[int] = []
    window = seq_len + 1
    for dialogue in dialogues:
        size = min(len(dialogue.tokens), window)
        for index, free in enumerate(room):
            if free >= size:
                rows[index].append(dialogue)
                room[index] -= size
                break
        else:
            rows.append([dialogue])
            room.append(window - size)
    count = len(rows)
    inputs = np.full((count, seq_len), pad_id, dtype=np.int64)
    targets = np.full((count, seq_len), IGNORE, dtype=np.int64)
    documents = np.zeros((count, seq_len), dtype=np.int64)
    for r, members in enumerate(rows):
        position = 0
        for d, dialogue in enumerate(members):
            ids = np.asarray(dialogue.tokens[:window], dtype=np.int64)
            mask = np.asarray(dialogue.trained[:window], dtype=bool)
            n = len(ids)
            # Inputs are tokens 0..n-2 of the dialogue; the target of input j is token j+1 if trained.
            end = position + n - 1
            inputs[r, position:end] = ids[:-1]
            targets[r, position:end] = np.where(mask[1:], ids[1:], IGNORE)
            documents[r, position:end] = d
            position = end
        documents[r, position:] = len(members)  # padding: a document of its own, never a target
    return inputs, targets, documents


def is_validation(source: str, fraction: float) -> bool:
    """Stable split by the row's `file:line` hash."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


class ChatBatches:
    """Endless global batches (inputs, targets, document_ids) of packed dialogue rows, reshuffled each epoch."""

    def __init__(self, rows: tuple[np.ndarray, ...], batch_size: int, seed: int = 0, shuffle: bool = True) -> None:
        if len(rows[0]) == 0:
            raise DatasetError("no dialogues to train on")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.batches_yielded = 0

    @property
    def tokens(self) -> int:
        """Trained (assistant) tokens in one pass."""
        return int((self.rows[1] != IGNORE).sum())

    def make_batch(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Global batch number `batch` (a pure function of the seed and the number)."""
        count = len(self.rows[0])
        positions = np.arange(batch * self.batch_size, (batch + 1) * self.batch_size)
        epochs, within = np.divmod(positions, count)
        if self.shuffle:
            within = np.array(
                [
                    np.random.default_rng([self.seed, int(e)]).permutation(count)[i]
                    for e, i in zip(epochs, within, strict=True)
                ]
            )
        return tuple(torch.from_numpy(part[within]) for part in self.rows)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, ...]:
        batch = self.make_batch(self.batches_yielded)
        self.batches_yielded += 1
        return batch

    def fixed_batches(self, count: int) -> list[tuple[torch.Tensor, ...]]:
        """The first `count` batches in order, without shuffling (validation)."""
        rows = len(self.rows[0])
        batches = []
        for start in range(0, min(rows, count * self.batch_size), self.batch_size):
            index = np.arange(start, start + self.batch_size) % rows
            batches.append(tuple(torch.from_numpy(part[index]) for part in self.rows))
        return batches

    def close(self) -> None:
        """Nothing to stop: batches are made on demand (the same interface as PackedLoader)."""

    def state_dict(self) -> dict[str, Any]:
        """Resume position."""
        return {"batches_yielded": self.batches_yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position."""
        self.batches_yielded = int(state["batches_yielded"])


def chat_batches(
    paths: Sequence[str | Path],
    tokenizer: Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    validation_fraction: float = 0.0,
    field: str = "messages",
) -> tuple[ChatBatches, ChatBatches | None, int]:
    """Training batches, validation batches (None without validation rows) and the number of dialogues."""
    train: list[Dialogue] = []
    val: list[Dialogue] = []
    for where, messages in read_dialogues(paths, field):
        dialogue = render_dialogue(tokenizer, messages, where)
        (val if validation_fraction and is_validation(where, validation_fraction) else train).append(dialogue)
    if not train:
        raise DatasetError(f"{', '.join(map(str, paths))}: no training dialogues")
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    loader = ChatBatches(pack_dialogues(train, seq_len, pad), batch_size, seed)
    val_loader = ChatBatches(pack_dialogues(val, seq_len, pad), batch_size, shuffle=False) if val else None
    return loader, val_loader, len(train) + len(val)
