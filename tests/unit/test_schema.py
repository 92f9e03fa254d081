from __future__ import annotations

from pathlib import Path

from orchestrator.model.schema import render

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def test_checked_in_schemas_are_current() -> None:
    rendered = render()
    on_disk = {path.name: path.read_bytes() for path in SCHEMAS.glob("*.schema.json")}
    assert sorted(on_disk) == sorted(rendered), "run: python -m orchestrator.model.schema"
    stale = [name for name, content in rendered.items() if on_disk[name] != content]
    assert stale == [], f"stale schemas {stale}: run python -m orchestrator.model.schema"


def test_report_schema_names_every_report_type() -> None:
    report = render()["report.schema.json"].decode()
    for kind in ("claimed", "completed", "failed", "bpmn_error", "extend_lock", "released"):
        assert f'"const": "{kind}"' in report
