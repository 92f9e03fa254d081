-- Every statement the orchestrator runs, by name. store/queries.py loads them; nothing else
-- in the code base writes SQL.

-- name: migration_lock
SELECT pg_advisory_xact_lock(7170001);

-- name: local_limits
-- For the rest of this transaction only: how long to wait for a lock, and for a statement
-- (milliseconds as text; '0' waits without limit). Used where the engine's short session
-- defaults do not fit: migrations, deploys, operator actions and reads.
SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true);

-- name: ping
SELECT 1;

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS orch_schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations
SELECT version FROM orch_schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO orch_schema_migrations (version, name) VALUES ($1, $2);

-- name: definition_lock
SELECT pg_advisory_xact_lock(hashtext('orch.definition:' || $1));

-- name: definition_by_hash
SELECT id, version FROM process_definitions WHERE key = $1 AND content_hash = $2;

-- name: insert_definition
INSERT INTO process_definitions (key, version, content_hash, graph, source)
SELECT $1, coalesce(max(version), 0) + 1, $2, $3, $4
FROM process_definitions WHERE key = $1
RETURNING id, version;

-- name: definition_by_id
SELECT id, key, version, graph FROM process_definitions WHERE id = $1;

-- name: latest_definition
SELECT id, key, version, graph FROM process_definitions
WHERE key = $1 ORDER BY version DESC LIMIT 1;

-- name: definition_by_version
SELECT id, key, version, graph FROM process_definitions WHERE key = $1 AND version = $2;

-- name: insert_start_ledger
-- One row per key; of two starts with the same key in one batch, the first wins.
INSERT INTO start_ledger (idempotency_key, payload_hash, instance_id, created)
SELECT k, h, i, true FROM unnest($1::text[], $2::bytea[], $3::uuid[]) AS u (k, h, i)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING idempotency_key, instance_id;

-- name: start_ledger_entries
SELECT idempotency_key, payload_hash, instance_id, created FROM start_ledger
WHERE idempotency_key = ANY($1::text[]);

-- name: count_start_duplicates
UPDATE start_ledger l SET duplicates = l.duplicates + u.n
FROM (SELECT k, count(*) AS n FROM unnest($1::text[]) AS k GROUP BY k) AS u
WHERE l.idempotency_key = u.k;

-- name: forget_starts
DELETE FROM start_ledger WHERE idempotency_key = ANY($1::text[]);

-- name: starts_return_existing
UPDATE start_ledger l SET instance_id = u.owner, created = false
FROM unnest($1::text[], $2::uuid[]) AS u (k, owner)
WHERE l.idempotency_key = u.k;

-- name: prune_start_ledger
DELETE FROM start_ledger WHERE created_at < now() - make_interval(days => $1);

-- name: claim_business_keys
INSERT INTO active_business_keys (process_key, business_key, instance_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[])
ON CONFLICT (process_key, business_key) DO NOTHING
RETURNING instance_id;

-- name: business_key_owners
SELECT k.process_key, k.business_key, k.instance_id
FROM active_business_keys k
JOIN unnest($1::text[], $2::text[]) AS u (p, b) ON k.process_key = u.p AND k.business_key = u.b;

-- name: lock_instances_of_tasks
-- Instance rows are locked in id order, so concurrent engines never deadlock. An instance
-- another session holds is skipped, not waited for: its reports wait for a later round.
SELECT id, definition_id, process_key, business_key, status, variables, tokens, seq,
       scopes, version, traceparent
FROM process_instances
WHERE id IN (SELECT instance_id FROM tasks WHERE id = ANY($1::uuid[]))
ORDER BY id FOR UPDATE SKIP LOCKED;

-- name: tasks_by_id
-- Read after lock_instances_of_tasks: the instance locks guard these rows.
SELECT id, instance_id, node_id, topic, status, attempt, retries_left, lock_ms, worker_id,
       lease_expires_at, lease_expiries, last_error, last_error_details, version
FROM tasks WHERE id = ANY($1::uuid[]);

-- name: ledger_for_tasks
SELECT task_id, slot, kind, attempt, payload_hash FROM report_ledger
WHERE task_id = ANY($1::uuid[]);

-- name: delete_outbox
DELETE FROM outbox WHERE id = ANY($1::bigint[]);

-- name: claim_lapsed_outbox
UPDATE outbox SET claimed_until = now() + make_interval(secs => $1::integer / 1000.0)
WHERE id IN (
    SELECT id FROM outbox WHERE claimed_until < now()
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
)
RETURNING id, routing_key, message_id, body, traceparent;

-- name: bump_counter
INSERT INTO engine_counters (engine_id, name, value) VALUES ($1, $2, $3)
ON CONFLICT (engine_id, name) DO UPDATE SET value = engine_counters.value + excluded.value;

-- name: lock_due_tasks
-- Expired leases and due retries, for the reaper. SKIP LOCKED: safe on many engines.
SELECT t.id, t.instance_id, t.node_id, t.topic, t.status, t.attempt, t.retries_left,
       t.lock_ms, t.worker_id, t.lease_expires_at, t.lease_expiries, t.last_error,
       t.last_error_details, t.version, i.process_key, i.business_key, i.variables, i.tokens, i.scopes,
       i.definition_id, i.traceparent
FROM tasks t JOIN process_instances i ON i.id = t.instance_id
WHERE (t.status = 'claimed' AND t.lease_expires_at < now())
   OR (t.status = 'retry_wait' AND t.due_at <= now())
ORDER BY t.id LIMIT $1
FOR UPDATE OF t, i SKIP LOCKED;

-- name: queued_topics
-- Each topic with queued tasks, and how long ago (ms) its longest-waiting one was
-- dispatched: a walk over the tasks_queued index, a probe or two per topic, however many
-- tasks a backlog holds.
WITH RECURSIVE topics (topic) AS (
    (SELECT topic FROM tasks WHERE status = 'queued' ORDER BY topic LIMIT 1)
    UNION ALL
    SELECT (SELECT t.topic FROM tasks t WHERE t.status = 'queued' AND t.topic > topics.topic
            ORDER BY t.topic LIMIT 1)
    FROM topics WHERE topics.topic IS NOT NULL
)
SELECT topic,
       (extract(epoch FROM now() - (SELECT t.dispatched_at FROM tasks t
                                    WHERE t.status = 'queued' AND t.topic = topics.topic
                                    ORDER BY t.dispatched_at LIMIT 1)) * 1000)::bigint
           AS oldest_ms
FROM topics WHERE topic IS NOT NULL;

-- name: lock_undispatched_tasks
-- Queued tasks of topic $1 whose message went out at least $2 ms x 2^redispatches ago,
-- longest-waiting first, each locked with its instance. SKIP LOCKED, as lock_due_tasks:
-- engines never take the same task in one pass, and an instance a report batch holds is
-- left for the next pass.
SELECT t.id, t.instance_id, t.node_id, t.topic, t.status, t.attempt, t.retries_left,
       t.lock_ms, t.worker_id, t.lease_expires_at, t.lease_expiries, t.last_error,
       t.last_error_details, t.version, t.redispatches,
       (extract(epoch FROM now() - t.dispatched_at) * 1000)::bigint AS waited_ms,
       i.process_key, i.business_key, i.variables, i.tokens, i.scopes, i.definition_id,
       i.traceparent
FROM tasks t JOIN process_instances i ON i.id = t.instance_id
WHERE t.status = 'queued' AND t.topic = $1
  AND t.dispatched_at <= now() - make_interval(secs => $2::bigint / 1000.0)
  AND t.dispatched_at
      <= now() - make_interval(secs => $2::bigint * power(2, least(t.redispatches, 20)) / 1000.0)
ORDER BY t.dispatched_at LIMIT $3
FOR UPDATE OF t, i SKIP LOCKED;

-- name: outbox_lapsed
-- Task messages the relay could not publish yet (the broker was away, or their engine
-- died): while there are any, a queued task's message may be one of them.
SELECT EXISTS (SELECT 1 FROM outbox WHERE claimed_until < now());

-- name: definitions_after
SELECT id, graph FROM process_definitions WHERE id > $1 ORDER BY id LIMIT $2;

-- name: instance_row
SELECT i.id, i.process_key, d.version, i.business_key, i.status, i.variables, i.tokens,
       i.scopes, i.parent_id, i.started_at, i.ended_at, i.traceparent
FROM process_instances i JOIN process_definitions d ON d.id = i.definition_id
WHERE i.id = $1;

-- name: instance_tasks
SELECT id, node_id, topic, status, attempt, retries_left, worker_id, lease_expires_at,
       due_at, lease_expiries, dispatched_at, redispatches, last_error, created_at, closed_at
FROM tasks WHERE instance_id = $1 ORDER BY created_at, id;

-- name: instance_history
SELECT at, kind, node_id, task_id, detail FROM history WHERE instance_id = $1 ORDER BY id;

-- name: instance_incidents
SELECT id, task_id, node_id, kind, message, details, attempt, created_at, resolved_at,
       resolution
FROM incidents WHERE instance_id = $1 ORDER BY created_at;

-- name: instance_counts
SELECT status, count(*) AS n FROM process_instances
WHERE $1::text IS NULL OR process_key = $1 GROUP BY status;

-- name: open_incident_count
SELECT count(*) FROM incidents i JOIN process_instances p ON p.id = i.instance_id
WHERE i.resolved_at IS NULL AND ($1::text IS NULL OR p.process_key = $1);

-- name: counters
SELECT name, sum(value)::bigint AS value FROM engine_counters GROUP BY name ORDER BY name;

-- name: ledger_totals
SELECT coalesce(sum(duplicates), 0) AS duplicates, coalesce(sum(conflicts), 0) AS conflicts
FROM report_ledger;

-- name: deployed_graphs
SELECT graph FROM process_definitions;

-- name: lock_instance
SELECT id, definition_id, process_key, business_key, status, variables, tokens, seq,
       scopes, version, traceparent
FROM process_instances WHERE id = $1 FOR UPDATE;

-- name: open_tasks_of_instance
-- Read under the instance's lock, which guards its tasks.
SELECT id, instance_id, node_id, topic, status, attempt, retries_left, lock_ms, worker_id,
       lease_expires_at, lease_expiries, last_error, last_error_details, version
FROM tasks WHERE instance_id = $1 AND status NOT IN ('completed', 'cancelled') ORDER BY id;

-- name: incident_by_id
SELECT id, instance_id, task_id, node_id, kind, message, resolved_at, resolution
FROM incidents WHERE id = $1;

-- name: open_incident_of_task
SELECT id, instance_id, task_id, node_id, kind, message, resolved_at, resolution
FROM incidents WHERE task_id = $1 AND resolved_at IS NULL ORDER BY created_at DESC LIMIT 1;

-- name: open_incidents_of_instance
SELECT id, task_id FROM incidents WHERE instance_id = $1 AND resolved_at IS NULL;

-- name: archive_outcome
-- Before an operator retries a task whose outcome was a business error: the recorded outcome
-- moves to a per-attempt slot, so the new attempt can report one, and repeats of the old one
-- are still recognised.
UPDATE report_ledger SET slot = 'outcome:' || attempt WHERE task_id = $1 AND slot = 'outcome';

-- name: autovacuum_setting
SELECT current_setting('autovacuum');

-- name: instance_children
-- The instances a call activity of this one started, with their open incidents: an
-- incident in a child shows on its parent.
SELECT c.id AS instance_id, c.process_key, c.status AS state, c.started_at, c.ended_at,
       (SELECT count(*) FROM incidents n
        WHERE n.instance_id = c.id AND n.resolved_at IS NULL) AS open_incidents
FROM process_instances c WHERE c.parent_id = $1 ORDER BY c.started_at, c.id;

-- name: lock_due_timers
-- Timers due by the engine's clock ($1), the earliest first, each locked with its instance
-- (SKIP LOCKED: any number of engines fire at once, none takes a timer another holds, and a
-- timer whose instance a round holds is left for the next pass).
SELECT m.id AS timer_id, m.node_id AS timer_node, m.kind, m.spec, m.due_at, m.fired,
       i.id, i.definition_id, i.process_key, i.business_key, i.status, i.variables,
       i.tokens, i.seq, i.scopes, i.version, i.traceparent
FROM timers m JOIN process_instances i ON i.id = m.instance_id
WHERE m.due_at <= $1
ORDER BY m.due_at, m.id LIMIT $2
FOR UPDATE OF m, i SKIP LOCKED;

-- name: next_timer_due
SELECT least((SELECT min(due_at) FROM timers), (SELECT min(due_at) FROM start_timers));

-- name: lock_due_start_timers
SELECT id, definition_id, process_key, version, node_id, kind, spec, due_at, fired
FROM start_timers WHERE due_at <= $1
ORDER BY due_at, id LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: reschedule_start_timer
UPDATE start_timers SET fired = $2, due_at = $3 WHERE id = $1;

-- name: delete_start_timer
DELETE FROM start_timers WHERE id = $1;

-- name: forget_start_timers
-- A new version of the process replaces the timers of the versions before it.
DELETE FROM start_timers WHERE process_key = $1;

-- name: add_start_timer
INSERT INTO start_timers (id, definition_id, process_key, version, node_id, kind, spec, due_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: instance_timers
SELECT id, node_id, kind, spec, due_at, fired FROM timers WHERE instance_id = $1
ORDER BY due_at, id;

-- name: lock_open_tasks_of_instances
-- The open tasks of instances the timer scheduler holds, locked now (SKIP LOCKED), beside
-- all of them: an instance with a task another session holds is left for the next pass, so
-- the pass's write never waits on a task row.
WITH open_tasks AS (
    SELECT id, instance_id FROM tasks
    WHERE instance_id = ANY($1::uuid[]) AND status IN ('queued', 'claimed', 'retry_wait', 'incident')
), locked AS (
    SELECT t.id FROM tasks t JOIN open_tasks o ON o.id = t.id
    ORDER BY t.id FOR UPDATE OF t SKIP LOCKED
)
SELECT DISTINCT o.instance_id FROM open_tasks o WHERE o.id NOT IN (SELECT id FROM locked);

-- --- messages (daemon/messages.py) ---------------------------------------------------------

-- name: insert_message
-- The ledger entry of a message, first as buffered until $6 ms from now; a message id seen
-- before returns nothing (a repeat). A concurrent insert of the same id waits for the first.
INSERT INTO messages (message_id, name, correlation_key, variables, payload_hash, status,
                      expires_at)
VALUES ($1, $2, $3, $4, $5, 'buffered', now() + make_interval(secs => $6::bigint / 1000.0))
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id;

-- name: message_entry
SELECT message_id, payload_hash, status, instance_id FROM messages WHERE message_id = $1;

-- name: count_message_duplicate
UPDATE messages SET duplicates = duplicates + 1 WHERE message_id = $1;

-- name: settle_message
-- correlated (to instance $3), or expired (not buffered after all).
UPDATE messages SET status = $2, instance_id = $3, expires_at = CASE
    WHEN $2 = 'expired' THEN least(expires_at, now()) ELSE expires_at END
WHERE message_id = $1;

-- name: lock_subscriber
-- The oldest subscription to (name, correlation key) whose instance no other session holds,
-- with that instance locked: its wait id and the instance's row.
SELECT s.id AS wait_id, i.id, i.definition_id, i.process_key, i.business_key, i.status,
       i.variables, i.tokens, i.seq, i.scopes, i.version, i.traceparent
FROM message_subscriptions s JOIN process_instances i ON i.id = s.instance_id
WHERE s.name = $1
  AND (s.correlation_key = $2::text OR (s.correlation_key IS NULL AND $2::text IS NULL))
ORDER BY s.created_at, s.id LIMIT 1
FOR UPDATE OF i SKIP LOCKED;

-- name: subscription_exists
SELECT EXISTS (
    SELECT 1 FROM message_subscriptions s
    WHERE s.name = $1
      AND (s.correlation_key = $2::text OR (s.correlation_key IS NULL AND $2::text IS NULL))
);

-- name: lock_buffered_message
-- The oldest message buffered for (name, correlation key) and not expired, locked.
SELECT message_id, variables FROM messages
WHERE status = 'buffered' AND name = $1
  AND (correlation_key = $2::text OR (correlation_key IS NULL AND $2::text IS NULL))
  AND expires_at > now()
ORDER BY created_at, message_id LIMIT 1
FOR UPDATE SKIP LOCKED;

-- name: expire_messages
-- Buffered messages past their time to live, for the message sweeper (SKIP LOCKED: any
-- number of engines sweep at once).
UPDATE messages SET status = 'expired'
WHERE message_id IN (
    SELECT message_id FROM messages
    WHERE status = 'buffered' AND expires_at <= now()
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
RETURNING message_id;

-- name: deliverable_messages
-- (name, correlation key) of buffered messages a subscription waits for: a delivery that
-- did not happen (its engine died between commit and delivery), found by the sweeper.
SELECT DISTINCT m.name, m.correlation_key FROM messages m
WHERE m.status = 'buffered' AND m.expires_at > now()
  AND EXISTS (SELECT 1 FROM message_subscriptions s
              WHERE s.name = m.name AND s.correlation_key IS NOT DISTINCT FROM m.correlation_key)
LIMIT $1;

-- name: instance_subscriptions
SELECT id, node_id, name, correlation_key FROM message_subscriptions
WHERE instance_id = $1 ORDER BY created_at, id;

-- --- the HTTP API's reads (orchestrator/web), paged by limit and offset ---------------------

-- name: web_definitions
SELECT key, version, id AS definition_id, created_at AS created FROM process_definitions
WHERE ($1::text IS NULL OR key = $1)
ORDER BY key, version DESC
LIMIT $2 OFFSET $3;

-- name: web_definition
SELECT key, version, id AS definition_id, content_hash, created_at AS created, source
FROM process_definitions WHERE key = $1 AND version = $2;

-- name: web_instances
SELECT i.id AS instance_id, i.process_key, d.version, i.business_key, i.status AS state,
       i.parent_id, i.started_at, i.ended_at,
       EXISTS (SELECT 1 FROM incidents n
               WHERE n.instance_id = i.id AND n.resolved_at IS NULL) AS has_incident
FROM process_instances i JOIN process_definitions d ON d.id = i.definition_id
WHERE ($1::text IS NULL OR i.process_key = $1)
  AND ($2::integer IS NULL OR d.version = $2)
  AND ($3::text IS NULL OR i.status = $3)
  AND ($4::text IS NULL OR i.business_key = $4)
  AND ($5::boolean IS NULL OR EXISTS (SELECT 1 FROM incidents n
                                      WHERE n.instance_id = i.id AND n.resolved_at IS NULL) = $5)
  AND ($6::timestamptz IS NULL OR i.started_at >= $6)
  AND ($7::timestamptz IS NULL OR i.started_at < $7)
ORDER BY i.started_at DESC, i.id
LIMIT $8 OFFSET $9;

-- name: list_incidents
-- Newest first. $3: null all, true open only, false resolved only.
SELECT n.id, n.instance_id, p.process_key, p.business_key, n.task_id, n.node_id, n.kind,
       n.message, n.details, n.attempt, n.created_at, n.resolved_at, n.resolution
FROM incidents n
JOIN process_instances p ON p.id = n.instance_id
WHERE ($1::text IS NULL OR p.process_key = $1)
  AND ($2::uuid IS NULL OR n.instance_id = $2)
  AND ($3::boolean IS NULL OR (n.resolved_at IS NULL) = $3)
ORDER BY n.created_at DESC, n.id
LIMIT $4 OFFSET $5;

-- name: metrics_open_incidents
-- Open incidents per process (the metrics' gauge; bounded by the deployed process keys).
SELECT p.process_key, count(*) AS n FROM incidents i
JOIN process_instances p ON p.id = i.instance_id
WHERE i.resolved_at IS NULL GROUP BY p.process_key;

-- name: metrics_outbox
-- Outbox rows not yet published (and deleted), and the oldest one's age in seconds.
SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS age
FROM outbox;
