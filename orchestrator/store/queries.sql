-- Every statement the orchestrator runs, by name. store/queries.py loads them; nothing else
-- in the code base writes SQL.

-- name: migration_lock
SELECT pg_advisory_xact_lock(7170001);

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
INSERT INTO start_ledger (idempotency_key, payload_hash, instance_id, created)
VALUES ($1, $2, $3, true)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING instance_id;

-- name: start_ledger_entry
SELECT payload_hash, instance_id, created FROM start_ledger WHERE idempotency_key = $1;

-- name: count_start_duplicate
UPDATE start_ledger SET duplicates = duplicates + 1 WHERE idempotency_key = $1;

-- name: forget_start
DELETE FROM start_ledger WHERE idempotency_key = $1;

-- name: start_returns_existing
UPDATE start_ledger SET instance_id = $2, created = false WHERE idempotency_key = $1;

-- name: prune_start_ledger
DELETE FROM start_ledger WHERE created_at < now() - make_interval(days => $1);

-- name: claim_business_key
INSERT INTO active_business_keys (process_key, business_key, instance_id)
VALUES ($1, $2, $3)
ON CONFLICT (process_key, business_key) DO NOTHING
RETURNING instance_id;

-- name: business_key_owner
SELECT instance_id FROM active_business_keys WHERE process_key = $1 AND business_key = $2;

-- name: release_business_keys
DELETE FROM active_business_keys WHERE instance_id = ANY($1::uuid[]);

-- name: insert_instance
INSERT INTO process_instances
    (id, definition_id, process_key, business_key, status, variables, tokens, seq, ended_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, CASE WHEN $5 = 'active' THEN NULL ELSE now() END);

-- name: instances_of_tasks
SELECT DISTINCT instance_id FROM tasks WHERE id = ANY($1::uuid[]);

-- name: lock_instances
SELECT id, definition_id, process_key, business_key, status, variables, tokens, seq
FROM process_instances WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE;

-- name: lock_tasks
SELECT id, instance_id, node_id, topic, status, attempt, retries_left, lock_ms, worker_id,
       lease_expires_at, lease_expiries
FROM tasks WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE;

-- name: ledger_for_tasks
SELECT task_id, slot, kind, attempt, payload_hash FROM report_ledger
WHERE task_id = ANY($1::uuid[]);

-- name: insert_ledger
INSERT INTO report_ledger (task_id, slot, kind, attempt, worker_id, payload_hash)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (task_id, slot) DO NOTHING;

-- name: count_ledger_repeats
UPDATE report_ledger SET duplicates = duplicates + $3, conflicts = conflicts + $4
WHERE task_id = $1 AND slot = $2;

-- name: update_task
UPDATE tasks SET status = $2, attempt = $3, retries_left = $4, worker_id = $5,
    lease_expires_at = CASE
        WHEN $6::integer IS NOT NULL THEN now() + make_interval(secs => $6::integer / 1000.0)
        WHEN $2 = 'claimed' THEN lease_expires_at
        ELSE NULL END,
    due_at = CASE WHEN $7::integer IS NULL THEN NULL
                  ELSE now() + make_interval(secs => $7::integer / 1000.0) END,
    lease_expiries = $8,
    last_error = coalesce($9, last_error),
    last_error_details = coalesce($10, last_error_details),
    closed_at = CASE WHEN $2 IN ('completed', 'cancelled') THEN now() ELSE NULL END
WHERE id = $1;

-- name: insert_task
INSERT INTO tasks (id, instance_id, node_id, topic, status, attempt, retries_left, lock_ms)
VALUES ($1, $2, $3, $4, 'queued', 1, $5, $6);

-- name: update_instance
UPDATE process_instances SET status = $2, variables = $3, tokens = $4, seq = $5,
    ended_at = CASE WHEN $2 = 'active' THEN NULL ELSE coalesce(ended_at, now()) END
WHERE id = $1;

-- name: insert_outbox
INSERT INTO outbox (routing_key, message_id, body, claimed_until)
SELECT r, m, b, now() + make_interval(secs => $4::integer / 1000.0)
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u (r, m, b)
RETURNING id;

-- name: delete_outbox
DELETE FROM outbox WHERE id = ANY($1::bigint[]);

-- name: claim_lapsed_outbox
UPDATE outbox SET claimed_until = now() + make_interval(secs => $1::integer / 1000.0)
WHERE id IN (
    SELECT id FROM outbox WHERE claimed_until < now()
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
)
RETURNING id, routing_key, message_id, body;

-- name: insert_history
INSERT INTO history (instance_id, kind, node_id, task_id, detail)
VALUES ($1, $2, $3, $4, $5);

-- name: insert_incident
INSERT INTO incidents (id, instance_id, task_id, node_id, kind, message, details)
VALUES ($1, $2, $3, $4, $5, $6, $7);

-- name: bump_counter
INSERT INTO engine_counters (name, value) VALUES ($1, $2)
ON CONFLICT (name) DO UPDATE SET value = engine_counters.value + excluded.value;

-- name: lock_due_tasks
-- Expired leases and due retries, for the reaper. SKIP LOCKED: safe on many engines.
SELECT t.id, t.instance_id, t.node_id, t.topic, t.status, t.attempt, t.retries_left,
       t.lock_ms, t.worker_id, t.lease_expires_at, t.lease_expiries,
       i.process_key, i.business_key, i.variables, i.definition_id
FROM tasks t JOIN process_instances i ON i.id = t.instance_id
WHERE (t.status = 'claimed' AND t.lease_expires_at < now())
   OR (t.status = 'retry_wait' AND t.due_at <= now())
ORDER BY t.id LIMIT $1
FOR UPDATE OF t SKIP LOCKED;

-- name: instance_row
SELECT i.id, i.process_key, d.version, i.business_key, i.status, i.variables, i.tokens,
       i.started_at, i.ended_at
FROM process_instances i JOIN process_definitions d ON d.id = i.definition_id
WHERE i.id = $1;

-- name: instance_tasks
SELECT id, node_id, topic, status, attempt, retries_left, worker_id, lease_expires_at,
       due_at, lease_expiries, last_error, created_at, closed_at
FROM tasks WHERE instance_id = $1 ORDER BY created_at, id;

-- name: instance_history
SELECT at, kind, node_id, task_id, detail FROM history WHERE instance_id = $1 ORDER BY id;

-- name: instance_incidents
SELECT id, task_id, node_id, kind, message, created_at, resolved_at
FROM incidents WHERE instance_id = $1 ORDER BY created_at;

-- name: instance_counts
SELECT status, count(*) AS n FROM process_instances
WHERE $1::text IS NULL OR process_key = $1 GROUP BY status;

-- name: open_incident_count
SELECT count(*) FROM incidents i JOIN process_instances p ON p.id = i.instance_id
WHERE i.resolved_at IS NULL AND ($1::text IS NULL OR p.process_key = $1);

-- name: counters
SELECT name, value FROM engine_counters ORDER BY name;

-- name: ledger_totals
SELECT coalesce(sum(duplicates), 0) AS duplicates, coalesce(sum(conflicts), 0) AS conflicts
FROM report_ledger;

-- name: deployed_graphs
SELECT graph FROM process_definitions;
