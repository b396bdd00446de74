-- Patient sync jobs: same shape as migrations/sqlite/0003_sync_jobs.sql.

CREATE TABLE sync_jobs (
    id             UUID   PRIMARY KEY,
    created_at     BIGINT NOT NULL,
    source         TEXT   NOT NULL,
    target         TEXT   NOT NULL,
    patient_id     TEXT   NOT NULL,
    resource_types TEXT   NOT NULL,
    requested_by   TEXT   NOT NULL,
    status         TEXT   NOT NULL,
    phase          TEXT,
    done           BIGINT NOT NULL DEFAULT 0,
    total          BIGINT NOT NULL DEFAULT 0,
    counts         TEXT,
    error          TEXT,
    started_at     BIGINT,
    finished_at    BIGINT,
    report         TEXT
);
