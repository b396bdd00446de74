-- Plexus store schema, PostgreSQL flavour. Same shape and conventions as the
-- SQLite schema (see migrations/sqlite/0001_store.sql): times are BIGINT
-- microseconds since the Unix epoch from the store's clock, queue_key is
-- 'k:' || order key or 'm:' || message id, and queued / in_flight / error
-- hold their key up.

CREATE TABLE messages (
    id                  UUID    PRIMARY KEY,
    channel             TEXT    NOT NULL,
    received_at         BIGINT  NOT NULL,
    accepted_at         BIGINT  NOT NULL,
    peer_addr           TEXT,
    content_type        TEXT    NOT NULL,
    size                BIGINT  NOT NULL,
    sha256              BYTEA   NOT NULL,
    control_id          TEXT,
    sender_key          TEXT    NOT NULL,
    message_type        TEXT,
    event               TEXT,
    order_key           TEXT,
    contents_deleted_at BIGINT,
    ack                 BYTEA,
    raw                 BYTEA
);

CREATE INDEX messages_channel_time ON messages (channel, received_at, id);
CREATE INDEX messages_time ON messages (received_at, id);
CREATE INDEX messages_control_id ON messages (control_id, channel, sender_key, received_at)
    WHERE control_id IS NOT NULL;
CREATE INDEX messages_order_key ON messages (order_key, received_at, id)
    WHERE order_key IS NOT NULL;
CREATE INDEX messages_type ON messages (message_type, event, received_at, id)
    WHERE message_type IS NOT NULL;
CREATE INDEX messages_contents_time ON messages (received_at)
    WHERE contents_deleted_at IS NULL;

CREATE TABLE message_patients (
    message_id UUID NOT NULL REFERENCES messages (id),
    patient_id TEXT NOT NULL,
    PRIMARY KEY (message_id, patient_id)
);

CREATE INDEX message_patients_patient ON message_patients (patient_id, message_id);

CREATE TABLE deliveries (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id       UUID    NOT NULL REFERENCES messages (id),
    channel          TEXT    NOT NULL,
    destination      TEXT    NOT NULL,
    queue_key        TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    total_attempts   BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT  NOT NULL,
    lease_token      BIGINT,
    lease_owner      TEXT,
    lease_started_at BIGINT,
    lease_expires_at BIGINT,
    filter_rule      TEXT,
    error_class      TEXT,
    error_reason     TEXT,
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL,
    transformed      BYTEA
);

-- A message's deliveries, and "has a delivery in state X" for the browser.
CREATE INDEX deliveries_message ON deliveries (message_id, state);
-- The queue in arrival order, and each key's head (DISTINCT ON (queue_key)
-- ... ORDER BY queue_key, id reads this index in order). Partial: finished
-- deliveries leave both indexes, so they stay as small as the backlog.
CREATE INDEX deliveries_queue ON deliveries (channel, destination, id)
    WHERE state IN ('queued', 'in_flight', 'error');
CREATE INDEX deliveries_queue_key ON deliveries (channel, destination, queue_key, id)
    WHERE state IN ('queued', 'in_flight', 'error');
CREATE INDEX deliveries_state ON deliveries (channel, destination, state);

CREATE TABLE attempts (
    delivery_id     BIGINT NOT NULL REFERENCES deliveries (id),
    number          BIGINT NOT NULL,
    worker          TEXT   NOT NULL,
    started_at      BIGINT NOT NULL,
    finished_at     BIGINT NOT NULL,
    outcome         TEXT   NOT NULL,
    error_class     TEXT,
    reason          TEXT,
    response_kind   TEXT,
    response_status BIGINT,
    response_text   TEXT,
    PRIMARY KEY (delivery_id, number)
);

CREATE TABLE audit_events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    message_id  UUID,
    delivery_id BIGINT,
    detail      TEXT
);

CREATE INDEX audit_events_message ON audit_events (message_id, id) WHERE message_id IS NOT NULL;
