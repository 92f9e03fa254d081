"""What a Camunda dialect (7 or 8) reads from its extension elements and attributes.

Each method reads one concern of one element into the model's fields (a dict), and adds a
problem for whatever it cannot map.
"""

from __future__ import annotations

from typing import Any, Protocol
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.problems import Problems

Mapping = dict[str, str]


class Dialect(Protocol):
    name: str

    def check_extensions(self, element: Element, problems: Problems) -> None:
        """Refuse extensions that would run code or listeners (any element)."""

    def service_task(self, element: Element, problems: Problems) -> dict[str, Any] | None:
        """The topic (and what else the implementation says) of a service-like task, or None
        (after adding a problem) when it has no external implementation."""

    def io_mappings(
        self, element: Element, problems: Problems
    ) -> tuple[list[Mapping], list[Mapping]]:
        """Input and output mappings as `{"target", "source"}`."""

    def multi_instance(self, element: Element, loop: Element, problems: Problems) -> dict[str, Any]:
        """The fields of MultiInstance from `<multiInstanceLoopCharacteristics>`."""

    def user_task(self, element: Element, problems: Problems) -> dict[str, Any]:
        """Assignment, form and due date of a user task."""

    def call_activity(self, element: Element, problems: Problems) -> dict[str, Any]:
        """Called element, version and propagation of a call activity."""

    def error_variables(self, definition: Element) -> dict[str, Any]:
        """code_variable/message_variable of an error boundary's errorEventDefinition."""

    def error_message(self, error: Element) -> str | None:
        """The message an `<error>` carries, if the dialect has one."""

    def message(
        self, element: Element, message: Element, name: str, problems: Problems
    ) -> dict[str, Any] | None:
        """The model's MessageDefinition (a dict) for `element` (a catch event, receive task
        or boundary event) waiting for `message` (its `<message>`, whose non-empty `name` is
        given): the name and the correlation key expression, if any."""
