"""The plain condition language (the original one): parsing, evaluation and syntax errors.

JUEL and FEEL, and what plain gained with them, are in test_expression_dialects.py.
"""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from orchestrator.definitions.expressions import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Comparison,
    Constant,
    ExpressionError,
    ListLiteral,
    Not,
    Or,
    Variable,
    evaluate,
    evaluate_condition,
    parse_expression,
    referenced_variables,
)


def value(source: str, **variables: Any) -> Any:
    return evaluate(parse_expression(source), variables)


def holds(source: str, **variables: Any) -> bool:
    return evaluate_condition(parse_expression(source), variables)


# --- literals --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("42", 42),
        ("-7", -7),
        ("1.5", 1.5),
        ("-0.25", -0.25),
        ('"gold"', "gold"),
        ("'gold'", "gold"),
        ('""', ""),
        ("true", True),
        ("false", False),
        ("null", None),
        ('[1, "a", 2.5, null]', [1, "a", 2.5, None]),
        ("[]", []),
        ("[[1], [2, 3]]", [[1], [2, 3]]),
    ],
)
def test_literals(source: str, expected: Any) -> None:
    result = value(source)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (r'"say \"hi\""', 'say "hi"'),
        (r"'it\'s'", "it's"),
        (r'"back\\slash"', "back\\slash"),
        (r'"trailing\\"', "trailing\\"),
        (r"""'mixed "double" inside'""", 'mixed "double" inside'),
        (r'"it\'s escaped anyway"', "it's escaped anyway"),
    ],
)
def test_string_escapes(source: str, expected: str) -> None:
    assert value(source) == expected


def test_whitespace_is_insignificant() -> None:
    source = "\tamount\n>\r\n1000   and\tcustomer.tier  ==  'gold' "
    assert holds(source, amount=1001, customer={"tier": "gold"})
    assert holds("(amount>1000)&&(tier=='gold')", amount=2000, tier="gold")


# --- precedence and logic --------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("true or false and false", True),  # and binds tighter than or
        ("(true or false) and false", False),
        ("false and true or true", True),
        ("not true or true", True),  # not binds tighter than or
        ("not (true or true)", False),
        ("not false and false", False),  # not binds tighter than and
        ("not 1 == 2", True),  # comparison binds tighter than not
        ("not not true", True),
        ("!true || !false", True),
        ("true && !false", True),
        ("! (true && false)", True),
    ],
)
def test_precedence(source: str, expected: bool) -> None:
    assert value(source) is expected


def test_tree_shape() -> None:
    expr = parse_expression("a and b or not c == 1")
    assert expr.root == Or(
        (
            And((Variable("a"), Variable("b"))),
            Not(Comparison("==", Variable("c"), Constant(1))),
        )
    )
    assert expr.source == "a and b or not c == 1"
    assert expr.dialect == "plain"


def test_chains_are_flat() -> None:
    root = parse_expression(" or ".join(["x"] * 300)).root
    assert isinstance(root, Or)
    assert len(root.operands) == 300


def test_and_or_return_the_deciding_operand_like_python() -> None:
    assert value("name or 'anonymous'") == "anonymous"
    assert value("name or 'anonymous'", name="ada") == "ada"
    assert value("count and items", count=0, items=[1]) == 0
    assert value("count and items", count=2, items=[1]) == [1]


def test_evaluate_condition_returns_a_bool() -> None:
    expr = parse_expression("name or items")
    assert evaluate_condition(expr, {"name": "ada"}) is True
    assert evaluate_condition(expr, {"items": []}) is False
    assert evaluate_condition(parse_expression("amount"), {"amount": 3}) is True
    assert evaluate_condition(parse_expression("amount"), {}) is False


def test_gateway_examples() -> None:
    gold = parse_expression('amount > 1000 and customer.tier == "gold"')
    assert evaluate_condition(gold, {"amount": 1500, "customer": {"tier": "gold"}})
    assert not evaluate_condition(gold, {"amount": 1500, "customer": {"tier": "silver"}})
    assert not evaluate_condition(gold, {"amount": 999, "customer": {"tier": "gold"}})

    slow = parse_expression("not (express or priority >= 2)")
    assert evaluate_condition(slow, {"express": False, "priority": 1})
    assert not evaluate_condition(slow, {"express": True, "priority": 1})
    assert not evaluate_condition(slow, {"express": False, "priority": 2})

    assert holds('country in ["DE", "FR"]', country="FR")
    assert not holds('country in ["DE", "FR"]', country="US")
    assert holds("status != null", status="open")
    assert not holds("status != null")


# --- comparisons -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 == 1", True),
        ("1 == 1.0", True),
        ("1 != 1.0", False),
        ("'a' == 'a'", True),
        ("'a' != 'b'", True),
        ("null == null", True),
        ("true == true", True),
        ("true != false", True),
        ("[1, 'a'] == [1.0, 'a']", True),
        ("[1, 2] == [1, 2, 3]", False),
        ("2 < 3", True),
        ("3 < 3", False),
        ("3 <= 3", True),
        ("2.5 > 2", True),
        ("2 >= 2.0", True),
        ("2 >= 3", False),
        ("'apple' < 'banana'", True),
        ("'b' >= 'a'", True),
    ],
)
def test_comparison_operators(source: str, expected: bool) -> None:
    assert value(source) is expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("'1' == 1", False),
        ("'1' != 1", True),
        ("true == 1", False),
        ("false == 0", False),
        ("null == 0", False),
        ("null == false", False),
        ("null == ''", False),
        ("[1] == 1", False),
        ("1 < 'a'", False),
        ("'a' > 1", False),
        ("1 >= '1'", False),
        ("null < 1", False),
        ("1 > null", False),
        ("null <= null", False),
        ("true > 0", False),
        ("true >= false", False),
        ("[1] < [2]", False),
    ],
)
def test_type_mismatches_are_false_not_errors(source: str, expected: bool) -> None:
    assert value(source) is expected


def test_variable_values_compare_by_family() -> None:
    assert holds("x == 1", x=1.0)
    assert holds("x > 1", x=Decimal("1.5"))
    assert not holds("x < 1", x=Decimal("NaN"))
    assert not holds("x == 1", x=True)
    assert not holds("x > 0", x=True)
    assert holds("x == y", x={"a": [1, 2]}, y={"a": [1.0, 2.0]})
    assert not holds("x == y", x={"a": 1}, y={"a": True})
    assert holds("x == [1, 2]", x=(1, 2))


# --- variables -------------------------------------------------------------------------


def test_dotted_paths_resolve_into_nested_mappings() -> None:
    variables = {"order": {"customer": {"tier": "gold", "id": 7}}}
    assert value("order.customer.tier", **variables) == "gold"
    assert value("order.customer", **variables) == {"tier": "gold", "id": 7}
    assert holds("order.customer.id == 7", **variables)


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"order": None},
        {"order": "text"},
        {"order": {"customer": 5}},
        {"order": {"customer": {}}},
        {"order": [{"customer": {"tier": "gold"}}]},
    ],
)
def test_missing_paths_are_null(variables: dict[str, Any]) -> None:
    assert value("order.customer.tier", **variables) is None
    assert holds("order.customer.tier == null", **variables)
    assert not holds("order.customer.tier != null", **variables)
    assert not holds("order.customer.tier > 3", **variables)
    assert not holds("order.customer.tier < 3", **variables)
    assert not holds("order.customer.tier in ['gold']", **variables)


def test_missing_variable_examples() -> None:
    assert holds("x == null")
    assert not holds("x > 3")
    assert holds("not x")


def test_keywords_are_case_sensitive_and_paths_may_use_them_after_a_dot() -> None:
    assert value("True") is None  # an undefined variable, not the literal
    assert value("a.in", a={"in": 3}) == 3


def test_referenced_variables() -> None:
    expr = parse_expression(
        "amount > 1000 and (customer.tier == 'gold' or not vip) and x in [y.z, 1, amount]"
    )
    assert referenced_variables(expr) == frozenset({"amount", "customer.tier", "vip", "x", "y.z"})
    assert referenced_variables(parse_expression("true")) == frozenset()


# --- in --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "variables", "expected"),
    [
        ("'DE' in ['DE', 'FR']", {}, True),
        ("'US' in ['DE', 'FR']", {}, False),
        ("1 in [1.0, 2]", {}, True),
        ("'1' in [1, 2]", {}, False),
        ("true in [1]", {}, False),
        ("null in [null]", {}, True),
        ("x in [a, b]", {"x": 3, "a": 1, "b": 3}, True),
        ("x in allowed", {"x": "b", "allowed": ["a", "b"]}, True),
        ("x in allowed", {"x": "b", "allowed": ("a", "b")}, True),
        ("'old' in 'golden'", {}, True),
        ("'x' in 'golden'", {}, False),
        ("1 in '123'", {}, False),
        ("'a' in missing", {}, False),
        ("'a' in mapping", {"mapping": {"a": 1}}, False),
        ("1 in 1", {}, False),
        ("[1] in [[1], [2]]", {}, True),
    ],
)
def test_in(source: str, variables: dict[str, Any], expected: bool) -> None:
    assert value(source, **variables) is expected


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "position", "message"),
    [
        ('status == "open', 10, "unterminated string at column 11"),
        ("'abc\\", 0, "unterminated string at column 1"),
        ('"a\\n"', 2, "invalid escape '\\n' at column 3"),
        ("a @ b", 2, "unexpected character '@' at column 3"),
        ("a = 1", 2, "unexpected character '=' at column 3"),
        ("a & b", 2, "unexpected character '&' at column 3"),
        ("1.", 1, "unexpected character '.' at column 2"),
        ("a and", 5, "unexpected end of expression at column 6"),
        ("a or or b", 5, "unexpected token 'or' at column 6"),
        ("not", 3, "unexpected end of expression at column 4"),
        ("a ==", 4, "unexpected end of expression at column 5"),
        ("(a or )", 6, "unexpected token ')' at column 7"),
        ("a < b < c", 6, "chained comparison '<' is not allowed at column 7"),
        ("1 == 1 != 2", 7, "chained comparison '!=' is not allowed at column 8"),
        ("a in b in c", 7, "chained comparison 'in' is not allowed at column 8"),
        ("a == not b", 5, "unexpected token 'not' at column 6"),
        ("(a", 2, "expected ')' but found end of expression at column 3"),
        ("[1, 2", 5, "expected ']' but found end of expression at column 6"),
        ("[1 2]", 3, "expected ']' but found '2' at column 4"),
        ("[1,]", 3, "unexpected token ']' at column 4"),
        ("a b", 2, "unexpected token 'b' at column 3"),
        ("a)", 1, "unexpected token ')' at column 2"),
        ("", 0, "empty expression at column 1"),
        ("   ", 0, "empty expression at column 1"),
        ("true.x", 4, "unexpected character '.' at column 5"),
    ],
)
def test_syntax_errors(source: str, position: int, message: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        parse_expression(source)
    assert caught.value.position == position
    assert str(caught.value) == message


def test_nesting_limit() -> None:
    deepest = "(" * MAX_DEPTH + "x" + ")" * MAX_DEPTH
    assert value(deepest, x=5) == 5
    with pytest.raises(ExpressionError, match=r"nesting deeper than 50 levels at column 51"):
        parse_expression("(" + deepest + ")")
    with pytest.raises(ExpressionError, match="nesting deeper than 50") as caught:
        parse_expression("not " * (MAX_DEPTH + 1) + "x")
    assert caught.value.position == 4 * MAX_DEPTH
    with pytest.raises(ExpressionError, match="nesting deeper than 50"):
        parse_expression("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert value("!" * MAX_DEPTH + "true") is True


def test_length_limit() -> None:
    longest = "x == " + "1" * (MAX_LENGTH - 5)
    assert len(longest) == MAX_LENGTH
    parse_expression(longest)
    with pytest.raises(ExpressionError, match="longer than 2000 characters") as caught:
        parse_expression(longest + " ")
    assert caught.value.position == MAX_LENGTH
    assert str(caught.value).endswith("at column 2001")


def test_expression_error_is_a_value_error_and_pickles() -> None:
    with pytest.raises(ValueError, match="at column"):
        parse_expression("a @")
    error = ExpressionError("unexpected token ')'", 6)
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error) == "unexpected token ')' at column 7"
    assert copy.position == 6


def test_expressions_are_immutable_and_hashable() -> None:
    expr = parse_expression("a in [1, 2] and not b")
    with pytest.raises(FrozenInstanceError):
        expr.source = "other"  # type: ignore[misc]
    assert hash(expr) == hash(parse_expression("a in [1, 2] and not b"))
    assert isinstance(expr.root, And)
    assert expr.root.operands[0] == Comparison(
        "in", Variable("a"), ListLiteral((Constant(1), Constant(2)))
    )


# --- property: boolean logic matches Python --------------------------------------------

# A tree is a bool leaf, a variable name, ("not", t), ("and", l, r) or ("or", l, r).
Tree = Any
_NAMES = ("p", "q", "r")
_PRECEDENCE = {"or": 1, "and": 2, "not": 3}
_SPELLINGS = {"or": ("or", "||"), "and": ("and", "&&"), "not": ("not ", "!")}


def _trees() -> st.SearchStrategy[Tree]:
    leaves = st.booleans() | st.sampled_from(_NAMES)
    return st.recursive(
        leaves,
        lambda children: (
            st.tuples(st.just("not"), children)
            | st.tuples(st.sampled_from(["and", "or"]), children, children)
        ),
        max_leaves=12,
    )


def _python_value(tree: Tree, env: dict[str, bool]) -> bool:
    if isinstance(tree, bool):
        return tree
    if isinstance(tree, str):
        return env[tree]
    if tree[0] == "not":
        return not _python_value(tree[1], env)
    left, right = _python_value(tree[1], env), _python_value(tree[2], env)
    return (left and right) if tree[0] == "and" else (left or right)


def _render(tree: Tree, data: st.DataObject, minimum: int = 0) -> str:
    """Parenthesise only where precedence demands it, or where hypothesis chooses to."""
    if isinstance(tree, bool):
        return "true" if tree else "false"
    if isinstance(tree, str):
        return tree
    kind = tree[0]
    spelling = data.draw(st.sampled_from(_SPELLINGS[kind]))
    if kind == "not":
        text = spelling + _render(tree[1], data, _PRECEDENCE["not"])
    else:
        operands = [_render(child, data, _PRECEDENCE[kind]) for child in tree[1:]]
        text = f" {spelling} ".join(operands)
    if _PRECEDENCE[kind] < minimum or data.draw(st.booleans()):
        return f"({text})"
    return text


def _depth(tree: Tree) -> int:
    if isinstance(tree, bool | str):
        return 0
    return 1 + max(_depth(child) for child in tree[1:])


@given(
    tree=_trees(),
    env=st.fixed_dictionaries({name: st.booleans() for name in _NAMES}),
    data=st.data(),
)
def test_boolean_logic_matches_python(
    tree: Tree, env: dict[str, bool], data: st.DataObject
) -> None:
    assume(_depth(tree) * 2 <= MAX_DEPTH)  # each level may add a paren and a not
    expr = parse_expression(_render(tree, data))
    result = evaluate(expr, env)
    assert result is _python_value(tree, env)
    assert evaluate_condition(expr, env) is result
    assert referenced_variables(expr) <= set(_NAMES)
