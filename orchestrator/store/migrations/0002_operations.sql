-- Operator actions: incidents are resolved (by a retry, or by cancelling their instance) and
-- say how; open incidents are found by task for `retry TASK`.
ALTER TABLE incidents ADD COLUMN resolution text;
CREATE INDEX incidents_open_by_task ON incidents (task_id) WHERE resolved_at IS NULL;
CREATE INDEX incidents_open_by_instance ON incidents (instance_id) WHERE resolved_at IS NULL;

-- The unused per-instance incident counter: open incidents are counted from the table.
ALTER TABLE process_instances DROP COLUMN open_incidents;
