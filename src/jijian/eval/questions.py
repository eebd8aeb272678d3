"""Labelled question files: one JSON object per line, `{"query": "...", "relevant": ["id", ...]}`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from jijian.config.errors import UserInputError
from jijian.files import iter_json_lines

MAX_QUERY_CHARS = 4096
MAX_QUESTIONS = 100_000
# Sets shipped with jijian, usable by name wherever a questions file is expected.
SHIPPED = {
    "stdlib-en": "stdlib_questions.jsonl",
    "zh": "zh_questions.jsonl",
}


class QuestionsError(UserInputError):
    """A questions file that cannot be used: malformed JSON, a missing field, an id not in the collection."""


@dataclass(frozen=True)
class Question:
    """One labelled query and the line it came from."""

    query: str
    relevant: tuple[str, ...]
    line: int


def shipped_path(name: str) -> Path:
    """The file of a shipped set (`stdlib-en`, `zh`) or of the shipped Chinese corpus (`zh-corpus`)."""
    file = "zh_corpus.jsonl" if name == "zh-corpus" else SHIPPED[name]
    return Path(str(files("jijian.eval").joinpath("data", file)))


def resolve(path_or_name: str | Path) -> Path:
    """A questions file path, or the path of a shipped set named by `SHIPPED`'s keys."""
    if str(path_or_name) in SHIPPED and not Path(path_or_name).exists():
        return shipped_path(str(path_or_name))
    return Path(path_or_name)


def load_questions(path: Path) -> list[Question]:
    """Every question of `path`; a bad line raises `QuestionsError` naming the file and line."""
    if not path.is_file():
        raise QuestionsError(f"{path}: no such questions file (or a shipped set: {', '.join(SHIPPED)})")
    questions = []
    for where, number, row in iter_json_lines(path, error=QuestionsError):
        if not isinstance(row, dict):
            raise QuestionsError(f"{where}: expected an object with 'query' and 'relevant'")
        query, relevant = row.get("query"), row.get("relevant")
        if not isinstance(query, str) or not query.strip():
            raise QuestionsError(f"{where}: 'query' must be a non-empty string")
        if len(query) > MAX_QUERY_CHARS:
            raise QuestionsError(f"{where}: 'query' is longer than {MAX_QUERY_CHARS} characters")
        if not isinstance(relevant, list) or not relevant or not all(isinstance(r, str) and r for r in relevant):
            raise QuestionsError(f"{where}: 'relevant' must be a non-empty list of id strings")
        questions.append(Question(query, tuple(relevant), number))
        if len(questions) > MAX_QUESTIONS:
            raise QuestionsError(f"{where}: more than {MAX_QUESTIONS} questions")
    if not questions:
        raise QuestionsError(f"{path}: holds no questions")
    return questions


def check_ids(questions: Iterable[Question], known_ids: Iterable[str], path: Path, collection: str) -> None:
    """Every relevant id must name a record of the collection (or a dotted prefix of one's id)."""
    known = set(known_ids)
    prefixes = {record_id[:i] for record_id in known for i, char in enumerate(record_id) if char == "."}
    for question in questions:
        for label in question.relevant:
            if label not in known and label not in prefixes:
                raise QuestionsError(
                    f"{path}:{question.line}: relevant id {label!r} is not in collection {collection!r}"
                )
