"""The three syntaxes of conditions: JUEL (${...}), FEEL (=...) and plain, one evaluator."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from orchestrator.definitions.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    Call,
    Comparison,
    Constant,
    Dialect,
    Expression,
    ExpressionError,
    Index,
    UnaryTests,
    Variable,
    evaluate,
    evaluate_condition,
    parse_expression,
    referenced_variables,
)

VARIABLES: dict[str, Any] = {
    "amount": 1500,
    "approved": True,
    "items": [10, 20, 30],
    "none": [],
    "a": True,
    "b": False,
    "x": 5,
    "name": "Grace",
    "s": "a",
    "foo": None,
    "order": {"customer": {"tier": "gold"}, "lines": [{"sku": "A-1"}]},
}


def value(source: str, **variables: Any) -> Any:
    return evaluate(parse_expression(source), variables or VARIABLES)


# --- detection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "dialect"),
    [
        ("amount > 1000", "plain"),
        ("${amount > 1000}", "juel"),
        ("  #{amount > 1000} ", "juel"),
        ("=amount > 1000", "feel"),
        ("  = amount > 1000", "feel"),
        ("x == '${y}'", "plain"),
    ],
)
def test_dialect_detection(source: str, dialect: Dialect) -> None:
    expr = parse_expression(source)
    assert expr.dialect == dialect
    assert expr.source == source


def test_an_explicit_dialect_wins() -> None:
    expr = parse_expression("amount > 1000 and x = 5", "feel")
    assert expr.dialect == "feel"
    assert evaluate_condition(expr, VARIABLES)
    assert evaluate_condition(parse_expression("= x = 5", "feel"), VARIABLES)
    with pytest.raises(ExpressionError, match=r"expected '\$\{' or '#\{' but found 'x'"):
        parse_expression("x > 1", "juel")


def test_all_dialects_share_one_tree() -> None:
    trees = {
        parse_expression(source).root
        for source in ("amount > 1000", "${amount > 1000}", "${amount gt 1000}", "= amount > 1000")
    }
    assert trees == {Comparison(">", Variable("amount"), Constant(1000))}
    assert parse_expression("=items[1]").root == Index(Variable("items"), Constant(1))
    assert parse_expression("= count(items)").root == Call("count", (Variable("items"),))


# --- JUEL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("${amount > 1000}", True),
        ("${amount <= 1000}", False),
        ("${approved == true}", True),
        ("${approved eq false}", False),
        ("${x gt 3 and x le 5}", True),
        ("${x ne 5 || x lt 0}", False),
        ("${empty items}", False),
        ("${empty none}", True),
        ("${empty missing}", True),
        ("${empty ''}", True),
        ("${not empty items}", True),
        ("${a && !b}", True),
        ("${a && b}", False),
        ("${!a || missing}", False),  # null coerces to false
        ("${x ? 1 : 2}", None),  # 5 is no boolean: an EL error, so null
        ("${a ? 1 : 2}", 1),
        ("${missing ? 1 : 2}", 2),
        ("#{x > 3}", True),
        ("${order.customer.tier == 'gold'}", True),
        ('${order.customer.tier == "gold"}', True),
        ("${order.lines[0].sku}", "A-1"),
        ("${order['customer'].tier}", "gold"),
        ("${items[0]}", 10),
        ("${items[3]}", None),
        ("${items[-1]}", None),
        ("${7 div 2}", 3.5),
        ("${7 / 2}", 3.5),
        ("${-7 mod 3}", -1),  # Java's remainder
        ("${-7 % 3}", -1),
        ("${'a' + 'b'}", "ab"),
        ("${x in [1, 5]}", True),
        ("${1 / 0}", None),
    ],
)
def test_juel(source: str, expected: Any) -> None:
    result = value(source)
    assert result == expected
    assert type(result) is type(expected)


# --- FEEL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("=amount > 1000", True),
        ("= count(items) >= 2", True),
        ("= count(none) >= 2", False),
        ("= count(x)", None),
        ("= x in [1..10]", True),
        ("= x in [1..5)", False),
        ("= x in (5..10]", False),
        ("= x in [6..10]", False),
        ("= x in (1, 5, 7)", True),
        ('= name in ("Ada", "Grace")', True),
        ("= x in ([1..3], [5..6])", True),
        ("= x in [4, 5]", True),
        ("= x in 5", True),
        ("= missing in [1..10]", None),
        ("=string length(name) > 3", True),
        ("= string  length(name)", 5),
        ('= upper case(s) = "A"', True),
        ('= lower case("ABC")', "abc"),
        ('= contains(name, "ace")', True),
        ("= contains(name, 1)", None),
        ("= is defined(foo)", True),  # present, even though null
        ("= is defined(bar)", False),
        ("= is defined(order.customer.tier)", True),
        ("= is defined(order.customer.id)", False),
        ("= {a: 1}.a = 1", True),
        ('= {a: 1, "b c": 2}', {"a": 1, "b c": 2}),
        ('= if x > 3 then "a" else "b"', "a"),
        ('= if x then "a" else "b"', "b"),  # only true takes the then branch
        ("=items[1]", 10),
        ("=items[3]", 30),
        ("=items[-1]", 30),
        ("=items[0]", None),
        ("=items[4]", None),
        ("= sum(items)", 60),
        ("= sum(1, 2.5)", 3.5),
        ("= sum([])", None),
        ("= min(items)", 10),
        ("= max(3, 9, 4)", 9),
        ('= max(["a", "c", "b"])', "c"),
        ('= min([1, "a"])', None),
        ("= not(a)", False),
        ("= not(missing)", None),
        ("= a and b", False),
        ("= a and missing", None),
        ("= b and missing", False),  # false and null = false
        ("= a or missing", True),  # true or null = true
        ("= b or missing", None),
        ("= missing < 3", None),
        ('= 1 = "1"', None),
        ("= x = null", False),
        ("= missing = null", True),
        ("= missing != null", False),
        ("= 7 / 2", 3.5),
        ("= 1 / 0", None),
        ('= "a" + "b"', "ab"),
        ("= 2 * (3 + 4) - -1", 15),
        ("= [1, 2] = [1, 2]", True),
    ],
)
def test_feel(source: str, expected: Any) -> None:
    result = value(source)
    assert result == expected
    assert type(result) is type(expected)


def test_feel_in_is_a_unary_test() -> None:
    root = parse_expression("= x in [1..10]").root
    assert isinstance(root, UnaryTests)
    assert referenced_variables(parse_expression("= is defined(foo) and x in (y..z)")) == {
        "foo",
        "x",
        "y",
        "z",
    }


# --- semantics shared by all ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("plain", "juel", "feel"),
    [
        ("1 == 1.0", "${1 == 1.0}", "= 1 = 1.0"),
        ("2 < 2.5", "${2 < 2.5}", "= 2 < 2.5"),
        (
            "order.customer.tier == 'gold'",
            "${order.customer.tier == 'gold'}",
            '= order.customer.tier = "gold"',
        ),
        ("amount * 2 + 1 == 3001", "${amount * 2 + 1 == 3001}", "= amount * 2 + 1 = 3001"),
        ("missing == null", "${missing == null}", "= missing = null"),
        ("x % 3 == 2", "${x % 3 == 2}", "= x % 3 = 2"),
    ],
)
def test_common_subset_holds_in_every_dialect(plain: str, juel: str, feel: str) -> None:
    for source in (plain, juel, feel):
        assert evaluate_condition(parse_expression(source), VARIABLES), source


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true == 1", False),
        ("${true == 1}", False),
        ("= true = 1", None),
        ("1 + true", None),
        ("${1 + true}", None),
        ("= 1 + true", None),
        ("'a' + 1", None),
        ("-'a'", None),
        ("= -missing", None),
    ],
)
def test_bool_is_never_a_number_and_type_errors_are_null_or_false(
    source: str, expected: Any
) -> None:
    assert value(source) is expected


def test_plain_gains_arithmetic_indexing_and_the_conditional() -> None:
    assert value("amount * 2 + 1 > 3000") is True
    assert value("items[1]") == 20
    assert value("items[0] + items[2]") == 40
    assert value("order.lines[0].sku") == "A-1"
    assert value("x > 3 ? 'big' : 'small'") == "big"
    assert value("empty none") is True
    assert value("- -3") == 3
    # "empty" is a keyword only before an operand: a variable of that name still reads.
    assert value("empty + 1", empty=2) == 3
    assert value("empty and x", empty=0, x=1) == 0


class _Hostile:
    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no")

    def __bool__(self) -> bool:
        raise RuntimeError("no")

    __hash__ = object.__hash__


@pytest.mark.parametrize(
    "source", ["x == y", "${x == y}", "= x = y", "x", "not x", "${x + 1}", "= x in [y]"]
)
def test_evaluation_never_raises(source: str) -> None:
    expr = parse_expression(source)
    variables = {"x": _Hostile(), "y": _Hostile()}
    evaluate(expr, variables)
    assert evaluate_condition(expr, variables) in (True, False)


def test_conditions_are_strict_in_juel_and_feel() -> None:
    assert evaluate_condition(parse_expression("amount"), VARIABLES) is True
    assert evaluate_condition(parse_expression("${amount}"), VARIABLES) is False
    assert evaluate_condition(parse_expression("= amount"), VARIABLES) is False
    assert evaluate_condition(parse_expression("= missing > 1"), VARIABLES) is False


def test_expressions_pickle_hash_and_stay_immutable() -> None:
    for source in ("= x in [1..10]", "${a && !b}", "a and b"):
        expr = parse_expression(source)
        copy = pickle.loads(pickle.dumps(expr))
        assert copy == expr
        assert hash(copy) == hash(expr)
        assert evaluate(copy, VARIABLES) == evaluate(expr, VARIABLES)
    assert Expression("=x", Variable("x"), "feel") == parse_expression("=x")


# --- refusals and syntax errors ----------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("${order.getTotal()}", "method calls are not supported at column 9"),
        ('${execution.getVariable("x")}', "'execution' is not available at column 3"),
        ("${execution}", "'execution' is not available at column 3"),
        ("${task.name == 'x'}", "'task' is not available at column 3"),
        ("${S(json).prop('a')}", "Spin's S() is not supported at column 3"),
        ("${foo(1)}", "function calls are not supported at column 3"),
        ("${items[0].size()}", "method calls are not supported at column 3"),
        ("= foo(1)", "unknown function 'foo' at column 3"),
        ("= order.total()", "method calls are not supported at column 9"),
        ("= count(items, 2)", "count() takes 1 argument at column 3"),
        ("= contains(name)", "contains() takes 2 arguments at column 3"),
        ("= sum()", "sum() takes at least 1 argument at column 3"),
        ("= {a: 1, a: 2}", "duplicate context key 'a' at column 10"),
        ("foo(1)", "function calls are not supported at column 1"),
        ("${(a && b}", "expected ')' but found '}' at column 10"),
        ("${a && b)}", "expected '}' but found ')' at column 9"),
        ("${a", "expected '}' but found end of expression at column 4"),
        ("${a} and ${b}", "unexpected token 'and' at column 6"),
        ("= (a and b", "expected ')' but found end of expression at column 11"),
        ("= a and b)", "unexpected token ')' at column 10"),
        ("= count(items", "expected ')' but found end of expression at column 14"),
        ("= x in [1..10", "expected ')' or ']' but found end of expression at column 14"),
        ("= if a then b", "expected 'else' but found end of expression at column 14"),
        ("= {a 1}", "expected ':' but found '1' at column 6"),
        ("${a ? b}", "expected ':' but found '}' at column 8"),
        ("= a == b", "unexpected token '=' at column 6"),
        ("= 'single'", 'unexpected character "\'" at column 3'),
        ('= "open', "unterminated string at column 3"),
        (r'= "a\q"', "invalid escape '\\q' at column 5"),
        ("= a && b", "unexpected character '&' at column 5"),
        ("= a < b < c", "chained comparison '<' is not allowed at column 9"),
        ("=", "empty expression at column 2"),
        ("${}", "unexpected token '}' at column 3"),
    ],
)
def test_refusals_name_what_and_where(source: str, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(source)
    assert str(caught.value) == message
    assert caught.value.position == int(message.rsplit(" ", 1)[1]) - 1


@pytest.mark.parametrize(
    ("opener", "closer"),
    [("${", "}"), ("= ", "")],
)
def test_limits_in_every_dialect(opener: str, closer: str) -> None:
    deepest = "(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH
    assert evaluate(parse_expression(opener + deepest + closer), {"x": 5}) == 5
    with pytest.raises(ExpressionError, match="nesting deeper than 50 levels") as caught:
        parse_expression(opener + "(" + deepest + ")" + closer)
    assert caught.value.position == len(opener) + MAX_DEPTH
    with pytest.raises(ExpressionError, match="nesting deeper than 50"):
        parse_expression(opener + "-" * (MAX_DEPTH + 1) + "1" + closer)
    with pytest.raises(ExpressionError, match="nesting deeper than 50"):
        parse_expression(opener + "a" + "[0]" * (MAX_DEPTH + 1) + closer)
    longest = opener + "x == " + "1" * (MAX_LENGTH - 5 - len(opener + closer)) + closer
    if opener.startswith("="):
        longest = longest.replace("==", "= ")
    assert len(longest) == MAX_LENGTH
    parse_expression(longest)
    with pytest.raises(ExpressionError, match="longer than 2000 characters"):
        parse_expression(longest + " ")


def test_long_flat_chains_are_not_nesting() -> None:
    chain = " + ".join(["1"] * 400)
    assert value(chain) == 400
    assert value("= " + chain) == 400
    ternaries = "".join(f"x == {i} ? {i} : " for i in range(MAX_DEPTH)) + "-1"
    with pytest.raises(ExpressionError, match="nesting deeper than 50"):
        parse_expression(ternaries)


# --- property: arithmetic and logic match Python, in every dialect --------------------------

# An arithmetic tree is an int, ("neg", t) or (op, left, right) with op in + - *.
# A boolean tree is a bool, ("cmp", op, int, int), ("not", t) or ("and"/"or", left, right).
Tree = Any
_WRAP: dict[Dialect, tuple[str, str]] = {"plain": ("", ""), "juel": ("${", "}"), "feel": ("= ", "")}
_COMPARE_SPELLINGS: dict[Dialect, dict[str, tuple[str, ...]]] = {
    "plain": {"==": ("==",), "!=": ("!=",), "<": ("<",), ">=": (">=",)},
    "juel": {"==": ("==", "eq"), "!=": ("!=", "ne"), "<": ("<", "lt"), ">=": (">=", "ge")},
    "feel": {"==": ("=",), "!=": ("!=",), "<": ("<",), ">=": (">=",)},
}
_LOGIC_SPELLINGS: dict[Dialect, dict[str, tuple[str, ...]]] = {
    "plain": {"and": ("and", "&&"), "or": ("or", "||")},
    "juel": {"and": ("and", "&&"), "or": ("or", "||")},
    "feel": {"and": ("and",), "or": ("or",)},
}


def _arithmetic_trees() -> st.SearchStrategy[Tree]:
    return st.recursive(
        st.integers(min_value=0, max_value=20),
        lambda children: (
            st.tuples(st.just("neg"), children)
            | st.tuples(st.sampled_from(["+", "-", "*"]), children, children)
        ),
        max_leaves=10,
    )


def _boolean_trees() -> st.SearchStrategy[Tree]:
    comparison = st.tuples(
        st.just("cmp"),
        st.sampled_from(["==", "!=", "<", ">="]),
        st.integers(min_value=-3, max_value=3),
        st.integers(min_value=-3, max_value=3),
    )
    return st.recursive(
        st.booleans() | comparison,
        lambda children: (
            st.tuples(st.just("not"), children)
            | st.tuples(st.sampled_from(["and", "or"]), children, children)
        ),
        max_leaves=10,
    )


def _depth(tree: Tree) -> int:
    if not isinstance(tree, tuple) or tree[0] == "cmp":
        return 0
    return 1 + max(_depth(child) for child in tree[1:])


def _python_arithmetic(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    if tree[0] == "neg":
        return -_python_arithmetic(tree[1])
    left, right = _python_arithmetic(tree[1]), _python_arithmetic(tree[2])
    return {"+": left + right, "-": left - right, "*": left * right}[tree[0]]


def _python_boolean(tree: Tree) -> bool:
    if isinstance(tree, bool):
        return tree
    kind = tree[0]
    if kind == "cmp":
        _, op, left, right = tree
        return {"==": left == right, "!=": left != right, "<": left < right, ">=": left >= right}[
            op
        ]
    if kind == "not":
        return not _python_boolean(tree[1])
    left_value, right_value = _python_boolean(tree[1]), _python_boolean(tree[2])
    return (left_value and right_value) if kind == "and" else (left_value or right_value)


def _operand(text: str, tree: Tree) -> str:
    return text if isinstance(tree, int | bool) else f"({text})"


def _render_arithmetic(tree: Tree) -> str:
    if isinstance(tree, int):
        return str(tree)
    if tree[0] == "neg":
        return "-" + _operand(_render_arithmetic(tree[1]), tree[1])
    left, right = (_operand(_render_arithmetic(child), child) for child in tree[1:])
    return f"{left} {tree[0]} {right}"


def _render_boolean(tree: Tree, dialect: Dialect, data: st.DataObject) -> str:
    if isinstance(tree, bool):
        return "true" if tree else "false"
    kind = tree[0]
    if kind == "cmp":
        _, op, left, right = tree
        spelling = data.draw(st.sampled_from(_COMPARE_SPELLINGS[dialect][op]))
        return f"{left} {spelling} {right}"
    if kind == "not":
        operand = _render_boolean(tree[1], dialect, data)
        if dialect == "feel":
            return f"not({operand})"
        return data.draw(st.sampled_from(["not ", "!"])) + f"({operand})"
    spelling = data.draw(st.sampled_from(_LOGIC_SPELLINGS[dialect][kind]))
    left, right = (f"({_render_boolean(child, dialect, data)})" for child in tree[1:])
    return f"{left} {spelling} {right}"


_DIALECTS = st.sampled_from(["plain", "juel", "feel"])


@settings(max_examples=200, deadline=None)
@given(tree=_arithmetic_trees(), dialect=_DIALECTS)
def test_arithmetic_matches_python(tree: Tree, dialect: Dialect) -> None:
    assume(_depth(tree) * 2 < MAX_DEPTH)  # each level may add a paren and a minus
    opener, closer = _WRAP[dialect]
    expr = parse_expression(opener + _render_arithmetic(tree) + closer)
    assert expr.dialect == dialect
    result = evaluate(expr, {})
    assert result == _python_arithmetic(tree)
    assert type(result) is int


@settings(max_examples=200, deadline=None)
@given(tree=_boolean_trees(), dialect=_DIALECTS, data=st.data())
def test_boolean_logic_matches_python_in_every_dialect(
    tree: Tree, dialect: Dialect, data: st.DataObject
) -> None:
    assume(_depth(tree) * 2 < MAX_DEPTH)
    opener, closer = _WRAP[dialect]
    expr = parse_expression(opener + _render_boolean(tree, dialect, data) + closer)
    expected = _python_boolean(tree)
    assert evaluate(expr, {}) is expected
    assert evaluate_condition(expr, {}) is expected
