-- Scopes for BPMN: embedded subprocesses, activities with input mappings and multi-instance
-- loops keep their variables and progress here (NULL while an instance has none, which is
-- every instance of a flat process). parent_id links an instance started by a call activity
-- to the instance that called it; the call activity's task has the child instance's id.
ALTER TABLE process_instances ADD COLUMN scopes jsonb;
ALTER TABLE process_instances ADD COLUMN parent_id uuid;
CREATE INDEX process_instances_by_parent ON process_instances (parent_id)
    WHERE parent_id IS NOT NULL;
