"""Retrieval quality: does the knowledge base find the passage that answers, in English and in Chinese?

English: the `stdlib-docs` collection exactly as `jijian up` builds it (`[up] kb_max_docs` = 3000
docstrings: every module's, then public APIs; MiniLM embeddings) against the shipped 161 labelled
questions (`jijian/eval/data/stdlib_questions.jsonl`). Its competitor is the collection built the way
jijian did before (the first 800 docstrings in directory order), searched the same way.

Chinese: the shipped 55-document corpus (`zh_corpus.jsonl`, MiniLM embeddings, which are English-only)
against its 110 questions. Competitors side by side: vector-only search, hybrid fusion with the
vector ranking at full weight (before `hybrid_vector_weight`), and FTS5's default tokenizer on the raw
text (jijian's lexical index before CJK bigrams).

    .venv/bin/python benchmarks/retrieval_quality.py --quick   # 1,200 docstrings, no old-collection run
    .venv/bin/python benchmarks/retrieval_quality.py           # ~3 minutes on 2 cores

RESULT lines: hybrid recall@5 on English (target >= 0.85) and Chinese (target >= 0.8), lexical-only
recall@5 on Chinese (for comparison), and the ratios over the competitors (target > 1).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from jijian.data import python_stdlib_files
from jijian.eval.metrics import mean_metrics, question_metrics
from jijian.eval.questions import Question, load_questions, shipped_path
from jijian.eval.retrieval import evaluate_retrieval, rankings
from jijian.kb.embed import load_embedder
from jijian.kb.stdlib_docs import _module_name, build_stdlib_docs, docstrings
from jijian.kb.store import EmbeddedKnowledgeBase, Record


def answerable(questions: list[Question], ids: list[str]) -> list[Question]:
    """The questions whose relevant ids are all in the collection (all of them at full size)."""
    known = set(ids) | {i[:k] for i in ids for k, c in enumerate(i) if c == "."}
    return [q for q in questions if any(r in known for r in q.relevant)]


def old_collection(kb: EmbeddedKnowledgeBase, embedder, files: list[Path]) -> None:
    """The stdlib collection as jijian built it before: the first 800 docstrings in directory order."""
    docs: dict = {}
    for path in files:
        if "test" in path.parts or path.name.startswith("test_"):
            continue
        for doc in docstrings(path, _module_name(path)):
            docs.setdefault(doc.qualname, doc)
        if len(docs) >= 800:
            break
    chosen = list(docs.values())[:800]
    texts = [f"{d.qualname}: {d.text[:1000]}" for d in chosen]
    target = kb.create_collection("old-stdlib", embedder.dim)
    target.insert([Record(d.qualname, v, t) for d, v, t in zip(chosen, embedder.embed(texts), texts, strict=True)])


def default_tokenizer_recall(corpus: list[dict], questions: list[Question], k: int = 5) -> float:
    """recall@k of FTS5's default tokenizer on raw Chinese text, queries split on \\w+ (the old lexical index)."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE fts USING fts5(id UNINDEXED, text)")
    db.executemany("INSERT INTO fts VALUES (?, ?)", [(d["id"], f"{d['title']}\n{d['text']}") for d in corpus])
    found = 0
    for q in questions:
        query = " OR ".join(f'"{w}"' for w in re.findall(r"\w+", q.query))
        ids = [
            row[0] for row in db.execute("SELECT id FROM fts WHERE fts MATCH ? ORDER BY bm25(fts) LIMIT ?", (query, k))
        ]
        found += bool(set(ids) & set(q.relevant))
    return found / len(questions)


def result(name: str, value: float, op: str, threshold: float) -> None:
    ok = value >= threshold if op == ">=" else value > threshold
    print(f"RESULT {name} {value:.3f} target {op} {threshold} {'PASS' if ok else 'FAIL'}")


def table(title: str, rows: dict[str, dict[str, float]]) -> None:
    names = ["recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"]
    print(f"\n{title}\n{'search':28}" + "".join(f"{n:>10}" for n in names))
    for label, values in rows.items():
        print(f"{label:28}" + "".join(f"{values[n]:10.3f}" for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,200 docstrings and no old-collection comparison")
    args = parser.parse_args()
    embedder = load_embedder()
    root = Path(tempfile.mkdtemp(prefix="jijian-retrieval-"))
    kb = EmbeddedKnowledgeBase(root)

    # English: the standard-library docs.
    files = python_stdlib_files()
    max_docs = 1200 if args.quick else 3000
    started = time.perf_counter()
    count, _ = build_stdlib_docs(kb, files, embedder, max_docs=max_docs, collection="stdlib-docs")
    build_seconds = time.perf_counter() - started
    english_all = load_questions(shipped_path("stdlib-en"))
    stdlib = kb.collection("stdlib-docs")
    english = answerable(english_all, stdlib.ids())
    print(f"stdlib-docs: {count} docstrings embedded and indexed in {build_seconds:.0f} s; "
          f"{len(english)} of {len(english_all)} questions answerable")  # fmt: skip
    report = evaluate_retrieval(stdlib, embedder, english)
    rows = {f"jijian {mode}": values for mode, values in report["modes"].items()}
    old_ratio = None
    if not args.quick:
        old_collection(kb, embedder, files)
        old = kb.collection("old-stdlib")
        ranked = rankings(old, embedder, [q.query for q in english], "hybrid")
        rows["before: 800 docs, hybrid"] = mean_metrics(
            [question_metrics(ids, q.relevant) for ids, q in zip(ranked, english, strict=True)]
        )
        old_ratio = report["modes"]["hybrid"]["recall@5"] / max(rows["before: 800 docs, hybrid"]["recall@5"], 1e-9)
    table(f"English: {len(english)} questions over the standard-library docs", rows)
    missed = report["missed"]["hybrid"]
    print(f"hybrid misses at 10: {json.dumps([m['query'] for m in missed][:8])}")

    # Chinese: the shipped corpus.
    corpus = [json.loads(line) for line in shipped_path("zh-corpus").read_text(encoding="utf-8").splitlines()]
    chinese = load_questions(shipped_path("zh"))
    texts = [f"{d['title']}\n{d['text']}" for d in corpus]
    zh = kb.create_collection("zh", embedder.dim)
    zh.insert([Record(d["id"], v, t) for d, v, t in zip(corpus, embedder.embed(texts), texts, strict=True)])
    zh_report = evaluate_retrieval(zh, embedder, chinese)
    rows = {f"jijian {mode}": values for mode, values in zh_report["modes"].items()}
    vectors = embedder.embed([q.query for q in chinese])
    unweighted = [
        [h.id for h in zh.search(v, 10, mode="hybrid", text=q.query, output_fields=[])]
        for v, q in zip(vectors, chinese, strict=True)
    ]
    rows["hybrid, vector at weight 1"] = mean_metrics(
        [question_metrics(ids, q.relevant) for ids, q in zip(unweighted, chinese, strict=True)]
    )
    default_recall = default_tokenizer_recall(corpus, chinese)
    table(f"Chinese: {len(chinese)} questions over {len(corpus)} documents", rows)
    print(f"FTS5 default tokenizer (before), lexical recall@5: {default_recall:.3f}")
    kb.close()
    shutil.rmtree(root, ignore_errors=True)

    en_hybrid = report["modes"]["hybrid"]["recall@5"]
    zh_modes = zh_report["modes"]
    print()
    result("retrieval_hybrid_recall5_en", en_hybrid, ">=", 0.85)
    result("retrieval_hybrid_recall5_zh", zh_modes["hybrid"]["recall@5"], ">=", 0.8)
    result("retrieval_lexical_recall5_zh", zh_modes["lexical"]["recall@5"], ">=", 0.8)
    result("retrieval_vector_recall5_zh_english_only_model", zh_modes["vector"]["recall@5"], ">=", 0.0)
    result(
        "retrieval_hybrid_recall5_zh_over_vector_only",
        zh_modes["hybrid"]["recall@5"] / max(zh_modes["vector"]["recall@5"], 1e-9), ">", 1.0,
    )  # fmt: skip
    result(
        "retrieval_lexical_recall5_zh_over_fts5_default",
        zh_modes["lexical"]["recall@5"] / max(default_recall, 1e-9), ">", 1.0,
    )  # fmt: skip
    if old_ratio is not None:
        result("retrieval_hybrid_recall5_en_over_old_800_docs", old_ratio, ">", 1.0)


if __name__ == "__main__":
    main()
