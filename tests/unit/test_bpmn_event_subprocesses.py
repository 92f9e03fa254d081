"""The BPMN reader on event subprocesses and on the process's timer and message start events
(both dialects), and what stays refused."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.definitions.bpmn import load_bpmn, read_bpmn
from orchestrator.definitions.graph import process_starts
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import (
    MessageDefinition,
    ProcessDefinition,
    StartEvent,
    SubProcess,
    TimerDefinition,
)
from tests.support.bpmn_files import bpmn_file, nodes, refused, source


def read(text: str | bytes) -> dict[str, Any]:
    (process,) = read_bpmn(text)
    return nodes(process)


def not_compiled(text: str | bytes) -> list[str]:
    read_bpmn(text)  # the reader maps it: the compiler says what is wrong
    with pytest.raises(DefinitionError) as error:
        load_bpmn(text)
    return error.value.problems


#: A none start, a task and an end: what every snippet's process runs besides (lines 4-8).
_MAIN = """<bpmn:startEvent id="s" />
<bpmn:task id="t" />
<bpmn:endEvent id="e" />
<bpmn:sequenceFlow id="f0" sourceRef="s" targetRef="t" />
<bpmn:sequenceFlow id="f1" sourceRef="t" targetRef="e" />"""


def bpmn(body: str, definitions: str = "", camunda: int = 7) -> str:
    """One process: `_MAIN` (lines 4 to 8), then `body` (from line 9); then `definitions`
    (messages, errors) at the level of definitions."""
    return bpmn_file(f"{_MAIN}\n{body}", definitions, camunda)


def event_sub(start: str, sub_id: str = "ES", attributes: str = "") -> str:
    """An event subprocess whose start event (id `{sub_id}_s`) holds `start` and whose
    path goes straight to its end."""
    return (
        f'<bpmn:subProcess id="{sub_id}" triggeredByEvent="true"{attributes}>'
        f"{start.format(id=f'{sub_id}_s')}"
        f'<bpmn:endEvent id="{sub_id}_e" />'
        f'<bpmn:sequenceFlow id="{sub_id}_f" sourceRef="{sub_id}_s" targetRef="{sub_id}_e" />'
        "</bpmn:subProcess>"
    )


def start(definition: str, attributes: str = "") -> str:
    return f'<bpmn:startEvent id="{{id}}"{attributes}>{definition}</bpmn:startEvent>'


_TIMER = (
    "<bpmn:timerEventDefinition><bpmn:timeDuration>PT5M</bpmn:timeDuration>"
    "</bpmn:timerEventDefinition>"
)
_MESSAGE = '<bpmn:messageEventDefinition messageRef="M" />'
_ERROR = '<bpmn:errorEventDefinition errorRef="Err" />'
_ERROR_DEFINITION = '<bpmn:error id="Err" name="Out of stock" errorCode="OUT_OF_STOCK" />'


# -- event subprocesses (Camunda 7 file)


def test_event_subprocesses_c7_maps_every_scope() -> None:
    (process,) = read_bpmn(source("event_subprocesses_c7.bpmn"))
    found = nodes(process)
    parents = {node_id: node.parent for node_id, node in found.items()}
    assert parents == {
        "StartEvent_1": None,
        "Sub_Assess": None,
        "Start_Assess": "Sub_Assess",
        "Task_Assess": "Sub_Assess",
        "End_Assessed": "Sub_Assess",
        "EventSub_Rejected": "Sub_Assess",
        "Start_Rejected": "EventSub_Rejected",
        "Task_Inform": "EventSub_Rejected",
        "End_Rejected": "EventSub_Rejected",
        "Task_Pay": None,
        "End_Paid": None,
        "EventSub_Update": None,
        "Start_Update": "EventSub_Update",
        "Task_Record": "EventSub_Update",
        "End_Update": "EventSub_Update",
        "EventSub_Deadline": None,
        "Start_Deadline": "EventSub_Deadline",
        "Task_Escalate": "EventSub_Deadline",
        "End_Escalated": "EventSub_Deadline",
    }
    subs = {n.id for n in found.values() if isinstance(n, SubProcess) and n.triggered_by_event}
    assert subs == {"EventSub_Rejected", "EventSub_Update", "EventSub_Deadline"}
    assert found["Sub_Assess"].triggered_by_event is False
    assert found["Start_Rejected"] == StartEvent(
        id="Start_Rejected",
        name="Rejected",
        parent="EventSub_Rejected",
        type="start_event",
        error=True,
        error_code="CLAIM_REJECTED",
    )
    assert found["Start_Update"] == StartEvent(
        id="Start_Update",
        name="Update received",
        parent="EventSub_Update",
        type="start_event",
        message=MessageDefinition(name="claim-updated", correlation_key="${claimNumber}"),
        interrupting=False,
    )
    assert found["Start_Deadline"] == StartEvent(
        id="Start_Deadline",
        name="30 days",
        parent="EventSub_Deadline",
        type="start_event",
        timer=TimerDefinition(kind="duration", value="P30D"),
    )
    # An event subprocess has no flows in or out; its own flows name it as parent.
    flows = {flow["id"]: flow for flow in process.data["flows"]}
    assert all("EventSub" not in (flow["from"] + flow["to"]) for flow in flows.values())
    assert flows["Flow_Update0"]["parent"] == "EventSub_Update"


def test_event_subprocesses_c7_compiles() -> None:
    (process,) = load_bpmn(source("event_subprocesses_c7.bpmn"))
    subs = {scope: {sub.id for sub in found} for scope, found in process.event_subprocesses.items()}
    assert subs == {
        None: {"EventSub_Update", "EventSub_Deadline"},
        "Sub_Assess": {"EventSub_Rejected"},
    }
    assert process.start_id == "StartEvent_1"
    assert process.starts["EventSub_Rejected"] == "Start_Rejected"
    assert process_starts(process) == []
    assert "escalate-claim" in process.topics


def test_error_start_without_error_ref_catches_any_code() -> None:
    found = read(bpmn(event_sub(start("<bpmn:errorEventDefinition />"))))
    assert found["ES_s"].error is True
    assert found["ES_s"].error_code is None
    assert found["ES_s"].interrupting is True


def test_event_subprocess_in_camunda_8() -> None:
    body = "\n".join(
        [
            event_sub(start(_ERROR), "OnError"),
            event_sub(start(_MESSAGE, ' isInterrupting="false"'), "OnMessage"),
            event_sub(start(_TIMER, ' isInterrupting="false"'), "OnTimer"),
        ]
    )
    definitions = (
        '<bpmn:error id="Err" name="Out of stock" errorCode="OUT_OF_STOCK" />'
        '<bpmn:message id="M" name="order-changed"><bpmn:extensionElements>'
        '<zeebe:subscription correlationKey="=orderId" /></bpmn:extensionElements></bpmn:message>'
    )
    text = bpmn(body, definitions, camunda=8)
    found = read(text)
    assert found["OnError"].triggered_by_event is True
    assert (found["OnError_s"].error, found["OnError_s"].error_code) == (True, "OUT_OF_STOCK")
    assert found["OnMessage_s"].message == MessageDefinition(
        name="order-changed", correlation_key="=orderId"
    )
    assert found["OnMessage_s"].interrupting is False
    assert found["OnTimer_s"].timer == TimerDefinition(kind="duration", value="PT5M")
    assert found["OnTimer_s"].interrupting is False
    (process,) = load_bpmn(text)
    assert {sub.id for sub in process.event_subprocesses[None]} == {
        "OnError",
        "OnMessage",
        "OnTimer",
    }


def test_unset_flags_are_not_written_out() -> None:
    (process,) = read_bpmn(bpmn(event_sub(start(_TIMER))))
    data = {node["id"]: node for node in process.data["nodes"]}
    assert "interrupting" not in data["ES_s"] and "error" not in data["ES_s"]
    assert "triggered_by_event" not in data["s"]
    dumped = ProcessDefinition.model_validate(process.data).model_dump(by_alias=True)
    start_event = next(node for node in dumped["nodes"] if node["id"] == "ES_s")
    assert "interrupting" not in start_event and "error" not in start_event


# -- start events of the process


def test_start_events_c8_maps_timer_and_message_starts() -> None:
    found = read(source("start_events_c8.bpmn"))
    assert found["StartEvent_1"] == StartEvent(
        id="StartEvent_1", name="Report asked for", type="start_event"
    )
    assert found["Start_Hourly"].timer == TimerDefinition(kind="cycle", value="R/PT1H")
    assert found["Start_Hourly"].parent is None
    assert found["Start_Restocked"].message == MessageDefinition(
        name="warehouse-restocked", correlation_key="=warehouseId"
    )


def test_start_events_c8_compiles() -> None:
    (process,) = load_bpmn(source("start_events_c8.bpmn"))
    assert process.start_id == "StartEvent_1"  # a start by a client takes the none one
    assert {node.id for node in process_starts(process)} == {"Start_Hourly", "Start_Restocked"}


def test_timer_and_message_starts_in_camunda_7() -> None:
    body = "\n".join(
        [
            '<bpmn:startEvent id="Daily"><bpmn:timerEventDefinition><bpmn:timeCycle>'
            "0 0 9 * * ?</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:startEvent>",
            '<bpmn:startEvent id="Placed">' + _MESSAGE + "</bpmn:startEvent>",
            '<bpmn:startEvent id="Keyed" orch:correlationKey="${orderId}">'
            '<bpmn:messageEventDefinition messageRef="M2" /></bpmn:startEvent>',
            '<bpmn:sequenceFlow id="f2" sourceRef="Daily" targetRef="t" />',
            '<bpmn:sequenceFlow id="f3" sourceRef="Placed" targetRef="t" />',
            '<bpmn:sequenceFlow id="f4" sourceRef="Keyed" targetRef="t" />',
        ]
    )
    messages = '<bpmn:message id="M" name="order-placed" /><bpmn:message id="M2" name="keyed" />'
    found = read(bpmn(body, messages))
    assert found["Daily"].timer == TimerDefinition(kind="cycle", value="0 0 9 * * ?")
    # Camunda 7: no key in the model, so the business key.
    assert found["Placed"].message == MessageDefinition(name="order-placed")
    assert found["Keyed"].message == MessageDefinition(name="keyed", correlation_key="${orderId}")


def test_is_interrupting_means_nothing_outside_an_event_subprocess() -> None:
    body = (
        '<bpmn:startEvent id="T" isInterrupting="false">' + _TIMER + "</bpmn:startEvent>"
        '<bpmn:sequenceFlow id="f2" sourceRef="T" targetRef="t" />'
    )
    (process,) = read_bpmn(bpmn(body))
    assert "interrupting" not in next(n for n in process.data["nodes"] if n["id"] == "T")


# -- refusals


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            '<bpmn:startEvent id="X"><bpmn:signalEventDefinition signalRef="G" />'
            "</bpmn:startEvent>",
            'line 9: startEvent id="X": signal events are not supported',
        ),
        (
            '<bpmn:startEvent id="X"><bpmn:conditionalEventDefinition /></bpmn:startEvent>',
            'line 9: startEvent id="X": conditional events are not supported',
        ),
        (
            event_sub(start("<bpmn:escalationEventDefinition />")),
            'line 9: startEvent id="ES_s": escalation events are not supported',
        ),
        (
            event_sub(start("<bpmn:signalEventDefinition />")),
            'line 9: startEvent id="ES_s": signal events are not supported',
        ),
        (
            event_sub(start("<bpmn:compensateEventDefinition />")),
            'line 9: startEvent id="ES_s": compensation is not supported',
        ),
        (
            event_sub(start("<bpmn:conditionalEventDefinition />")),
            'line 9: startEvent id="ES_s": conditional events are not supported',
        ),
        (
            event_sub(start(_ERROR, ' isInterrupting="false"')),
            'line 9: startEvent id="ES_s": error start events always interrupt; '
            'remove isInterrupting="false"',
        ),
        (
            '<bpmn:startEvent id="X" orch:correlationKey="${orderId}">'
            + _TIMER
            + "</bpmn:startEvent>",
            'line 9: startEvent id="X": orch:correlationKey is an option of message events only',
        ),
        (
            event_sub(start('<bpmn:errorEventDefinition errorRef="Nope" />')),
            "errorRef 'Nope' names no <error> in this file",
        ),
        (
            event_sub(start(_TIMER + _MESSAGE)),
            "an event with several event definitions is not supported",
        ),
        (
            event_sub(start("<bpmn:timerEventDefinition />")),
            "a timer event needs exactly one of",
        ),
        (
            '<bpmn:subProcess id="ES" triggeredByEvent="true">'
            '<bpmn:multiInstanceLoopCharacteristics camunda:collection="${items}" />'
            "</bpmn:subProcess>",
            'line 9: subProcess id="ES": an event subprocess cannot be multi-instance',
        ),
    ],
)
def test_refusals(body: str, why: str) -> None:
    problems = refused(bpmn(body, _ERROR_DEFINITION + '<bpmn:message id="M" name="m" />'))
    assert any(why in problem for problem in problems), problems


def test_error_variables_on_an_error_start_are_refused() -> None:
    body = event_sub(start('<bpmn:errorEventDefinition camunda:errorMessageVariable="why" />'))
    (problem,) = refused(bpmn(body))
    assert problem.startswith(
        'line 9: startEvent id="ES_s": camunda:errorMessageVariable on an error start event '
        "is not supported"
    ), problem


def test_refusals_come_all_at_once_with_their_lines() -> None:
    body = "\n".join(
        [
            '<bpmn:startEvent id="A"><bpmn:signalEventDefinition /></bpmn:startEvent>',
            '<bpmn:subProcess id="ES" triggeredByEvent="true">',
            start(_ERROR, ' isInterrupting="false"').format(id="B"),
            start("<bpmn:escalationEventDefinition />").format(id="C"),
            "</bpmn:subProcess>",
            '<bpmn:startEvent id="D">' + _MESSAGE + "</bpmn:startEvent>",
        ]
    )
    problems = refused(bpmn(body, _ERROR_DEFINITION))
    assert [problem.split(":")[0] for problem in problems] == [
        "line 9",
        "line 11",
        "line 12",
        "line 14",
    ]
    assert 'id="A"' in problems[0] and "signal events" in problems[0]
    assert 'id="B"' in problems[1] and "always interrupt" in problems[1]
    assert 'id="C"' in problems[2] and "escalation events" in problems[2]
    assert 'id="D"' in problems[3] and "messageRef 'M' names no <message>" in problems[3]


# -- what the compiler checks, said at the element's line


def test_error_start_at_the_process_level_is_refused_by_the_compiler() -> None:
    body = (
        '<bpmn:startEvent id="Failed">' + _ERROR + "</bpmn:startEvent>\n"
        '<bpmn:sequenceFlow id="f2" sourceRef="Failed" targetRef="t" />'
    )
    problems = not_compiled(bpmn(body, _ERROR_DEFINITION))
    assert (
        'line 9: startEvent id="Failed": error start events belong in event subprocesses'
        in problems
    ), problems


def test_event_subprocess_needs_a_triggered_start() -> None:
    problems = not_compiled(bpmn(event_sub(start(""))))
    assert any(
        p.startswith('line 9: startEvent id="ES_s"')
        and "starts with a timer, message or error" in p
        for p in problems
    ), problems


def test_event_subprocess_has_no_flows_in_or_out() -> None:
    body = event_sub(start(_TIMER)) + '\n<bpmn:sequenceFlow id="f2" sourceRef="ES" targetRef="e" />'
    problems = not_compiled(bpmn(body))
    assert any(
        p.startswith('line 9: subProcess id="ES"') and "no incoming or outgoing flows" in p
        for p in problems
    ), problems


def test_embedded_subprocess_starts_with_a_none_start_event() -> None:
    body = "\n".join(
        [
            '<bpmn:startEvent id="s" />',
            '<bpmn:subProcess id="Sub">',
            start(_TIMER).format(id="Sub_s"),
            '<bpmn:endEvent id="Sub_e" />',
            '<bpmn:sequenceFlow id="g" sourceRef="Sub_s" targetRef="Sub_e" />',
            "</bpmn:subProcess>",
            '<bpmn:endEvent id="e" />',
            '<bpmn:sequenceFlow id="f0" sourceRef="s" targetRef="Sub" />',
            '<bpmn:sequenceFlow id="f1" sourceRef="Sub" targetRef="e" />',
        ]
    )
    problems = not_compiled(bpmn_file(body))  # no _MAIN: the body starts on line 4
    assert (
        'line 6: startEvent id="Sub_s": an embedded subprocess starts with a none start event'
        in problems
    ), problems
