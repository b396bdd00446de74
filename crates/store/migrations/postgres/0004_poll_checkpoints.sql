-- Checkpoints of scheduled FHIR polls: same shape as
-- migrations/sqlite/0005_poll_checkpoints.sql.

CREATE TABLE poll_checkpoints (
    channel            TEXT   NOT NULL,
    resource_type      TEXT   NOT NULL,
    last_updated       BIGINT NOT NULL,
    seen_at_checkpoint TEXT   NOT NULL,
    updated_at         BIGINT NOT NULL,
    PRIMARY KEY (channel, resource_type)
);
