"""Named crash points for the fault tests: the process dies there as if killed with -9.

Inert unless ORCH_CRASH_AT names the point; ORCH_CRASH_AFTER says on which hit (default 1).
"""

from __future__ import annotations

import os

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    if os.environ.get("ORCH_CRASH_AT") != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(os.environ.get("ORCH_CRASH_AFTER", "1")):
        os._exit(137)
