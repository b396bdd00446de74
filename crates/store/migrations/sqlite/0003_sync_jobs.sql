-- Patient sync jobs (see crates/store/src/sync_job.rs). One row per requested
-- sync; progress columns are rewritten while it runs; counts and report
-- (JSON text) once it ends. Times: microseconds since the epoch, from the
-- store's clock. The newest-first listing walks the primary key (UUID v7).

CREATE TABLE sync_jobs (
    id             BLOB    NOT NULL PRIMARY KEY,
    created_at     INTEGER NOT NULL,
    source         TEXT    NOT NULL,
    target         TEXT    NOT NULL,
    patient_id     TEXT    NOT NULL,
    resource_types TEXT    NOT NULL,
    requested_by   TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    phase          TEXT,
    done           INTEGER NOT NULL DEFAULT 0,
    total          INTEGER NOT NULL DEFAULT 0,
    counts         TEXT,
    error          TEXT,
    started_at     INTEGER,
    finished_at    INTEGER,
    -- Last: listings stop reading before the large value.
    report         TEXT
);
