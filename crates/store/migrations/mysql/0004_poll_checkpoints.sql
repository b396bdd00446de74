-- Checkpoints of scheduled FHIR polls: same shape as
-- migrations/sqlite/0005_poll_checkpoints.sql. Channel names are at most 64
-- characters (the config refuses longer ones); resource type names are
-- short.

CREATE TABLE poll_checkpoints (
    channel            VARCHAR(64)  NOT NULL,
    resource_type      VARCHAR(64)  NOT NULL,
    last_updated       BIGINT       NOT NULL,
    seen_at_checkpoint MEDIUMTEXT   NOT NULL,
    updated_at         BIGINT       NOT NULL,
    PRIMARY KEY (channel, resource_type)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
