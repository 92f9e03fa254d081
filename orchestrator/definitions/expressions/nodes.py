"""The one immutable syntax tree that all three dialects parse into.

The tree says what an expression computes, not how a dialect spells it: FEEL's ``=`` and
JUEL's ``eq`` are both ``Comparison("==")``. Where the dialects differ in meaning (FEEL lists
count from 1, FEEL logic is three-valued) the evaluator asks the expression's dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = [
    "And",
    "Arithmetic",
    "ArithmeticOp",
    "Call",
    "Comparison",
    "ComparisonOp",
    "Conditional",
    "Constant",
    "ContextLiteral",
    "Dialect",
    "Empty",
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
    "children",
]

Dialect: TypeAlias = Literal["plain", "juel", "feel"]
LiteralValue: TypeAlias = bool | int | float | str | None
ComparisonOp: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">=", "in"]
ArithmeticOp: TypeAlias = Literal["+", "-", "*", "/", "%"]


@dataclass(frozen=True, slots=True)
class Constant:
    value: LiteralValue


@dataclass(frozen=True, slots=True)
class Variable:
    path: str  # dotted, e.g. "order.customer.tier"


@dataclass(frozen=True, slots=True)
class ListLiteral:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class ContextLiteral:
    """FEEL's ``{a: 1, "b c": 2}``."""

    entries: tuple[tuple[str, Node], ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]  # n-ary so long chains do not build deep trees


@dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Comparison:
    op: ComparisonOp
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """``operands[0] ops[0] operands[1] ops[1] ...``, left to right, one precedence level."""

    operands: tuple[Node, ...]
    ops: tuple[ArithmeticOp, ...]


@dataclass(frozen=True, slots=True)
class Negate:
    operand: Node


@dataclass(frozen=True, slots=True)
class Empty:
    """JUEL's ``empty x``: null, "" or an empty list or map."""

    operand: Node


@dataclass(frozen=True, slots=True)
class Conditional:
    """FEEL's ``if c then a else b`` and JUEL's ``c ? a : b``."""

    condition: Node
    then: Node
    otherwise: Node


@dataclass(frozen=True, slots=True)
class Index:
    target: Node
    index: Node


@dataclass(frozen=True, slots=True)
class Member:
    """``.name`` after something that is not a plain variable path: ``{a: 1}.a``, ``x[0].y``."""

    target: Node
    name: str


@dataclass(frozen=True, slots=True)
class Call:
    """A built-in function; the parser admits only known names with the right arity."""

    function: str  # FEEL spelling with single spaces: "string length"
    arguments: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Range:
    """FEEL's ``[1..10]`` or ``(1..10]``; only meaningful as a test on the right of ``in``."""

    low: Node
    high: Node
    low_closed: bool
    high_closed: bool


@dataclass(frozen=True, slots=True)
class UnaryTests:
    """FEEL's ``x in t1`` / ``x in (t1, t2)``: true if any test holds.

    A test is a range (x lies in it), a list (x is an element) or a value (x equals it).
    """

    operand: Node
    tests: tuple[Node, ...]


Node: TypeAlias = (
    Constant
    | Variable
    | ListLiteral
    | ContextLiteral
    | Not
    | And
    | Or
    | Comparison
    | Arithmetic
    | Negate
    | Empty
    | Conditional
    | Index
    | Member
    | Call
    | Range
    | UnaryTests
)


def children(node: Node) -> tuple[Node, ...]:
    """The direct sub-expressions of ``node``, in source order."""
    match node:
        case Constant() | Variable():
            return ()
        case ListLiteral(items):
            return items
        case ContextLiteral(entries):
            return tuple(value for _, value in entries)
        case Not(operand) | Negate(operand) | Empty(operand) | Member(operand, _):
            return (operand,)
        case And(operands) | Or(operands) | Arithmetic(operands, _) | Call(_, operands):
            return operands
        case Comparison(_, left, right) | Index(left, right):
            return (left, right)
        case Conditional(condition, then, otherwise):
            return (condition, then, otherwise)
        case Range(low, high, _, _):
            return (low, high)
        case UnaryTests(operand, tests):
            return (operand, *tests)
