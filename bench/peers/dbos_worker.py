"""One DBOS queue worker process of the peer benchmark (started by `dbos_workflow`).

It registers the benchmark workflow, launches DBOS (whose queue thread polls the benchmark
queue and runs what it claims), writes a ready line on stdout, and runs until its standard
input closes: the driver closes it to stop the worker, and a driver that dies closes it too.
Its executor id is unique per process, as DBOS requires of processes sharing a queue.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from dbos import DBOS

from bench.peers.dbos_app import QUEUE_NAME, READY_LINE, dbos_config, define_workflow


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)

    define_workflow(args.steps)
    DBOS(
        config=dbos_config(
            args.database_url, executor_id=f"bench-worker-{args.index}", log_level=args.log_level
        )
    )
    DBOS.listen_queues([QUEUE_NAME])
    DBOS.launch()
    sys.stdout.write(READY_LINE + "\n")
    sys.stdout.flush()
    sys.stdin.read()
    # Leave at once, without DBOS.destroy(): the run's database is dropped next, and workflows
    # still running (only when the run failed) would log a traceback each after a destroy.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
