-- The parts of the one statement that writes everything an engine batch decided
-- (UnitOfWork.write, built by batch_statement.py). Each part becomes one CTE that unnests
-- the arrays of one kind of row. A batch's statement holds only the parts it has rows for:
-- a part with nothing to write still cost the server its table and indexes opened, and the
-- client its empty arrays encoded. Parameters are numbered within each part; the builder
-- renumbers them. JSON travels as text and is cast here.

-- part: new_instances
INSERT INTO process_instances
    (id, definition_id, process_key, business_key, status, variables, tokens, seq, ended_at,
     scopes, parent_id, traceparent)
SELECT u.id, u.definition_id, u.process_key, u.business_key, u.status, u.variables::jsonb,
       u.tokens::jsonb, u.seq, CASE WHEN u.status = 'active' THEN NULL ELSE now() END,
       u.scopes::jsonb, u.parent_id, u.traceparent
FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[], $8::integer[], $9::text[], $10::uuid[], $11::text[])
    AS u (id, definition_id, process_key, business_key, status, variables, tokens, seq,
          scopes, parent_id, traceparent)

-- part: changed_instances
-- Only a row still at the version the batch read is written (the statement's guard counts
-- what this returns).
UPDATE process_instances i SET status = u.status, variables = u.variables::jsonb,
    tokens = u.tokens::jsonb, seq = u.seq, scopes = u.scopes::jsonb, version = i.version + 1,
    ended_at = CASE WHEN u.status = 'active' THEN NULL ELSE coalesce(i.ended_at, now()) END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::text[],
            $7::integer[])
    AS u (id, status, variables, tokens, seq, scopes, version)
WHERE i.id = u.id AND i.version = u.version
RETURNING 1

-- part: released_keys
DELETE FROM active_business_keys WHERE instance_id = ANY($1::uuid[])

-- part: new_tasks
INSERT INTO tasks (id, instance_id, node_id, topic, status, attempt, retries_left, lock_ms)
SELECT u.id, u.instance_id, u.node_id, u.topic, 'queued', 1, u.retries_left, u.lock_ms
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[], $6::integer[])
    AS u (id, instance_id, node_id, topic, retries_left, lock_ms)

-- part: new_waits
-- A call activity's task: held by the engine while its child instance runs, with no lease
-- (the reaper never expires it) and no message (the dispatch watch never sees it).
INSERT INTO tasks (id, instance_id, node_id, topic, status, attempt, retries_left, lock_ms,
                   worker_id)
SELECT u.id, u.instance_id, u.node_id, u.topic, 'claimed', 1, u.retries_left, u.lock_ms,
       'engine'
FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::integer[], $6::integer[])
    AS u (id, instance_id, node_id, topic, retries_left, lock_ms)

-- part: changed_tasks
-- Like changed_instances: only a row still at the version read. A new attempt is a new
-- dispatch: its dispatch clock starts now, with no re-sends yet.
UPDATE tasks t SET status = u.status, attempt = u.attempt, retries_left = u.retries_left,
    worker_id = u.worker_id,
    lease_expires_at = CASE
        WHEN u.lease_ms IS NOT NULL THEN now() + make_interval(secs => u.lease_ms / 1000.0)
        WHEN u.status = 'claimed' THEN t.lease_expires_at
        ELSE NULL END,
    due_at = CASE WHEN u.due_ms IS NULL THEN NULL
                  ELSE now() + make_interval(secs => u.due_ms / 1000.0) END,
    lease_expiries = u.lease_expiries,
    last_error = u.error, last_error_details = u.error_details,
    closed_at = CASE WHEN u.status IN ('completed', 'cancelled') THEN now() ELSE NULL END,
    dispatched_at = CASE WHEN u.attempt <> t.attempt THEN now() ELSE t.dispatched_at END,
    redispatches = CASE WHEN u.attempt <> t.attempt THEN 0 ELSE t.redispatches END,
    version = t.version + 1
FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::integer[], $5::text[], $6::integer[],
            $7::integer[], $8::integer[], $9::text[], $10::text[], $11::integer[])
    AS u (id, status, attempt, retries_left, worker_id, lease_ms, due_ms, lease_expiries,
          error, error_details, version)
WHERE t.id = u.id AND t.version = u.version
RETURNING 1

-- part: withdrawn_tasks
-- Open tasks whose scope ended (a terminate end event, an error caught around them, a loop
-- whose completion condition held, an interrupting boundary event): cancelled, whatever
-- attempt they are at. The instance's row, written in the same statement, is what guards
-- it. Returns who held each one (the statement returns those a worker held: they are told).
UPDATE tasks t SET status = 'cancelled', worker_id = NULL, lease_expires_at = NULL,
    due_at = NULL, closed_at = now(), version = t.version + 1
FROM (SELECT id, status, worker_id FROM tasks WHERE id = ANY($1::uuid[])) AS o
WHERE t.id = o.id AND t.status IN ('queued', 'claimed', 'retry_wait', 'incident')
RETURNING t.id, t.attempt, o.status AS was, o.worker_id AS holder

-- part: redispatched
-- The same attempt's message published again (no worker claimed it within its dispatch
-- deadline): its dispatch clock restarts. Written under the instance's lock, and only to
-- columns no other write sets from a copy, so the version stays: a completion decided from
-- a recent copy meanwhile is still current.
UPDATE tasks t SET redispatches = t.redispatches + 1, dispatched_at = now()
FROM unnest($1::uuid[], $2::integer[]) AS u (id, attempt)
WHERE t.id = u.id AND t.attempt = u.attempt AND t.status = 'queued'
RETURNING 1

-- part: new_timers
-- Due times come from the engine's clock (UnitOfWork); the migration's trigger wakes every
-- engine's scheduler at commit.
INSERT INTO timers (id, instance_id, node_id, kind, spec, due_at)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                     $6::timestamptz[])

-- part: fired_timers
-- A cycle's timer that fired and goes on: its next turn.
UPDATE timers m SET fired = u.fired, due_at = u.due_at
FROM unnest($1::uuid[], $2::integer[], $3::timestamptz[]) AS u (id, fired, due_at)
WHERE m.id = u.id

-- part: closed_timers
-- Timers no longer waited on (fired, or what they were part of ended).
DELETE FROM timers WHERE id = ANY($1::uuid[])

-- part: ledger
INSERT INTO report_ledger
    (task_id, slot, kind, attempt, worker_id, payload_hash, duplicates, conflicts)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::text[],
                     $6::bytea[], $7::integer[], $8::integer[])
ON CONFLICT (task_id, slot) DO NOTHING

-- part: ledger_repeats
UPDATE report_ledger l SET duplicates = l.duplicates + u.duplicates,
    conflicts = l.conflicts + u.conflicts
FROM unnest($1::uuid[], $2::text[], $3::integer[], $4::integer[])
    AS u (task_id, slot, duplicates, conflicts)
WHERE l.task_id = u.task_id AND l.slot = u.slot

-- part: new_incidents
INSERT INTO incidents (id, instance_id, task_id, node_id, kind, message, details, attempt)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::integer[])

-- part: new_history
INSERT INTO history (instance_id, kind, node_id, task_id, detail)
SELECT u.instance_id, u.kind, u.node_id, u.task_id, u.detail::jsonb
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[])
    AS u (instance_id, kind, node_id, task_id, detail)

-- part: counted
INSERT INTO engine_counters (engine_id, name, value)
SELECT $1::text, u.name, u.value FROM unnest($2::text[], $3::bigint[]) AS u (name, value)
ON CONFLICT (engine_id, name) DO UPDATE SET value = engine_counters.value + excluded.value

-- part: resolved_incidents
-- By incident id, or every open incident of a task (a late outcome settles them).
UPDATE incidents i SET resolved_at = now(), resolution = u.resolution
FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS u (id, task_id, resolution)
WHERE (i.id = u.id OR i.task_id = u.task_id) AND i.resolved_at IS NULL

-- part: new_outbox
INSERT INTO outbox (routing_key, message_id, body, claimed_until, traceparent)
SELECT u.routing_key, u.message_id, u.body, now() + make_interval(secs => $1::integer / 1000.0),
       u.traceparent
FROM unnest($2::text[], $3::text[], $4::bytea[], $5::text[])
    AS u (routing_key, message_id, body, traceparent)
RETURNING id

-- part: start_keys
-- Starts decided without a transaction of their own: every key must be new.
INSERT INTO start_ledger (idempotency_key, payload_hash, instance_id, created)
SELECT u.k, u.h, u.i, true FROM unnest($1::text[], $2::bytea[], $3::uuid[]) AS u (k, h, i)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING 1

-- part: newer_definitions
-- A definition the batch assumed to be its key's latest, which no longer is.
SELECT 1 FROM process_definitions d
JOIN unnest($1::text[], $2::integer[]) AS u (key, version)
    ON d.key = u.key AND d.version > u.version

-- part: new_subscriptions
-- Message waits an instance opened (a catch event, a receive task, a boundary event, an
-- event-based gateway's target); the instance row written in the same statement guards them.
INSERT INTO message_subscriptions (id, instance_id, node_id, name, correlation_key)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])

-- part: closed_subscriptions
-- Message waits no longer waited on (their message came, or what they were part of ended).
DELETE FROM message_subscriptions WHERE id = ANY($1::uuid[])
