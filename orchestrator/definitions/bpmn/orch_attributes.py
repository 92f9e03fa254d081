"""Our own attributes (orch: namespace) for what neither Camunda dialect can say: the lease,
the retry policy, the topic of user tasks, the variables fetched; on a process, the
business-key policy. (`orch:correlationKey`, on a message wait in a Camunda 7 file, is read
with the message by the dialect: see camunda7.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.names import ORCH, split
from orchestrator.definitions.bpmn.problems import Problems


def _whole(text: str) -> int:
    return int(text.strip())


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _text(text: str) -> str:
    return text.strip()


#: orch attribute -> (the field it sets, None for a field of `retry`; how its text is read).
_Reader = Callable[[str], Any]
_RETRY: dict[str, tuple[str, _Reader]] = {
    "maxAttempts": ("max_attempts", _whole),
    "initialBackoff": ("initial_backoff_ms", _text),
    "backoffCoefficient": ("backoff_coefficient", float),
    "maxBackoff": ("max_backoff_ms", _text),
    "nonRetryableCodes": ("non_retryable_codes", _names),
}
_SERVICE: dict[str, tuple[str, _Reader]] = {
    "lock": ("lock", _text),
    "maxLeaseExpiries": ("max_lease_expiries", _whole),
    "fetchVariables": ("fetch_variables", _names),
    "dispatchTimeout": ("dispatch_timeout", _text),
    "maxRedispatches": ("max_redispatches", _whole),
}
_USER: dict[str, tuple[str, _Reader]] = {
    "lock": ("lock", _text),
    "topic": ("topic", _text),
}
ALLOWED = {
    "service_task": _SERVICE | _RETRY,
    "user_task": _USER | _RETRY,
}
#: orch attributes of a node type that the dialect reads (and judges) itself.
READ_BY_DIALECT = {
    "message_catch_event": {"correlationKey"},
    "receive_task": {"correlationKey"},
    "message_boundary_event": {"correlationKey"},
    # On a message start event; the walker refuses it on any other start event.
    "start_event": {"correlationKey"},
}


def orch_options(element: Element, node_type: str | None, problems: Problems) -> dict[str, Any]:
    """The node fields set by the element's orch: attributes (a problem for each one that is
    unknown, misplaced or unreadable). `retry` is a partial dict of RetryPolicy."""
    allowed = ALLOWED.get(node_type or "", {})
    fields: dict[str, Any] = {}
    for name, text in element.attrib.items():
        namespace, attribute = split(name)
        if namespace != ORCH or attribute in READ_BY_DIALECT.get(node_type or "", ()):
            continue
        if attribute not in allowed:
            where = f"on a {node_type}" if node_type else "here"
            problems.add(element, f"orch:{attribute} is not an option {where}")
            continue
        field, read = allowed[attribute]
        try:
            value = read(text)
        except ValueError:
            problems.add(element, f"orch:{attribute}: {text!r} is not a number")
            continue
        if attribute in _RETRY:
            fields.setdefault("retry", {})[field] = value
        else:
            fields[field] = value
    return fields


_ON_DUPLICATE = ("return_existing", "reject")


def process_options(process: Element, problems: Problems) -> dict[str, Any]:
    """The process fields set by orch: attributes on `<process>`: `business_key` from
    orch:businessKeyUnique and orch:onDuplicateBusinessKey."""
    policy: dict[str, Any] = {}
    for name, text in process.attrib.items():
        namespace, attribute = split(name)
        if namespace != ORCH:
            continue
        value = text.strip()
        if attribute == "businessKeyUnique" and value in ("true", "false"):
            policy["unique"] = value == "true"
        elif attribute == "businessKeyUnique":
            problems.add(process, f'orch:businessKeyUnique must be "true" or "false" ({text!r})')
        elif attribute == "onDuplicateBusinessKey" and value in _ON_DUPLICATE:
            policy["on_duplicate"] = value
        elif attribute == "onDuplicateBusinessKey":
            problems.add(
                process,
                f'orch:onDuplicateBusinessKey must be "return_existing" or "reject" ({text!r})',
            )
        else:
            problems.add(process, f"orch:{attribute} is not an option on a process")
    return {"business_key": policy} if policy else {}
