"""Chat SFT data: template rendering, assistant-only loss, and packing that leaks nothing between dialogues."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from jijian.config import ModelConfig
from jijian.data.chat import IGNORE, chat_batches, pack_dialogues, render_dialogue
from jijian.data.shards import DatasetError
from jijian.model import build_model

DIALOGUES = [
    [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "What is a KV cache?"},
        {"role": "assistant", "content": "Stored keys and values of earlier tokens."},
    ],
    [
        {"role": "user", "content": "数据放在哪里？"},
        {"role": "assistant", "content": "在私有部署的机房里。"},
        {"role": "user", "content": "谁能访问？"},
        {"role": "assistant", "content": "只有授权的工程师。"},
    ],
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    [
        {"role": "user", "content": "def add(a, b):"},
        {"role": "assistant", "content": "    return a + b"},
        {"role": "user", "content": "and subtract?"},
        {"role": "assistant", "content": "    return a - b"},
    ],
]


def test_only_assistant_turns_are_trained(tokenizer):
    dialogue = render_dialogue(tokenizer, DIALOGUES[1])
    assert len(dialogue.tokens) == len(dialogue.trained)
    full = tokenizer.apply_chat_template(DIALOGUES[1], add_generation_prompt=False)
    assert tokenizer.decode(dialogue.tokens, skip_special_tokens=False) == full
    trained = [t for t, keep in zip(dialogue.tokens, dialogue.trained, strict=True) if keep]
    # Each reply with its end-of-turn marker, and nothing of the user turns or role headers.
    assert tokenizer.decode(trained, skip_special_tokens=False) == (
        "在私有部署的机房里。<|im_end|>\n只有授权的工程师。<|im_end|>\n"
    )


@pytest.mark.parametrize("window", [None, 12], ids=["full", "sliding_window"])
def test_a_packed_batch_gives_the_loss_of_the_dialogues_run_one_by_one(tokenizer, window):
    cfg = ModelConfig(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        ffn_dim=160,
        vocab_size=tokenizer.vocab_size,
        sliding_window=window,
        init_std=0.1,
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    dialogues = [render_dialogue(tokenizer, d) for d in DIALOGUES]
    inputs, targets, documents = (torch.from_numpy(a) for a in pack_dialogues(dialogues, 256, tokenizer.pad_id))
    assert len(inputs) < len(dialogues)  # several dialogues share a row
    with torch.no_grad():
        logits = model(inputs, document_ids=documents)
        packed = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
        losses = []
        for dialogue in dialogues:
            ids = torch.tensor(dialogue.tokens)
            alone = model(ids[None, :-1])[0]
            keep = torch.tensor(dialogue.trained[1:])
            losses.append(F.cross_entropy(alone[keep], ids[1:][keep], reduction="none"))
        one_by_one = torch.cat(losses).mean()
        torch.testing.assert_close(packed, one_by_one, atol=1e-5, rtol=1e-5)
        # Without the document mask the packed dialogues would see each other.
        leaky = model(inputs)
    assert (leaky - logits).abs().max() > 1e-2


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_row_without_an_assistant_turn_is_an_error_naming_the_line(tmp_path, tokenizer):
    rows = [{"messages": d} for d in DIALOGUES[:2]] + [{"messages": [{"role": "user", "content": "hello?"}]}]
    path = write_rows(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DatasetError, match=r"chat\.jsonl:3: no assistant turn"):
        chat_batches([path], tokenizer, seq_len=64, batch_size=2)
    write_rows(path, [{"messages": [{"role": "robot", "content": "x"}]}])
    with pytest.raises(DatasetError, match=r"chat\.jsonl:1: messages\[0\] must be"):
        chat_batches([path], tokenizer, seq_len=64, batch_size=2)


def test_batches_cover_every_dialogue_and_resume(tmp_path, tokenizer):
    path = write_rows(tmp_path / "chat.jsonl", [{"messages": d} for d in DIALOGUES * 5])
    loader, _, count = chat_batches([path], tokenizer, seq_len=64, batch_size=2, seed=1)
    assert count == 20
    first = [next(loader) for _ in range(3)]
    state = loader.state_dict()
    following = next(loader)
    loader.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(next(loader), following, strict=True))
    inputs, targets, documents = first[0]
    assert inputs.shape == targets.shape == documents.shape == (2, 64)
    assert (targets != IGNORE).any()
