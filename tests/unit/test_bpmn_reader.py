"""The BPMN reader: Modeler-style files (tests/data/bpmn) into the model, and refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.definitions.bpmn import (
    BpmnProcess,
    ElementPlace,
    load_bpmn,
    looks_like_bpmn,
    read_bpmn,
)
from orchestrator.definitions.bpmn import reader as reader_module
from orchestrator.definitions.loader import MAX_SOURCE_BYTES
from orchestrator.errors import DefinitionError
from orchestrator.model.definition import (
    CallActivity,
    ErrorBoundaryEvent,
    ErrorEndEvent,
    ExclusiveGateway,
    InclusiveGateway,
    ManualTask,
    MultiInstance,
    ProcessDefinition,
    RetryPolicy,
    ServiceTask,
    UserTask,
    VariableMapping,
)
from tests.support.bpmn_files import nodes, only, refused, source


def line_of(name: str, text: str) -> int:
    """The line (1-based) of the first occurrence of `text` in a test file."""
    for number, line in enumerate(source(name).decode().splitlines(), start=1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {name}")


def flows(process: BpmnProcess) -> dict[str, Any]:
    definition = ProcessDefinition.model_validate(process.data)
    return {flow.id: flow for flow in definition.flows}


def mapping(target: str, source_text: str) -> VariableMapping:
    return VariableMapping(target=target, source=source_text)


_HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL" '
    'xmlns:camunda="http://camunda.org/schema/1.0/bpmn" '
    'xmlns:zeebe="http://camunda.org/schema/zeebe/1.0" '
    'xmlns:orch="https://orchestrator.dev/schema/bpmn/1.0" id="D" '
    'targetNamespace="http://bpmn.io/schema/bpmn">\n'
)


def bpmn(body: str, process: str = '<bpmn:process id="p" isExecutable="true">') -> str:
    """A small file: `body` inside one process (`body` starts on line 4)."""
    return f"{_HEAD}{process}\n{body}\n</bpmn:process>\n</bpmn:definitions>\n"


# -- Camunda 7 and 8 orders


def test_c7_order_maps_every_element() -> None:
    process = only("c7_order.bpmn")
    assert process.key == "order-c7"
    assert process.data["name"] == "Order (Camunda 7)"
    found = nodes(process)
    assert {node_id: node.type for node_id, node in found.items()} == {
        "StartEvent_1": "start_event",
        "Task_Reserve": "service_task",
        "Boundary_Stock": "error_boundary_event",
        "End_Rejected": "end_event",
        "Gateway_Amount": "exclusive_gateway",
        "Task_Approve": "service_task",
        "Gateway_Merge": "exclusive_gateway",
        "Gateway_Fork": "parallel_gateway",
        "Task_Charge": "service_task",
        "Task_Ship": "service_task",
        "Gateway_Join": "parallel_gateway",
        "End_Done": "end_event",
    }
    assert all(node.parent is None for node in found.values())
    reserve = found["Task_Reserve"]
    assert isinstance(reserve, ServiceTask)
    assert reserve.topic == "reserve-stock"
    assert reserve.lock_ms == 45_000
    assert reserve.max_lease_expiries == 2
    assert reserve.retry == RetryPolicy(
        max_attempts=5,
        initial_backoff_ms=2000,
        backoff_coefficient=3.0,
        max_backoff_ms=60_000,
        non_retryable_codes=("OUT_OF_STOCK", "BAD_ITEM"),
    )
    assert reserve.inputs == (
        mapping("orderId", "${order.id}"),
        mapping("warehouse", '="Main \\"A\\""'),
        mapping("note", "=null"),
    )
    assert reserve.outputs == (mapping("reserved", "${reservation}"),)
    assert found["Task_Charge"].fetch_variables == ("amount", "card")
    assert found["Task_Ship"].topic == "ship"
    assert found["Task_Ship"].name == "Choose carrier\nand ship"


def test_c7_order_error_boundary_conditions_and_places() -> None:
    process = only("c7_order.bpmn")
    found = nodes(process)
    assert found["Boundary_Stock"] == ErrorBoundaryEvent(
        type="error_boundary_event",
        id="Boundary_Stock",
        name="Out of stock",
        attached_to="Task_Reserve",
        error_code="OUT_OF_STOCK",
        code_variable="stockError",
        message_variable="stockMessage",
    )
    gateway = found["Gateway_Amount"]
    assert isinstance(gateway, ExclusiveGateway)
    assert gateway.default == "Flow_Small"
    links = flows(process)
    assert links["Flow_Large"].condition == '${amount > 1000 && customer.type != "vip"}'
    assert links["Flow_Large"].name == "more than 1000"
    assert links["Flow_Small"].condition is None
    assert (links["Flow_2stock"].source, links["Flow_2stock"].target) == (
        "Boundary_Stock",
        "End_Rejected",
    )
    assert len(links) == 12
    name = "c7_order.bpmn"
    assert process.elements["Task_Reserve"] == ElementPlace(
        line_of(name, 'id="Task_Reserve"'), "serviceTask", "Reserve stock"
    )
    assert process.elements["Flow_Large"].line == line_of(name, 'id="Flow_Large"')
    assert process.elements["Flow_Large"].tag == "sequenceFlow"
    assert process.elements["order-c7"].tag == "process"


def test_c8_order_maps_job_types_headers_retries_and_mappings() -> None:
    process = only("c8_order.bpmn")
    found = nodes(process)
    reserve = found["Task_Reserve"]
    assert isinstance(reserve, ServiceTask)
    assert reserve.topic == "reserve-stock"
    assert reserve.headers == {"warehouse": "main", "priority": "high"}
    assert reserve.lock_ms == 45_000
    assert reserve.retry == RetryPolicy(
        max_attempts=5, initial_backoff_ms=2000, non_retryable_codes=("OUT_OF_STOCK", "BAD_ITEM")
    )
    assert reserve.inputs == (
        mapping("orderId", "=order.id"),
        mapping("warehouse", '="Main \\"A\\""'),
    )
    assert reserve.outputs == (mapping("reserved", "=reservation"),)
    assert found["Task_Charge"].retry.max_attempts == 1
    assert found["Task_Charge"].fetch_variables == ("amount", "card")
    assert found["Task_Approve"].retry == RetryPolicy()
    boundary = found["Boundary_Stock"]
    assert isinstance(boundary, ErrorBoundaryEvent)
    assert (boundary.error_code, boundary.code_variable) == ("OUT_OF_STOCK", None)
    assert flows(process)["Flow_Large"].condition == '=amount > 1000 and customer.type != "vip"'
    c7_types = {k: v.type for k, v in nodes(only("c7_order.bpmn")).items()}
    assert {k: v.type for k, v in found.items()} == c7_types


# -- subprocess and multi-instance


def test_subprocess_children_name_it_as_parent() -> None:
    process = only("subprocess_and_mi.bpmn")
    found = nodes(process)
    inside = {"Start_Sub", "Task_Authorize", "Gateway_Ok", "End_Sub", "End_SubError"}
    assert {node_id for node_id, node in found.items() if node.parent == "Sub_Payment"} == inside
    assert found["Sub_Payment"].type == "subprocess"
    assert found["Sub_Payment"].parent is None
    assert found["Sub_Payment"].inputs == (mapping("amount", "=order.total"),)
    sub_flows = {flow_id for flow_id, flow in flows(process).items() if flow.parent}
    assert sub_flows == {"Flow_Sub0", "Flow_Sub1", "Flow_Authorized", "Flow_Declined"}
    assert found["End_SubError"] == ErrorEndEvent(
        type="error_end_event",
        id="End_SubError",
        name="Declined",
        parent="Sub_Payment",
        error_code="DECLINED",
    )
    boundary = found["Boundary_Declined"]
    assert isinstance(boundary, ErrorBoundaryEvent)
    assert (boundary.attached_to, boundary.error_code) == ("Sub_Payment", "DECLINED")
    assert isinstance(found["Task_Notify"], ManualTask)


def test_multi_instance_parallel_and_sequential() -> None:
    found = nodes(only("subprocess_and_mi.bpmn"))
    assert found["Task_Pack"].multi_instance == MultiInstance(
        sequential=False,
        collection="=order.items",
        element_variable="item",
        output_collection="parcels",
        output_element="=parcel",
    )
    assert found["Task_Label"].multi_instance == MultiInstance(
        sequential=True, cardinality="=3", completion_condition="=printed = true"
    )


def test_camunda7_multi_instance_collection_name_or_expression() -> None:
    body = """
    <bpmn:serviceTask id="T1" camunda:type="external" camunda:topic="t">
      <bpmn:multiInstanceLoopCharacteristics camunda:collection="items"
          camunda:elementVariable="item">
        <bpmn:completionCondition>${nrOfCompletedInstances &gt;= 2}</bpmn:completionCondition>
      </bpmn:multiInstanceLoopCharacteristics>
    </bpmn:serviceTask>
    <bpmn:serviceTask id="T2" camunda:type="external" camunda:topic="t">
      <bpmn:multiInstanceLoopCharacteristics isSequential="true"
          camunda:collection="${order.lines}" />
    </bpmn:serviceTask>
    <bpmn:task id="T3">
      <bpmn:multiInstanceLoopCharacteristics>
        <bpmn:loopCardinality>3</bpmn:loopCardinality>
      </bpmn:multiInstanceLoopCharacteristics>
    </bpmn:task>"""
    (process,) = read_bpmn(bpmn(body))
    found = nodes(process)
    assert found["T1"].multi_instance == MultiInstance(
        collection="=items",
        element_variable="item",
        completion_condition="${nrOfCompletedInstances >= 2}",
    )
    assert found["T2"].multi_instance == MultiInstance(sequential=True, collection="${order.lines}")
    assert found["T3"].multi_instance == MultiInstance(cardinality="=3")


# -- call activities


def test_camunda7_call_activity_in_and_out() -> None:
    found = nodes(only("call_activity_parent.bpmn"))
    pinned = found["Call_Pinned"]
    assert isinstance(pinned, CallActivity)
    assert (pinned.called_element, pinned.version) == ("child-c7", 2)
    assert pinned.inputs == (mapping("id", "=orderId"), mapping("doubled", "${amount * 2}"))
    assert pinned.outputs == (mapping("childResult", "=result"),)
    assert (pinned.propagate_all_in, pinned.propagate_all_out) == (False, False)
    latest = found["Call_Latest"]
    assert isinstance(latest, CallActivity)
    assert (latest.version, latest.propagate_all_in, latest.propagate_all_out) == (None, True, True)
    child = nodes(only("call_activity_child.bpmn"))
    assert child["Task_Work"].outputs == (mapping("result", "${id}"),)


def test_camunda8_call_activity_and_collaboration_of_two_processes() -> None:
    parent, child = read_bpmn(source("call_activity_c8.bpmn"))
    assert (parent.key, child.key) == ("parent-c8", "child-c8")
    found = nodes(parent)
    mapped = found["Call_Mapped"]
    assert isinstance(mapped, CallActivity)
    assert mapped.called_element == "child-c8"
    assert (mapped.propagate_all_in, mapped.propagate_all_out) == (False, False)
    assert mapped.inputs == (mapping("id", "=orderId"),)
    assert mapped.outputs == (mapping("childResult", "=result"),)
    defaults = found["Call_Default"]
    assert isinstance(defaults, CallActivity)
    assert (defaults.propagate_all_in, defaults.propagate_all_out) == (True, True)
    assert nodes(child)["Child_Work"].topic == "child-work"
    assert "Child_Work" in child.elements and "Child_Work" not in parent.elements


# -- user tasks and inclusive gateways


def test_camunda7_user_task() -> None:
    found = nodes(only("user_task.bpmn"))
    task = found["Task_Approve"]
    assert isinstance(task, UserTask)
    assert task.topic == "approvals"
    assert task.lock_ms == 3_600_000
    assert task.assignee == "${initiator}"
    assert task.candidate_groups == ("sales", "management")
    assert task.candidate_users == ("anna", "ben")
    assert task.form_key == "embedded:app:forms/approve.html"
    assert task.due_date == "${dueDate}"
    assert task.inputs == (mapping("title", '="Please approve"'),)
    plain = found["Task_Review"]
    assert (plain.topic, plain.lock_ms, plain.assignee) == ("user-task", None, None)


def test_camunda8_user_task() -> None:
    task = nodes(only("user_task_c8.bpmn"))["Task_Approve"]
    assert isinstance(task, UserTask)
    assert task.topic == "user-task"
    assert task.lock_ms == 7_200_000
    assert task.assignee == "=initiator"
    assert task.candidate_groups == ("sales", "management")
    assert task.candidate_users == ("anna",)
    assert task.form_key == "approve-form"
    assert task.due_date == '=now() + duration("P2D")'
    assert task.outputs == (mapping("decision", "=approved"),)


def test_inclusive_gateways_manual_task_and_terminate_end() -> None:
    process = only("inclusive.bpmn")
    found = nodes(process)
    split = found["Gateway_Split"]
    assert isinstance(split, InclusiveGateway)
    assert split.default == "Flow_None"
    assert found["Gateway_Join"].type == "inclusive_gateway"
    assert found["Task_Wrap"].type == "manual_task"
    assert found["End_All"].type == "terminate_end_event"
    links = flows(process)
    assert links["Flow_Gift"].condition == "${gift}"
    assert links["Flow_Express"].condition == '${shipping == "express"}'


# -- refusals


_EVERYTHING = {
    "Task_Script": "script tasks are not supported",
    "Task_Class": "Java delegates/expressions/connectors are not supported",
    "Task_Dmn": "DMN decisions",
    "Throw_Signal": "intermediate throw events are not supported yet (signal)",
    "Gateway_Complex": "complex gateways are not supported",
    "Start_OnSignal": "signal events are not supported",
    "Start_SoftError": "error start events always interrupt",
    "Tx_Booking": "transactions are not supported",
    "AdHoc_Checks": "ad-hoc subprocesses are not supported",
    "Task_Book": "standardLoopCharacteristics",
    "Boundary_Compensate": "compensation is not supported",
    "Task_Refund": "compensation is not supported",
    "Boundary_Soft": "non-interrupting error boundary events are not supported",
    "Task_Nothing": 'has no implementation: set camunda:type="external"',
    "Task_Listened": "task listeners are not supported",
    "End_Escalate": "escalation events are not supported",
    "Start_Conditional": "conditional events are not supported",
    "Start_Multiple": "an event with several event definitions is not supported",
    "Throw_Message": "intermediate throw events are not supported yet (message)",
    "Flow_3": "a conditional flow out of a businessRuleTask is not supported",
    "Flow_6": "script conditions are not supported",
}


def test_unsupported_everything_names_every_element_with_its_line() -> None:
    name = "unsupported_everything.bpmn"
    problems = refused(source(name))
    for element_id, why in _EVERYTHING.items():
        line = line_of(name, f'id="{element_id}"')
        said = [p for p in problems if f'id="{element_id}"' in p]
        assert said, f"{element_id} not refused"
        assert any(p.startswith(f"line {line}: ") and why in p for p in said), said
    scripted = [p for p in problems if 'id="Task_Script_Input"' in p]
    assert len(scripted) == 2
    assert any("execution listeners are not supported" in p for p in scripted)
    script_line = line_of(name, '<camunda:inputParameter name="total"')
    assert any(
        f"scripts are not supported (camunda:script in inputParameter 'total' "
        f"(line {script_line}))" in p
        for p in scripted
    )
    assert len(problems) == len(_EVERYTHING) + 2
    lines = [int(p.split(":")[0].removeprefix("line ")) for p in problems]
    assert lines == sorted(lines)
    assert problems[0] == (
        f'line {line_of(name, "Task_Script")}: scriptTask id="Task_Script" '
        'name="Compute discount": script tasks are not supported'
    )


def test_refusals_carry_the_element_id() -> None:
    with pytest.raises(DefinitionError) as error:
        read_bpmn(source("unsupported_everything.bpmn"))
    ids = {element_id for element_id, _ in error.value.located}
    assert set(_EVERYTHING) | {"Task_Script_Input"} == ids


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            '<bpmn:serviceTask id="T"><bpmn:extensionElements>'
            '<zeebe:taskDefinition type="t" retries="=3" /></bpmn:extensionElements>'
            "</bpmn:serviceTask>",
            "zeebe:taskDefinition retries must be a number ('=3')",
        ),
        (
            '<bpmn:serviceTask id="T"><bpmn:extensionElements>'
            '<zeebe:taskDefinition type="=kind" /></bpmn:extensionElements></bpmn:serviceTask>',
            "the job type must be a literal value",
        ),
        (
            '<bpmn:businessRuleTask id="T"><bpmn:extensionElements>'
            '<zeebe:calledDecision decisionId="d" resultVariable="r" />'
            "</bpmn:extensionElements></bpmn:businessRuleTask>",
            "DMN decisions (zeebe:calledDecision) are not supported",
        ),
        (
            '<bpmn:serviceTask id="T" />',
            "has no implementation",
        ),
        (
            '<bpmn:serviceTask id="T" camunda:expression="${bean.run()}" />',
            "camunda:expression: Java delegates",
        ),
        (
            '<bpmn:serviceTask id="T" camunda:type="external" camunda:topic="t">'
            "<bpmn:extensionElements><camunda:inputOutput>"
            '<camunda:inputParameter name="xs"><camunda:list><camunda:value>a</camunda:value>'
            "</camunda:list></camunda:inputParameter></camunda:inputOutput>"
            "</bpmn:extensionElements></bpmn:serviceTask>",
            "camunda:list values are not supported",
        ),
        (
            '<bpmn:serviceTask id="T" camunda:type="external" camunda:topic="t" '
            'orch:colour="red" />',
            "orch:colour is not an option on a service_task",
        ),
        (
            '<bpmn:serviceTask id="T" camunda:type="external" camunda:topic="t" '
            'orch:maxAttempts="many" />',
            "orch:maxAttempts: 'many' is not a number",
        ),
        (
            '<bpmn:serviceTask id="T" camunda:type="external" camunda:topic="t" orch:lock="1ms" />',
            "lock: Input should be greater than or equal to 500",
        ),
        (
            '<bpmn:endEvent id="T"><bpmn:errorEventDefinition /></bpmn:endEvent>',
            "needs errorRef to an <error> with an errorCode",
        ),
        (
            '<bpmn:endEvent id="T"><bpmn:errorEventDefinition errorRef="Nope" /></bpmn:endEvent>',
            "errorRef 'Nope' names no <error> in this file",
        ),
        (
            '<bpmn:startEvent id="T"><bpmn:signalEventDefinition /></bpmn:startEvent>',
            "signal events are not supported",
        ),
        (
            '<bpmn:endEvent id="T"><bpmn:messageEventDefinition /></bpmn:endEvent>',
            "message end events are not supported yet",
        ),
        (
            '<bpmn:callActivity id="T" calledElement="c" '
            'camunda:calledElementBinding="deployment" />',
            'camunda:calledElementBinding="deployment" is not supported',
        ),
        (
            '<bpmn:callActivity id="T" calledElement="c"><bpmn:extensionElements>'
            '<camunda:in businessKey="${key}" /></bpmn:extensionElements></bpmn:callActivity>',
            "passing the business key is not supported",
        ),
        (
            '<bpmn:userTask id="T"><bpmn:extensionElements>'
            '<zeebe:assignmentDefinition candidateGroups="=groups" /></bpmn:extensionElements>'
            "</bpmn:userTask>",
            "expression-valued candidate groups are not supported; list the groups",
        ),
        (
            '<bpmn:userTask id="T" camunda:candidateGroups="${groups}" />',
            "expression-valued candidate groups are not supported; list the groups",
        ),
        (
            '<bpmn:userTask id="T" camunda:candidateUsers="ann, #{boss}" />',
            "expression-valued candidate users are not supported; list the users",
        ),
        (
            '<bpmn:userTask id="T"><bpmn:extensionElements>'
            '<zeebe:assignmentDefinition candidateUsers="=[boss]" /></bpmn:extensionElements>'
            "</bpmn:userTask>",
            "expression-valued candidate users are not supported; list the users",
        ),
        (
            '<bpmn:serviceTask id="T"><bpmn:extensionElements>'
            '<zeebe:taskDefinition type="io.camunda:http-json:1" /></bpmn:extensionElements>'
            "</bpmn:serviceTask>",
            "job type 'io.camunda:http-json:1' is a Camunda connector; connectors are not",
        ),
        (
            '<bpmn:serviceTask id="T"><bpmn:extensionElements>'
            '<zeebe:taskDefinition type="t" /><zeebe:ioMapping><zeebe:output target="x" />'
            "</zeebe:ioMapping></bpmn:extensionElements></bpmn:serviceTask>",
            "zeebe:output (line 4) needs source",
        ),
        (
            '<bpmn:serviceTask id="T"><bpmn:extensionElements>'
            '<zeebe:taskDefinition type="t" /><zeebe:ioMapping><zeebe:input source="=1" />'
            "</zeebe:ioMapping></bpmn:extensionElements></bpmn:serviceTask>",
            "zeebe:input (line 4) needs target",
        ),
        (
            '<bpmn:intermediateThrowEvent id="T"><bpmn:signalEventDefinition />'
            "</bpmn:intermediateThrowEvent>",
            "intermediate throw events are not supported yet (signal)",
        ),
        (
            '<bpmn:task id="T"><bpmn:multiInstanceLoopCharacteristics /></bpmn:task>',
            "multi-instance needs a collection or a loop cardinality",
        ),
        ('<bpmn:choreographyTask id="T" />', "<choreographyTask> is not supported"),
    ],
)
def test_single_refusals(body: str, why: str) -> None:
    (problem,) = refused(bpmn(body))
    assert problem.startswith("line 4: "), problem
    assert 'id="T"' in problem
    assert why in problem


def test_ignored_extensions_have_no_effect() -> None:
    body = """<bpmn:serviceTask id="T" name="Work" camunda:asyncBefore="true"
        camunda:asyncAfter="true" camunda:exclusive="false" camunda:jobPriority="5"
        camunda:type="external" camunda:topic="work">
      <bpmn:documentation>Does the work.</bpmn:documentation>
      <bpmn:extensionElements>
        <camunda:properties><camunda:property name="a" value="b" /></camunda:properties>
      </bpmn:extensionElements>
    </bpmn:serviceTask>
    <bpmn:dataObjectReference id="Data_1" dataObjectRef="DataObject_1" />
    <bpmn:dataObject id="DataObject_1" />"""
    (process,) = read_bpmn(bpmn(body))
    assert process.data["nodes"] == [
        {"id": "T", "name": "Work", "type": "service_task", "topic": "work"}
    ]


def test_duplicate_ids_and_mixed_dialects() -> None:
    body = """<bpmn:task id="T" />
<bpmn:task id="T" />
<bpmn:serviceTask id="S" camunda:type="external" camunda:topic="a">
  <bpmn:extensionElements><zeebe:taskDefinition type="b" /></bpmn:extensionElements>
</bpmn:serviceTask>"""
    problems = refused(bpmn(body))
    assert problems[0].startswith('line 2: definitions id="D": mixes Camunda 7')
    assert problems[1] == 'line 5: task id="T": duplicate id (also on line 4)'


def test_executable_processes_only() -> None:
    assert refused(bpmn("", '<bpmn:process id="p" isExecutable="false">')) == [
        'no executable process: set isExecutable="true" on a process'
    ]
    (process,) = read_bpmn(bpmn('<bpmn:startEvent id="s" />', '<bpmn:process id="p">'))
    assert process.key == "p"


def test_not_bpmn_root() -> None:
    assert refused("<html><body /></html>") == [
        "not a BPMN 2.0 file: the root element is <html>, not definitions"
    ]


# -- safety


def test_billion_laughs_is_refused() -> None:
    (problem,) = refused(source("billion_laughs.bpmn"))
    assert problem.startswith("line 2: refused unsafe XML: a DOCTYPE is not allowed")


def test_external_entity_is_refused_without_reading_the_file() -> None:
    (problem,) = refused(source("external_entity.bpmn"))
    assert "refused unsafe XML" in problem
    assert "root:" not in problem


def test_malformed_xml_says_line_and_column() -> None:
    assert refused(source("malformed.bpmn")) == [
        "line 8, column 4: not well-formed XML: mismatched tag"
    ]


def test_size_limit() -> None:
    big = bpmn("<!--" + "x" * MAX_SOURCE_BYTES + "-->")
    (problem,) = refused(big)
    assert f"larger than {MAX_SOURCE_BYTES} bytes" in problem


def test_undeclared_entity_is_malformed() -> None:
    (problem,) = refused(bpmn("<bpmn:task id='T' name='&secret;' />"))
    assert problem == "line 4, column 0: not well-formed XML: undefined entity"


# -- detection


def test_looks_like_bpmn() -> None:
    assert looks_like_bpmn(source("c7_order.bpmn"))
    assert looks_like_bpmn(source("c8_order.bpmn").decode())
    assert looks_like_bpmn(b"\xef\xbb\xbf \n" + source("inclusive.bpmn"))
    assert looks_like_bpmn("\ufeff<!-- made by hand -->\n" + bpmn(""))
    assert not looks_like_bpmn("key: p\nnodes: []\nflows: []\n")
    assert not looks_like_bpmn(json.dumps({"key": "p", "nodes": [], "flows": []}))
    assert not looks_like_bpmn(b'<?xml version="1.0"?><html><body/></html>')
    assert not looks_like_bpmn('<definitions xmlns="urn:not-bpmn" />')
    assert looks_like_bpmn(
        '<definitions xmlns="http://www.omg.org/spec/BPMN/20100524/MODEL" id="d" />'
    )
    assert not looks_like_bpmn("")


# -- load_bpmn


def test_load_bpmn_compiles_what_the_loader_knows() -> None:
    body = """<bpmn:startEvent id="s" />
<bpmn:serviceTask id="work" camunda:type="external" camunda:topic="work" />
<bpmn:endEvent id="e" />
<bpmn:sequenceFlow id="f1" sourceRef="s" targetRef="work" />
<bpmn:sequenceFlow id="f2" sourceRef="work" targetRef="e" />"""
    (process,) = load_bpmn(bpmn(body))
    assert process.key == "p"
    assert process.topics == frozenset({"work"})


def test_load_bpmn_places_graph_problems(monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_definition(data: dict[str, Any]) -> Any:
        raise DefinitionError(
            ["node 'work': bad", "definition: bad"],
            [("work", "needs exactly one outgoing flow"), (None, "no end event")],
        )

    monkeypatch.setattr(reader_module, "compile_definition", compile_definition)
    body = '<bpmn:startEvent id="s" />\n<bpmn:task id="work" name="Do it" />'
    with pytest.raises(DefinitionError) as error:
        load_bpmn(bpmn(body))
    assert error.value.problems == [
        'line 5: task id="work" name="Do it": needs exactly one outgoing flow',
        "no end event",
    ]
    assert error.value.located == [
        ("work", "needs exactly one outgoing flow"),
        (None, "no end event"),
    ]


# -- found by trying public Modeler files (python -m tools.try_bpmn)


def test_web_modeler_bookkeeping_on_the_root_is_not_camunda_7() -> None:
    """Web Modeler writes camunda:diagramRelationId on the definitions of Camunda 8 files."""
    text = bpmn(
        '<bpmn:serviceTask id="T"><bpmn:extensionElements><zeebe:taskDefinition type="work" />'
        "</bpmn:extensionElements></bpmn:serviceTask>"
    ).replace('id="D"', 'id="D" camunda:diagramRelationId="0f3c"')
    (process,) = read_bpmn(text)
    assert process.data["nodes"][0]["topic"] == "work"


def test_mixed_dialects_say_where_each_is_used() -> None:
    body = """<bpmn:userTask id="U" camunda:assignee="ann" />
<bpmn:serviceTask id="S">
  <bpmn:extensionElements><zeebe:taskDefinition type="b" /></bpmn:extensionElements>
</bpmn:serviceTask>"""
    (problem,) = refused(bpmn(body))
    assert problem == (
        'line 2: definitions id="D": mixes Camunda 7 (camunda:) and Camunda 8 (zeebe:) '
        "extensions: camunda:assignee on line 4, zeebe:taskDefinition on line 6; "
        "a file is for one of them"
    )


@pytest.mark.parametrize(
    "loop",
    [
        '<bpmn:multiInstanceLoopCharacteristics camunda:collection="${parts}" '
        'camunda:elementVariable="part" />',
        '<bpmn:multiInstanceLoopCharacteristics isSequential="true"><bpmn:extensionElements>'
        '<zeebe:loopCharacteristics inputCollection="=parts" inputElement="part" />'
        "</bpmn:extensionElements></bpmn:multiInstanceLoopCharacteristics>",
    ],
)
def test_multi_instance_subprocess_keeps_its_loop_out_of_its_children(loop: str) -> None:
    body = f"""<bpmn:subProcess id="Each">
  {loop}
  <bpmn:startEvent id="In" />
  <bpmn:task id="Look" />
  <bpmn:sequenceFlow id="f1" sourceRef="In" targetRef="Look" />
  <bpmn:dataInputAssociation id="di"><bpmn:targetRef>x</bpmn:targetRef></bpmn:dataInputAssociation>
</bpmn:subProcess>"""
    (process,) = read_bpmn(bpmn(body))
    each = nodes(process)["Each"]
    assert each.multi_instance is not None
    assert each.multi_instance.element_variable == "part"
    assert [node["id"] for node in process.data["nodes"]] == ["Each", "In", "Look"]


def test_subprocess_standard_loop_is_refused_once() -> None:
    body = """<bpmn:subProcess id="T">
  <bpmn:standardLoopCharacteristics />
</bpmn:subProcess>"""
    assert refused(bpmn(body)) == [
        'line 4: subProcess id="T": loops (standardLoopCharacteristics) are not supported'
    ]


def test_inbound_connector_start_event_is_refused() -> None:
    body = """<bpmn:startEvent id="T" zeebe:modelerTemplate="some.webhook.v1">
  <bpmn:extensionElements><zeebe:properties>
    <zeebe:property name="inbound.type" value="io.camunda:webhook:1" />
    <zeebe:property name="inbound.context" value="go" />
  </zeebe:properties></bpmn:extensionElements>
</bpmn:startEvent>"""
    assert refused(bpmn(body)) == [
        "line 4: startEvent id=\"T\": inbound connector 'io.camunda:webhook:1' "
        "(zeebe:property inbound.type) is not supported: nothing would start or resume the "
        "process from it; remove it and start instances through the API"
    ]


def test_cleared_zeebe_retries_is_the_default() -> None:
    body = (
        '<bpmn:serviceTask id="T"><bpmn:extensionElements>'
        '<zeebe:taskDefinition type="mail" retries="" /></bpmn:extensionElements>'
        "</bpmn:serviceTask>"
    )
    task = nodes(read_bpmn(bpmn(body))[0])["T"]
    assert isinstance(task, ServiceTask)
    assert task.retry == RetryPolicy()


def test_zeebe_input_without_source_is_null() -> None:
    body = """<bpmn:serviceTask id="T"><bpmn:extensionElements>
  <zeebe:taskDefinition type="mail" />
  <zeebe:ioMapping><zeebe:input target="cc" /><zeebe:input source="ann" target="to" />
  </zeebe:ioMapping></bpmn:extensionElements></bpmn:serviceTask>"""
    task = nodes(read_bpmn(bpmn(body))[0])["T"]
    assert task.inputs == (mapping("cc", "=null"), mapping("to", '="ann"'))


@pytest.mark.parametrize(
    "mappings",
    [
        '<zeebe:ioMapping><zeebe:output source="=true" target="checked" /></zeebe:ioMapping>',
        '<camunda:inputOutput><camunda:outputParameter name="checked">${true}'
        "</camunda:outputParameter></camunda:inputOutput>",
    ],
)
def test_none_intermediate_throw_event_passes_through(mappings: str) -> None:
    body = f"""<bpmn:startEvent id="s" />
<bpmn:intermediateThrowEvent id="Reached" name="Order checked">
  <bpmn:extensionElements>{mappings}</bpmn:extensionElements>
</bpmn:intermediateThrowEvent>
<bpmn:endEvent id="e" />
<bpmn:sequenceFlow id="f1" sourceRef="s" targetRef="Reached" />
<bpmn:sequenceFlow id="f2" sourceRef="Reached" targetRef="e" />"""
    (process,) = load_bpmn(bpmn(body))
    reached = process.nodes["Reached"]
    assert isinstance(reached, ManualTask)
    assert reached.name == "Order checked"
    assert [m.target for m in reached.outputs] == ["checked"]


def test_nested_mapping_target_says_map_the_whole_variable() -> None:
    body = """<bpmn:startEvent id="s" />
<bpmn:serviceTask id="T"><bpmn:extensionElements><zeebe:taskDefinition type="call" />
  <zeebe:ioMapping><zeebe:input source="basic" target="authentication.type" /></zeebe:ioMapping>
</bpmn:extensionElements></bpmn:serviceTask>
<bpmn:endEvent id="e" />
<bpmn:sequenceFlow id="f1" sourceRef="s" targetRef="T" />
<bpmn:sequenceFlow id="f2" sourceRef="T" targetRef="e" />"""
    with pytest.raises(DefinitionError) as error:
        load_bpmn(bpmn(body))
    (problem,) = error.value.problems
    assert problem.startswith('line 5: serviceTask id="T": ')
    assert problem.endswith(
        "invalid variable name 'authentication.type': mapping into a field of a variable is "
        "not supported; map a whole context to 'authentication' instead"
    )


# -- the process's business-key policy and a user task's headers


def test_business_key_policy_on_the_process() -> None:
    (process,) = read_bpmn(
        bpmn(
            '<bpmn:startEvent id="s" />',
            '<bpmn:process id="p" isExecutable="true" orch:businessKeyUnique="true" '
            'orch:onDuplicateBusinessKey="return_existing">',
        )
    )
    assert process.data["business_key"] == {"unique": True, "on_duplicate": "return_existing"}
    definition = ProcessDefinition.model_validate(process.data)
    assert (definition.business_key.unique, definition.business_key.on_duplicate) == (
        True,
        "return_existing",
    )
    (plain,) = read_bpmn(bpmn('<bpmn:startEvent id="s" />'))
    assert "business_key" not in plain.data


def test_business_key_policy_refusals() -> None:
    problems = refused(
        bpmn(
            '<bpmn:startEvent id="s" />',
            '<bpmn:process id="p" isExecutable="true" orch:businessKeyUnique="yes" '
            'orch:onDuplicateBusinessKey="ignore" orch:lock="1s">',
        )
    )
    assert sorted(problems) == [
        'line 3: process id="p": orch:businessKeyUnique must be "true" or "false" (\'yes\')',
        'line 3: process id="p": orch:lock is not an option on a process',
        'line 3: process id="p": orch:onDuplicateBusinessKey must be "return_existing" or '
        "\"reject\" ('ignore')",
    ]


def test_zeebe_user_task_headers() -> None:
    body = """<bpmn:userTask id="T"><bpmn:extensionElements>
  <zeebe:userTask />
  <zeebe:taskHeaders><zeebe:header key="priority" value="high" />
    <zeebe:header key="queue" value="claims" /></zeebe:taskHeaders>
</bpmn:extensionElements></bpmn:userTask>
<bpmn:userTask id="Plain" />"""
    (process,) = read_bpmn(bpmn(body))
    found = nodes(process)
    assert found["T"].headers == {"priority": "high", "queue": "claims"}
    assert found["Plain"].headers == {}
    assert "headers" not in found["Plain"].model_dump(by_alias=True)
