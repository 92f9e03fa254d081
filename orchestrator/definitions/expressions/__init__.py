"""TEMPORARY shim over the old condition language, until the lark evaluator lands."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from orchestrator.definitions import expression as _old
from orchestrator.definitions.expression import Expression, ExpressionError

Dialect = Literal["plain", "juel", "feel"]

__all__ = [
    "Dialect",
    "Expression",
    "ExpressionError",
    "evaluate",
    "evaluate_condition",
    "parse_expression",
]


def parse_expression(source: str, dialect: Dialect | None = None) -> Expression:
    text = source.strip()
    if text.startswith("="):
        text = text[1:]
    elif text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    return _old.parse_expression(text)


def evaluate(expr: Expression, variables: Mapping[str, Any]) -> Any:
    return _old.evaluate(expr, variables)


def evaluate_condition(expr: Expression, variables: Mapping[str, Any]) -> bool:
    return evaluate(expr, variables) is True
