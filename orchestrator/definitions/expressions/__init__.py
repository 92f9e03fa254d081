"""Conditions in YAML definitions: one safe expression evaluator behind three syntaxes.

    amount > 1000 and customer.tier == "gold"     plain, the original language
    ${amount > 1000 && customer.tier == 'gold'}   JUEL, as in Camunda 7
    = amount > 1000 and customer.tier = "gold"    FEEL, as in Camunda 8 and DMN

Lark parses each syntax (plain.lark, juel.lark, feel.lark) into one immutable tree
(``nodes``), which is compiled once into Python closures (``evaluator``). Nothing ever hands
text to Python's eval, exec or compile. Anything outside the supported subset is refused when
parsed, with a column; evaluation never raises: a missing variable path is null and a type
error gives null (or false, for comparisons outside FEEL).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.definitions.expressions.errors import MAX_DEPTH, MAX_LENGTH, ExpressionError
from orchestrator.definitions.expressions.evaluator import compile_node
from orchestrator.definitions.expressions.nodes import (
    And,
    Arithmetic,
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
    children,
)
from orchestrator.definitions.expressions.parser import detect_dialect, parse

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "Arithmetic",
    "Call",
    "Comparison",
    "ComparisonOp",
    "Conditional",
    "Constant",
    "ContextLiteral",
    "Dialect",
    "Empty",
    "Expression",
    "ExpressionError",
    "Index",
    "ListLiteral",
    "LiteralValue",
    "Member",
    "Negate",
    "Node",
    "Not",
    "Or",
    "Range",
    "UnaryTests",
    "Variable",
    "detect_dialect",
    "evaluate",
    "evaluate_condition",
    "parse_expression",
    "referenced_variables",
]


@dataclass(frozen=True)
class Expression:
    """A parsed expression: its text, its tree and its dialect; compiled when created."""

    source: str
    root: Node
    dialect: Dialect = "plain"
    _compiled: Callable[[Mapping[str, Any]], Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", compile_node(self.root, self.dialect))

    def __reduce__(self) -> tuple[type[Expression], tuple[str, Node, Dialect]]:
        # Closures do not pickle; the tree does, and compiles again on the other side.
        return type(self), (self.source, self.root, self.dialect)


def parse_expression(source: str, dialect: Dialect | None = None) -> Expression:
    """Parse ``source``; raises ExpressionError on a syntax error, a limit or a refusal.

    Without a dialect: text starting with "=" is FEEL, text starting with "${" or "#{" is
    JUEL (and must be exactly one such expression), anything else is plain.
    """
    chosen = detect_dialect(source) if dialect is None else dialect
    return Expression(source, parse(source, chosen), chosen)


def evaluate(expr: Expression, variables: Mapping[str, Any]) -> Any:
    """The expression's value; never raises (a failure is None)."""
    try:
        return expr._compiled(variables)
    except Exception:  # exotic values (a __eq__ that raises, deep recursion): null
        return None


def evaluate_condition(expr: Expression, variables: Mapping[str, Any]) -> bool:
    """Whether the condition holds: ``evaluate(...) is True`` for JUEL and FEEL.

    Plain conditions keep their original meaning, truthiness: ``amount`` holds for 3.
    """
    result = evaluate(expr, variables)
    if expr.dialect != "plain":
        return result is True
    try:
        return bool(result)
    except Exception:  # an object whose __bool__ raises
        return False


def referenced_variables(expr: Expression) -> frozenset[str]:
    """The dotted variable paths the expression reads."""
    paths: set[str] = set()
    pending: list[Node] = [expr.root]
    while pending:
        node = pending.pop()
        if isinstance(node, Variable):
            paths.add(node.path)
        pending.extend(children(node))
    return frozenset(paths)
