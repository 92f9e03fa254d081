"""Event definitions: which kind an event is, and why the kinds we do not run are refused."""

from __future__ import annotations

from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.names import is_bpmn, local

_KINDS = {
    "errorEventDefinition": "error",
    "terminateEventDefinition": "terminate",
    "timerEventDefinition": "timer",
    "messageEventDefinition": "message",
    "signalEventDefinition": "signal",
    "escalationEventDefinition": "escalation",
    "conditionalEventDefinition": "conditional",
    "linkEventDefinition": "link",
    "compensateEventDefinition": "compensation",
    "cancelEventDefinition": "cancel",
}
_WHY = {
    "timer": "timer events are not supported yet (they come in a later version)",
    "message": "message events are not supported yet (they come in a later version)",
    "signal": "signal events are not supported",
    "escalation": "escalation events are not supported",
    "conditional": "conditional events are not supported",
    "link": "link events are not supported",
    "compensation": "compensation is not supported",
    "cancel": "cancel events (transactions) are not supported",
}


def event_definitions(event: Element) -> list[Element]:
    return [found for found in event if is_bpmn(found) and local(found).endswith("EventDefinition")]


def kind_of(definition: Element) -> str:
    """`timerEventDefinition` -> `timer` (an unknown one keeps its tag)."""
    return _KINDS.get(local(definition), local(definition))


def why_refused(kind: str, role: str) -> str:
    """Why an event of this kind cannot be a `role` (start, end, boundary) event here."""
    return _WHY.get(kind, f"{kind} {role} events are not supported")
