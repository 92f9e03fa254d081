"""Conditions on exclusive-gateway sequence flows: a small, safe expression language.

    amount > 1000 and customer.tier == "gold"
    not (express or priority >= 2)
    country in ["DE", "FR"]

A hand-written tokenizer and recursive-descent parser build an immutable AST; nothing here
ever hands text to Python's eval, exec, compile or ast. Evaluation never raises: a missing
variable path is null, and comparing values of incompatible types is false.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from numbers import Real
from typing import Any, Literal, NamedTuple, TypeAlias, assert_never

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "Comparison",
    "ComparisonOp",
    "Constant",
    "Expression",
    "ExpressionError",
    "ListLiteral",
    "LiteralValue",
    "Node",
    "Not",
    "Or",
    "Variable",
    "evaluate",
    "evaluate_condition",
    "parse_expression",
    "referenced_variables",
]

MAX_LENGTH = 2000
MAX_DEPTH = 50

LiteralValue: TypeAlias = bool | int | float | str | None
ComparisonOp: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">=", "in"]


class ExpressionError(ValueError):
    """A syntax error; the message ends with the 1-based column, ``position`` is 0-based."""

    position: int

    def __init__(self, description: str, position: int) -> None:
        super().__init__(f"{description} at column {position + 1}")
        self.description = description
        self.position = position

    def __reduce__(self) -> tuple[type[ExpressionError], tuple[str, int]]:
        # The default reduce would re-create the error from the formatted message alone.
        return type(self), (self.description, self.position)


# --- AST -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constant:
    value: LiteralValue


@dataclass(frozen=True)
class Variable:
    path: str  # dotted, e.g. "order.customer.tier"


@dataclass(frozen=True)
class ListLiteral:
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]  # n-ary so long chains do not build deep trees


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Comparison:
    op: ComparisonOp
    left: Node
    right: Node


Node: TypeAlias = Constant | Variable | ListLiteral | Not | And | Or | Comparison


@dataclass(frozen=True)
class Expression:
    source: str
    root: Node


# --- Tokenizer -------------------------------------------------------------------------

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_TAIL = re.compile(r"(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
# Longest first, so "<=" wins over "<" and "!=" over "!".
_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "(", ")", "[", "]", ",")
_ALIASES = {"&&": "and", "||": "or", "!": "not"}
_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_KEYWORD_VALUES: dict[str, LiteralValue] = {"true": True, "false": False, "null": None}
_ESCAPABLE = ("\\", '"', "'")


class _Token(NamedTuple):
    kind: str  # "number", "string", "path", "end", or the operator/keyword (aliases folded)
    text: str  # exactly as written in the source
    pos: int
    value: LiteralValue = None


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(source):
        if source[pos].isspace():
            pos += 1
            continue
        token = _scan_token(source, pos)
        tokens.append(token)
        pos += len(token.text)
    tokens.append(_Token("end", "", len(source)))
    return tokens


def _scan_token(source: str, pos: int) -> _Token:
    char = source[pos]
    if char in "\"'":
        value, end = _scan_string(source, pos)
        return _Token("string", source[pos:end], pos, value)
    if match := _NUMBER.match(source, pos):
        text = match.group()
        return _Token("number", text, pos, float(text) if "." in text else int(text))
    if match := _IDENT.match(source, pos):
        return _scan_word(source, match)
    for op in _OPERATORS:
        if source.startswith(op, pos):
            return _Token(_ALIASES.get(op, op), op, pos)
    raise ExpressionError(f"unexpected character {char!r}", pos)


def _scan_word(source: str, match: re.Match[str]) -> _Token:
    word, pos = match.group(), match.start()
    if word in _KEYWORDS:
        return _Token(word, word, pos, _KEYWORD_VALUES.get(word))
    tail = _PATH_TAIL.match(source, match.end())
    end = tail.end() if tail else match.end()
    return _Token("path", source[pos:end], pos)


def _scan_string(source: str, start: int) -> tuple[str, int]:
    """Return the unescaped string and the offset just past its closing quote."""
    quote, pos = source[start], start + 1
    chars: list[str] = []
    while pos < len(source):
        char = source[pos]
        if char == quote:
            return "".join(chars), pos + 1
        if char == "\\":
            escaped = source[pos + 1 : pos + 2]
            if not escaped:
                break
            if escaped not in _ESCAPABLE:
                raise ExpressionError(f"invalid escape '\\{escaped}'", pos)
            char, pos = escaped, pos + 1
        chars.append(char)
        pos += 1
    raise ExpressionError("unterminated string", start)


# --- Parser ----------------------------------------------------------------------------

_COMPARISON_OPS: dict[str, ComparisonOp] = {
    "==": "==",
    "!=": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
    "in": "in",
}
_LITERAL_KINDS = frozenset({"number", "string", "true", "false", "null"})


class _Parser:
    """Precedence, lowest first: or, and, not, comparison, primary."""

    def __init__(self, tokens: list[_Token]) -> None:
        self._tokens = tokens
        self._index = 0
        self._depth = 0

    def parse(self) -> Node:
        if self._peek().kind == "end":
            raise ExpressionError("empty expression", 0)
        node = self._or()
        if (token := self._peek()).kind != "end":
            raise _unexpected(token)
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _advance(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _expect(self, kind: str) -> None:
        token = self._advance()
        if token.kind != kind:
            found = "end of expression" if token.kind == "end" else repr(token.text)
            raise ExpressionError(f"expected {kind!r} but found {found}", token.pos)

    @contextmanager
    def _nested(self, opener: _Token) -> Iterator[None]:
        # Bounds recursion in the parser and the evaluator alike.
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ExpressionError(f"nesting deeper than {MAX_DEPTH} levels", opener.pos)
        try:
            yield
        finally:
            self._depth -= 1

    def _or(self) -> Node:
        operands = [self._and()]
        while self._peek().kind == "or":
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def _and(self) -> Node:
        operands = [self._not()]
        while self._peek().kind == "and":
            self._advance()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def _not(self) -> Node:
        if (token := self._peek()).kind != "not":
            return self._comparison()
        self._advance()
        with self._nested(token):
            return Not(self._not())

    def _comparison(self) -> Node:
        left = self._primary()
        op = _COMPARISON_OPS.get(self._peek().kind)
        if op is None:
            return left
        self._advance()
        node = Comparison(op, left, self._primary())
        if (token := self._peek()).kind in _COMPARISON_OPS:
            raise ExpressionError(f"chained comparison {token.text!r} is not allowed", token.pos)
        return node

    def _primary(self) -> Node:
        token = self._advance()
        if token.kind in _LITERAL_KINDS:
            return Constant(token.value)
        if token.kind == "path":
            return Variable(token.text)
        if token.kind == "(":
            with self._nested(token):
                node = self._or()
            self._expect(")")
            return node
        if token.kind == "[":
            return self._list(token)
        raise _unexpected(token)

    def _list(self, opener: _Token) -> ListLiteral:
        items: list[Node] = []
        with self._nested(opener):
            if self._peek().kind != "]":
                items.append(self._or())
            while self._peek().kind == ",":
                self._advance()
                items.append(self._or())
        self._expect("]")
        return ListLiteral(tuple(items))


def _unexpected(token: _Token) -> ExpressionError:
    if token.kind == "end":
        return ExpressionError("unexpected end of expression", token.pos)
    return ExpressionError(f"unexpected token {token.text!r}", token.pos)


def parse_expression(source: str) -> Expression:
    """Parse ``source``; raises ExpressionError on any syntax error or limit exceeded."""
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters", MAX_LENGTH)
    return Expression(source, _Parser(_tokenize(source)).parse())


# --- Evaluator -------------------------------------------------------------------------

_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def evaluate(expr: Expression, variables: Mapping[str, Any]) -> Any:
    """The expression's value; and/or return the deciding operand, like Python's."""
    return _eval(expr.root, variables)


def evaluate_condition(expr: Expression, variables: Mapping[str, Any]) -> bool:
    return bool(evaluate(expr, variables))


def referenced_variables(expr: Expression) -> frozenset[str]:
    """The dotted variable paths the expression reads."""
    paths: set[str] = set()
    pending: list[Node] = [expr.root]
    while pending:
        node = pending.pop()
        if isinstance(node, Variable):
            paths.add(node.path)
        pending.extend(_children(node))
    return frozenset(paths)


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Not):
        return (node.operand,)
    if isinstance(node, Comparison):
        return (node.left, node.right)
    if isinstance(node, And | Or):
        return node.operands
    if isinstance(node, ListLiteral):
        return node.items
    return ()


def _eval(node: Node, variables: Mapping[str, Any]) -> Any:
    match node:
        case Constant():
            return node.value
        case Variable():
            return _resolve(variables, node.path)
        case ListLiteral():
            return [_eval(item, variables) for item in node.items]
        case Not():
            return not _eval(node.operand, variables)
        case And():
            return _eval_and(node.operands, variables)
        case Or():
            return _eval_or(node.operands, variables)
        case Comparison():
            left, right = _eval(node.left, variables), _eval(node.right, variables)
            return _compare(node.op, left, right)
        case _:
            assert_never(node)


def _eval_and(operands: tuple[Node, ...], variables: Mapping[str, Any]) -> Any:
    result: Any = True
    for operand in operands:
        result = _eval(operand, variables)
        if not result:
            return result
    return result


def _eval_or(operands: tuple[Node, ...], variables: Mapping[str, Any]) -> Any:
    result: Any = False
    for operand in operands:
        result = _eval(operand, variables)
        if result:
            return result
    return result


def _resolve(variables: Mapping[str, Any], path: str) -> Any:
    current: Any = variables
    for part in path.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return None
        current = current[part]
    return current


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


def _compare(op: ComparisonOp, left: Any, right: Any) -> bool:
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op == "in":
        return _contains(left, right)
    return _order(op, left, right)


def _equal(left: Any, right: Any) -> bool:
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


def _order(op: str, left: Any, right: Any) -> bool:
    family = _family(left)
    if family not in ("number", "str") or family != _family(right):
        return False
    try:
        return bool(_ORDERINGS[op](left, right))
    except (TypeError, ArithmeticError):  # e.g. Decimal("NaN") signals on ordering
        return False


def _contains(item: Any, container: Any) -> bool:
    if isinstance(container, list | tuple):
        return any(_equal(item, element) for element in container)
    if isinstance(container, str):
        return isinstance(item, str) and item in container
    return False
