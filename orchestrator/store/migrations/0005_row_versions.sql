-- Optimistic concurrency for the engine's one-round-trip path: every write of an instance or
-- a task bumps its version, and a write names the version it was decided from. A write made
-- from a stale copy fails whole (serialization_failure) instead of overwriting newer state.
ALTER TABLE process_instances ADD COLUMN version integer NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN version integer NOT NULL DEFAULT 0;

CREATE FUNCTION orch_expect_rows(written bigint, expected bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF written <> expected THEN
        RAISE EXCEPTION 'stale write: % of % rows were still at the version it was decided from',
            written, expected
            USING ERRCODE = 'serialization_failure';
    END IF;
    RETURN true;
END
$$;
