"""BPMN 2.0 XML (as Camunda Modeler writes it, for Camunda 7 or Camunda 8) into the process
model.

    safe_xml        XML without DTDs or entities, with each element's line
    names           namespaces and element names
    problems        where elements are; every problem gathered, said with its line
    expressions     expression text as the model keeps it (FEEL, JUEL, quoted literals)
    events          event definitions, timer definitions, why the unsupported ones are refused
    dialect         what a Camunda dialect reads (a protocol)
    camunda7, zeebe the two dialects
    orch_attributes our own orch: attributes (lease, retry policy, user task topic)
    walker          one <process> into nodes and flows
    reader          read_bpmn, load_bpmn
    detect          looks_like_bpmn
"""

from orchestrator.definitions.bpmn.detect import looks_like_bpmn
from orchestrator.definitions.bpmn.problems import ElementPlace
from orchestrator.definitions.bpmn.reader import BpmnProcess, load_bpmn, read_bpmn

__all__ = ["BpmnProcess", "ElementPlace", "load_bpmn", "looks_like_bpmn", "read_bpmn"]
