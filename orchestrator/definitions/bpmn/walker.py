"""Walk one `<process>` element by element into the model's nodes and flows (as dicts),
adding a problem for every element that cannot be mapped.

Waits: an intermediate catch event with a timer or a message, a receive task, a timer or
message boundary event (interrupting unless cancelActivity="false") and an event-based
gateway map one to one onto the model's nodes. A message is the `<message>` its messageRef
names, at the level of `<definitions>`; the dialect reads its correlation key.

Start events: a none start event; at the process level also a timer or a message start event
(besides or instead of the none one). An event subprocess (`triggeredByEvent="true"`) is a
`subprocess` with `triggered_by_event`, walked like an embedded subprocess; its start event
carries its trigger: a timer, a message or an error (`errorRef` to an `<error>` with an
errorCode, or none: any code), interrupting unless isInterrupting="false" (an error start
always interrupts). Where each kind of start event may sit is the compiler's check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.dialect import Dialect
from orchestrator.definitions.bpmn.events import (
    event_definitions,
    kind_of,
    timer_of,
    why_refused,
)
from orchestrator.definitions.bpmn.names import BPMN, CAMUNDA, ORCH, child, is_bpmn, local
from orchestrator.definitions.bpmn.names import qname as q
from orchestrator.definitions.bpmn.orch_attributes import orch_options, process_options
from orchestrator.definitions.bpmn.problems import ElementPlace, Problems, place_of

#: BPMN elements inside a process that carry nothing for execution.
_IGNORED = {
    "documentation",
    "extensionElements",
    "laneSet",
    "dataObject",
    "dataObjectReference",
    "dataStoreReference",
    "textAnnotation",
    "association",
    "group",
    "property",
    "ioSpecification",
    "incoming",
    "outgoing",
    # An embedded subprocess's own settings, among its children: read by _activity.
    "multiInstanceLoopCharacteristics",
    "standardLoopCharacteristics",
    "dataInputAssociation",
    "dataOutputAssociation",
}
_REFUSED = {
    "scriptTask": "script tasks are not supported",
    "complexGateway": "complex gateways are not supported",
    "transaction": "transactions are not supported",
    "adHocSubProcess": "ad-hoc subprocesses are not supported",
}
_INTERMEDIATE = {"intermediateCatchEvent": "catch", "intermediateThrowEvent": "throw"}
#: Event definitions an intermediate catch event may have, and the node it then is.
_CATCH_TYPES = {"timer": "timer_catch_event", "message": "message_catch_event"}
_BOUNDARY_TYPES = {"timer": "timer_boundary_event", "message": "message_boundary_event"}
#: Event definitions a start event may have (the error one only in an event subprocess).
_START_KINDS = ("timer", "message", "error")
#: The dialect's error variables (error_variables) as the file spells them.
_ERROR_VARIABLES = {
    "code_variable": "camunda:errorCodeVariable",
    "message_variable": "camunda:errorMessageVariable",
}
#: Flows out of these may have conditions; out of any other node they are refused.
_CONDITIONAL_SOURCES = {"exclusiveGateway", "inclusiveGateway"}
_CONDITION_LANGUAGES = {None, "", "juel", "feel", "JUEL", "FEEL"}

Fields = dict[str, Any]


def _pruned(fields: Fields) -> Fields:
    """Leave out options that are unset (None or empty), so model defaults apply."""
    return {name: value for name, value in fields.items() if value not in (None, [], {})}


class ProcessWalker:
    def __init__(
        self,
        problems: Problems,
        dialect: Dialect,
        errors: dict[str, Element],
        messages: dict[str, Element] | None = None,
    ) -> None:
        self.problems = problems
        self.dialect = dialect
        self.errors = errors
        #: `<message>` elements of the file by id.
        self.messages = messages or {}
        self.nodes: list[Fields] = []
        self.flows: list[Fields] = []
        self.places: dict[str, ElementPlace] = {}
        self.elements: dict[str, Element] = {}
        #: Ids of the event subprocesses walked so far.
        self._event_subprocesses: set[str] = set()
        self._flow_elements: list[tuple[Element, Fields]] = []
        self._builders: dict[str, Callable[[Element], Fields | None]] = {
            "endEvent": self._end_event,
            "boundaryEvent": self._boundary_event,
            "intermediateCatchEvent": self._catch_event,
            "receiveTask": self._receive_task,
            "serviceTask": self._service_task,
            "sendTask": self._service_task,
            "businessRuleTask": self._service_task,
            "userTask": self._user_task,
            "task": self._manual_task,
            "manualTask": self._manual_task,
            "exclusiveGateway": self._gateway("exclusive_gateway"),
            "inclusiveGateway": self._gateway("inclusive_gateway"),
            "parallelGateway": self._gateway("parallel_gateway"),
            "eventBasedGateway": self._event_gateway,
            "callActivity": self._call_activity,
        }

    # -- walking

    def walk_process(self, process: Element) -> Fields:
        self._remember(process)
        self.dialect.check_extensions(process, self.problems)
        self._walk(process, None)
        self._check_conditions()
        data: Fields = {"key": process.get("id", ""), "nodes": self.nodes, "flows": self.flows}
        if process.get("name"):
            data["name"] = process.get("name")
        data.update(process_options(process, self.problems))
        return data

    def _walk(self, container: Element, parent: str | None) -> None:
        for element in container:
            if not is_bpmn(element) or local(element) in _IGNORED:
                continue
            self._remember(element)
            self.dialect.check_extensions(element, self.problems)
            self._element(element, parent)

    def _element(self, element: Element, parent: str | None) -> None:
        tag = local(element)
        if tag == "sequenceFlow":
            self._sequence_flow(element, parent)
        elif tag == "subProcess":
            self._subprocess(element, parent)
        elif tag == "startEvent":
            in_event_sub = parent is not None and parent in self._event_subprocesses
            self._add_node(element, parent, self._start_event(element, in_event_sub))
        elif tag in self._builders:
            self._add_node(element, parent, self._builders[tag](element))
        elif tag == "intermediateThrowEvent" and not event_definitions(element):
            self._add_node(element, parent, self._none_throw_event(element))
        elif tag in _INTERMEDIATE:
            kinds = ", ".join(kind_of(found) for found in event_definitions(element))
            self.problems.add(
                element,
                f"intermediate {_INTERMEDIATE[tag]} events are not supported yet"
                + (f" ({kinds})" if kinds else ""),
            )
        else:
            self.problems.add(element, _REFUSED.get(tag, f"<{tag}> is not supported"))

    def _remember(self, element: Element) -> None:
        element_id = element.get("id")
        if not element_id:
            self.problems.add(element, "has no id")
            return
        if element_id in self.places:
            self.problems.add(
                element, f"duplicate id (also on line {self.places[element_id].line})"
            )
            return
        self.places[element_id] = place_of(self.problems.document, element)
        self.elements[element_id] = element

    def _add_node(self, element: Element, parent: str | None, fields: Fields | None) -> None:
        if fields is None:
            return
        options = orch_options(element, fields["type"], self.problems)
        task_retry, orch_retry = fields.get("retry", {}), options.pop("retry", {})
        if task_retry.get("max_attempts", orch_retry.get("max_attempts")) != orch_retry.get(
            "max_attempts", task_retry.get("max_attempts")
        ):
            self.problems.add(element, "orch:maxAttempts contradicts the task's retries")
        retry = {**task_retry, **orch_retry}
        fields.update(options)
        if retry:
            fields["retry"] = retry
        node = {
            "id": element.get("id", ""),
            "name": element.get("name"),
            "parent": parent,
            **fields,
        }
        self.nodes.append(_pruned(node))

    # -- events

    def _start_event(self, element: Element, in_event_sub: bool) -> Fields | None:
        """A none start event, or one with a timer, a message or an error (where it may be
        is the compiler's check: an error start only in an event subprocess)."""
        self._no_event_mappings(element)
        definitions = event_definitions(element)
        if len(definitions) > 1:
            self.problems.add(element, "an event with several event definitions is not supported")
            return None
        fields: Fields = {"type": "start_event"}
        interrupting = element.get("isInterrupting", "true").strip() != "false"
        if in_event_sub and not interrupting:
            fields["interrupting"] = False
        kind = kind_of(definitions[0]) if definitions else None
        if kind != "message" and element.get(q(ORCH, "correlationKey")) is not None:
            self.problems.add(element, "orch:correlationKey is an option of message events only")
            return None
        if kind is None:
            return fields
        if kind not in _START_KINDS:
            self.problems.add(element, why_refused(kind, "start"))
            return None
        if kind != "error":
            wait = self._wait(element, definitions[0])
            return None if wait is None else {**fields, **wait}
        if not interrupting:
            self.problems.add(
                element, 'error start events always interrupt; remove isInterrupting="false"'
            )
            return None
        variables = [
            _ERROR_VARIABLES[name]
            for name, value in self.dialect.error_variables(definitions[0]).items()
            if value is not None
        ]
        if variables:
            self.problems.add(
                element,
                f"{' and '.join(variables)} on an error start event is not supported",
            )
            return None
        error = self._error(element, definitions[0], required=False)
        if error is None:
            return None
        return {**fields, "error": True, "error_code": error[0]}

    def _end_event(self, element: Element) -> Fields | None:
        self._no_event_mappings(element)
        definitions = event_definitions(element)
        if len(definitions) > 1:
            self.problems.add(element, "an event with several event definitions is not supported")
            return None
        if not definitions:
            return {"type": "end_event"}
        kind = kind_of(definitions[0])
        if kind == "terminate":
            return {"type": "terminate_end_event"}
        if kind != "error":
            self.problems.add(element, why_refused(kind, "end"))
            return None
        error = self._error(element, definitions[0], required=True)
        if error is None:
            return None
        code, message = error
        return {"type": "error_end_event", "error_code": code, "error_message": message}

    def _boundary_event(self, element: Element) -> Fields | None:
        self._no_event_mappings(element)
        definitions = event_definitions(element)
        kinds = [kind_of(definition) for definition in definitions]
        if len(kinds) != 1 or kinds[0] not in ("error", *_BOUNDARY_TYPES):
            why = (
                why_refused(kinds[0], "boundary")
                if len(kinds) == 1
                else "a boundary event needs exactly one event definition"
            )
            self.problems.add(element, why)
            return None
        interrupting = element.get("cancelActivity", "true").strip() != "false"
        if kinds[0] == "error" and not interrupting:
            self.problems.add(element, "non-interrupting error boundary events are not supported")
            return None
        if not element.get("attachedToRef"):
            self.problems.add(element, "a boundary event needs attachedToRef")
            return None
        if kinds[0] != "error":
            wait = self._wait(element, definitions[0])
            if wait is None:
                return None
            return {
                "type": _BOUNDARY_TYPES[kinds[0]],
                "attached_to": element.get("attachedToRef"),
                "interrupting": interrupting,
                **wait,
            }
        error = self._error(element, definitions[0], required=False)
        if error is None:
            return None
        return {
            "type": "error_boundary_event",
            "attached_to": element.get("attachedToRef"),
            "error_code": error[0],
            **self.dialect.error_variables(definitions[0]),
        }

    def _error(
        self, element: Element, definition: Element, required: bool
    ) -> tuple[str | None, str | None] | None:
        """(code, message) of the `<error>` the definition refers to; (None, None) for a
        catch-all; None (after a problem) when that cannot be read."""
        reference = definition.get("errorRef")
        error = self.errors.get(reference or "")
        code = error.get("errorCode") if error is not None else None
        if reference and error is None:
            self.problems.add(element, f"errorRef '{reference}' names no <error> in this file")
        elif code and code.strip().startswith("="):
            self.problems.add(element, f"errorCode must be a literal, not an expression ({code!r})")
        elif code or not required:
            message = self.dialect.error_message(error) if error is not None else None
            return code or None, message
        else:
            self.problems.add(
                element, "an error end event needs errorRef to an <error> with an errorCode"
            )
        return None

    def _catch_event(self, element: Element) -> Fields | None:
        """An intermediate catch event: a timer or a message to wait for."""
        definitions = event_definitions(element)
        kinds = [kind_of(definition) for definition in definitions]
        if len(kinds) > 1:
            self.problems.add(element, "an event with several event definitions is not supported")
            return None
        if not kinds or kinds[0] not in _CATCH_TYPES:
            self.problems.add(
                element,
                "intermediate catch events are not supported yet"
                + (f" ({kinds[0]})" if kinds else ""),
            )
            return None
        self._no_event_mappings(element)
        wait = self._wait(element, definitions[0])
        if wait is None:
            return None
        return {"type": _CATCH_TYPES[kinds[0]], **wait}

    def _wait(self, element: Element, definition: Element) -> Fields | None:
        """`{"timer": ...}` or `{"message": ...}` of a timer or message event definition."""
        if kind_of(definition) == "timer":
            timer = timer_of(element, definition, self.problems)
            return None if timer is None else {"timer": timer}
        message = self._message(element, definition)
        return None if message is None else {"message": message}

    def _message(self, element: Element, holder: Element) -> Fields | None:
        """The MessageDefinition (a dict) of the `<message>` that `holder` (a
        messageEventDefinition or a receive task) names with messageRef."""
        reference = (holder.get("messageRef") or "").strip()
        message = self.messages.get(reference)
        if not reference:
            self.problems.add(
                element, f"{local(holder)} needs messageRef to a <message> with a name"
            )
            return None
        if message is None:
            self.problems.add(element, f"messageRef '{reference}' names no <message> in this file")
            return None
        name = (message.get("name") or "").strip()
        if not name:
            line = self.problems.document.line(message)
            self.problems.add(
                element,
                f"messageRef '{reference}': the <message> (line {line}) has no name; "
                "a message is correlated by its name",
            )
            return None
        return self.dialect.message(element, message, name, self.problems)

    def _none_throw_event(self, element: Element) -> Fields:
        """A none intermediate throw event marks a state reached: the token passes straight
        through, as at a manual task (its mappings apply, as Camunda 8 applies them)."""
        inputs, outputs = self.dialect.io_mappings(element, self.problems)
        return {"type": "manual_task", "inputs": inputs, "outputs": outputs}

    def _no_event_mappings(self, element: Element) -> None:
        inputs, outputs = self.dialect.io_mappings(element, self.problems)
        if inputs or outputs:
            self.problems.add(element, "input/output mappings on events are not supported")

    # -- activities

    def _activity(self, element: Element) -> Fields:
        """What every activity may have: mappings and multi-instance."""
        if element.get("isForCompensation") == "true":
            self.problems.add(element, "compensation is not supported")
        inputs, outputs = self.dialect.io_mappings(element, self.problems)
        fields: Fields = {"inputs": inputs, "outputs": outputs}
        if child(element, BPMN, "standardLoopCharacteristics") is not None:
            self.problems.add(element, "loops (standardLoopCharacteristics) are not supported")
        loop = child(element, BPMN, "multiInstanceLoopCharacteristics")
        if loop is not None:
            multi = self.dialect.multi_instance(element, loop, self.problems)
            if "collection" not in multi and "cardinality" not in multi:
                self.problems.add(
                    element, "multi-instance needs a collection or a loop cardinality"
                )
            multi["sequential"] = loop.get("isSequential") == "true"
            fields["multi_instance"] = multi
        return fields

    def _service_task(self, element: Element) -> Fields | None:
        common = self._activity(element)
        implementation = self.dialect.service_task(element, self.problems)
        if implementation is None:
            return None
        return {"type": "service_task", **implementation, **common}

    def _user_task(self, element: Element) -> Fields | None:
        return {
            "type": "user_task",
            **self.dialect.user_task(element, self.problems),
            **self._activity(element),
        }

    def _manual_task(self, element: Element) -> Fields | None:
        return {"type": "manual_task", **self._activity(element)}

    def _receive_task(self, element: Element) -> Fields | None:
        common = self._activity(element)
        if element.get("instantiate", "false").strip() == "true":
            self.problems.add(
                element,
                'receive tasks that start the process (instantiate="true") are not supported',
            )
            return None
        message = self._message(element, element)
        if message is None:
            return None
        return {"type": "receive_task", "message": message, **common}

    def _call_activity(self, element: Element) -> Fields | None:
        common = self._activity(element)
        called = self.dialect.call_activity(element, self.problems)
        inputs = common.pop("inputs") + called.pop("inputs", [])
        outputs = common.pop("outputs") + called.pop("outputs", [])
        return {
            "type": "call_activity",
            **called,
            **common,
            "inputs": inputs,
            "outputs": outputs,
        }

    def _subprocess(self, element: Element, parent: str | None) -> None:
        """An embedded subprocess, or an event subprocess (no flows in or out; its start
        event says what starts it): either way its children name it as their parent."""
        fields: Fields = {"type": "subprocess", **self._activity(element)}
        if element.get("triggeredByEvent", "false").strip() == "true":
            if "multi_instance" in fields:
                self.problems.add(element, "an event subprocess cannot be multi-instance")
            fields["triggered_by_event"] = True
            self._event_subprocesses.add(element.get("id", ""))
        self._add_node(element, parent, fields)
        self._walk(element, element.get("id"))

    # -- gateways and flows

    def _gateway(self, node_type: str) -> Callable[[Element], Fields | None]:
        def build(element: Element) -> Fields | None:
            fields: Fields = {"type": node_type}
            if node_type != "parallel_gateway":
                fields["default"] = element.get("default")
            return fields

        return build

    def _event_gateway(self, element: Element) -> Fields | None:
        """Waits for the first of the events its flows lead to (the graph checks them)."""
        if element.get("instantiate", "false").strip() == "true":
            self.problems.add(
                element,
                'event-based gateways that start the process (instantiate="true") '
                "are not supported",
            )
            return None
        kind = element.get("eventGatewayType", "Exclusive").strip()
        if kind != "Exclusive":
            self.problems.add(element, f'eventGatewayType="{kind}" is not supported')
            return None
        return {"type": "event_based_gateway"}

    def _sequence_flow(self, element: Element, parent: str | None) -> None:
        flow: Fields = {
            "id": element.get("id", ""),
            "name": element.get("name"),
            "parent": parent,
            "from": element.get("sourceRef", ""),
            "to": element.get("targetRef", ""),
            "condition": self._condition(element),
        }
        self.flows.append(_pruned(flow))
        self._flow_elements.append((element, flow))

    def _condition(self, element: Element) -> str | None:
        condition = child(element, BPMN, "conditionExpression")
        if condition is None:
            return None
        language = condition.get("language")
        if language not in _CONDITION_LANGUAGES or condition.get(q(CAMUNDA, "resource")):
            self.problems.add(
                element, f"script conditions are not supported (language={language!r})"
            )
            return None
        return (condition.text or "").strip() or None

    def _check_conditions(self) -> None:
        for element, flow in self._flow_elements:
            if not flow.get("condition"):
                continue
            source = self.elements.get(flow["from"])
            if source is not None and local(source) not in _CONDITIONAL_SOURCES:
                self.problems.add(
                    element,
                    f"a conditional flow out of a {local(source)} is not supported; "
                    "put an exclusive or inclusive gateway after it",
                )
