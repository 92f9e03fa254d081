"""Syntax tree to Python closures, compiled once per expression, and the values' semantics.

Gateway conditions run on the engine's hot path, so a tree is not interpreted node by node
on every evaluation: ``compile_node`` turns it into nested closures once. No text ever
reaches eval, exec or compile.

The rules every dialect shares: a missing variable path is null; bool is never a number;
ints and floats compare numerically; a type error or a division by zero gives null. Where
the dialects differ:

- plain keeps the original language's logic: and/or return the deciding operand, as in
  Python, and ``not`` and conditions go by truthiness;
- JUEL coerces logic operands to booleans (null is false, other non-booleans are an error);
- FEEL's logic is three-valued (false and null = false, true or null = true), comparing
  with null or across types orders to null, and lists count from 1.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from numbers import Real
from typing import Any, TypeAlias

from orchestrator.definitions.expressions.nodes import (
    And,
    Arithmetic,
    Call,
    Comparison,
    Conditional,
    Constant,
    ContextLiteral,
    Dialect,
    Empty,
    Index,
    ListLiteral,
    Member,
    Negate,
    Node,
    Not,
    Or,
    Range,
    UnaryTests,
    Variable,
)

__all__ = ["FUNCTIONS", "Compiled", "compile_node"]

Compiled: TypeAlias = Callable[[Mapping[str, Any]], Any]
_Binary: TypeAlias = Callable[[Any, Any], Any]

# FEEL's built-in functions: name -> (fewest, most) arguments; None is any number.
FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "count": (1, 1),
    "sum": (1, None),
    "min": (1, None),
    "max": (1, None),
    "contains": (2, 2),
    "string length": (1, 1),
    "upper case": (1, 1),
    "lower case": (1, 1),
    "is defined": (1, 1),
}


def compile_node(node: Node, dialect: Dialect) -> Compiled:
    """A function of the variables that computes ``node``; it may raise on exotic values."""
    return _COMPILERS[type(node)](node, dialect)


# --- values ----------------------------------------------------------------------------

_FAST_ORDERED = frozenset({int, float, str})


def _family(value: Any) -> str:
    """Values compare only within one family; bool is deliberately not a number."""
    if value is None or isinstance(value, bool | str):
        return type(value).__name__
    if isinstance(value, Real | Decimal):
        return "number"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "map"
    return "other"


def _is_number(value: Any) -> bool:
    return isinstance(value, Real | Decimal) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    kind = type(left)
    if kind is type(right) and kind in _FAST_ORDERED:
        return bool(left == right)
    family = _family(left)
    if family != _family(right):
        return False
    if family == "list":
        return len(left) == len(right) and all(map(_equal, left, right))
    if family == "map":
        return left.keys() == right.keys() and all(_equal(left[k], right[k]) for k in left)
    if family == "other" and type(left) is not type(right):
        return False
    return (left == right) is True


def _not_equal(left: Any, right: Any) -> bool:
    return not _equal(left, right)


def _feel_equal(left: Any, right: Any) -> bool | None:
    kind = type(left)
    if kind is type(right) and kind in _FAST_ORDERED:
        return bool(left == right)
    if left is None or right is None:
        return left is right
    if _family(left) != _family(right):
        return None
    return _equal(left, right)


def _feel_not_equal(left: Any, right: Any) -> bool | None:
    equal = _feel_equal(left, right)
    return None if equal is None else not equal


def _ordering(compare: _Binary, mismatch: bool | None) -> _Binary:
    """``compare`` within numbers or within strings; ``mismatch`` for anything else."""

    def test(left: Any, right: Any) -> Any:
        kind = type(left)
        if kind is type(right) and kind in _FAST_ORDERED:
            return compare(left, right)
        family = _family(left)
        if family not in ("number", "str") or family != _family(right):
            return mismatch
        try:
            return bool(compare(left, right))
        except (TypeError, ArithmeticError):  # e.g. Decimal("NaN") signals on ordering
            return mismatch

    return test


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, list | tuple):
        return any(_equal(item, element) for element in container)
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    return False


_COMPARE: dict[bool, dict[str, _Binary]] = {
    False: {
        "==": _equal,
        "!=": _not_equal,
        "<": _ordering(operator.lt, False),
        "<=": _ordering(operator.le, False),
        ">": _ordering(operator.gt, False),
        ">=": _ordering(operator.ge, False),
        "in": _contains,
    },
    True: {  # FEEL
        "==": _feel_equal,
        "!=": _feel_not_equal,
        "<": _ordering(operator.lt, None),
        "<=": _ordering(operator.le, None),
        ">": _ordering(operator.gt, None),
        ">=": _ordering(operator.ge, None),
        "in": _contains,
    },
}


def _numbers(left: Any, right: Any) -> tuple[Any, Any] | None:
    if not (_is_number(left) and _is_number(right)):
        return None
    if isinstance(left, Decimal) != isinstance(right, Decimal):
        return float(left), float(right)  # Decimal refuses to mix with float
    return left, right


def _arithmetic(compute: _Binary, strings: bool = False) -> _Binary:
    def apply(left: Any, right: Any) -> Any:
        try:
            if type(left) is int and type(right) is int:
                return compute(left, right)
            if strings and type(left) is str and type(right) is str:
                return left + right
            pair = _numbers(left, right)
            return None if pair is None else compute(*pair)
        except (ArithmeticError, ValueError):  # overflow, or Decimal's invalid operation
            return None

    return apply


def _divide(left: Any, right: Any) -> Any:
    return None if right == 0 else left / right


def _modulo(left: Any, right: Any) -> Any:
    return None if right == 0 else left % right


def _remainder(left: Any, right: Any) -> Any:
    """Java's %: the sign follows the dividend."""
    if right == 0:
        return None
    result = abs(left) % abs(right)
    return -result if left < 0 else result


_ARITHMETIC: dict[bool, dict[str, _Binary]] = {
    False: {
        "+": _arithmetic(operator.add, strings=True),
        "-": _arithmetic(operator.sub),
        "*": _arithmetic(operator.mul),
        "/": _arithmetic(_divide),
        "%": _arithmetic(_modulo),
    },
}
_ARITHMETIC[True] = {**_ARITHMETIC[False], "%": _arithmetic(_remainder)}  # JUEL


def _juel_boolean(value: Any) -> bool | None:
    """EL's coercion to Boolean; None where EL would raise."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str):  # "" too is false
        return value.lower() == "true"
    return None


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | list | tuple | Mapping | set | frozenset):
        return len(value) == 0
    return False


def _position(index: Any, length: int, one_based: bool) -> int | None:
    if not _is_number(index) or index != int(index):
        return None
    position = int(index)
    if one_based:  # FEEL: 1 is the first element, -1 the last
        position = position - 1 if position > 0 else (length + position if position < 0 else -1)
    return position if 0 <= position < length else None


def _item(target: Any, index: Any, one_based: bool) -> Any:
    if isinstance(target, list | tuple):
        position = _position(index, len(target), one_based)
        return None if position is None else target[position]
    if isinstance(target, Mapping) and isinstance(index, str):
        return target.get(index)
    return None


def _path_exists(variables: Mapping[str, Any], path: str) -> bool:
    current: Any = variables
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return False
        current = current[part]
    return True


# --- FEEL's built-in functions -----------------------------------------------------------


def _values(arguments: tuple[Any, ...]) -> list[Any] | None:
    """sum(1, 2) and sum([1, 2]) alike."""
    if len(arguments) == 1:
        (only,) = arguments
        return list(only) if isinstance(only, list | tuple) else None
    return list(arguments)


def _sum(*arguments: Any) -> Any:
    values = _values(arguments)
    if not values or not all(map(_is_number, values)):
        return None
    kinds = {type(value) for value in values}
    if Decimal in kinds and float in kinds:  # Decimal refuses to mix with float
        values = [float(value) for value in values]
    return sum(values)


def _extreme(pick: Callable[[list[Any]], Any]) -> Callable[..., Any]:
    def function(*arguments: Any) -> Any:
        values = _values(arguments)
        if not values:
            return None
        families = {_family(value) for value in values}
        if families not in ({"number"}, {"str"}):
            return None
        return pick(values)

    return function


def _strings(compute: Callable[..., Any]) -> Callable[..., Any]:
    def function(*arguments: Any) -> Any:
        if not all(isinstance(argument, str) for argument in arguments):
            return None
        return compute(*arguments)

    return function


_BUILT_INS: dict[str, Callable[..., Any]] = {
    "count": lambda value: len(value) if isinstance(value, list | tuple) else None,
    "sum": _sum,
    "min": _extreme(min),
    "max": _extreme(max),
    "contains": _strings(lambda string, match: match in string),
    "string length": _strings(len),
    "upper case": _strings(str.upper),
    "lower case": _strings(str.lower),
}


# --- compilers, one per node type ---------------------------------------------------------


def _constant(node: Constant, dialect: Dialect) -> Compiled:
    value = node.value
    return lambda variables: value


def _variable(node: Variable, dialect: Dialect) -> Compiled:
    first, *rest = node.path.split(".")
    if not rest:
        return lambda variables: variables.get(first)
    tail = tuple(rest)

    def resolve(variables: Mapping[str, Any]) -> Any:
        current = variables.get(first)
        for part in tail:
            if type(current) is not dict and not isinstance(current, Mapping):
                return None
            current = current.get(part)
        return current

    return resolve


def _list(node: ListLiteral, dialect: Dialect) -> Compiled:
    items = tuple(compile_node(item, dialect) for item in node.items)
    return lambda variables: [item(variables) for item in items]


def _context(node: ContextLiteral, dialect: Dialect) -> Compiled:
    entries = tuple((key, compile_node(value, dialect)) for key, value in node.entries)
    return lambda variables: {key: value(variables) for key, value in entries}


def _not(node: Not, dialect: Dialect) -> Compiled:
    operand = compile_node(node.operand, dialect)
    if dialect == "plain":
        return lambda variables: not operand(variables)
    if dialect == "juel":

        def juel_not(variables: Mapping[str, Any]) -> bool | None:
            value = _juel_boolean(operand(variables))
            return None if value is None else not value

        return juel_not

    def feel_not(variables: Mapping[str, Any]) -> bool | None:
        value = operand(variables)
        return not value if type(value) is bool else None

    return feel_not


def _and(node: And, dialect: Dialect) -> Compiled:
    operands = tuple(compile_node(operand, dialect) for operand in node.operands)
    if dialect == "plain":
        if len(operands) == 2:
            first, second = operands
            return lambda variables: first(variables) and second(variables)
        return _python_logic(operands, stop_on=False)
    if dialect == "juel":
        return _juel_logic(operands, decisive=False)
    return _feel_logic(operands, decisive=False)


def _or(node: Or, dialect: Dialect) -> Compiled:
    operands = tuple(compile_node(operand, dialect) for operand in node.operands)
    if dialect == "plain":
        if len(operands) == 2:
            first, second = operands
            return lambda variables: first(variables) or second(variables)
        return _python_logic(operands, stop_on=True)
    if dialect == "juel":
        return _juel_logic(operands, decisive=True)
    return _feel_logic(operands, decisive=True)


def _python_logic(operands: tuple[Compiled, ...], stop_on: bool) -> Compiled:
    """and (stop_on False) / or (stop_on True), returning the deciding operand."""

    def run(variables: Mapping[str, Any]) -> Any:
        result: Any = not stop_on
        for operand in operands:
            result = operand(variables)
            if bool(result) is stop_on:
                return result
        return result

    return run


def _juel_logic(operands: tuple[Compiled, ...], decisive: bool) -> Compiled:
    def run(variables: Mapping[str, Any]) -> bool | None:
        for operand in operands:
            value = _juel_boolean(operand(variables))
            if value is None:
                return None
            if value is decisive:
                return decisive
        return not decisive

    return run


def _feel_logic(operands: tuple[Compiled, ...], decisive: bool) -> Compiled:
    """and (decisive False) / or (decisive True): null unless decided or all agree."""
    if len(operands) == 2:  # the common case, without the loop
        first, second = operands
        agreed = not decisive

        def pair(variables: Mapping[str, Any]) -> bool | None:
            left = first(variables)
            if left is decisive:
                return bool(decisive)
            right = second(variables)
            if right is decisive:
                return bool(decisive)
            return agreed if left is agreed and right is agreed else None

        return pair

    def run(variables: Mapping[str, Any]) -> bool | None:
        result: bool | None = not decisive
        for operand in operands:
            value = operand(variables)
            if value is decisive:
                return bool(decisive)
            if value is not result:
                result = None
        return result

    return run


def _comparison(node: Comparison, dialect: Dialect) -> Compiled:
    test = _COMPARE[dialect == "feel"][node.op]
    left, right = node.left, node.right
    if isinstance(right, Constant):  # the common "amount > 1000": one call fewer
        constant = right.value
        if isinstance(left, Variable) and "." not in left.path:
            name = left.path
            return lambda variables: test(variables.get(name), constant)
        compiled_left = compile_node(left, dialect)
        return lambda variables: test(compiled_left(variables), constant)
    compiled_left, compiled_right = compile_node(left, dialect), compile_node(right, dialect)
    return lambda variables: test(compiled_left(variables), compiled_right(variables))


def _arithmetic_chain(node: Arithmetic, dialect: Dialect) -> Compiled:
    table = _ARITHMETIC[dialect == "juel"]
    first = compile_node(node.operands[0], dialect)
    rest = tuple(
        (table[op], compile_node(operand, dialect))
        for op, operand in zip(node.ops, node.operands[1:], strict=True)
    )
    if len(rest) == 1:
        ((apply, second),) = rest
        return lambda variables: apply(first(variables), second(variables))

    def run(variables: Mapping[str, Any]) -> Any:
        result = first(variables)
        for apply, operand in rest:
            result = apply(result, operand(variables))
        return result

    return run


def _negate(node: Negate, dialect: Dialect) -> Compiled:
    operand = compile_node(node.operand, dialect)

    def run(variables: Mapping[str, Any]) -> Any:
        value = operand(variables)
        return -value if _is_number(value) else None

    return run


def _empty(node: Empty, dialect: Dialect) -> Compiled:
    operand = compile_node(node.operand, dialect)
    return lambda variables: _is_empty(operand(variables))


def _conditional(node: Conditional, dialect: Dialect) -> Compiled:
    condition = compile_node(node.condition, dialect)
    then = compile_node(node.then, dialect)
    otherwise = compile_node(node.otherwise, dialect)
    if dialect == "plain":
        return lambda variables: then(variables) if condition(variables) else otherwise(variables)
    if dialect == "juel":

        def juel(variables: Mapping[str, Any]) -> Any:
            decided = _juel_boolean(condition(variables))
            if decided is None:
                return None
            return then(variables) if decided else otherwise(variables)

        return juel
    # FEEL: anything but true (false, null, a number) takes the else branch.
    return lambda variables: (
        then(variables) if condition(variables) is True else otherwise(variables)
    )


def _index(node: Index, dialect: Dialect) -> Compiled:
    target, index = compile_node(node.target, dialect), compile_node(node.index, dialect)
    one_based = dialect == "feel"
    return lambda variables: _item(target(variables), index(variables), one_based)


def _member(node: Member, dialect: Dialect) -> Compiled:
    target, name = compile_node(node.target, dialect), node.name

    def run(variables: Mapping[str, Any]) -> Any:
        value = target(variables)
        return value.get(name) if isinstance(value, Mapping) else None

    return run


def _call(node: Call, dialect: Dialect) -> Compiled:
    if node.function == "is defined":
        (argument,) = node.arguments
        if isinstance(argument, Variable):
            path = argument.path
            return lambda variables: _path_exists(variables, path)
        value = compile_node(argument, dialect)
        return lambda variables: value(variables) is not None
    function = _BUILT_INS[node.function]
    arguments = tuple(compile_node(argument, dialect) for argument in node.arguments)
    return lambda variables: function(*(argument(variables) for argument in arguments))


def _range(node: Range, dialect: Dialect) -> Compiled:
    return lambda variables: None  # a range is a test, not a value


def _range_test(node: Range, dialect: Dialect) -> Callable[[Mapping[str, Any], Any], Any]:
    low, high = compile_node(node.low, dialect), compile_node(node.high, dialect)
    above = _COMPARE[True][">=" if node.low_closed else ">"]
    below = _COMPARE[True]["<=" if node.high_closed else "<"]

    def test(variables: Mapping[str, Any], value: Any) -> Any:
        over, under = above(value, low(variables)), below(value, high(variables))
        if over is False or under is False:
            return False
        return True if over is True and under is True else None

    return test


def _value_test(node: Node, dialect: Dialect) -> Callable[[Mapping[str, Any], Any], Any]:
    expected = compile_node(node, dialect)

    def test(variables: Mapping[str, Any], value: Any) -> Any:
        wanted = expected(variables)
        if isinstance(wanted, list | tuple):
            return _contains(value, wanted)
        return _feel_equal(value, wanted)

    return test


def _unary_tests(node: UnaryTests, dialect: Dialect) -> Compiled:
    operand = compile_node(node.operand, dialect)
    tests = tuple(
        _range_test(test, dialect) if isinstance(test, Range) else _value_test(test, dialect)
        for test in node.tests
    )

    def run(variables: Mapping[str, Any]) -> bool | None:
        value = operand(variables)
        result: bool | None = False
        for test in tests:
            outcome = test(variables, value)
            if outcome is True:
                return True
            if outcome is not False:
                result = None
        return result

    return run


_COMPILERS: dict[type[Any], Callable[[Any, Dialect], Compiled]] = {
    Constant: _constant,
    Variable: _variable,
    ListLiteral: _list,
    ContextLiteral: _context,
    Not: _not,
    And: _and,
    Or: _or,
    Comparison: _comparison,
    Arithmetic: _arithmetic_chain,
    Negate: _negate,
    Empty: _empty,
    Conditional: _conditional,
    Index: _index,
    Member: _member,
    Call: _call,
    Range: _range,
    UnaryTests: _unary_tests,
}
