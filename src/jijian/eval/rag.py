"""`jijian eval rag`: ask each question through an OpenAI-compatible server with RAG and score its citations.

A question scores when one of the passages the server cites (the `citations` of its chat completion,
`jijian serve`'s `rag` extension) is relevant, by the same id rule as `jijian.eval.metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import httpx

from jijian.config.errors import UserInputError
from jijian.eval.metrics import matched_label
from jijian.eval.questions import Question


class RagEvalError(UserInputError):
    """The server refused or answered a question with something that is not a chat completion."""


def ask(
    client: httpx.Client, question: Question, *, collection: str, top_k: int, model: str | None, max_tokens: int
) -> dict[str, Any]:
    """One chat completion with RAG for `question`: the answer text and the cited ids."""
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": question.query}],
        "rag": {"collection": collection, "top_k": top_k},
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if model:
        body["model"] = model
    try:
        response = client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as exc:
        raise RagEvalError(f"line {question.line}: cannot reach the server ({exc})") from None
    if response.status_code != 200:
        raise RagEvalError(f"line {question.line}: the server answered {response.status_code}: {response.text[:300]}")
    try:
        payload = response.json()
        answer = payload["choices"][0]["message"]["content"] or ""
        cited = [str(citation["id"]) for citation in payload.get("citations", [])]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RagEvalError(
            f"line {question.line}: the server's answer is not a chat completion with citations"
        ) from None
    return {"answer": answer, "cited": cited}


def evaluate_rag(
    client: httpx.Client,
    questions: Sequence[Question],
    *,
    collection: str,
    top_k: int = 4,
    model: str | None = None,
    max_tokens: int = 64,
) -> dict[str, Any]:
    """Share of questions whose cited passages include a relevant one (and where the first one ranks)."""
    started = time.perf_counter()
    results = []
    for question in questions:
        reply = ask(client, question, collection=collection, top_k=top_k, model=model, max_tokens=max_tokens)
        rank = next((i for i, cited in enumerate(reply["cited"], 1) if matched_label(cited, question.relevant)), None)
        results.append({"line": question.line, "query": question.query, "relevant_rank": rank, **reply})
    found = [r for r in results if r["relevant_rank"] is not None]
    return {
        "collection": collection,
        "top_k": top_k,
        "questions": len(results),
        "cited_relevant": len(found) / len(results) if results else 0.0,
        "first_relevant_citation_mrr": sum(1.0 / r["relevant_rank"] for r in found) / len(results) if results else 0.0,
        "seconds": time.perf_counter() - started,
        "results": results,
    }
