"""Camunda 7 (camunda: namespace): external tasks, inputOutput, call activity in/out, messages.

Messages and correlation. A Camunda 7 model says no correlation key: the application that
correlates a message names the instance (by business key, process variables or instance
id) in its API call. Here a message waits for one key, fixed when the wait starts:

- by default none (correlation_key None): the message is correlated by the instance's
  business key;
- our extension `orch:correlationKey`, an expression (`${orderId}` or FEEL `=orderId`), on
  the `<bpmn:message>` (for every wait on that message) or on the catch event, receive task
  or boundary event itself (the element's wins): the value of that expression, taken when
  the wait starts, is the key a message must carry.

A literal `orch:correlationKey` is refused (every instance would wait for the same key),
as is a message name that is an expression (`${...}`).
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.dialect import Mapping
from orchestrator.definitions.bpmn.expressions import (
    camunda7_reference,
    camunda7_value,
    candidates_refused,
)
from orchestrator.definitions.bpmn.names import (
    BPMN,
    CAMUNDA,
    ORCH,
    child,
    extension,
    extensions,
)
from orchestrator.definitions.bpmn.names import qname as q
from orchestrator.definitions.bpmn.problems import Problems

JAVA = 'Java delegates/expressions/connectors are not supported; use camunda:type="external"'
_LISTENERS = {
    "executionListener": "execution listeners are not supported",
    "taskListener": "task listeners are not supported",
    "connector": JAVA,
}
_JAVA_ATTRIBUTES = ("class", "delegateExpression", "expression")


def _attr(element: Element, name: str) -> str | None:
    return element.get(q(CAMUNDA, name))


def _split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


class Camunda7:
    name = "Camunda 7"

    def check_extensions(self, element: Element, problems: Problems) -> None:
        for name, why in _LISTENERS.items():
            if extensions(element, CAMUNDA, name):
                problems.add(element, why)

    def service_task(self, element: Element, problems: Problems) -> dict[str, Any] | None:
        refused = [name for name in _JAVA_ATTRIBUTES if _attr(element, name) is not None]
        if refused:
            problems.add(element, f"camunda:{refused[0]}: {JAVA}")
        if _attr(element, "decisionRef") is not None:
            problems.add(element, "DMN decisions (camunda:decisionRef) are not supported")
            return None
        kind = _attr(element, "type")
        if kind is None:
            if not refused and extension(element, CAMUNDA, "connector") is None:
                problems.add(
                    element,
                    'has no implementation: set camunda:type="external" and camunda:topic',
                )
            return None
        if kind != "external":
            problems.add(element, f'camunda:type="{kind}" is not supported; use "external"')
            return None
        topic = _attr(element, "topic")
        if not topic:
            problems.add(element, "an external task needs camunda:topic")
            return None
        return {"topic": topic}

    def io_mappings(
        self, element: Element, problems: Problems
    ) -> tuple[list[Mapping], list[Mapping]]:
        inputs: list[Mapping] = []
        outputs: list[Mapping] = []
        for io in extensions(element, CAMUNDA, "inputOutput"):
            for kind, found in (("inputParameter", inputs), ("outputParameter", outputs)):
                for parameter in io.findall(q(CAMUNDA, kind)):
                    mapping = self._parameter(element, kind, parameter, problems)
                    if mapping is not None:
                        found.append(mapping)
        return inputs, outputs

    def _parameter(
        self, element: Element, kind: str, parameter: Element, problems: Problems
    ) -> Mapping | None:
        target = parameter.get("name")
        where = f"{kind} '{target}' (line {problems.document.line(parameter)})"
        if not target:
            problems.add(element, f"{kind} (line {problems.document.line(parameter)}) needs a name")
            return None
        if child(parameter, CAMUNDA, "script") is not None:
            problems.add(element, f"scripts are not supported (camunda:script in {where})")
            return None
        for value in ("list", "map"):
            if child(parameter, CAMUNDA, value) is not None:
                problems.add(
                    element,
                    f"camunda:{value} values are not supported; use an expression ({where})",
                )
                return None
        return {"target": target, "source": camunda7_value(parameter.text)}

    def multi_instance(self, element: Element, loop: Element, problems: Problems) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        collection = _attr(loop, "collection")
        data_input = child(loop, BPMN, "loopDataInputRef")
        if collection:
            fields["collection"] = camunda7_reference(collection)
        elif data_input is not None and (data_input.text or "").strip():
            fields["collection"] = camunda7_reference(data_input.text or "")
        element_variable = _attr(loop, "elementVariable")
        data_item = child(loop, BPMN, "inputDataItem")
        if element_variable:
            fields["element_variable"] = element_variable
        elif data_item is not None and data_item.get("name"):
            fields["element_variable"] = data_item.get("name")
        cardinality = child(loop, BPMN, "loopCardinality")
        if cardinality is not None and (cardinality.text or "").strip():
            fields["cardinality"] = camunda7_reference(cardinality.text or "")
        completion = child(loop, BPMN, "completionCondition")
        if completion is not None and (completion.text or "").strip():
            fields["completion_condition"] = (completion.text or "").strip()
        return fields

    def user_task(self, element: Element, problems: Problems) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "assignee": _attr(element, "assignee"),
            "form_key": _attr(element, "formKey") or _attr(element, "formRef"),
            "due_date": _attr(element, "dueDate"),
        }
        for attribute, field in (
            ("candidateGroups", "candidate_groups"),
            ("candidateUsers", "candidate_users"),
        ):
            value = _attr(element, attribute)
            if value is not None and ("${" in value or "#{" in value):
                problems.add(element, candidates_refused(f"camunda:{attribute}", value))
                continue
            fields[field] = _split_list(value)
        return fields

    def call_activity(self, element: Element, problems: Problems) -> dict[str, Any]:
        fields: dict[str, Any] = {"called_element": element.get("calledElement", "")}
        if not fields["called_element"]:
            problems.add(element, "a call activity needs calledElement")
        elif "${" in fields["called_element"] or "#{" in fields["called_element"]:
            problems.add(element, "calledElement must be a process id, not an expression")
        for name in ("variableMappingClass", "variableMappingDelegateExpression"):
            if _attr(element, name) is not None:
                problems.add(element, f"camunda:{name}: {JAVA}")
        fields.update(self._binding(element, problems))
        fields["inputs"], fields["propagate_all_in"] = self._passing(element, "in", problems)
        fields["outputs"], fields["propagate_all_out"] = self._passing(element, "out", problems)
        return fields

    def _binding(self, element: Element, problems: Problems) -> dict[str, Any]:
        binding = _attr(element, "calledElementBinding") or "latest"
        if binding == "latest":
            return {}
        version = _attr(element, "calledElementVersion") or ""
        if binding == "version" and version.strip().isdigit():
            return {"version": int(version)}
        if binding == "version":
            problems.add(element, "camunda:calledElementVersion must be a version number")
        else:
            problems.add(
                element,
                f'camunda:calledElementBinding="{binding}" is not supported; '
                'use "latest" or "version"',
            )
        return {}

    def _passing(
        self, element: Element, direction: str, problems: Problems
    ) -> tuple[list[Mapping], bool]:
        mappings: list[Mapping] = []
        everything = False
        for passed in extensions(element, CAMUNDA, direction):
            where = f"camunda:{direction} (line {problems.document.line(passed)})"
            source, expression = passed.get("source"), passed.get("sourceExpression")
            target = passed.get("target")
            if passed.get("variables") == "all":
                everything = True
            elif passed.get("businessKey") is not None:
                problems.add(element, f"{where}: passing the business key is not supported")
            elif not target or not (source or expression):
                problems.add(element, f"{where} needs source or sourceExpression, and target")
            elif expression:
                mappings.append({"target": target, "source": expression.strip()})
            elif source:
                mappings.append({"target": target, "source": f"={source.strip()}"})
        return mappings, everything

    def error_variables(self, definition: Element) -> dict[str, Any]:
        return {
            "code_variable": _attr(definition, "errorCodeVariable"),
            "message_variable": _attr(definition, "errorMessageVariable"),
        }

    def error_message(self, error: Element) -> str | None:
        return _attr(error, "errorMessage")

    def message(
        self, element: Element, message: Element, name: str, problems: Problems
    ) -> dict[str, Any] | None:
        reference = message.get("id", "")
        where = f"<message> '{reference}' (line {problems.document.line(message)})"
        if "${" in name or "#{" in name:
            problems.add(
                element,
                f"message names that are expressions are not supported ({where}: "
                f"name={name!r}); use a fixed name",
            )
            return None
        key = element.get(q(ORCH, "correlationKey"))
        said = "orch:correlationKey"
        if key is None:
            key = message.get(q(ORCH, "correlationKey"))
            said = f"orch:correlationKey of {where}"
        if key is None:
            return {"name": name}  # correlated by the instance's business key
        key = key.strip()
        if not key.startswith(("${", "#{", "=")):
            problems.add(
                element,
                f"{said}={key!r} must be an expression such as ${{orderId}} or =orderId "
                "(its value when the wait starts is the key a message must carry)",
            )
            return None
        return {"name": name, "correlation_key": key}
