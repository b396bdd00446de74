-- Checkpoints of scheduled FHIR polls (see crates/store/src/poll_checkpoint.rs):
-- one row per channel and resource type, rewritten after each committed
-- page. Times: microseconds since the epoch. seen_at_checkpoint: a JSON
-- array of the resource versions read at exactly last_updated.

CREATE TABLE poll_checkpoints (
    channel            TEXT    NOT NULL,
    resource_type      TEXT    NOT NULL,
    last_updated       INTEGER NOT NULL,
    seen_at_checkpoint TEXT    NOT NULL,
    updated_at         INTEGER NOT NULL,
    PRIMARY KEY (channel, resource_type)
);
