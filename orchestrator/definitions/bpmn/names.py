"""The XML namespaces a BPMN file uses, and how to name an element or attribute in one."""

from __future__ import annotations

from xml.etree.ElementTree import Element

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA = "http://camunda.org/schema/1.0/bpmn"
ZEEBE = "http://camunda.org/schema/zeebe/1.0"
MODELER = "http://camunda.org/schema/modeler/1.0"
#: Ours, for what neither Camunda dialect can say (retry policy, lease, topic of user tasks).
ORCH = "https://orchestrator.dev/schema/bpmn/1.0"

PREFIXES = {BPMN: "bpmn", CAMUNDA: "camunda", ZEEBE: "zeebe", ORCH: "orch", MODELER: "modeler"}


def qname(namespace: str, local: str) -> str:
    """The name ElementTree gives `local` in `namespace`: `{namespace}local`."""
    return f"{{{namespace}}}{local}"


def split(name: str) -> tuple[str | None, str]:
    """`{namespace}local` -> (namespace, local); a name without namespace -> (None, name)."""
    if name.startswith("{"):
        namespace, _, local = name[1:].partition("}")
        return namespace, local
    return None, name


def local(element: Element) -> str:
    return split(element.tag)[1]


def is_bpmn(element: Element, *names: str) -> bool:
    namespace, name = split(element.tag)
    return namespace == BPMN and (not names or name in names)


def pretty(name: str) -> str:
    """`{camunda-ns}topic` -> `camunda:topic`, for messages."""
    namespace, name_local = split(name)
    if namespace is None or namespace == BPMN:
        return name_local
    return f"{PREFIXES.get(namespace, namespace)}:{name_local}"


def children(element: Element, namespace: str, name: str) -> list[Element]:
    return element.findall(qname(namespace, name))


def child(element: Element, namespace: str, name: str) -> Element | None:
    return element.find(qname(namespace, name))


def extensions(element: Element, namespace: str, name: str) -> list[Element]:
    """The `namespace:name` children of the element's `<extensionElements>`."""
    return element.findall(f"{qname(BPMN, 'extensionElements')}/{qname(namespace, name)}")


def extension(element: Element, namespace: str, name: str) -> Element | None:
    found = extensions(element, namespace, name)
    return found[0] if found else None
