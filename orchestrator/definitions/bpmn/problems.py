"""Where each element is, and the problems found, each said with the element's line."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree.ElementTree import Element

from orchestrator.definitions.bpmn.names import local
from orchestrator.definitions.bpmn.safe_xml import XmlDocument
from orchestrator.errors import DefinitionError


@dataclass(frozen=True)
class ElementPlace:
    """Where an element is in the BPMN source: its start tag's line, local tag and name."""

    line: int
    tag: str
    name: str | None


def place_of(document: XmlDocument, element: Element) -> ElementPlace:
    return ElementPlace(document.line(element), local(element), element.get("name"))


def describe(place: ElementPlace, element_id: str | None, why: str) -> str:
    """`line N: <tag> id="X" name="Y": why` (without the parts the element lacks)."""
    parts = [place.tag]
    if element_id:
        parts.append(f'id="{element_id}"')
    if place.name:
        parts.append(f'name="{" ".join(place.name.split())}"')
    return f"line {place.line}: {' '.join(parts)}: {why}"


class Problems:
    """Every problem in a file, gathered so that they are all reported at once."""

    def __init__(self, document: XmlDocument) -> None:
        self.document = document
        #: (line, the problem as said, (element id, why)); line 0 for the whole file.
        self._found: list[tuple[int, str, tuple[str | None, str]]] = []

    def add(self, element: Element, why: str) -> None:
        element_id = element.get("id")
        place = place_of(self.document, element)
        self._found.append((place.line, describe(place, element_id, why), (element_id, why)))

    def add_general(self, why: str) -> None:
        self._found.append((0, why, (None, why)))

    def __bool__(self) -> bool:
        return bool(self._found)

    def raise_if_any(self) -> None:
        """All problems so far, in the order of their lines in the file."""
        if self._found:
            found = sorted(self._found, key=lambda problem: problem[0])
            raise DefinitionError([said for _, said, _ in found], [where for *_, where in found])
