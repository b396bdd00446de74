-- Patient sync jobs: same shape as migrations/sqlite/0003_sync_jobs.sql.

CREATE TABLE sync_jobs (
    id             BINARY(16)   NOT NULL PRIMARY KEY,
    created_at     BIGINT       NOT NULL,
    source         VARCHAR(255) NOT NULL,
    target         VARCHAR(255) NOT NULL,
    patient_id     VARCHAR(255) NOT NULL,
    resource_types TEXT         NOT NULL,
    requested_by   VARCHAR(255) NOT NULL,
    status         VARCHAR(32)  NOT NULL,
    phase          VARCHAR(32),
    done           BIGINT       NOT NULL DEFAULT 0,
    total          BIGINT       NOT NULL DEFAULT 0,
    counts         TEXT,
    error          TEXT,
    started_at     BIGINT,
    finished_at    BIGINT,
    report         LONGTEXT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
