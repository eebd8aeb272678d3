"""Metadata filter expressions: a small safe parser (no eval), compiled to SQL and to a Python predicate.

Grammar (case-insensitive keywords):
    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | atom
    atom       := "(" expr ")" | field op literal | field "in" "[" literal ("," literal)* "]"
    op         := "==" | "!=" | "<" | "<=" | ">" | ">="
    field      := name ("." name)*          (a path into the JSON metadata)
    literal    := number | "string" | 'string' | true | false

Semantics: a comparison is true only when the field exists and holds a value of the literal's kind
(number, string or boolean); otherwise it is false, never unknown, so `not` is plain negation.
`a != v` means `not (a == v)`. The SQL and the Python forms implement the same rule; the tests
check them against each other with hypothesis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from jijian.config.errors import UserInputError

Literal = bool | int | float | str


class FilterError(UserInputError):
    """A malformed filter expression."""


@dataclass(frozen=True)
class Compare:
    """`field op value`."""

    field: str
    op: str
    value: Literal


@dataclass(frozen=True)
class In:
    """`field in [values]`."""

    field: str
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class Not:
    """`not expr`."""

    operand: Expr


@dataclass(frozen=True)
class BoolOp:
    """`a and b and ...` or `a or b or ...`."""

    op: str  # "and" | "or"
    operands: tuple[Expr, ...]


Expr = Compare | In | Not | BoolOp

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            column = len(text) - len(text[pos:].lstrip()) + 1
            raise FilterError(f"filter: unexpected character {text[column - 1]!r} at column {column}")
        kind = match.lastgroup or ""
        value, column = match.group(kind), match.start(kind) + 1
        if kind == "name" and value.lower() in _KEYWORDS:
            kind, value = "keyword", value.lower()
        tokens.append((kind, value, column))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise FilterError(f"filter {self.text!r}: ends too early")
        self.i += 1
        return token

    def expect(self, value: str) -> None:
        _, got, col = self.take()
        if got != value:
            raise FilterError(f"filter: expected {value!r} at column {col}, got {got!r}")

    def at(self, value: str) -> bool:
        token = self.peek()
        return token is not None and token[1] == value and token[0] in ("keyword", "op")

    def parse(self) -> Expr:
        if not self.tokens:
            raise FilterError("filter: empty expression")
        expr = self.or_expr()
        leftover = self.peek()
        if leftover is not None:
            _, got, col = leftover
            raise FilterError(f"filter: unexpected {got!r} at column {col}")
        return expr

    def or_expr(self) -> Expr:
        operands = [self.and_expr()]
        while self.at("or"):
            self.take()
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def and_expr(self) -> Expr:
        operands = [self.not_expr()]
        while self.at("and"):
            self.take()
            operands.append(self.not_expr())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def not_expr(self) -> Expr:
        if self.at("not"):
            self.take()
            return Not(self.not_expr())
        return self.atom()

    def atom(self) -> Expr:
        if self.at("("):
            self.take()
            expr = self.or_expr()
            self.expect(")")
            return expr
        kind, field, col = self.take()
        if kind != "name":
            raise FilterError(f"filter: expected a field name at column {col}, got {field!r}")
        kind, op, col = self.take()
        if op == "in" and kind == "keyword":
            self.expect("[")
            values = [self.literal()]
            while self.at(","):
                self.take()
                values.append(self.literal())
            self.expect("]")
            return In(field, tuple(values))
        if kind != "op" or op not in _COMPARISONS:
            raise FilterError(f"filter: expected a comparison (==, !=, <, <=, >, >=, in) at column {col}, got {op!r}")
        return Compare(field, op, self.literal())

    def literal(self) -> Literal:
        kind, value, col = self.take()
        if kind == "number":
            return float(value) if any(c in value for c in ".eE") else int(value)
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", value[1:-1])
        if kind == "keyword" and value in ("true", "false"):
            return value == "true"
        raise FilterError(f"filter: expected a number, a quoted string, true or false at column {col}, got {value!r}")


def parse_filter(text: str) -> Expr:
    """Parse a filter expression; raises FilterError naming the column of the problem."""
    return _Parser(text).parse()


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


_PY_OPS = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def _lookup(metadata: dict[str, Any], field: str) -> tuple[bool, Any]:
    value: Any = metadata
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def matches(expr: Expr, metadata: dict[str, Any]) -> bool:
    """Evaluate `expr` against one metadata dict in Python (the reference semantics)."""
    if isinstance(expr, BoolOp):
        results = (matches(operand, metadata) for operand in expr.operands)
        return all(results) if expr.op == "and" else any(results)
    if isinstance(expr, Not):
        return not matches(expr.operand, metadata)
    if isinstance(expr, In):
        return any(matches(Compare(expr.field, "==", value), metadata) for value in expr.values)
    if expr.op == "!=":
        return not matches(Compare(expr.field, "==", expr.value), metadata)
    found, value = _lookup(metadata, expr.field)
    if not found or _kind(value) is None or _kind(value) != _kind(expr.value):
        return False
    if _kind(value) == "bool" and expr.op != "==":
        return bool(_PY_OPS[expr.op](int(value), int(expr.value)))
    return bool(_PY_OPS[expr.op](value, expr.value))


_SQL_TYPES = {"number": "('integer','real')", "string": "('text')", "bool": "('true','false')"}


def to_sql(expr: Expr, column: str = "metadata") -> tuple[str, list[Any]]:
    """Compile `expr` to a SQLite condition over the JSON `column` and its parameters (never NULL)."""
    params: list[Any] = []

    def compile_(node: Expr) -> str:
        if isinstance(node, BoolOp):
            return "(" + f" {node.op.upper()} ".join(compile_(operand) for operand in node.operands) + ")"
        if isinstance(node, Not):
            return f"(NOT {compile_(node.operand)})"
        if isinstance(node, In):
            return "(" + " OR ".join(compile_(Compare(node.field, "==", value)) for value in node.values) + ")"
        if node.op == "!=":
            return compile_(Not(Compare(node.field, "==", node.value)))
        path = "$." + ".".join(f'"{part}"' for part in node.field.split("."))
        kind = _kind(node.value)
        value = int(node.value) if kind == "bool" else node.value
        # COALESCE: a missing field makes json_type NULL; the rule says "false", not "unknown".
        params.extend([path, path, value])
        assert kind is not None  # the parser accepts only literals of a known kind
        return f"COALESCE(json_type({column}, ?) IN {_SQL_TYPES[kind]} AND json_extract({column}, ?) {node.op} ?, 0)"

    return compile_(expr), params
