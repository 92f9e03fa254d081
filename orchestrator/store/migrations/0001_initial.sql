-- The first schema. Room is kept for retries, incidents, timers and parallel branches:
-- tasks carry attempts, retry counters and due times; instances carry a list of tokens.

CREATE TABLE process_definitions (
    id           bigserial PRIMARY KEY,
    key          text        NOT NULL,
    version      integer     NOT NULL,
    content_hash text        NOT NULL,
    graph        jsonb       NOT NULL,
    source       text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (key, version),
    UNIQUE (key, content_hash)
);

CREATE TABLE process_instances (
    id            uuid PRIMARY KEY,
    definition_id bigint      NOT NULL REFERENCES process_definitions (id),
    process_key   text        NOT NULL,
    business_key  text,
    status        text        NOT NULL CHECK (status IN ('active', 'completed', 'cancelled')),
    variables     jsonb       NOT NULL,
    tokens        jsonb       NOT NULL,
    seq           integer     NOT NULL,
    open_incidents integer    NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz
);
CREATE INDEX process_instances_by_key_status ON process_instances (process_key, status);
CREATE INDEX process_instances_by_business_key ON process_instances (business_key)
    WHERE business_key IS NOT NULL;

-- Business-key uniqueness among active instances, for definitions that ask for it.
CREATE TABLE active_business_keys (
    process_key  text NOT NULL,
    business_key text NOT NULL,
    instance_id  uuid NOT NULL,
    PRIMARY KEY (process_key, business_key)
);

-- The idempotency ledger of starts: one row per key, kept for a retention window.
CREATE TABLE start_ledger (
    idempotency_key text PRIMARY KEY,
    payload_hash    bytea       NOT NULL,
    instance_id     uuid        NOT NULL,
    created         boolean     NOT NULL,
    duplicates      integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX start_ledger_by_age ON start_ledger (created_at);

CREATE TABLE tasks (
    id                 uuid PRIMARY KEY,
    instance_id        uuid        NOT NULL REFERENCES process_instances (id),
    node_id            text        NOT NULL,
    topic              text        NOT NULL,
    status             text        NOT NULL CHECK (status IN
                           ('queued', 'claimed', 'retry_wait', 'incident', 'completed', 'cancelled')),
    attempt            integer     NOT NULL,
    retries_left       integer     NOT NULL,
    lock_ms            integer     NOT NULL,
    worker_id          text,
    lease_expires_at   timestamptz,
    due_at             timestamptz,
    lease_expiries     integer     NOT NULL DEFAULT 0,
    last_error         text,
    last_error_details text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    closed_at          timestamptz
);
CREATE INDEX tasks_by_instance ON tasks (instance_id);
CREATE INDEX tasks_expiring ON tasks (lease_expires_at) WHERE status = 'claimed';
CREATE INDEX tasks_due ON tasks (due_at) WHERE status = 'retry_wait';

-- The idempotency ledger of reports. slot 'outcome' holds the one terminal report of a task
-- (completed or bpmn_error: the first wins); 'failed:<attempt>' one failure per attempt.
CREATE TABLE report_ledger (
    task_id      uuid        NOT NULL,
    slot         text        NOT NULL,
    kind         text        NOT NULL,
    attempt      integer     NOT NULL,
    worker_id    text        NOT NULL,
    payload_hash bytea       NOT NULL,
    duplicates   integer     NOT NULL DEFAULT 0,
    conflicts    integer     NOT NULL DEFAULT 0,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, slot)
);

CREATE TABLE incidents (
    id          uuid PRIMARY KEY,
    instance_id uuid        NOT NULL REFERENCES process_instances (id),
    task_id     uuid,
    node_id     text        NOT NULL,
    kind        text        NOT NULL,
    message     text        NOT NULL,
    details     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE INDEX incidents_open ON incidents (created_at) WHERE resolved_at IS NULL;

-- Transactional outbox: written in the engine's transaction, published after commit.
-- claimed_until lets the committing engine publish its own rows first; rows whose claim
-- lapsed (the engine died) are swept up by any engine.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    routing_key   text        NOT NULL,
    message_id    text        NOT NULL,
    body          bytea       NOT NULL,
    claimed_until timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_by_claim ON outbox (claimed_until);

CREATE TABLE history (
    id          bigserial PRIMARY KEY,
    instance_id uuid        NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text        NOT NULL,
    node_id     text,
    task_id     uuid,
    detail      jsonb
);
CREATE INDEX history_by_instance ON history (instance_id, id);

-- Counters per engine, so replicas never queue up behind each other on one hot row.
CREATE TABLE engine_counters (
    engine_id text   NOT NULL,
    name      text   NOT NULL,
    value     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (engine_id, name)
);
