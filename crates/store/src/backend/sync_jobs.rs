//! The SQL of patient sync jobs (`sync_jobs`, migration 0003), stamped out
//! once per backend like [`super::shared`]; each backend's `Store` impl
//! calls these in one line.
//!
//! Sync jobs are written a handful of times per job (created, started, a
//! progress row per phase, finished), so they go straight to a pooled
//! connection in autocommit rather than through the group-commit writer. On
//! SQLite that connection waits in the busy handler while the writer holds
//! the database; a single-row write then takes its turn between batches.
//!
//! Every update names the states it may change from (`queued`/`running`),
//! so a finished job is never changed again, whoever writes late.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::clock::{from_micros, to_micros};
use crate::sync_job::*;
use crate::{Result, StoreError};

/// Longest name (server, requester) and patient id accepted.
const NAME_MAX: usize = 255;
/// Error summaries are cut to this many bytes, not refused.
const ERROR_MAX: usize = 2000;
/// Most resource types one job may ask for.
const TYPES_MAX: usize = 200;

fn check(field: &'static str, value: &str) -> Result<()> {
    if value.trim().is_empty() {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > NAME_MAX {
        return Err(StoreError::invalid(field, format!("longer than {NAME_MAX} characters")));
    }
    Ok(())
}

/// Refuses a job the store cannot record faithfully.
pub(crate) fn validate(job: &NewSyncJob) -> Result<()> {
    check("source", &job.source)?;
    check("target", &job.target)?;
    check("patient_id", &job.patient_id)?;
    check("requested_by", &job.requested_by)?;
    if job.resource_types.len() > TYPES_MAX {
        return Err(StoreError::invalid("resource_types", format!("more than {TYPES_MAX}")));
    }
    for t in &job.resource_types {
        check("resource_types", t)?;
    }
    Ok(())
}

fn cut(s: &str) -> String {
    if s.len() <= ERROR_MAX {
        return s.to_owned();
    }
    let mut end = ERROR_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn json_error(e: serde_json::Error) -> StoreError {
    StoreError::invalid("sync job", format!("cannot encode: {e}"))
}

/// The columns every read selects (`report` only for single-job reads).
const COLUMNS: &str = "id, created_at, source, target, patient_id, resource_types, requested_by, status, phase, done, \
                       total, counts, error, started_at, finished_at";

/// One row, decoded.
struct JobRow {
    id: Uuid,
    created_at: i64,
    source: String,
    target: String,
    patient_id: String,
    resource_types: String,
    requested_by: String,
    status: String,
    phase: Option<String>,
    done: i64,
    total: i64,
    counts: Option<String>,
    error: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    report: Option<String>,
}

impl JobRow {
    fn into_job(self) -> Result<SyncJob> {
        let corrupt = |what: &str| StoreError::invalid("sync_jobs", format!("stored {what} does not decode"));
        let resource_types: Vec<String> =
            serde_json::from_str(&self.resource_types).map_err(|_| corrupt("resource_types"))?;
        let counts: BTreeMap<String, SyncJobCounts> = match &self.counts {
            Some(c) => serde_json::from_str(c).map_err(|_| corrupt("counts"))?,
            None => BTreeMap::new(),
        };
        let report = match &self.report {
            Some(r) => Some(serde_json::from_str(r).map_err(|_| corrupt("report"))?),
            None => None,
        };
        Ok(SyncJob {
            id: SyncJobId(self.id),
            source: self.source,
            target: self.target,
            patient_id: self.patient_id,
            resource_types,
            status: SyncJobStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?,
            progress: SyncJobProgress {
                phase: self.phase,
                done: u64::try_from(self.done).unwrap_or(0),
                total: u64::try_from(self.total).unwrap_or(0),
            },
            counts,
            error: self.error,
            report,
            requested_by: self.requested_by,
            created_at: from_micros(self.created_at),
            started_at: self.started_at.map(from_micros),
            finished_at: self.finished_at.map(from_micros),
        })
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    to_micros(t)
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Defines `create`, `update`, `get` and `recent` for database `$db` on
/// pool `$pool`.
macro_rules! sync_job_sql {
    ($db:ty, $pool:ty) => {
        use sqlx::{QueryBuilder, Row};

        use super::*;

        fn decode(row: &<$db as sqlx::Database>::Row, with_report: bool) -> Result<SyncJob> {
            JobRow {
                id: row.try_get("id")?,
                created_at: row.try_get("created_at")?,
                source: row.try_get("source")?,
                target: row.try_get("target")?,
                patient_id: row.try_get("patient_id")?,
                resource_types: row.try_get("resource_types")?,
                requested_by: row.try_get("requested_by")?,
                status: row.try_get("status")?,
                phase: row.try_get("phase")?,
                done: row.try_get("done")?,
                total: row.try_get("total")?,
                counts: row.try_get("counts")?,
                error: row.try_get("error")?,
                started_at: row.try_get("started_at")?,
                finished_at: row.try_get("finished_at")?,
                report: if with_report { row.try_get("report")? } else { None },
            }
            .into_job()
        }

        /// Records a new job as `queued`.
        pub(crate) async fn create(pool: &$pool, job: NewSyncJob, now: DateTime<Utc>) -> Result<SyncJob> {
            validate(&job)?;
            let id = Uuid::now_v7();
            let types = serde_json::to_string(&job.resource_types).map_err(json_error)?;
            let mut qb = QueryBuilder::<$db>::new(
                "INSERT INTO sync_jobs (id, created_at, source, target, patient_id, resource_types, requested_by, \
                 status, done, total) VALUES (",
            );
            let mut values = qb.separated(", ");
            values.push_bind(id);
            values.push_bind(micros(now));
            values.push_bind(job.source.clone());
            values.push_bind(job.target.clone());
            values.push_bind(job.patient_id.clone());
            values.push_bind(types);
            values.push_bind(job.requested_by.clone());
            values.push_bind(SyncJobStatus::Queued.as_str());
            values.push_bind(0i64);
            values.push_bind(0i64);
            qb.push(")");
            qb.build().execute(pool).await?;
            Ok(SyncJob {
                id: SyncJobId(id),
                source: job.source,
                target: job.target,
                patient_id: job.patient_id,
                resource_types: job.resource_types,
                status: SyncJobStatus::Queued,
                progress: SyncJobProgress::default(),
                counts: BTreeMap::new(),
                error: None,
                report: None,
                requested_by: job.requested_by,
                created_at: now,
                started_at: None,
                finished_at: None,
            })
        }

        /// Applies `update` to a job that has not ended;
        /// [`StoreError::NotFound`] when there is none.
        pub(crate) async fn update(
            pool: &$pool,
            id: SyncJobId,
            update: SyncJobUpdate,
            now: DateTime<Utc>,
        ) -> Result<()> {
            let mut qb = QueryBuilder::<$db>::new("UPDATE sync_jobs SET ");
            match update {
                SyncJobUpdate::Started => {
                    qb.push("status = ").push_bind(SyncJobStatus::Running.as_str());
                    qb.push(", started_at = ").push_bind(micros(now));
                }
                SyncJobUpdate::Progress(p) => {
                    if let Some(phase) = &p.phase {
                        check("phase", phase)?;
                    }
                    qb.push("status = ").push_bind(SyncJobStatus::Running.as_str());
                    qb.push(", started_at = COALESCE(started_at, ").push_bind(micros(now)).push(")");
                    qb.push(", phase = ").push_bind(p.phase);
                    qb.push(", done = ").push_bind(count(p.done));
                    qb.push(", total = ").push_bind(count(p.total));
                }
                SyncJobUpdate::Finished(outcome) => {
                    if !outcome.status.is_final() {
                        return Err(StoreError::invalid("status", "a finished job must have a final status"));
                    }
                    let counts = serde_json::to_string(&outcome.counts).map_err(json_error)?;
                    let report = outcome.report.as_ref().map(serde_json::to_string).transpose().map_err(json_error)?;
                    qb.push("status = ").push_bind(outcome.status.as_str());
                    qb.push(", counts = ").push_bind(counts);
                    qb.push(", error = ").push_bind(outcome.error.as_deref().map(cut));
                    qb.push(", report = ").push_bind(report);
                    qb.push(", started_at = COALESCE(started_at, ").push_bind(micros(now)).push(")");
                    qb.push(", finished_at = ").push_bind(micros(now));
                }
            }
            qb.push(" WHERE id = ").push_bind(id.0);
            qb.push(" AND status IN ('queued', 'running')");
            let done = qb.build().execute(pool).await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound(format!("sync job {id} (or it has ended)")));
            }
            Ok(())
        }

        /// One job with its report.
        pub(crate) async fn get(pool: &$pool, id: SyncJobId) -> Result<Option<SyncJob>> {
            let mut qb = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS}, report FROM sync_jobs WHERE id = "));
            qb.push_bind(id.0);
            match qb.build().fetch_optional(pool).await? {
                Some(row) => decode(&row, true).map(Some),
                None => Ok(None),
            }
        }

        /// Jobs newest first, without their reports.
        pub(crate) async fn recent(pool: &$pool, query: &SyncJobQuery) -> Result<Vec<SyncJob>> {
            let mut qb = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM sync_jobs"));
            if let Some(before) = query.before {
                qb.push(" WHERE id < ").push_bind(before.0);
            }
            let limit = match query.limit {
                0 => 100,
                n => n.min(1000),
            };
            qb.push(" ORDER BY id DESC LIMIT ").push(limit);
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(|r| decode(r, false)).collect()
        }
    };
}

/// SQLite.
pub(crate) mod sqlite {
    sync_job_sql!(sqlx::Sqlite, sqlx::SqlitePool);
}

/// PostgreSQL.
pub(crate) mod postgres {
    sync_job_sql!(sqlx::Postgres, sqlx::PgPool);
}

/// MariaDB / MySQL.
pub(crate) mod mysql {
    sync_job_sql!(sqlx::MySql, sqlx::MySqlPool);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> NewSyncJob {
        NewSyncJob {
            source: "ehr".into(),
            target: "crm".into(),
            patient_id: "p1".into(),
            resource_types: vec!["Observation".into()],
            requested_by: "ops".into(),
        }
    }

    #[test]
    fn validation_refuses_empty_and_oversized_fields() {
        assert!(validate(&job()).is_ok());
        assert!(validate(&NewSyncJob { source: " ".into(), ..job() }).is_err());
        assert!(validate(&NewSyncJob { patient_id: "x".repeat(256), ..job() }).is_err());
        assert!(validate(&NewSyncJob { resource_types: vec![String::new()], ..job() }).is_err());
    }

    #[test]
    fn error_summaries_are_cut_at_a_character_boundary() {
        let long = "é".repeat(ERROR_MAX);
        let cut = cut(&long);
        assert!(cut.len() <= ERROR_MAX && cut.chars().all(|c| c == 'é'));
        assert_eq!(super::cut("short"), "short");
    }
}
