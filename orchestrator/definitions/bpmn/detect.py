"""Tell a BPMN file from YAML or JSON by its content, not its name."""

from __future__ import annotations

import re

from orchestrator.definitions.bpmn.names import BPMN

_PROLOG = re.compile(r"<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>]*>", re.DOTALL)
_FIRST_TAG = re.compile(r"<([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)[\s/>]")
_HEAD = 65_536


def looks_like_bpmn(source: bytes | str) -> bool:
    """True when the source is XML whose root element is BPMN's `definitions`."""
    if isinstance(source, bytes):
        source = source[:_HEAD].decode("utf-8", errors="replace")
    head = source[:_HEAD].lstrip("\ufeff \t\r\n")
    if not head.startswith("<"):
        return False
    match = _FIRST_TAG.match(_PROLOG.sub("", head).lstrip())
    return match is not None and match.group(2) == "definitions" and BPMN in head


def reads_as_xml(source: str) -> bool:
    """What deploy reads as BPMN: anything that starts like XML (YAML and JSON never do). A
    file with a DTD, or XML that is not BPMN, is then refused as such, not as bad YAML."""
    return source.lstrip("\ufeff \t\r\n").startswith("<")
