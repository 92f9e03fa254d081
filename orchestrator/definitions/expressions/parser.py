"""Text to syntax tree: the lark grammars (plain.lark, juel.lark, feel.lark) and their errors.

Each dialect has its own LALR parser; one transformer, run while lark parses (no parse tree is
built and nothing recurses), turns what the grammar matched into ``nodes``. It also refuses
what parses but is outside the supported subset (method calls, unknown functions, JUEL's
``execution``), so every refusal happens at parse time with a column. Lark's own errors are
translated into the messages the hand-written parser used to give.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any, cast

from lark import Lark, Token, UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from orchestrator.definitions.expressions.errors import MAX_DEPTH, MAX_LENGTH, ExpressionError
from orchestrator.definitions.expressions.evaluator import FUNCTIONS
from orchestrator.definitions.expressions.nodes import (
    And,
    Arithmetic,
    ArithmeticOp,
    Call,
    Comparison,
    ComparisonOp,
    Conditional,
    Constant,
    ContextLiteral,
    Dialect,
    Empty,
    Index,
    ListLiteral,
    LiteralValue,
    Member,
    Negate,
    Node,
    Not,
    Or,
    Range,
    UnaryTests,
    Variable,
)

__all__ = ["detect_dialect", "parse"]

_FEEL_MARKER = re.compile(r"\s*=")
_JUEL_MARKER = re.compile(r"\s*[$#]\{")


def detect_dialect(source: str) -> Dialect:
    """FEEL if the text starts with "=", JUEL if with "${" or "#{", else plain."""
    if _FEEL_MARKER.match(source):
        return "feel"
    if _JUEL_MARKER.match(source):
        return "juel"
    return "plain"


def parse(source: str, dialect: Dialect) -> Node:
    """The tree of ``source`` in ``dialect``; raises ExpressionError with a column."""
    if len(source) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters", MAX_LENGTH)
    text, start = source, 0
    if dialect == "feel" and (marker := _FEEL_MARKER.match(source)):
        # Blank the "=" out rather than cut it off, so positions stay those of the source.
        start = marker.end()
        text = " " * start + source[start:]
    if not text.strip():
        raise ExpressionError("empty expression", start)
    try:
        part = cast(_Part, _parser(dialect).parse(text))
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, dialect) from None
    if len(part.depths) > MAX_DEPTH:
        raise ExpressionError(f"nesting deeper than {MAX_DEPTH} levels", part.depths[MAX_DEPTH])
    return part.node


@cache
def _parser(dialect: Dialect) -> Lark:
    grammar = files(__package__).joinpath(f"{dialect}.lark").read_text(encoding="utf-8")
    return Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        maybe_placeholders=False,
        transformer=_Builder(dialect),
    )


# --- building the tree ------------------------------------------------------------------


class _Part:
    """A parsed piece: its node, where it starts, and how deeply it nests.

    ``depths[k]`` is the leftmost position of a nesting construct (bracket, prefix operator,
    call, conditional) at depth k + 1 inside the piece, so the first construct too deep for
    the whole expression is known without walking the finished tree.
    """

    __slots__ = ("depths", "node", "position", "tests")

    def __init__(
        self,
        node: Node,
        position: int,
        depths: tuple[int, ...] = (),
        tests: tuple[Node, ...] | None = None,
    ) -> None:
        self.node = node
        self.position = position
        self.depths = depths
        self.tests = tests  # set only for FEEL's "(t1, t2, ...)" right of "in"


def _merged(parts: Sequence[_Part]) -> tuple[int, ...]:
    merged: list[int] = []
    for part in parts:
        for level, position in enumerate(part.depths):
            if level == len(merged):
                merged.append(position)
            elif position < merged[level]:
                merged[level] = position
    return tuple(merged)


def _nested(opener: int, parts: Sequence[_Part]) -> tuple[int, ...]:
    return ((opener, *_merged(parts)))[: MAX_DEPTH + 1]


def _parts(children: list[Any]) -> list[_Part]:
    return [child for child in children if isinstance(child, _Part)]


def _tokens(children: list[Any]) -> list[Token]:
    return [child for child in children if isinstance(child, Token)]


def _at(token: Token) -> int:
    return token.start_pos or 0  # always set for a token the lexer made


_COMPARISONS: dict[str, ComparisonOp] = {
    "==": "==",
    "=": "==",
    "eq": "==",
    "!=": "!=",
    "ne": "!=",
    "<": "<",
    "lt": "<",
    "<=": "<=",
    "le": "<=",
    ">": ">",
    "gt": ">",
    ">=": ">=",
    "ge": ">=",
    "in": "in",
}
_ARITHMETIC: dict[str, ArithmeticOp] = {
    "+": "+",
    "-": "-",
    "*": "*",
    "/": "/",
    "div": "/",
    "%": "%",
    "mod": "%",
}
_FEEL_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}
_ESCAPE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.)", re.DOTALL)
# Objects a Camunda engine puts into JUEL's scope; here there is nothing behind them.
_JUEL_CONTEXT = frozenset({"execution", "task", "externalTask", "caseExecution", "authentication"})


def _unescape_feel(match: re.Match[str]) -> str:
    escaped = match.group(1)
    if escaped.startswith("u") and len(escaped) == 5:
        return chr(int(escaped[1:], 16))
    return _FEEL_ESCAPES.get(escaped, escaped)


class _Builder:
    """The lark callbacks: one method per rule or alias of the grammars."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def start(self, children: list[Any]) -> _Part:
        return _parts(children)[0]

    def literal(self, children: list[Token]) -> _Part:
        (token,) = children
        return _Part(Constant(self._literal_value(token)), _at(token))

    def _literal_value(self, token: Token) -> LiteralValue:
        text = str(token)
        if token.type == "NUMBER":
            return int(text) if text.isdigit() else float(text)
        if token.type == "STRING":
            if self.dialect == "feel":
                return _ESCAPE.sub(_unescape_feel, text[1:-1])
            return _ESCAPE.sub(r"\1", text[1:-1])
        return {"true": True, "false": False, "null": None}[text]

    def variable(self, children: list[Token]) -> _Part:
        (token,) = children
        root = token.split(".", 1)[0]
        if self.dialect == "juel" and root in _JUEL_CONTEXT:
            raise ExpressionError(f"{root!r} is not available", _at(token))
        return _Part(Variable(str(token)), _at(token))

    def paren(self, children: list[Any]) -> _Part:
        opener, (inner,) = children[0], _parts(children)
        return _Part(inner.node, opener.start_pos, _nested(opener.start_pos, [inner]))

    def list_literal(self, children: list[Any]) -> _Part:
        opener, items = children[0], _parts(children)
        node = ListLiteral(tuple(item.node for item in items))
        return _Part(node, opener.start_pos, _nested(opener.start_pos, items))

    def entry(self, children: list[Any]) -> tuple[Token, _Part]:
        return children[0], children[2]

    def context(self, children: list[Any]) -> _Part:
        opener = children[0]
        entries = [child for child in children if isinstance(child, tuple)]
        keys: dict[str, Node] = {}
        for key, value in entries:
            name = self._literal_value(key) if key.type == "STRING" else str(key)
            if key.type == "PATH" and "." in key:
                raise ExpressionError(f"context key {str(key)!r} is not a name", key.start_pos)
            if name in keys:
                raise ExpressionError(f"duplicate context key {name!r}", key.start_pos)
            keys[str(name)] = value.node
        values = [value for _, value in entries]
        node = ContextLiteral(tuple(keys.items()))
        return _Part(node, opener.start_pos, _nested(opener.start_pos, values))

    def index(self, children: list[Any]) -> _Part:
        target, index = _parts(children)
        opener = _at(_tokens(children)[0])
        depths = _nested(opener, [target, index])
        return _Part(Index(target.node, index.node), target.position, depths)

    def member(self, children: list[Any]) -> _Part:
        target, name = children[0], str(children[1])[1:]
        node: Node
        if isinstance(target.node, Variable):  # "(a).b" reads the same as "a.b"
            node = Variable(f"{target.node.path}.{name}")
        else:
            node = Member(target.node, name)
        return _Part(node, target.position, target.depths)

    def call(self, children: list[Any]) -> _Part:
        callee, opener = children[0], children[1]
        arguments = _parts(children[1:])
        name = self._function_name(callee)
        position = _at(callee) if isinstance(callee, Token) else callee.position
        low, high = FUNCTIONS.get(name, (0, None)) if self.dialect == "feel" else (0, None)
        if not low <= len(arguments) <= (high if high is not None else len(arguments)):
            expected = f"{low}" if low == high else f"at least {low}"
            plural = "" if low == 1 else "s"
            raise ExpressionError(f"{name}() takes {expected} argument{plural}", position)
        node = Call(name, tuple(argument.node for argument in arguments))
        return _Part(node, position, _nested(opener.start_pos, arguments))

    def _function_name(self, callee: Token | _Part) -> str:
        if isinstance(callee, Token):  # FEEL's names with spaces: "string   length"
            return " ".join(callee.split())
        node = callee.node
        if isinstance(node, Variable) and "." in node.path:
            method_at = callee.position + node.path.rindex(".") + 1
            raise ExpressionError("method calls are not supported", method_at)
        if isinstance(node, Member):
            raise ExpressionError("method calls are not supported", callee.position)
        if not isinstance(node, Variable):
            raise ExpressionError("only functions can be called", callee.position)
        if self.dialect != "feel":
            message = "Spin's S() is" if node.path == "S" else "function calls are"
            raise ExpressionError(f"{message} not supported", callee.position)
        if node.path not in FUNCTIONS:
            raise ExpressionError(f"unknown function {node.path!r}", callee.position)
        return node.path

    def not_(self, children: list[Any]) -> _Part:
        opener, (operand,) = children[0], _parts(children)
        return _Part(Not(operand.node), opener.start_pos, _nested(opener.start_pos, [operand]))

    not_call = not_

    def negate(self, children: list[Any]) -> _Part:
        opener, (operand,) = children[0], _parts(children)
        node: Node = Negate(operand.node)
        value = operand.node.value if isinstance(operand.node, Constant) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            node = Constant(-value)  # "-7" is a literal, as it always was
        return _Part(node, opener.start_pos, _nested(opener.start_pos, [operand]))

    def empty(self, children: list[Any]) -> _Part:
        opener, (operand,) = children[0], _parts(children)
        return _Part(Empty(operand.node), opener.start_pos, _nested(opener.start_pos, [operand]))

    def _chain(self, children: list[Any]) -> tuple[list[_Part], list[str]]:
        return _parts(children), [str(token) for token in _tokens(children)]

    def or_expr(self, children: list[Any]) -> _Part:
        parts, _ = self._chain(children)
        return _Part(Or(tuple(part.node for part in parts)), parts[0].position, _merged(parts))

    def and_expr(self, children: list[Any]) -> _Part:
        parts, _ = self._chain(children)
        return _Part(And(tuple(part.node for part in parts)), parts[0].position, _merged(parts))

    def additive(self, children: list[Any]) -> _Part:
        parts, ops = self._chain(children)
        node = Arithmetic(tuple(part.node for part in parts), tuple(_ARITHMETIC[op] for op in ops))
        return _Part(node, parts[0].position, _merged(parts))

    multiplicative = additive

    def comparison(self, children: list[Any]) -> _Part:
        if len(children) > 3:
            token = children[3]
            message = f"chained comparison {str(token)!r} is not allowed"
            raise ExpressionError(message, token.start_pos)
        left, token, right = children
        node: Node
        if self.dialect == "feel" and token.type == "IN":
            node = UnaryTests(left.node, right.tests or (right.node,))
        else:
            node = Comparison(_COMPARISONS[str(token)], left.node, right.node)
        return _Part(node, left.position, _merged([left, right]))

    def tests(self, children: list[Any]) -> _Part:
        opener, tests = children[0], _parts(children)
        part = _Part(tests[0].node, opener.start_pos, _nested(opener.start_pos, tests))
        part.tests = tuple(test.node for test in tests)
        return part

    def interval(self, children: list[Any]) -> _Part:
        opener, closer = children[0], children[-1]
        low, high = _parts(children)
        node = Range(low.node, high.node, opener == "[", closer == "]")
        return _Part(node, opener.start_pos, _nested(opener.start_pos, [low, high]))

    def conditional(self, children: list[Any]) -> _Part:
        condition, then, otherwise = parts = _parts(children)
        opener = _at(_tokens(children)[0])
        node = Conditional(condition.node, then.node, otherwise.node)
        return _Part(node, min(condition.position, opener), _nested(opener, parts))


# --- errors -----------------------------------------------------------------------------

# Terminals worth naming as "expected X": the ones that close what was opened.
_CLOSERS = {
    "RPAR": "')'",
    "RSQB": "']'",
    "RBRACE": "'}'",
    "COLON": "':'",
    "THEN": "'then'",
    "ELSE": "'else'",
    "OPEN": "'${' or '#{'",
}
_QUOTES: dict[Dialect, str] = {"plain": "\"'", "juel": "\"'", "feel": '"'}
_VALID_ESCAPES: dict[Dialect, str] = {"plain": "\\\"'", "juel": "\\\"'", "feel": "\\\"'nrtu"}
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")


def _syntax_error(exc: UnexpectedInput, text: str, dialect: Dialect) -> ExpressionError:
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        char = text[position]
        if char in _QUOTES[dialect]:
            return _string_error(text, position, _VALID_ESCAPES[dialect])
        return ExpressionError(f"unexpected character {char!r}", position)
    if not isinstance(exc, UnexpectedToken):  # lark's LALR parser raises no other kind
        return ExpressionError("syntax error", exc.pos_in_stream or 0)
    token = exc.token
    at_end = token.type == "$END"
    position = len(text) if at_end else _at(token)
    if token.type == "DOTNAME":  # ".x" after something that has no members, as in "true.x"
        return ExpressionError("unexpected character '.'", position)
    found = "end of expression" if at_end else repr(str(token))
    parser = exc.interactive_parser
    accepted: set[str] = parser.accepts() if parser else set()  # type: ignore[no-untyped-call]
    expected = [name for terminal, name in _CLOSERS.items() if terminal in accepted]
    if expected:
        return ExpressionError(f"expected {' or '.join(expected)} but found {found}", position)
    if at_end:
        return ExpressionError("unexpected end of expression", position)
    return ExpressionError(f"unexpected token {found}", position)


def _string_error(text: str, start: int, escapes: str) -> ExpressionError:
    """Why the string literal opening at ``start`` did not lex."""
    quote, position = text[start], start + 1
    while position < len(text) and text[position] != quote:
        if text[position] == "\\":
            escaped = text[position + 1 : position + 2]
            if not escaped:
                return ExpressionError("unterminated string", start)
            valid = escaped in escapes and (
                escaped != "u" or _HEX4.fullmatch(text[position + 2 : position + 6])
            )
            if not valid:
                return ExpressionError(f"invalid escape '\\{escaped}'", position)
            position += 1
        position += 1
    if position < len(text):  # closed after all: the lexer stumbled on something else
        return ExpressionError(f"unexpected character {quote!r}", start)
    return ExpressionError("unterminated string", start)
