-- The dispatch deadline: a queued task that no worker claimed within it is published again
-- (its message may have been purged, dropped by a queue policy, or acked unclaimed).
-- dispatched_at: when the current attempt's message was last dispatched (the commit that
-- queued it, or its last re-send); redispatches: re-sends of the current attempt. A new
-- attempt resets both (write_batch.sql, changed_tasks).
ALTER TABLE tasks ADD COLUMN dispatched_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE tasks ADD COLUMN redispatches integer NOT NULL DEFAULT 0;
-- The dispatch watch finds, per topic, the queued task dispatched longest ago. Only queued
-- rows are in it (a task is queued for milliseconds when workers keep up): one more index
-- entry per dispatched attempt, none for the claim and completion updates that follow.
CREATE INDEX tasks_queued ON tasks (topic, dispatched_at) WHERE status = 'queued';
