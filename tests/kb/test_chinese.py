"""Chinese in the knowledge base: lexical search finds words and phrases, hybrid fusion, encryption, old collections."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from jijian.kb.embed import HashingEmbedder, hybrid_vector_weight
from jijian.kb.lexical import LEXICAL_SCHEME, cjk_share, fts_query, index_terms, index_text
from jijian.kb.store import EmbeddedKnowledgeBase, Record

KEY = bytes(range(32))
DOCS = {
    "ml": "机器学习是人工智能的一个分支，它让计算机从数据中学习规律，而不需要人为编写每一条规则。",
    "tea": "龙井属于绿茶，不经发酵，保留了茶叶的清香；普洱熟茶则属于黑茶，经过渥堆发酵。",
    "panda": "大熊猫主要生活在四川、陕西和甘肃的山区竹林中，每天要花十几个小时吃竹子。",
    "gzip": "用Python读取gzip压缩文件：gzip.open(path, 'rt') 返回一个文本文件对象，可以逐行读取。",
    "zip": "zipfile模块可以创建、读取和解压ZIP归档，ZipFile类支持追加文件和列出成员。",
    "english": "The gzip module provides a simple interface to compress and decompress files like GNU gzip.",
}


def build(tmp_path, key: bytes | None = None):
    embedder = HashingEmbedder(64)
    kb = EmbeddedKnowledgeBase(tmp_path, key=key)
    collection = kb.create_collection("zh", embedder.dim, index="flat")
    ids, texts = list(DOCS), list(DOCS.values())
    collection.insert([Record(i, v, t) for i, v, t in zip(ids, embedder.embed(texts), texts, strict=True)])
    return kb, collection, embedder


def lexical_ids(collection, query: str, k: int = 3) -> list[str]:
    return [hit.id for hit in collection.search(None, k, mode="lexical", text=query, output_fields=[])]


def test_cjk_runs_become_bigrams_and_english_is_untouched():
    assert index_text("机器学习") == " 机器 器学 学习 习 "
    assert index_text("The gzip module, unchanged.") == "The gzip module, unchanged."
    assert index_terms("用Python读取GZIP") == ["用", "python", "读取", "取", "gzip"]
    assert fts_query("学") == '"学"*'
    assert fts_query("读取 gzip") == '"读取" OR "gzip"'


@pytest.mark.parametrize("key", [None, KEY], ids=["clear", "encrypted"])
def test_lexical_search_finds_chinese_words_inside_sentences_and_phrases(tmp_path, key):
    _, collection, _ = build(tmp_path, key)
    assert lexical_ids(collection, "学习")[0] == "ml"  # a two-character word inside a sentence
    assert lexical_ids(collection, "人工智能")[0] == "ml"  # a phrase
    assert lexical_ids(collection, "普洱熟茶怎么加工")[0] == "tea"  # a question
    assert lexical_ids(collection, "竹子")[0] == "panda"
    assert lexical_ids(collection, "深度神经网络") == []  # no bigram in common: nothing


def test_a_single_character_query_matches_wherever_the_character_appears(tmp_path):
    _, collection, _ = build(tmp_path)
    assert set(lexical_ids(collection, "茶", k=6)) == {"tea"}
    assert set(lexical_ids(collection, "习", k=6)) == {"ml"}  # the last character of a run is found too


def test_english_lexical_search_is_unchanged(tmp_path):
    _, collection, _ = build(tmp_path)
    assert lexical_ids(collection, "decompress files")[0] == "english"


def test_mixed_language_hybrid_search_returns_the_right_document_first(tmp_path):
    _, collection, embedder = build(tmp_path)
    query = "怎样用Python读取gzip文件"
    vector = embedder.embed([query])[0]
    hits = collection.search(vector, 3, mode="hybrid", text=query, vector_weight=hybrid_vector_weight(embedder, query))
    assert hits[0].id == "gzip"


def test_an_english_only_vector_ranking_does_not_outvote_the_lexical_match_on_a_chinese_query(tmp_path):
    _, collection, embedder = build(tmp_path)
    query = "大熊猫每天吃的竹子，还有龙井"
    # What an English-only model does to Chinese: a vector unrelated to the meaning (here: nearest to "tea").
    misleading = embedder.embed([DOCS["tea"]])[0]
    assert lexical_ids(collection, query)[:2] == ["panda", "tea"]
    unweighted = collection.search(misleading, 3, mode="hybrid", text=query)
    assert unweighted[0].id == "tea"  # the failure the weighting prevents
    weight = hybrid_vector_weight(embedder, query)
    assert weight == 0.0
    assert collection.search(misleading, 3, mode="hybrid", text=query, vector_weight=weight)[0].id == "panda"


def test_vector_weight_follows_the_share_of_chinese_and_the_model():
    english_only = HashingEmbedder()
    assert hybrid_vector_weight(english_only, "how do I read a gzip file") == 1.0
    assert hybrid_vector_weight(english_only, "如何读取压缩文件") == 0.0
    assert 0.0 < hybrid_vector_weight(english_only, "用Python读取gzip文件") < 1.0
    multilingual = HashingEmbedder()
    multilingual.multilingual = True
    assert hybrid_vector_weight(multilingual, "如何读取压缩文件") == 1.0
    assert cjk_share("") == 0.0


def test_a_negative_vector_weight_is_refused(tmp_path):
    _, collection, embedder = build(tmp_path)
    with pytest.raises(ValueError, match="vector_weight"):
        collection.search(embedder.embed(["x"])[0], 3, mode="hybrid", text="x", vector_weight=-1.0)


@pytest.mark.parametrize("key", [None, KEY], ids=["clear", "encrypted"])
def test_a_collection_made_before_chinese_terms_is_reindexed_when_opened(tmp_path, key):
    kb, _, _ = build(tmp_path, key)
    kb.close()
    # Turn it back into what older versions wrote: no lexical scheme, whole CJK runs as single FTS tokens.
    spec_path = tmp_path / "zh" / "collection.json"
    spec = json.loads(spec_path.read_text())
    del spec["lexical"]
    spec_path.write_text(json.dumps(spec))
    db = sqlite3.connect(tmp_path / "zh" / "rows.sqlite")
    db.execute("DELETE FROM fts")
    if key is None:
        db.execute("INSERT INTO fts (rowid, text) SELECT rowid, text FROM rows")
    db.commit()
    db.close()
    reopened = EmbeddedKnowledgeBase(tmp_path, key=key).collection("zh")
    assert lexical_ids(reopened, "学习")[0] == "ml"
    assert lexical_ids(reopened, "decompress files")[0] == "english"
    assert json.loads(spec_path.read_text())["lexical"] == LEXICAL_SCHEME
    assert reopened.count() == len(DOCS)
    assert np.isfinite(reopened.search(np.ones(64, np.float32), 1)[0].score)


def test_long_chinese_text_is_chunked_at_sentence_ends_within_the_token_budget():
    from jijian.kb.chunking import chunk_text

    sentences = ["数据并行是最常用的分布式训练方式。", "每个GPU保存一份完整的模型副本！", "各自处理不同的小批量数据？"]
    text = "".join(sentences) * 20  # one line, no spaces: nothing for a whitespace splitter to cut at
    chunks = chunk_text(text, len, max_tokens=60, overlap=10)
    assert len(chunks) > 10 and all(len(chunk.text) <= 60 for chunk in chunks)
    assert all(chunk.text.endswith(("。", "！", "？")) for chunk in chunks)
    assert all(len(chunk.text) <= 60 for chunk in chunk_text("龙" * 500, len, max_tokens=60, overlap=10))
