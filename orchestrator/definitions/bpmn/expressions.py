"""Expression text as the model keeps it: FEEL `=...` and JUEL `${...}` pass through
unchanged (they are not parsed here); literals become quoted FEEL strings."""

from __future__ import annotations


def is_juel(text: str) -> bool:
    return text.startswith(("${", "#{"))


def string_literal(text: str) -> str:
    """A literal text as a FEEL string: `a "b"` -> `="a \\"b\\""`."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'="{escaped}"'


def camunda7_value(text: str | None) -> str:
    """A Camunda 7 parameter's text content: an expression if it holds one, else a literal
    (empty content is null)."""
    stripped = (text or "").strip()
    if not stripped:
        return "=null"
    if "${" in stripped or "#{" in stripped:
        return stripped
    return string_literal(text or "")


def camunda7_reference(text: str) -> str:
    """A Camunda 7 attribute that takes an expression or a bare variable name."""
    stripped = text.strip()
    return stripped if is_juel(stripped) else f"={stripped}"


def zeebe_value(text: str) -> str:
    """A Zeebe mapping source: `=...` is FEEL, anything else a static string."""
    return text.strip() if text.strip().startswith("=") else string_literal(text)


def feel(text: str) -> str:
    """An attribute Zeebe always reads as FEEL, with or without the leading `=`."""
    stripped = text.strip()
    return stripped if stripped.startswith("=") else f"={stripped}"


def candidates_refused(attribute: str, value: str) -> str:
    """Why an expression in candidateGroups/candidateUsers is refused: the model keeps a fixed
    list (the tasklist matches on it), not one computed per instance."""
    what = "groups" if attribute.endswith("candidateGroups") else "users"
    return (
        f"{attribute}={value!r}: expression-valued candidate {what} are not supported; "
        f"list the {what}"
    )
