"""Filter expressions: parser errors, and SQL semantics equal to the Python oracle (hypothesis)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jijian.kb.filters import BoolOp, Compare, FilterError, In, Not, matches, parse_filter, to_sql

FIELDS = ["a", "b", "c.d"]
values = st.one_of(
    st.integers(-5, 5), st.floats(-5, 5, allow_nan=False), st.sampled_from(["x", "y", "z"]), st.booleans()
)
metadata = st.fixed_dictionaries(
    {}, optional={"a": values, "b": values, "c": st.one_of(values, st.fixed_dictionaries({}, optional={"d": values}))}
)
atoms = st.one_of(
    st.builds(Compare, st.sampled_from(FIELDS), st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), values),
    st.builds(In, st.sampled_from(FIELDS), st.lists(values, min_size=1, max_size=3).map(tuple)),
)
exprs = st.recursive(
    atoms,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(BoolOp, st.sampled_from(["and", "or"]), st.lists(children, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=6,
)


def render(expr) -> str:
    """Back to text, so the parser is exercised too."""
    if isinstance(expr, BoolOp):
        return "(" + f" {expr.op} ".join(render(operand) for operand in expr.operands) + ")"
    if isinstance(expr, Not):
        return f"not {render(expr.operand)}"
    if isinstance(expr, In):
        return f"{expr.field} in [{', '.join(literal(v) for v in expr.values)}]"
    return f"{expr.field} {expr.op} {literal(expr.value)}"


def literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


@settings(max_examples=150, deadline=None)
@given(expr=exprs, rows=st.lists(metadata, min_size=1, max_size=12))
def test_sql_matches_the_python_oracle(expr, rows):
    parsed = parse_filter(render(expr))
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (metadata TEXT)")
    db.executemany("INSERT INTO t VALUES (?)", [(json.dumps(row),) for row in rows])
    sql, params = to_sql(parsed)
    got = [row[0] for row in db.execute(f"SELECT rowid - 1 FROM t WHERE {sql} ORDER BY rowid", params)]
    expected = [i for i, row in enumerate(rows) if matches(expr, row)]
    assert got == expected
    assert [i for i, row in enumerate(rows) if matches(parsed, row)] == expected


def test_parses_precedence_and_literals():
    expr = parse_filter("a == 1 or b == 'it\\'s' and not c.d >= 2.5")
    assert expr == BoolOp(
        "or", (Compare("a", "==", 1), BoolOp("and", (Compare("b", "==", "it's"), Not(Compare("c.d", ">=", 2.5)))))
    )
    assert matches(parse_filter("a != 1"), {}) and not matches(parse_filter("a == 1"), {"a": "1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("a >", "ends too early"),
        ("a = 1", "column 3"),
        ("a in 3", "expected '['"),
        ("a == 1 b", "unexpected 'b'"),
        ("1 == a", "field name"),
        ("a == b", "expected a number"),
        ("a == 1; drop table t", "unexpected character"),
    ],
)
def test_malformed_filters_name_the_problem(text, message):
    with pytest.raises(FilterError, match=re.escape(message)):
        parse_filter(text)
