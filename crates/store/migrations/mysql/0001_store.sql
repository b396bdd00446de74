-- Plexus store schema, MariaDB / MySQL flavour. Same shape and conventions as
-- the SQLite schema (see migrations/sqlite/0001_store.sql): times are BIGINT
-- microseconds since the Unix epoch from the store's clock, message ids are
-- UUID v7 in BINARY(16), queue_key is 'k:' || order key or 'm:' || message
-- id, and queued / in_flight / error hold their key up.
--
-- MariaDB has no partial indexes: the queue index leads with state
-- instead, so the claim reads only the unfinished range of each destination.
-- VARCHAR lengths match the limits the store enforces (utf8mb4 keeps every
-- index key under 3,072 bytes).

CREATE TABLE messages (
    id                  BINARY(16)   NOT NULL PRIMARY KEY,
    channel             VARCHAR(100) NOT NULL,
    received_at         BIGINT       NOT NULL,
    accepted_at         BIGINT       NOT NULL,
    peer_addr           VARCHAR(255),
    content_type        VARCHAR(255) NOT NULL,
    size                BIGINT       NOT NULL,
    sha256              BINARY(32)   NOT NULL,
    control_id          VARCHAR(199),
    sender_key          VARCHAR(255) NOT NULL,
    message_type        VARCHAR(16),
    event               VARCHAR(16),
    order_key           VARCHAR(255),
    contents_deleted_at BIGINT,
    ack                 MEDIUMBLOB,
    raw                 LONGBLOB,
    KEY messages_channel_time (channel, received_at, id),
    KEY messages_time (received_at, id),
    KEY messages_control_id (control_id, channel, sender_key, received_at),
    KEY messages_order_key (order_key, received_at, id),
    KEY messages_type (message_type, event, received_at, id),
    KEY messages_contents_time (contents_deleted_at, received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE message_patients (
    message_id BINARY(16)   NOT NULL,
    patient_id VARCHAR(255) NOT NULL,
    PRIMARY KEY (message_id, patient_id),
    KEY message_patients_patient (patient_id, message_id),
    CONSTRAINT message_patients_message FOREIGN KEY (message_id) REFERENCES messages (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE deliveries (
    id               BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id       BINARY(16)   NOT NULL,
    channel          VARCHAR(100) NOT NULL,
    destination      VARCHAR(100) NOT NULL,
    queue_key        VARCHAR(257) NOT NULL,
    state            VARCHAR(16)  NOT NULL,
    attempts         BIGINT       NOT NULL DEFAULT 0,
    total_attempts   BIGINT       NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT       NOT NULL,
    lease_token      BIGINT,
    lease_owner      VARCHAR(255),
    lease_started_at BIGINT,
    lease_expires_at BIGINT,
    filter_rule      VARCHAR(2000),
    error_class      VARCHAR(16),
    error_reason     TEXT,
    created_at       BIGINT       NOT NULL,
    updated_at       BIGINT       NOT NULL,
    transformed      LONGBLOB,
    KEY deliveries_message (message_id, state),
    KEY deliveries_queue (channel, destination, state, id),
    KEY deliveries_queue_key (channel, destination, queue_key, id),
    KEY deliveries_state (channel, destination, state),
    CONSTRAINT deliveries_message FOREIGN KEY (message_id) REFERENCES messages (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE attempts (
    delivery_id     BIGINT       NOT NULL,
    number          BIGINT       NOT NULL,
    worker          VARCHAR(255) NOT NULL,
    started_at      BIGINT       NOT NULL,
    finished_at     BIGINT       NOT NULL,
    outcome         VARCHAR(16)  NOT NULL,
    error_class     VARCHAR(16),
    reason          TEXT,
    response_kind   VARCHAR(8),
    response_status BIGINT,
    response_text   TEXT,
    PRIMARY KEY (delivery_id, number),
    CONSTRAINT attempts_delivery FOREIGN KEY (delivery_id) REFERENCES deliveries (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE audit_events (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at          BIGINT       NOT NULL,
    actor       VARCHAR(255) NOT NULL,
    action      VARCHAR(64)  NOT NULL,
    message_id  BINARY(16),
    delivery_id BIGINT,
    detail      TEXT,
    KEY audit_events_message (message_id, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per destination queue, locked (SELECT ... FOR UPDATE) by each
-- claim transaction so that concurrent claimers, in any process, decide on
-- key heads one at a time (PostgreSQL uses an advisory lock instead).
CREATE TABLE claim_locks (
    channel     VARCHAR(100) NOT NULL,
    destination VARCHAR(100) NOT NULL,
    PRIMARY KEY (channel, destination)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
