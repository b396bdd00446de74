-- Plexus store schema, SQLite flavour.
--
-- Conventions shared by the three backends:
-- * times are microseconds since the Unix epoch (INTEGER), written from the
--   store's clock, so every backend compares them the same way;
-- * message ids are UUID v7 (16-byte BLOB here);
-- * deliveries.queue_key is 'k:' || order key, or 'm:' || message id when
--   the message has no order key (each such delivery is its own key), so the
--   head-of-key queries never have to treat NULL specially;
-- * states: queued, in_flight, error (these hold their key up) and sent,
--   filtered, dead (final).

CREATE TABLE messages (
    id                  BLOB    NOT NULL PRIMARY KEY,
    channel             TEXT    NOT NULL,
    received_at         INTEGER NOT NULL,
    accepted_at         INTEGER NOT NULL,
    peer_addr           TEXT,
    content_type        TEXT    NOT NULL,
    size                INTEGER NOT NULL,
    sha256              BLOB    NOT NULL,
    control_id          TEXT,
    sender_key          TEXT    NOT NULL,
    message_type        TEXT,
    event               TEXT,
    order_key           TEXT,
    contents_deleted_at INTEGER,
    ack                 BLOB,
    -- Last, so that listing queries stop reading before the large value.
    raw                 BLOB
);

-- Browsing one channel by time; keyset pagination on (received_at, id).
CREATE INDEX messages_channel_time ON messages (channel, received_at, id);
-- Browsing all channels by time; retention (whole messages).
CREATE INDEX messages_time ON messages (received_at, id);
-- Duplicate detection and search by control id.
CREATE INDEX messages_control_id ON messages (control_id, channel, sender_key, received_at)
    WHERE control_id IS NOT NULL;
CREATE INDEX messages_order_key ON messages (order_key, received_at, id)
    WHERE order_key IS NOT NULL;
CREATE INDEX messages_type ON messages (message_type, event, received_at, id)
    WHERE message_type IS NOT NULL;
-- Retention (contents): messages whose contents are still there, oldest first.
CREATE INDEX messages_contents_time ON messages (received_at)
    WHERE contents_deleted_at IS NULL;

CREATE TABLE message_patients (
    message_id BLOB NOT NULL REFERENCES messages (id),
    patient_id TEXT NOT NULL,
    PRIMARY KEY (message_id, patient_id)
) WITHOUT ROWID;

CREATE INDEX message_patients_patient ON message_patients (patient_id, message_id);

CREATE TABLE deliveries (
    -- AUTOINCREMENT: ids never come back after retention deleted the newest
    -- rows, so an id in an audit event always means one delivery.
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       BLOB    NOT NULL REFERENCES messages (id),
    channel          TEXT    NOT NULL,
    destination      TEXT    NOT NULL,
    queue_key        TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    -- Attempts since creation or the last replay (the retry budget).
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- Attempts over the delivery's life (numbers the attempts table).
    total_attempts   INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    lease_token      INTEGER,
    lease_owner      TEXT,
    lease_started_at INTEGER,
    lease_expires_at INTEGER,
    filter_rule      TEXT,
    error_class      TEXT,
    error_reason     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    transformed      BLOB
);

-- A message's deliveries, and "has a delivery in state X" for the browser.
CREATE INDEX deliveries_message ON deliveries (message_id, state);
-- The queue: unfinished deliveries of one destination in arrival order ...
CREATE INDEX deliveries_queue ON deliveries (channel, destination, id)
    WHERE state IN ('queued', 'in_flight', 'error');
-- ... and per order key, to find each key's head.
CREATE INDEX deliveries_queue_key ON deliveries (channel, destination, queue_key, id)
    WHERE state IN ('queued', 'in_flight', 'error');
-- Counts per channel, destination and state (an index-only scan).
CREATE INDEX deliveries_state ON deliveries (channel, destination, state);

CREATE TABLE attempts (
    delivery_id     INTEGER NOT NULL REFERENCES deliveries (id),
    number          INTEGER NOT NULL,
    worker          TEXT    NOT NULL,
    started_at      INTEGER NOT NULL,
    finished_at     INTEGER NOT NULL,
    outcome         TEXT    NOT NULL,
    error_class     TEXT,
    reason          TEXT,
    response_kind   TEXT,
    response_status INTEGER,
    response_text   TEXT,
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    message_id  BLOB,
    delivery_id INTEGER,
    detail      TEXT
);

CREATE INDEX audit_events_message ON audit_events (message_id, id) WHERE message_id IS NOT NULL;
