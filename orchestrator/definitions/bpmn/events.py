"""Event definitions: which kind an event is, what a timer definition says, and why the kinds
we do not run are refused.

Timer and message events are read where the model has them: intermediate catch events,
boundary events, start events (of the process or of an event subprocess) and, for messages,
receive tasks. As end events they are refused ("message end events are not supported yet"),
as are intermediate throw (send) events. Signal, conditional, escalation and compensation
events are refused wherever they are.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.names import is_bpmn, local
from orchestrator.definitions.bpmn.problems import Problems
from orchestrator.definitions.timers import BPMN_ELEMENTS

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
#: Kinds we run in some places but not yet in all: "message end events are not supported yet".
_NOT_YET = {"timer", "message"}
_WHY = {
    "signal": "signal events are not supported",
    "escalation": "escalation events are not supported",
    "conditional": "conditional events are not supported",
    "link": "link events are not supported",
    "compensation": "compensation is not supported",
    "cancel": "cancel events (transactions) are not supported",
}
_TIMER_CHILDREN = " or ".join(BPMN_ELEMENTS)


def event_definitions(event: Element) -> list[Element]:
    return [found for found in event if is_bpmn(found) and local(found).endswith("EventDefinition")]


def kind_of(definition: Element) -> str:
    """`timerEventDefinition` -> `timer` (an unknown one keeps its tag)."""
    return _KINDS.get(local(definition), local(definition))


def why_refused(kind: str, role: str) -> str:
    """Why an event of this kind cannot be a `role` (start, end, boundary) event here."""
    if kind in _NOT_YET:
        return f"{kind} {role} events are not supported yet"
    return _WHY.get(kind, f"{kind} {role} events are not supported")


def timer_of(event: Element, definition: Element, problems: Problems) -> dict[str, Any] | None:
    """The model's TimerDefinition (as a dict) from a `<timerEventDefinition>`: its one
    `timeDuration`, `timeDate` or `timeCycle` child, whose text is kept as written (a literal
    is checked when the process is compiled, an expression when the timer starts). The
    child's xsi:type says nothing more and is ignored."""
    found = [
        element for element in definition if is_bpmn(element) and local(element) in BPMN_ELEMENTS
    ]
    if len(found) != 1:
        problems.add(
            event,
            f"a timer event needs exactly one of {_TIMER_CHILDREN}"
            + (f" (it has {len(found)})" if found else ""),
        )
        return None
    value = (found[0].text or "").strip()
    if not value:
        problems.add(event, f"the timer's {local(found[0])} is empty")
        return None
    return {"kind": BPMN_ELEMENTS[local(found[0])], "value": value}
