"""The one exception of the expression package."""

from __future__ import annotations

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "ExpressionError"]

MAX_LENGTH = 2000
MAX_DEPTH = 50


class ExpressionError(ValueError):
    """A syntax error; the message ends with the 1-based column, ``position`` is 0-based."""

    description: str
    position: int

    def __init__(self, description: str, position: int) -> None:
        super().__init__(f"{description} at column {position + 1}")
        self.description = description
        self.position = position

    def __reduce__(self) -> tuple[type[ExpressionError], tuple[str, int]]:
        # The default reduce would re-create the error from the formatted message alone.
        return type(self), (self.description, self.position)
