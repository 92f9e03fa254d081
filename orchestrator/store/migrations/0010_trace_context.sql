-- W3C trace context (orchestrator/tracing.py). process_instances.traceparent: the instance's
-- trace, from its start (the caller's, or one the engine made up); every task message of the
-- instance carries it, in later rounds, after restarts and from any engine, and a call
-- activity's child inherits it. outbox.traceparent: the header its message is published
-- with, so a sweeper republishing the row sends the same one. Both nullable and written only
-- by engines that know them: an older engine running beside a newer one leaves them null.
ALTER TABLE process_instances ADD COLUMN traceparent text;
ALTER TABLE outbox ADD COLUMN traceparent text;
