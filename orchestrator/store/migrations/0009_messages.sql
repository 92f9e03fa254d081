-- Messages: the subscriptions instances wait on, and the message ledger and buffer.
--
-- A subscription is an open message wait of an instance (its id is the wait's id in the
-- instance's state); it is written and deleted by the statement that writes the instance.
-- A message is recorded once by its message_id, whatever it did: correlated to an instance,
-- buffered until a subscription opens or its time to live runs out, or expired (also a
-- message nobody waited for and that was not to be buffered). A repeat of the same id is
-- counted in `duplicates` and answered with what the first one did.
CREATE TABLE message_subscriptions (
    id              uuid PRIMARY KEY,
    instance_id     uuid        NOT NULL,
    node_id         text        NOT NULL,
    name            text        NOT NULL,
    correlation_key text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_subscriptions_by_key
    ON message_subscriptions (name, correlation_key, created_at);
CREATE INDEX message_subscriptions_by_instance ON message_subscriptions (instance_id);

CREATE TABLE messages (
    message_id      text PRIMARY KEY,
    name            text        NOT NULL,
    correlation_key text,
    variables       jsonb       NOT NULL DEFAULT '{}',
    payload_hash    bytea       NOT NULL,
    status          text        NOT NULL
        CHECK (status IN ('buffered', 'correlated', 'started', 'expired')),
    instance_id     uuid,
    expires_at      timestamptz,
    duplicates      integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_buffered ON messages (name, correlation_key, created_at)
    WHERE status = 'buffered';
CREATE INDEX messages_buffered_expiry ON messages (expires_at) WHERE status = 'buffered';
