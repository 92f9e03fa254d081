"""The BPMN reader on waits: timer and message catch events, receive tasks, timer and message
boundary events, event-based gateways (both dialects), and what stays refused."""

from __future__ import annotations

import pytest

from orchestrator.definitions.bpmn import load_bpmn, read_bpmn
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import (
    EventBasedGateway,
    MessageBoundaryEvent,
    MessageCatchEvent,
    MessageDefinition,
    ReceiveTask,
    TimerBoundaryEvent,
    TimerCatchEvent,
    TimerDefinition,
    VariableMapping,
)
from tests.support.bpmn_files import bpmn_file, nodes, only, refused, source


def bpmn(body: str, messages: str = "", camunda: int = 7) -> str:
    """A small file: `body` inside one process (`body` starts on line 4), then `messages` at
    the level of definitions."""
    return bpmn_file(body, messages, camunda)


def catch(message_ref: str = "M", element_id: str = "C", attributes: str = "") -> str:
    return (
        f'<bpmn:intermediateCatchEvent id="{element_id}"{attributes}>'
        f'<bpmn:messageEventDefinition messageRef="{message_ref}" />'
        "</bpmn:intermediateCatchEvent>"
    )


def message_of(text: str) -> MessageDefinition:
    (process,) = read_bpmn(text)
    return nodes(process)["C"].message


# -- timers (Camunda 7)


def test_timers_c7_maps_every_wait() -> None:
    found = nodes(only("timers_c7.bpmn"))
    types = {node_id: node.type for node_id, node in found.items()}
    assert types == {
        "StartEvent_1": "start_event",
        "Timer_Settle": "timer_catch_event",
        "Task_Ship": "service_task",
        "Boundary_Timeout": "timer_boundary_event",
        "Boundary_Hourly": "timer_boundary_event",
        "Task_Remind": "service_task",
        "End_Reminded": "end_event",
        "End_TimedOut": "end_event",
        "Gateway_Which": "event_based_gateway",
        "Catch_Delivered": "message_catch_event",
        "Catch_Late": "timer_catch_event",
        "End_Delivered": "end_event",
        "End_Late": "end_event",
    }
    assert found["Timer_Settle"] == TimerCatchEvent(
        id="Timer_Settle",
        name="1 second",
        type="timer_catch_event",
        timer=TimerDefinition(kind="duration", value="PT1S"),
    )
    assert found["Boundary_Timeout"] == TimerBoundaryEvent(
        id="Boundary_Timeout",
        name="10 minutes",
        type="timer_boundary_event",
        attached_to="Task_Ship",
        timer=TimerDefinition(kind="duration", value="PT10M"),
        interrupting=True,
    )
    assert found["Boundary_Hourly"] == TimerBoundaryEvent(
        id="Boundary_Hourly",
        name="Every hour",
        type="timer_boundary_event",
        attached_to="Task_Ship",
        timer=TimerDefinition(kind="cycle", value="R/PT1H"),
        interrupting=False,
    )
    assert found["Catch_Late"].timer == TimerDefinition(kind="date", value="${deliveryDeadline}")
    assert isinstance(found["Gateway_Which"], EventBasedGateway)
    # Camunda 7: no key in the model, so the instance's business key.
    assert found["Catch_Delivered"].message == MessageDefinition(name="delivery-confirmed")


def test_timers_c7_compiles() -> None:
    (process,) = load_bpmn(source("timers_c7.bpmn"))
    assert process.topics == frozenset({"hand-to-courier", "remind-courier"})
    hourly = {event.id: event for event in process.event_boundaries["Task_Ship"]}
    assert set(hourly) == {"Boundary_Timeout", "Boundary_Hourly"}


@pytest.mark.parametrize(
    ("child", "kind", "value"),
    [
        (
            '<bpmn:timeDuration xsi:type="bpmn:tFormalExpression">PT15M</bpmn:timeDuration>',
            "duration",
            "PT15M",
        ),
        ("<bpmn:timeDate>2030-01-01T09:00:00Z</bpmn:timeDate>", "date", "2030-01-01T09:00:00Z"),
        ("<bpmn:timeCycle>\n  R3/PT10M\n</bpmn:timeCycle>", "cycle", "R3/PT10M"),
        ("<bpmn:timeCycle>0 0 9 * * MON-FRI</bpmn:timeCycle>", "cycle", "0 0 9 * * MON-FRI"),
        ("<bpmn:timeDuration>=reminderDelay</bpmn:timeDuration>", "duration", "=reminderDelay"),
    ],
)
def test_timer_kinds_and_values(child: str, kind: str, value: str) -> None:
    body = (
        f'<bpmn:intermediateCatchEvent id="C"><bpmn:timerEventDefinition>{child}'
        "</bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>"
    )
    (process,) = read_bpmn(bpmn(body))
    assert nodes(process)["C"].timer == TimerDefinition(kind=kind, value=value)  # type: ignore[arg-type]


# -- messages (Camunda 8)


def test_messages_c8_names_keys_and_interrupting() -> None:
    found = nodes(only("messages_c8.bpmn"))
    assert found["Task_AwaitPayment"] == ReceiveTask(
        id="Task_AwaitPayment",
        name="Await payment",
        type="receive_task",
        message=MessageDefinition(name="payment-received", correlation_key="=orderId"),
        outputs=(VariableMapping(target="paidAmount", source="=amount"),),
    )
    assert found["Boundary_Question"] == MessageBoundaryEvent(
        id="Boundary_Question",
        name="Customer asks",
        type="message_boundary_event",
        attached_to="Task_AwaitPayment",
        message=MessageDefinition(name="customer-question", correlation_key="=customer.id"),
        interrupting=False,
    )
    assert found["Catch_Receipt"] == MessageCatchEvent(
        id="Catch_Receipt",
        name="Receipt filed",
        type="message_catch_event",
        message=MessageDefinition(name="receipt-filed"),
    )
    (process,) = load_bpmn(source("messages_c8.bpmn"))
    assert "=orderId" in process.expressions


# -- messages (Camunda 7)


def test_messages_c7_keys_from_orch_attributes() -> None:
    found = nodes(only("messages_c7.bpmn"))
    keys = {
        node_id: (node.message.name, node.message.correlation_key)
        for node_id, node in found.items()
        if getattr(node, "message", None) is not None
    }
    assert keys == {
        # No orch:correlationKey: the instance's business key.
        "Task_AwaitForm": ("claim-form-received", None),
        # orch:correlationKey on the <message>.
        "Catch_Photos": ("photos-uploaded", "${claimNumber}"),
        # On the element too: the element's wins.
        "Catch_Expert": ("expert-report", "=claim.expertCase"),
        "Boundary_Withdrawn": ("claim-withdrawn", None),
    }
    assert found["Boundary_Withdrawn"].interrupting is True
    assert found["Boundary_Withdrawn"].attached_to == "Task_Settle"
    (process,) = load_bpmn(source("messages_c7.bpmn"))
    assert {"${claimNumber}", "=claim.expertCase"} <= set(process.expressions)


def test_orch_correlation_key_on_a_receive_task() -> None:
    body = '<bpmn:receiveTask id="C" messageRef="M" orch:correlationKey="${orderId}" />'
    key = message_of(bpmn(body, '<bpmn:message id="M" name="paid" />')).correlation_key
    assert key == "${orderId}"


def test_c8_without_subscription_is_correlated_by_business_key() -> None:
    text = bpmn(catch(), '<bpmn:message id="M" name="paid" />', camunda=8)
    assert message_of(text) == MessageDefinition(name="paid")


def test_event_based_gateway_and_receive_task_in_c8() -> None:
    body = """<bpmn:startEvent id="s" />
<bpmn:eventBasedGateway id="g" />
<bpmn:receiveTask id="r" messageRef="M" />
<bpmn:intermediateCatchEvent id="t"><bpmn:timerEventDefinition>
<bpmn:timeDuration>PT1H</bpmn:timeDuration></bpmn:timerEventDefinition>
</bpmn:intermediateCatchEvent>
<bpmn:endEvent id="e1" /><bpmn:endEvent id="e2" />
<bpmn:sequenceFlow id="f0" sourceRef="s" targetRef="g" />
<bpmn:sequenceFlow id="f1" sourceRef="g" targetRef="r" />
<bpmn:sequenceFlow id="f2" sourceRef="g" targetRef="t" />
<bpmn:sequenceFlow id="f3" sourceRef="r" targetRef="e1" />
<bpmn:sequenceFlow id="f4" sourceRef="t" targetRef="e2" />"""
    messages = (
        '<bpmn:message id="M" name="paid"><bpmn:extensionElements>'
        '<zeebe:subscription correlationKey="=orderId" /></bpmn:extensionElements></bpmn:message>'
    )
    (process,) = load_bpmn(bpmn(body, messages, camunda=8))
    assert process.nodes["g"].type == "event_based_gateway"
    assert process.nodes["r"].message == MessageDefinition(name="paid", correlation_key="=orderId")


# -- refusals


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (
            bpmn(
                '<bpmn:intermediateCatchEvent id="C"><bpmn:messageEventDefinition />'
                "</bpmn:intermediateCatchEvent>"
            ),
            'line 4: intermediateCatchEvent id="C": messageEventDefinition needs messageRef '
            "to a <message> with a name",
        ),
        (
            bpmn('<bpmn:receiveTask id="C" />'),
            'line 4: receiveTask id="C": receiveTask needs messageRef to a <message> with a name',
        ),
        (
            bpmn(catch("Nope")),
            "line 4: intermediateCatchEvent id=\"C\": messageRef 'Nope' names no <message> "
            "in this file",
        ),
        (
            bpmn(catch(), '<bpmn:message id="M" />'),
            "line 4: intermediateCatchEvent id=\"C\": messageRef 'M': the <message> (line 6) "
            "has no name; a message is correlated by its name",
        ),
        (
            bpmn(
                catch(),
                '<bpmn:message id="M" name="paid"><bpmn:extensionElements>'
                '<zeebe:subscription correlationKey="orderId" />'
                "</bpmn:extensionElements></bpmn:message>",
                camunda=8,
            ),
            'line 4: intermediateCatchEvent id="C": zeebe:subscription correlationKey='
            "'orderId' of <message> 'M' (line 6) must be a FEEL expression starting with '=' "
            "(Camunda 8 requires it), such as =orderId",
        ),
        (
            bpmn(catch(), '<bpmn:message id="M" name="=kind + &quot;-paid&quot;" />', camunda=8),
            "message names that are FEEL expressions are not supported",
        ),
        (
            bpmn(catch(), '<bpmn:message id="M" name="paid-${kind}" />'),
            "message names that are expressions are not supported",
        ),
        (
            bpmn(catch(), '<bpmn:message id="M" name="paid" orch:correlationKey="orderId" />'),
            "orch:correlationKey of <message> 'M' (line 6)='orderId' must be an expression",
        ),
        (
            bpmn(catch(attributes=' orch:correlationKey=""'), '<bpmn:message id="M" name="p" />'),
            "orch:correlationKey='' must be an expression",
        ),
        (
            bpmn(
                catch(attributes=' orch:correlationKey="=orderId"'),
                '<bpmn:message id="M" name="paid" />',
                camunda=8,
            ),
            "orch:correlationKey is for Camunda 7 files; in Camunda 8 set the message's "
            "zeebe:subscription correlationKey",
        ),
        (
            bpmn(
                '<bpmn:startEvent id="S"><bpmn:signalEventDefinition signalRef="G" />'
                "</bpmn:startEvent>"
            ),
            'line 4: startEvent id="S": signal events are not supported',
        ),
        (
            bpmn(
                '<bpmn:startEvent id="S"><bpmn:messageEventDefinition messageRef="Nope" />'
                "</bpmn:startEvent>",
                '<bpmn:message id="M" name="paid" />',
            ),
            "line 4: startEvent id=\"S\": messageRef 'Nope' names no <message> in this file",
        ),
        (
            bpmn(
                '<bpmn:intermediateThrowEvent id="S"><bpmn:messageEventDefinition messageRef="M" />'
                "</bpmn:intermediateThrowEvent>",
                '<bpmn:message id="M" name="paid" />',
            ),
            "intermediate throw events are not supported yet (message)",
        ),
        (
            bpmn(
                '<bpmn:subProcess id="S" triggeredByEvent="true"><bpmn:startEvent id="s2">'
                "<bpmn:escalationEventDefinition /></bpmn:startEvent></bpmn:subProcess>"
            ),
            'startEvent id="s2": escalation events are not supported',
        ),
        (
            bpmn(
                '<bpmn:task id="T" /><bpmn:boundaryEvent id="B" attachedToRef="T" '
                'cancelActivity="false"><bpmn:errorEventDefinition /></bpmn:boundaryEvent>'
            ),
            "non-interrupting error boundary events are not supported",
        ),
        (
            bpmn(
                '<bpmn:task id="T" /><bpmn:boundaryEvent id="B" attachedToRef="T">'
                "<bpmn:signalEventDefinition /></bpmn:boundaryEvent>"
            ),
            "signal events are not supported",
        ),
        (
            bpmn(
                '<bpmn:intermediateCatchEvent id="C"><bpmn:timerEventDefinition />'
                "</bpmn:intermediateCatchEvent>"
            ),
            "a timer event needs exactly one of timeDuration or timeDate or timeCycle",
        ),
        (
            bpmn(
                '<bpmn:intermediateCatchEvent id="C"><bpmn:timerEventDefinition>'
                "<bpmn:timeDuration> </bpmn:timeDuration></bpmn:timerEventDefinition>"
                "</bpmn:intermediateCatchEvent>"
            ),
            "the timer's timeDuration is empty",
        ),
        (
            bpmn(
                '<bpmn:intermediateCatchEvent id="C"><bpmn:signalEventDefinition />'
                "</bpmn:intermediateCatchEvent>"
            ),
            "intermediate catch events are not supported yet (signal)",
        ),
        (
            bpmn(
                '<bpmn:eventBasedGateway id="G" instantiate="true" eventGatewayType="Parallel" />'
            ),
            'event-based gateways that start the process (instantiate="true") are not supported',
        ),
        (
            bpmn('<bpmn:eventBasedGateway id="G" eventGatewayType="Parallel" />'),
            'eventGatewayType="Parallel" is not supported',
        ),
        (
            bpmn(catch(attributes=' orch:lock="5m"'), '<bpmn:message id="M" name="paid" />'),
            "orch:lock is not an option on a message_catch_event",
        ),
    ],
)
def test_refusals(text: str, why: str) -> None:
    problems = refused(text)
    assert any(why in problem for problem in problems), problems


def test_refusals_come_all_at_once_with_their_lines() -> None:
    body = "\n".join(
        [
            catch("Nope", "C1"),
            '<bpmn:startEvent id="S"><bpmn:timerEventDefinition /></bpmn:startEvent>',
            '<bpmn:receiveTask id="R" messageRef="M" />',
            '<bpmn:task id="T" /><bpmn:boundaryEvent id="B" attachedToRef="T">'
            "<bpmn:timerEventDefinition /></bpmn:boundaryEvent>",
        ]
    )
    messages = '<bpmn:message id="M" name="paid"><bpmn:extensionElements><zeebe:subscription \
correlationKey="orderId" /></bpmn:extensionElements></bpmn:message>'
    problems = refused(bpmn(body, messages, camunda=8))
    assert [problem.split(":")[0] for problem in problems] == [
        "line 4",
        "line 5",
        "line 6",
        "line 7",
    ]
    assert 'id="C1"' in problems[0] and "names no <message>" in problems[0]
    assert "a timer event needs exactly one of" in problems[1]
    assert "must be a FEEL expression" in problems[2]
    assert 'boundaryEvent id="B"' in problems[3] and "a timer event needs" in problems[3]


def test_graph_checks_what_follows_an_event_based_gateway() -> None:
    body = """<bpmn:startEvent id="s" />
<bpmn:eventBasedGateway id="g" />
<bpmn:task id="t" />
<bpmn:intermediateCatchEvent id="c"><bpmn:messageEventDefinition messageRef="M" />
</bpmn:intermediateCatchEvent>
<bpmn:endEvent id="e" />
<bpmn:sequenceFlow id="f0" sourceRef="s" targetRef="g" />
<bpmn:sequenceFlow id="f1" sourceRef="g" targetRef="t" />
<bpmn:sequenceFlow id="f2" sourceRef="g" targetRef="c" />
<bpmn:sequenceFlow id="f3" sourceRef="t" targetRef="e" />
<bpmn:sequenceFlow id="f4" sourceRef="c" targetRef="e" />"""
    with pytest.raises(DefinitionError) as error:
        load_bpmn(bpmn(body, '<bpmn:message id="M" name="paid" />'))
    assert any(
        "event-based gateway leads only to timer or message catch events" in problem
        for problem in error.value.problems
    ), error.value.problems


def test_literal_timer_is_checked_at_compile_with_its_line() -> None:
    body = """<bpmn:startEvent id="s" />
<bpmn:intermediateCatchEvent id="c"><bpmn:timerEventDefinition>
<bpmn:timeDuration>soon</bpmn:timeDuration></bpmn:timerEventDefinition>
</bpmn:intermediateCatchEvent>
<bpmn:endEvent id="e" />
<bpmn:sequenceFlow id="f0" sourceRef="s" targetRef="c" />
<bpmn:sequenceFlow id="f1" sourceRef="c" targetRef="e" />"""
    with pytest.raises(DefinitionError) as error:
        load_bpmn(bpmn(body))
    assert any(
        problem.startswith("line 5: intermediateCatchEvent id=\"c\": timer duration 'soon'")
        for problem in error.value.problems
    ), error.value.problems
