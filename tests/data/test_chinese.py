"""Chinese in the data pipeline: character shingles find near-duplicates, cleaning unifies full/half width."""

from __future__ import annotations

import json

import numpy as np

from jijian.config import DataConfig
from jijian.data import build_dataset
from jijian.data.clean import normalize_text
from jijian.data.dedup import minhash_signature, shingle_hashes

PARAGRAPHS = [
    "数据并行是最常用的分布式训练方式。每个GPU保存一份完整的模型副本，各自处理不同的小批量数据，反向传播后通过"
    "全归约同步梯度。它实现简单，但模型必须能装进单卡显存。当模型参数达到数百亿时，就需要把参数、梯度和优化器"
    "状态切分到多张显卡上，这正是完全分片数据并行的思路。",
    "故宫位于北京中轴线的中心，是明清两代的皇家宫殿，旧称紫禁城。它始建于明朝永乐年间，占地约七十二万平方米，"
    "是世界上现存规模最大、保存最完整的木质结构古建筑群之一。每年有上千万游客前来参观，旺季需要提前在网上预约门票。",
    "春节是农历新年，是中国最重要的传统节日。人们在除夕夜吃团圆饭、守岁，北方习惯包饺子，南方常吃年糕。节日期间"
    "还有贴春联、放鞭炮、给孩子发压岁钱等习俗。近年来，很多城市为了安全和环保，限制或禁止在市区燃放烟花爆竹。",
    "光合作用是绿色植物利用光能，把二氧化碳和水转化为葡萄糖并释放氧气的过程。它主要发生在叶绿体中，叶绿素吸收"
    "红光和蓝光，反射绿光，所以叶子看起来是绿色的。没有光合作用，地球上的大多数生命都无法生存。",
]


def jaccard(a: str, b: str) -> float:
    x, y = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    return len(x & y) / len(x | y)


def build(tmp_path, tokenizer, texts: list[str]):
    corpus = tmp_path / "zh.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    config = DataConfig(sources=[str(corpus)], output_dir=tmp_path / "out", workers=0, validation_fraction=0.0)
    return build_dataset(config, tokenizer).manifest["stats"]["totals"]


def test_chinese_is_shingled_by_characters_and_english_by_words():
    # Character 5-grams: a paragraph of ~130 characters has ~100 distinct shingles, not a handful of clauses.
    assert len(shingle_hashes(PARAGRAPHS[0])) > 100
    assert len(shingle_hashes("one two three four five six")) == 2  # word 5-grams, as before
    edited = PARAGRAPHS[1].replace("七十二万", "七十三万").replace("上千万", "近千万")
    assert jaccard(PARAGRAPHS[1], edited) > 0.8
    assert jaccard(PARAGRAPHS[1], PARAGRAPHS[2]) < 0.05
    assert np.array_equal(minhash_signature(PARAGRAPHS[0], 64), minhash_signature(PARAGRAPHS[0], 64))


def test_chinese_near_duplicates_are_removed_and_distinct_paragraphs_stay(tmp_path, tokenizer):
    near = PARAGRAPHS[1].replace("七十二万", "七十三万").replace("上千万", "近千万")  # 3 characters of ~150
    reworded = PARAGRAPHS[3].replace("所以", "因此")  # a connective swapped
    totals = build(tmp_path, tokenizer, [*PARAGRAPHS, near, reworded])
    assert totals["near_duplicates"] == 2
    assert totals["kept_documents"] == len(PARAGRAPHS)


def test_width_variants_of_a_chinese_document_clean_to_the_same_text(tmp_path, tokenizer):
    half_width = "我们用Python 3.11训练了一个7B模型，共用了256张GPU，耗时12天。效果如何？还不错！"
    typed_differently = "我们用Ｐｙｔｈｏｎ　３.１１训练了一个７Ｂ模型,共用了２５６张ＧＰＵ,耗时１２天.效果如何?还不错!"
    assert normalize_text(typed_differently) == half_width
    totals = build(tmp_path, tokenizer, [half_width + "\n" + PARAGRAPHS[0], typed_differently + "\n" + PARAGRAPHS[0]])
    assert totals["exact_duplicates"] == 1


def test_punctuation_width_follows_the_script_around_it():
    assert normalize_text("版本3.14已发布,请升级!") == "版本3.14已发布，请升级！"
    assert normalize_text("Hello，world！") == "Hello,world!"
    assert normalize_text("见文件.txt") == "见文件.txt"  # a dot inside a name stays
