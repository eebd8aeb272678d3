"""Chinese lexical search: the options for FTS5, measured on the shipped Chinese corpus and questions.

Each option indexes the 55 documents of `jijian/eval/data/zh_corpus.jsonl` in an in-memory SQLite
FTS5 table and answers the 110 questions of `zh_questions.jsonl` (BM25, top 5, terms OR-ed):

* `unicode61`: FTS5's default tokenizer on the raw text, queries split on \\w+ (jijian before this work);
* `trigram`: FTS5's trigram tokenizer; queries OR their character trigrams, and a 1-2 character
  query falls back to a `LIKE '%q%'` scan (the trigram index cannot answer it);
* `jieba` / `rjieba`: word segmentation (dictionary-based, the Python and the Rust build) of both
  documents and queries, words space-separated for unicode61;
* `bigram` (jijian, `jijian.kb.lexical`): overlapping CJK bigrams plus each run's last character.

Also measured: a one-character query (does the option find every document holding the character?),
the cost of indexing (characters per second over the corpus repeated 20 times), and the first-call
cost (a segmenter loads its dictionary). jieba and rjieba are optional: absent, their rows are skipped.

    .venv/bin/python benchmarks/chinese_lexical.py [--quick]

RESULT: recall@5 of jijian's bigrams over the default tokenizer's (target > 1), and bigram recall@5
(target >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import time
from collections.abc import Callable
from importlib.resources import files

from jijian.kb.lexical import fts_query, index_text

CJK = re.compile(r"[\u3400-\u9fff]")


def load(name: str) -> list[dict]:
    return [json.loads(line) for line in files("jijian.eval").joinpath("data", name).read_text().splitlines()]


def segmenter(module: str) -> Callable[[str], list[str]] | None:
    try:
        imported = __import__(module)
    except ImportError:
        return None
    return (lambda text: list(imported.cut(text))) if module == "jieba" else imported.cut


def options() -> dict[str, tuple[str, Callable[[str], str], Callable[[str], str]]]:
    """name -> (FTS5 tokenizer, document transform, query builder)."""
    words = lambda text: " OR ".join(f'"{w}"' for w in re.findall(r"\w+", text))  # noqa: E731

    def trigram_query(text: str) -> str:
        grams = {run[i : i + 3] for run in re.findall(r"\w+", text) for i in range(max(1, len(run) - 2))}
        return " OR ".join(f'"{g}"' for g in grams if len(g) >= 3)

    out = {
        "unicode61": ("unicode61", lambda t: t, words),
        "trigram": ("trigram", lambda t: t, trigram_query),
    }
    for module in ("jieba", "rjieba"):
        cut = segmenter(module)
        if cut is not None:
            seg = lambda text, cut=cut: " ".join(w for w in cut(text) if w.strip())  # noqa: E731
            out[module] = ("unicode61", seg, lambda text, seg=seg: words(seg(text)))
    out["bigram"] = ("unicode61", index_text, fts_query)
    return out


def search(db: sqlite3.Connection, query: str, raw_query: str, k: int = 5) -> list[str]:
    if query:
        sql = "SELECT id FROM docs JOIN fts ON fts.rowid = docs.rowid WHERE fts MATCH ? ORDER BY bm25(fts) LIMIT ?"
        return [row[0] for row in db.execute(sql, (query, k))]
    # Nothing the index can answer (a 1-2 character query to a trigram index): scan.
    like = "%" + raw_query.replace("%", "") + "%"
    return [row[0] for row in db.execute("SELECT id FROM docs WHERE text LIKE ? LIMIT ?", (like, k))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="index the corpus 5 times for timing, not 20")
    args = parser.parse_args()
    corpus, questions = load("zh_corpus.jsonl"), load("zh_questions.jsonl")
    texts = [f"{doc['title']}\n{doc['text']}" for doc in corpus]
    repeat = 5 if args.quick else 20
    results = {}
    print(f"{'option':10} {'recall@5':>9} {'one-char':>9} {'index chars/s':>14} {'first call s':>13}")
    for name, (tokenizer, transform, build_query) in options().items():
        started = time.perf_counter()
        transform("预热")  # a segmenter loads its dictionary on first use
        first_call = time.perf_counter() - started
        db = sqlite3.connect(":memory:")
        db.execute("CREATE TABLE docs (rowid INTEGER PRIMARY KEY, id TEXT, text TEXT)")
        db.execute(f"CREATE VIRTUAL TABLE fts USING fts5(text, tokenize='{tokenizer}')")
        started = time.perf_counter()
        for _ in range(repeat):
            db.execute("DELETE FROM fts")
            db.executemany(
                "INSERT INTO fts (rowid, text) VALUES (?, ?)", [(i, transform(t)) for i, t in enumerate(texts)]
            )
        speed = repeat * sum(map(len, texts)) / (time.perf_counter() - started)
        rows = [(i, d["id"], t) for i, (d, t) in enumerate(zip(corpus, texts, strict=True))]
        db.executemany("INSERT INTO docs VALUES (?, ?, ?)", rows)
        found = sum(bool(set(search(db, build_query(q["query"]), q["query"])) & set(q["relevant"])) for q in questions)
        holding = {d["id"] for d, t in zip(corpus, texts, strict=True) if "茶" in t}
        one_char = len(set(search(db, build_query("茶"), "茶", k=50)) & holding) / len(holding)
        results[name] = found / len(questions)
        print(f"{name:10} {results[name]:9.3f} {one_char:9.2f} {speed:14,.0f} {first_call:13.2f}")
    ratio = results["bigram"] / results["unicode61"] if results["unicode61"] else float("inf")
    print(
        f"RESULT chinese_lexical_recall5_bigram_over_default {ratio:.2f} target > 1 {'PASS' if ratio > 1 else 'FAIL'}"
    )
    bigram = results["bigram"]
    print(f"RESULT chinese_lexical_recall5_bigram {bigram:.3f} target >= 0.8 {'PASS' if bigram >= 0.8 else 'FAIL'}")


if __name__ == "__main__":
    main()
