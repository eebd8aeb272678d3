"""The byte-level BPE tokenizer: training, round trips, the HF layout, and parity with transformers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jijian.model.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, Tokenizer, train_tokenizer

VOCAB_SIZE = 1000

TEXTS = [
    "def main(argv: list[str]) -> int:\n    return 0\n",
    "Hello, world! 你好，世界。🚀🎉 naïve café",
    "   leading spaces\t\ttabs\n\n\ntrailing   ",
    "<|im_start|>user\nhi<|im_end|>\n",
    "",
    " x",
    "数据并行、张量并行和流水线并行",
]

CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4. 好的 🙂"},
]


def _corpus() -> list[str]:
    # Standard-library sources: present everywhere, deterministic, and a few hundred KB.
    files = sorted(Path(os.__file__).parent.glob("*.py"))[:30]
    texts, total = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total > 400_000:
            break
    return texts


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(_corpus(), VOCAB_SIZE, model_max_length=2048)


@pytest.fixture(scope="module")
def saved(tok: Tokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tok") / "nested" / "dir"
    tok.save(directory)
    return directory


def test_trained_vocab_and_special_ids(tok: Tokenizer) -> None:
    assert 256 + len(SPECIAL_TOKENS) < tok.vocab_size <= VOCAB_SIZE
    assert [tok.backend.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == (
        "<|pad|>",
        "<|begin_of_text|>",
        "<|end_of_text|>",
    )
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.model_max_length == 2048
    # Merges were learned: common code is shorter than its byte count.
    assert len(tok.encode("    def __init__(self):\n        return None\n")) < 20


def test_vocab_size_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size must be at least 261"):
        train_tokenizer(["abc"], 260)


FRAGMENTS = [
    "def f(x):",
    "    ",
    "\n\n\n",
    "\t",
    "\r\n",
    "你好",
    "世界",
    "🚀",
    "👨‍👩‍👧",
    "é",
    "e\u0301",
    "\u00a0",
    "{}",
]
UNICODE_TEXT = st.text(max_size=120) | st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=20).map(
    "".join
)


@settings(max_examples=100, deadline=None)
@given(UNICODE_TEXT.filter(lambda s: not any(t in s for t in SPECIAL_TOKENS)))
def test_round_trip(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=25, deadline=None)
@given(st.lists(UNICODE_TEXT | st.sampled_from(SPECIAL_TOKENS), max_size=6).map("".join))
def test_round_trip_with_special_token_text(tok: Tokenizer, text: str) -> None:
    # Special-token strings inside text become their ids, so only skip_special_tokens=False restores them.
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_examples(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text), skip_special_tokens=False) == text


def test_special_tokens_are_never_added_implicitly(tok: Tokenizer) -> None:
    ids = tok.encode("hello")
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.encode("hello", add_bos=True) == [tok.bos_id, *ids]
    assert tok.encode("hello", add_eos=True) == [*ids, tok.eos_id]
    assert tok.encode("hello", add_bos=True, add_eos=True) == [tok.bos_id, *ids, tok.eos_id]
    assert tok.encode("", add_bos=True, add_eos=True) == [tok.bos_id, tok.eos_id]
    # Special tokens written in the text are matched as single ids (the chat template relies on it).
    assert tok.encode("<|im_start|>") == [3]
    assert tok.decode([1, *ids, 2]) == "hello"
    assert tok.decode([1, *ids, 2], skip_special_tokens=False) == "<|begin_of_text|>hello<|end_of_text|>"


def test_encode_batch_equals_encode(tok: Tokenizer) -> None:
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS, add_bos=True, add_eos=True) == [
        tok.encode(t, add_bos=True, add_eos=True) for t in TEXTS
    ]
    assert tok.encode_batch([]) == []


def test_decode_rejects_unknown_ids(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([5, tok.vocab_size])


def test_chat_template(tok: Tokenizer) -> None:
    rendered = tok.apply_chat_template(CONVERSATION)
    assert rendered == (
        "<|begin_of_text|><|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n4. 好的 🙂<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(CONVERSATION, add_generation_prompt=False) == rendered.removesuffix(
        "<|im_start|>assistant\n"
    )
    ids = tok.encode(rendered)
    assert ids[:2] == [tok.bos_id, 3]
    assert tok.decode(ids, skip_special_tokens=False) == rendered


def test_chat_template_missing_or_raising(tok: Tokenizer) -> None:
    bare = Tokenizer(tok.backend, bos_token=None, eos_token=None, pad_token=None)
    with pytest.raises(ValueError, match="no chat_template"):
        bare.apply_chat_template(CONVERSATION)
    strict = Tokenizer(
        tok.backend,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        chat_template="{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}",
    )
    with pytest.raises(Exception, match="user first"):
        strict.apply_chat_template(CONVERSATION)


def test_save_load_round_trip(tok: Tokenizer, saved: Path) -> None:
    assert {p.name for p in saved.iterdir()} == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    config = json.loads((saved / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["chat_template"] == CHAT_TEMPLATE
    for source in (saved, saved / "tokenizer.json", str(saved)):
        loaded = Tokenizer.load(source)
        assert loaded.fingerprint() == tok.fingerprint()
        assert loaded.encode_batch(TEXTS) == tok.encode_batch(TEXTS)
        assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
        assert loaded.chat_template == tok.chat_template
        assert loaded.model_max_length == 2048
        assert loaded.vocab_size == tok.vocab_size


def test_fingerprint_identifies_the_tokenizer(tok: Tokenizer) -> None:
    fp = tok.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == tok.fingerprint()
    other = train_tokenizer(_corpus()[:3], 400)
    assert other.fingerprint() != fp


def test_load_missing_tokenizer_names_the_path(tmp_path: Path) -> None:
    empty = tmp_path / "no_tokenizer_here"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no_tokenizer_here"):
        Tokenizer.load(empty)
    with pytest.raises(FileNotFoundError, match="does_not_exist"):
        Tokenizer.load(tmp_path / "does_not_exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken"):
        Tokenizer.load(broken)


def test_load_hf_style_configs(tok: Tokenizer, tmp_path: Path) -> None:
    # Configs written by transformers: AddedToken dicts, named template lists, a "no limit" max length.
    tok.backend.save(str(tmp_path / "tokenizer.json"))
    added = {"content": "<|im_end|>", "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    config = {
        "bos_token": {**added, "content": "<|im_start|>"},
        "chat_template": [
            {"name": "tool_use", "template": "tools"},
            {"name": "default", "template": "{{ 'd' }}"},
        ],
        "model_max_length": 1000000000000000019884624838656,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    (tmp_path / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": added, "pad_token": "<|im_end|>", "bos_token": "<|pad|>"}), encoding="utf-8"
    )
    loaded = Tokenizer.load(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert loaded.apply_chat_template(CONVERSATION) == "d"
    assert loaded.model_max_length is None
    # A chat_template.jinja file (transformers >= 4.43 layout) wins over the config entry.
    (tmp_path / "chat_template.jinja").write_text("{{ 'j' }}", encoding="utf-8")
    assert Tokenizer.load(tmp_path).apply_chat_template(CONVERSATION) == "j"
    # A special token missing from the vocabulary is an error naming the directory.
    config["bos_token"] = "<s>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ValueError, match=str(tmp_path.name)):
        Tokenizer.load(tmp_path)


def test_foreign_post_processor_padding_and_truncation_are_ignored(tok: Tokenizer, tmp_path: Path) -> None:
    # Llama 3's tokenizer.json adds BOS in its post-processor; some files also switch on truncation/padding.
    from tokenizers import Tokenizer as Backend
    from tokenizers import processors

    backend = Backend.from_str(tok.backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)]
    )
    backend.enable_truncation(max_length=2)
    backend.enable_padding(pad_id=0, pad_token="<|pad|>", length=64)
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(tmp_path)
    assert loaded.bos_token == "<|begin_of_text|>" and loaded.pad_token == "<|pad|>"
    assert loaded.encode_batch(TEXTS) == tok.encode_batch(TEXTS)
    assert loaded.encode(TEXTS[0], add_bos=True) == tok.encode(TEXTS[0], add_bos=True)
    assert backend.truncation is not None, "the caller's backend must not be mutated"


def test_transformers_parity(tok: Tokenizer, saved: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved))
    assert (hf.bos_token, hf.eos_token, hf.pad_token) == (tok.bos_token, tok.eos_token, tok.pad_token)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert len(hf) == tok.vocab_size
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == ids
        # No automatic BOS/EOS on the transformers side either.
        assert hf.encode(text) == ids
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)
        assert hf.decode(ids, skip_special_tokens=False) == tok.decode(ids, skip_special_tokens=False)
    for add_generation_prompt in (True, False):
        ours = tok.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt)
        theirs = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add_generation_prompt)
        assert theirs == ours
    # And back: a directory saved by transformers loads into the same tokenizer.
    resaved = saved.parent / "resaved"
    hf.save_pretrained(str(resaved))
    reloaded = Tokenizer.load(resaved)
    assert reloaded.encode_batch(TEXTS) == tok.encode_batch(TEXTS)
    assert (reloaded.bos_id, reloaded.eos_id, reloaded.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)
    assert reloaded.apply_chat_template(CONVERSATION) == tok.apply_chat_template(CONVERSATION)
