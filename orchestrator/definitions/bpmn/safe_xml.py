"""Read XML safely (no DTD, no entities, no external references, a size limit) and remember
the line each element starts on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element, ParseError, TreeBuilder
from xml.parsers.expat import ErrorString

from defusedxml.common import (
    DefusedXmlException,
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
)
from defusedxml.ElementTree import DefusedXMLParser

from orchestrator.definitions.loader import MAX_SOURCE_BYTES
from orchestrator.errors import DefinitionError


@dataclass(frozen=True)
class XmlDocument:
    root: Element
    #: Element -> the line its start tag is on (1-based).
    lines: dict[Element, int]

    def line(self, element: Element) -> int:
        return self.lines.get(element, 0)


class _LineRecorder(TreeBuilder):
    """A tree builder that notes, for each element, where the parser is when it starts."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[Element, int] = {}
        self.current_line: Callable[[], int] = lambda: 0

    def start(self, tag: str, attrs: dict[str, str], /) -> Element:
        element = super().start(tag, attrs)
        self.lines[element] = self.current_line()
        return element


def read_xml(source: bytes | str) -> XmlDocument:
    """Parse `source`; a DefinitionError for anything unsafe, too large or malformed."""
    data = source.encode() if isinstance(source, str) else source
    if len(data) > MAX_SOURCE_BYTES:
        raise DefinitionError([f"definition is larger than {MAX_SOURCE_BYTES} bytes"])
    recorder = _LineRecorder()
    parser = DefusedXMLParser(
        target=recorder, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    recorder.current_line = lambda: parser.parser.CurrentLineNumber
    try:
        parser.feed(data)
        root = parser.close()
    except DefusedXmlException as exc:
        line = parser.parser.CurrentLineNumber
        raise DefinitionError([f"line {line}: refused unsafe XML: {_unsafe(exc)}"]) from exc
    except ParseError as exc:
        line, column = exc.position
        why = ErrorString(exc.code)
        raise DefinitionError(
            [f"line {line}, column {column}: not well-formed XML: {why}"]
        ) from exc
    if not isinstance(root, Element):
        raise DefinitionError(["not an XML document"])
    return XmlDocument(root, recorder.lines)


def _unsafe(exc: DefusedXmlException) -> str:
    if isinstance(exc, DTDForbidden):
        return (
            "a DOCTYPE is not allowed in a BPMN file (it could declare entities that expand "
            "without bound or read local files)"
        )
    if isinstance(exc, EntitiesForbidden):
        return f"entity declarations are not allowed (entity {exc.name!r})"
    if isinstance(exc, ExternalReferenceForbidden):
        return f"external references are not allowed ({exc.sysid!r})"
    return str(exc)
