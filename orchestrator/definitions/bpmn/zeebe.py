"""Camunda 8 (zeebe: namespace): job types, ioMapping, headers, called elements, messages.

A message's correlation key is its `<zeebe:subscription correlationKey="=orderId">`, a FEEL
expression (Camunda 8 requires the `=`; a literal is refused). A message without one is
correlated by the instance's business key, as in Camunda 7 files. Message names that are
FEEL expressions are refused.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.dialect import Mapping
from orchestrator.definitions.bpmn.expressions import candidates_refused, feel, zeebe_value
from orchestrator.definitions.bpmn.names import BPMN, ORCH, ZEEBE, child, extension, extensions
from orchestrator.definitions.bpmn.names import qname as q
from orchestrator.definitions.bpmn.problems import Problems

#: Job types of Camunda's own connectors (`io.camunda:http-json:1`, ...).
_CONNECTOR = "io.camunda:"
_LISTENERS = {
    "executionListeners": "execution listeners are not supported",
    "taskListeners": "task listeners are not supported",
}


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _headers(element: Element) -> dict[str, str]:
    """zeebe:taskHeaders: static key/values for whoever does the task."""
    return {
        header.get("key", ""): header.get("value", "")
        for block in extensions(element, ZEEBE, "taskHeaders")
        for header in block.findall(q(ZEEBE, "header"))
    }


def _literal(element: Element, problems: Problems, what: str, value: str | None) -> str | None:
    """A value that must not be a FEEL expression here (the model holds it fixed)."""
    if value is not None and value.strip().startswith("="):
        problems.add(element, f"{what} must be a literal value, not an expression ({value!r})")
        return None
    return value


class Zeebe:
    name = "Camunda 8"

    def check_extensions(self, element: Element, problems: Problems) -> None:
        for name, why in _LISTENERS.items():
            if extensions(element, ZEEBE, name):
                problems.add(element, why)
        for block in extensions(element, ZEEBE, "properties"):
            for found in block.findall(q(ZEEBE, "property")):
                if found.get("name") == "inbound.type":
                    problems.add(
                        element,
                        f"inbound connector {found.get('value')!r} (zeebe:property "
                        "inbound.type) is not supported: nothing would start or resume the "
                        "process from it; remove it and start instances through the API",
                    )

    def service_task(self, element: Element, problems: Problems) -> dict[str, Any] | None:
        if extension(element, ZEEBE, "calledDecision") is not None:
            problems.add(element, "DMN decisions (zeebe:calledDecision) are not supported")
            return None
        definition = extension(element, ZEEBE, "taskDefinition")
        if definition is None:
            problems.add(element, "has no implementation: add a zeebe:taskDefinition type")
            return None
        topic = _literal(element, problems, "the job type", definition.get("type"))
        if not topic:
            if definition.get("type") is None:
                problems.add(element, "zeebe:taskDefinition needs a type")
            return None
        if topic.startswith(_CONNECTOR):
            problems.add(
                element,
                f"job type {topic!r} is a Camunda connector; connectors are not supported: "
                "use a job type of your own and a worker that does the call",
            )
            return None
        fields: dict[str, Any] = {"topic": topic}
        # Modeler writes retries="" when the field is cleared: the default then.
        retries = (definition.get("retries") or "").strip() or None
        if retries is not None:
            if retries.strip().isdigit():
                fields["retry"] = {"max_attempts": int(retries)}
            else:
                problems.add(
                    element, f"zeebe:taskDefinition retries must be a number ({retries!r})"
                )
        headers = _headers(element)
        if headers:
            fields["headers"] = headers
        return fields

    def io_mappings(
        self, element: Element, problems: Problems
    ) -> tuple[list[Mapping], list[Mapping]]:
        inputs: list[Mapping] = []
        outputs: list[Mapping] = []
        for io in extensions(element, ZEEBE, "ioMapping"):
            for kind, found in (("input", inputs), ("output", outputs)):
                for mapping in io.findall(q(ZEEBE, kind)):
                    read = self._mapping(element, kind, mapping, problems)
                    if read is not None:
                        found.append(read)
        return inputs, outputs

    def _mapping(
        self, element: Element, kind: str, mapping: Element, problems: Problems
    ) -> Mapping | None:
        source, target = (mapping.get("source") or "").strip(), mapping.get("target")
        if target and source:
            return {"target": target, "source": zeebe_value(source)}
        if target and kind == "input":
            # An input without source makes a local variable that is null (Camunda 8.8;
            # Modeler writes one for a template field left empty).
            return {"target": target, "source": "=null"}
        missing = [name for name, value in (("source", source), ("target", target)) if not value]
        if kind == "input":
            missing = ["target"]
        line = problems.document.line(mapping)
        problems.add(element, f"zeebe:{kind} (line {line}) needs {' and '.join(missing)}")
        return None

    def multi_instance(self, element: Element, loop: Element, problems: Problems) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        characteristics = extension(loop, ZEEBE, "loopCharacteristics")
        if characteristics is not None:
            for attribute, field, convert in (
                ("inputCollection", "collection", True),
                ("inputElement", "element_variable", False),
                ("outputCollection", "output_collection", False),
                ("outputElement", "output_element", True),
            ):
                value = characteristics.get(attribute)
                if value:
                    fields[field] = feel(value) if convert else value
        for tag, field in (
            ("loopCardinality", "cardinality"),
            ("completionCondition", "completion_condition"),
        ):
            found = child(loop, BPMN, tag)
            if found is not None and (found.text or "").strip():
                fields[field] = feel(found.text or "")
        return fields

    def user_task(self, element: Element, problems: Problems) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        assignment = extension(element, ZEEBE, "assignmentDefinition")
        if assignment is not None:
            fields["assignee"] = assignment.get("assignee")
            for attribute, field in (
                ("candidateGroups", "candidate_groups"),
                ("candidateUsers", "candidate_users"),
            ):
                value = assignment.get(attribute)
                if value is not None and value.strip().startswith("="):
                    problems.add(element, candidates_refused(attribute, value))
                    continue
                fields[field] = _split_list(value)
        form = extension(element, ZEEBE, "formDefinition")
        if form is not None:
            fields["form_key"] = (
                form.get("formKey") or form.get("formId") or form.get("externalReference")
            )
        embedded = extension(element, ZEEBE, "userTaskForm")
        if embedded is not None and "form_key" not in fields:
            fields["form_key"] = f"camunda-forms:bpmn:{embedded.get('id')}"
        schedule = extension(element, ZEEBE, "taskSchedule")
        if schedule is not None:
            fields["due_date"] = schedule.get("dueDate")
        headers = _headers(element)
        if headers:
            fields["headers"] = headers
        return fields

    def call_activity(self, element: Element, problems: Problems) -> dict[str, Any]:
        called = extension(element, ZEEBE, "calledElement")
        if called is None:
            problems.add(element, "a call activity needs zeebe:calledElement processId")
            return {"called_element": ""}
        process_id = _literal(element, problems, "processId", called.get("processId"))
        if called.get("processId") is None:
            problems.add(element, "zeebe:calledElement needs a processId")
        binding = called.get("bindingType", "latest")
        if binding != "latest":
            problems.add(element, f'bindingType="{binding}" is not supported; use "latest"')
        return {
            "called_element": process_id or "",
            # Camunda 8's defaults: every variable crosses both ways unless turned off.
            "propagate_all_in": called.get("propagateAllParentVariables", "true") != "false",
            "propagate_all_out": called.get("propagateAllChildVariables", "true") != "false",
        }

    def error_variables(self, definition: Element) -> dict[str, Any]:
        return {}

    def error_message(self, error: Element) -> str | None:
        return None

    def message(
        self, element: Element, message: Element, name: str, problems: Problems
    ) -> dict[str, Any] | None:
        reference = message.get("id", "")
        where = f"<message> '{reference}' (line {problems.document.line(message)})"
        if name.startswith("="):
            problems.add(
                element,
                f"message names that are FEEL expressions are not supported ({where}: "
                f"name={name!r}); use a fixed name",
            )
            return None
        if any(found.get(q(ORCH, "correlationKey")) is not None for found in (element, message)):
            problems.add(
                element,
                "orch:correlationKey is for Camunda 7 files; in Camunda 8 set the message's "
                "zeebe:subscription correlationKey",
            )
            return None
        subscription = extension(message, ZEEBE, "subscription")
        key = (subscription.get("correlationKey") or "").strip() if subscription is not None else ""
        if not key:
            return {"name": name}  # correlated by the instance's business key
        if not key.startswith("="):
            problems.add(
                element,
                f"zeebe:subscription correlationKey={key!r} of {where} must be a FEEL "
                f"expression starting with '=' (Camunda 8 requires it), such as ={key}",
            )
            return None
        return {"name": name, "correlation_key": key}
