-- Every statement the benchmark runs, by name; bench/queries.py loads them. The engine's own
-- SQL is in orchestrator/store/queries.sql: these only read what the engine wrote (its
-- counters, instances and tasks), time the database's floor, and keep the peers' rows.
-- A `{name}` is an identifier the run makes up (a database, a table), filled in quoted.

-- --- the engine's tables (bench/run.py) -------------------------------------------------------

-- name: counter_total
-- One engine counter summed over every engine of the run: a poll that costs the engine
-- nothing, where counting rows every few milliseconds competed with it for the database.
SELECT coalesce(sum(value), 0) FROM engine_counters WHERE name = $1;

-- name: instances_ended
-- When each instance ended (epoch seconds), as the engine's transaction recorded it.
SELECT id, extract(epoch FROM ended_at) AS ended
FROM process_instances
WHERE id = ANY($1::uuid[]);

-- name: last_instance_ended
SELECT extract(epoch FROM max(ended_at)) FROM process_instances WHERE id = ANY($1::uuid[]);

-- name: task_times
-- When each closed task's creating and closing transactions began, in ms (bench/breakdown.py).
SELECT instance_id, id,
       extract(epoch FROM created_at) * 1000 AS created,
       extract(epoch FROM closed_at) * 1000 AS closed
FROM tasks
WHERE instance_id = ANY($1::uuid[]) AND closed_at IS NOT NULL;

-- name: outbox_left
SELECT count(*) FROM outbox;

-- name: drop_database
DROP DATABASE IF EXISTS {database} WITH (FORCE);

-- --- the latency floor (bench/floor.py) -----------------------------------------------------

-- name: floor_create_table
CREATE TABLE IF NOT EXISTS bench_floor (
    id bigserial   PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);

-- name: floor_commit_synchronously
SET synchronous_commit = on;

-- name: floor_insert
INSERT INTO bench_floor DEFAULT VALUES;

-- name: floor_drop_table
DROP TABLE bench_floor;

-- --- the bare pipeline (bench/peers/bare_*.py): one table per run -----------------------------

-- name: bare_create_table
CREATE TABLE {table} (id uuid PRIMARY KEY, step int NOT NULL, ended_at timestamptz);

-- name: bare_insert_starts
INSERT INTO {table} (id, step) SELECT unnest($1::uuid[]), 1;

-- name: bare_advance
-- Each (instance, step done): the next step, or the end after the last ($3, the step count).
UPDATE {table} AS t
SET step = r.done + 1, ended_at = CASE WHEN r.done = $3 THEN now() END
FROM unnest($1::uuid[], $2::int[]) AS r(id, done)
WHERE t.id = r.id;

-- name: bare_unfinished
SELECT count(*) FROM {table} WHERE ended_at IS NULL;

-- name: bare_ended_at
SELECT id::text, extract(epoch FROM ended_at) AS ended FROM {table} WHERE id = ANY($1::uuid[]);

-- name: bare_drop_table
DROP TABLE IF EXISTS {table};

-- --- DBOS's tables (bench/peers/dbos_workflow.py, through psycopg: parameters are %s) --------

-- name: dbos_create_database
CREATE DATABASE {database};

-- name: dbos_drop_database
DROP DATABASE IF EXISTS {database} WITH (FORCE);

-- name: dbos_synchronous_commit
SHOW synchronous_commit;

-- name: dbos_finished
-- Of the given workflows, those that ended (with their status).
SELECT workflow_uuid, status
FROM dbos.workflow_status
WHERE workflow_uuid = ANY(%s) AND status NOT IN ('ENQUEUED', 'PENDING', 'DELAYED');

-- name: dbos_times
-- Each workflow's end, and when its first step started (ms).
SELECT s.workflow_uuid,
       coalesce(s.completed_at, s.updated_at),
       (SELECT min(o.started_at_epoch_ms)
        FROM dbos.operation_outputs o
        WHERE o.workflow_uuid = s.workflow_uuid)
FROM dbos.workflow_status s
WHERE s.workflow_uuid = ANY(%s);

-- name: timers_fired_count
SELECT count(*) FROM history WHERE kind = 'timer_fired'

-- name: timer_lags
-- Per firing: the firing transaction's start (the database's clock) after the due time.
SELECT instance_id, extract(epoch FROM at) * 1000 AS at_ms,
       extract(epoch FROM (detail->>'due_at')::timestamptz) * 1000 AS due_ms
FROM history WHERE kind = 'timer_fired'

-- name: timers_left
SELECT count(*) FROM timers

-- name: timers_fired_per_engine
SELECT engine_id, value FROM engine_counters WHERE name = 'timers_fired' ORDER BY engine_id
