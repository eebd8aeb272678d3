"""`jijian eval`: metrics, labelled-question files, and the retrieval, perplexity and RAG commands on small fixtures."""

from __future__ import annotations

import contextlib
import json
import math

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jijian.cli.main import app
from jijian.config import DataConfig
from jijian.data import build_dataset
from jijian.data.loader import PackedTokens
from jijian.eval.metrics import question_metrics
from jijian.eval.questions import QuestionsError, check_ids, load_questions, shipped_path
from jijian.eval.rag import RagEvalError, evaluate_rag
from jijian.model.hf import save_hf
from jijian.model.llama import build_model

CORPUS = [
    {"id": "gzip", "text": "gzip 模块：读取和写入 gzip 压缩文件，gzip.open 打开压缩文件。"},
    {"id": "gzip.open", "text": "gzip.open(filename, mode) opens a gzip-compressed file in binary or text mode."},
    {"id": "json", "text": "json 模块：把 Python 对象编码为 JSON 字符串，或把 JSON 解析为对象。"},
    {"id": "panda", "text": "大熊猫主要生活在四川、陕西和甘肃的山区竹林中，每天要花十几个小时吃竹子。"},
    {"id": "tea", "text": "龙井属于绿茶，不经发酵；普洱熟茶则属于黑茶，经过渥堆发酵。"},
]


def output_of(result) -> str:
    text = result.output
    with contextlib.suppress(ValueError, AttributeError):  # older Click mixes stderr into output
        text += result.stderr
    return text


def write_lines(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def collection_dir(tmp_path):
    corpus = write_lines(tmp_path / "corpus.jsonl", CORPUS)
    kb = tmp_path / "kb"
    result = CliRunner().invoke(
        app, ["kb", "ingest", "docs", corpus, "--path", str(kb), "--embedding-model", "hashing"]
    )
    assert result.exit_code == 0, output_of(result)
    return kb


def test_metrics_of_one_ranking():
    assert question_metrics(["a", "b", "c"], ["a"]) == {
        "recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0, "mrr": 1.0, "ndcg@10": 1.0
    }  # fmt: skip
    late = question_metrics(["x", "y", "gzip.open"], ["gzip"])  # a member answers for its module
    assert late["recall@1"] == 0.0 and late["recall@5"] == 1.0 and late["mrr"] == pytest.approx(1 / 3)
    assert late["ndcg@10"] == pytest.approx(1 / math.log2(4))
    # Two relevant ids, one found first: half the ideal gain at rank 1.
    assert question_metrics(["a", "z"], ["a", "b"])["ndcg@10"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert question_metrics(["gzip", "gzip.open"], ["gzip"])["ndcg@10"] == 1.0  # credited once
    assert question_metrics([], ["a"]) == {"recall@1": 0, "recall@5": 0, "recall@10": 0, "mrr": 0, "ndcg@10": 0}


def test_eval_retrieval_prints_a_table_and_writes_json(tmp_path, collection_dir):
    questions = write_lines(
        tmp_path / "q.jsonl",
        [
            {"query": "怎样读取gzip压缩文件", "relevant": ["gzip"]},
            {"query": "大熊猫吃什么", "relevant": ["panda"]},
            {"query": "普洱茶是怎么发酵的", "relevant": ["tea"]},
            {"query": "parse a JSON string", "relevant": ["json"]},
        ],
    )
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        ["eval", "retrieval", "docs", questions, "--path", str(collection_dir), "--embedding-model", "hashing",
         "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, output_of(result)
    for word in ("vector", "lexical", "hybrid", "recall@5", "ndcg@10"):
        assert word in result.output
    report = json.loads(out.read_text())
    assert report["questions"] == 4
    assert report["modes"]["lexical"]["recall@1"] == 1.0
    assert report["modes"]["hybrid"]["recall@5"] == 1.0
    assert set(report["modes"]["vector"]) >= {"recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"query": "gzip", "relevant": ["gzip"]', "not valid JSON"),
        ('{"query": "gzip", "relevant": ["nosuchid"]}', "relevant id 'nosuchid' is not in collection 'docs'"),
        ('{"query": "", "relevant": ["gzip"]}', "'query' must be a non-empty string"),
        ('{"query": "gzip", "relevant": "gzip"}', "'relevant' must be a non-empty list"),
    ],
)
def test_a_bad_questions_file_is_an_error_naming_the_line(tmp_path, collection_dir, line, message):
    questions = write_lines(tmp_path / "q.jsonl", [{"query": "gzip", "relevant": ["gzip"]}, line])
    result = CliRunner().invoke(
        app, ["eval", "retrieval", "docs", questions, "--path", str(collection_dir), "--embedding-model", "hashing"]
    )
    assert result.exit_code == 2
    text = " ".join(output_of(result).split())
    assert "q.jsonl:2" in text and message in text


def test_shipped_question_sets_are_well_formed_and_name_their_documents():
    chinese = load_questions(shipped_path("zh"))
    assert len(chinese) >= 100
    corpus_ids = [json.loads(line)["id"] for line in shipped_path("zh-corpus").read_text().splitlines()]
    check_ids(chinese, corpus_ids, shipped_path("zh"), "zh")
    english = load_questions(shipped_path("stdlib-en"))
    assert len(english) >= 150
    with pytest.raises(QuestionsError, match=r"zh_questions.jsonl:1: relevant id"):
        check_ids(chinese, ["other"], shipped_path("zh"), "zh")


def test_eval_perplexity_of_a_model_on_packed_shards(tmp_path, tiny_config, tokenizer, corpus_texts):
    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    save_hf(model, tokenizer, tmp_path / "model")
    data = DataConfig(
        sources=[write_lines(tmp_path / "c.jsonl", [{"text": t} for t in corpus_texts[:12]])],
        output_dir=tmp_path / "shards", workers=0, validation_fraction=0.3,
    )  # fmt: skip
    build_dataset(data, tokenizer)
    out = tmp_path / "ppl.json"
    result = CliRunner().invoke(
        app,
        ["eval", "perplexity", str(tmp_path / "model"), str(tmp_path / "shards"), "--seq-len", "64",
         "--max-tokens", "1024", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, output_of(result)
    assert "perplexity" in result.output
    report = json.loads(out.read_text())
    assert report["tokens"] == report["windows"] * 64 and report["windows"] == 16
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    # An untrained model predicts close to uniformly over its 512-token vocabulary.
    assert 256 < report["perplexity"] < 1024
    # The same number from the model directly, on the first window.
    tokens = PackedTokens(tmp_path / "shards", "val")
    first = np.empty(65, dtype=np.int64)
    tokens.read_into(0, first)
    window = torch.from_numpy(first)[None]
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(window[:, :-1])[0], window[0, 1:])
    assert 0.5 < float(loss) / report["loss"] < 2.0


def test_eval_perplexity_of_a_missing_dataset_is_a_clear_error(tmp_path, tiny_config, tokenizer):
    save_hf(build_model(tiny_config).eval(), tokenizer, tmp_path / "model")
    result = CliRunner().invoke(app, ["eval", "perplexity", str(tmp_path / "model"), str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "nothing" in output_of(result)


def fake_server(citations_by_query: dict[str, list[str]], status: int = 200) -> httpx.Client:
    """An OpenAI-compatible endpoint answering with the given citations (what `jijian serve` returns)."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["rag"] == {"collection": "docs", "top_k": 3}
        query = body["messages"][-1]["content"]
        cited = [{"index": i, "id": c, "source": c, "score": 1.0} for i, c in enumerate(citations_by_query[query], 1)]
        payload = {"choices": [{"message": {"role": "assistant", "content": "answer"}}], "citations": cited}
        return httpx.Response(status, json=payload if status == 200 else {"error": {"message": "no"}})

    return httpx.Client(base_url="http://server", transport=httpx.MockTransport(handle))


def test_eval_rag_scores_whether_a_cited_passage_is_relevant(tmp_path):
    path = tmp_path / "q.jsonl"
    write_lines(path, [{"query": "gzip?", "relevant": ["gzip"]}, {"query": "tea?", "relevant": ["tea"]}])
    questions = load_questions(path)
    client = fake_server({"gzip?": ["json", "gzip.open"], "tea?": ["panda"]})
    report = evaluate_rag(client, questions, collection="docs", top_k=3)
    assert report["cited_relevant"] == 0.5
    assert report["first_relevant_citation_mrr"] == pytest.approx(0.25)
    assert [r["relevant_rank"] for r in report["results"]] == [2, None]
    with pytest.raises(RagEvalError, match="line 1: the server answered 401"):
        evaluate_rag(fake_server({"gzip?": []}, status=401), questions, collection="docs", top_k=3)
