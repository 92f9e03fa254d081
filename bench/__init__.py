"""The benchmark: our engine end to end, beside the tools a user would pick instead.

It lives beside the `orchestrator` package, not in it (the wheel ships neither it nor its
peers), and runs from a checkout: `./dev bench`, i.e. `python -m bench`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

#: The checkout this package came from: its processes import `bench` (and `orchestrator`)
#: from here, whatever their working directory.
ROOT = Path(__file__).resolve().parent.parent


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process the benchmark starts: `base` (default: ours) with this
    checkout first on PYTHONPATH, plus `extra`."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env
