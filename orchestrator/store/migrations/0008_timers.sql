-- Durable timers: one row per timer an instance waits on (its id is the wait's id). The
-- engine that starts a timer computes its first due time (definitions/timers.py, first_due)
-- and stores the evaluated definition, so the next turn of a cycle can be computed again.
-- Every engine's scheduler (daemon/timers.py) fires the due rows with FOR UPDATE SKIP LOCKED,
-- in the transaction that applies the step: a row fires once whichever engine takes it.
CREATE TABLE timers (
    id uuid PRIMARY KEY,
    instance_id uuid NOT NULL,
    node_id text NOT NULL,
    kind text NOT NULL CHECK (kind IN ('duration', 'date', 'cycle')),
    spec text NOT NULL,
    due_at timestamptz NOT NULL,
    fired integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX timers_due ON timers (due_at);
CREATE INDEX timers_by_instance ON timers (instance_id);

-- New timers wake every engine's scheduler: the earliest due time of the statement's rows,
-- as seconds since the epoch. NOTIFY is delivered at commit, and not at all on a rollback.
CREATE FUNCTION orch_timers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    earliest double precision;
BEGIN
    SELECT extract(epoch FROM min(due_at)) INTO earliest FROM inserted_timers;
    IF earliest IS NOT NULL THEN
        PERFORM pg_notify('orch_timers', earliest::text);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER timers_notify AFTER INSERT ON timers
    REFERENCING NEW TABLE AS inserted_timers
    FOR EACH STATEMENT EXECUTE FUNCTION orch_timers_notify();

-- The timers of timer start events: one row per start event of the latest deployed version
-- of a process (a deploy of a new version replaces the key's rows). Firing one starts an
-- instance through a start command whose idempotency key names the timer's turn.
CREATE TABLE start_timers (
    id            uuid PRIMARY KEY,
    definition_id bigint      NOT NULL,
    process_key   text        NOT NULL,
    version       integer     NOT NULL,
    node_id       text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('duration', 'date', 'cycle')),
    spec          text        NOT NULL,
    due_at        timestamptz NOT NULL,
    fired         integer     NOT NULL DEFAULT 0
);
CREATE INDEX start_timers_due ON start_timers (due_at);
CREATE INDEX start_timers_by_key ON start_timers (process_key);
CREATE TRIGGER start_timers_notify AFTER INSERT ON start_timers
    REFERENCING NEW TABLE AS inserted_timers
    FOR EACH STATEMENT EXECUTE FUNCTION orch_timers_notify();
