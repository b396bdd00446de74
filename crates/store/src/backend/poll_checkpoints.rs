//! The SQL of FHIR poll checkpoints (`poll_checkpoints`; sqlite migration
//! 0005, postgres/mysql 0004), stamped out once per backend like
//! [`super::sync_jobs`]; each backend's `Store` impl calls these in one line.
//!
//! A checkpoint is written once per page a poll commits, by the one node
//! holding that channel's poll lock, so each write is a single autocommit
//! statement on a pooled connection (on SQLite it waits in the busy handler
//! for the group-commit writer, as sync jobs do). The upsert differs per
//! database (`ON CONFLICT` against MariaDB's `ON DUPLICATE KEY`), hence the
//! macro's `$upsert`.

use chrono::{DateTime, Utc};

use crate::clock::{from_micros, to_micros};
use crate::poll_checkpoint::{MAX_SEEN_AT_CHECKPOINT, PollCheckpoint};
use crate::{Result, StoreError};

/// Longest channel name and resource type accepted (MariaDB keys them as
/// `VARCHAR(64)`; the engine's channel names are at most 64 characters).
const NAME_MAX: usize = 64;

/// Refuses a checkpoint the store cannot record faithfully.
pub(crate) fn validate(c: &PollCheckpoint) -> Result<()> {
    for (field, value) in [("channel", &c.channel), ("resource_type", &c.resource_type)] {
        if value.trim().is_empty() {
            return Err(StoreError::invalid(field, "must not be empty"));
        }
        if value.chars().count() > NAME_MAX {
            return Err(StoreError::invalid(field, format!("longer than {NAME_MAX} characters")));
        }
    }
    if c.seen_at_checkpoint.len() > MAX_SEEN_AT_CHECKPOINT {
        return Err(StoreError::invalid("seen_at_checkpoint", format!("more than {MAX_SEEN_AT_CHECKPOINT} entries")));
    }
    Ok(())
}

fn encode_seen(seen: &[String]) -> Result<String> {
    serde_json::to_string(seen).map_err(|e| StoreError::invalid("seen_at_checkpoint", format!("cannot encode: {e}")))
}

/// One row, decoded.
fn decode(
    channel: String,
    resource_type: String,
    last_updated: i64,
    seen: &str,
    updated_at: i64,
) -> Result<PollCheckpoint> {
    let seen_at_checkpoint = serde_json::from_str(seen)
        .map_err(|_| StoreError::invalid("poll_checkpoints", "stored seen_at_checkpoint does not decode"))?;
    Ok(PollCheckpoint {
        channel,
        resource_type,
        last_updated: from_micros(last_updated),
        seen_at_checkpoint,
        updated_at: from_micros(updated_at),
    })
}

fn micros(t: DateTime<Utc>) -> i64 {
    to_micros(t)
}

/// Defines `save`, `get`, `list` and `delete` for database `$db` on pool
/// `$pool`; `$upsert` is what follows the INSERT's values to replace an
/// existing row.
macro_rules! checkpoint_sql {
    ($db:ty, $pool:ty, $upsert:expr) => {
        use sqlx::{QueryBuilder, Row};

        use super::*;

        const COLUMNS: &str = "channel, resource_type, last_updated, seen_at_checkpoint, updated_at";

        fn row(r: &<$db as sqlx::Database>::Row) -> Result<PollCheckpoint> {
            let seen: String = r.try_get("seen_at_checkpoint")?;
            decode(
                r.try_get("channel")?,
                r.try_get("resource_type")?,
                r.try_get("last_updated")?,
                &seen,
                r.try_get("updated_at")?,
            )
        }

        /// Writes `checkpoint` (replacing the row of its channel and type),
        /// stamped `now`.
        pub(crate) async fn save(pool: &$pool, checkpoint: &PollCheckpoint, now: DateTime<Utc>) -> Result<()> {
            validate(checkpoint)?;
            let mut qb = QueryBuilder::<$db>::new(format!("INSERT INTO poll_checkpoints ({COLUMNS}) VALUES ("));
            let mut values = qb.separated(", ");
            values.push_bind(checkpoint.channel.clone());
            values.push_bind(checkpoint.resource_type.clone());
            values.push_bind(micros(checkpoint.last_updated));
            values.push_bind(encode_seen(&checkpoint.seen_at_checkpoint)?);
            values.push_bind(micros(now));
            qb.push(") ").push($upsert);
            qb.build().execute(pool).await?;
            Ok(())
        }

        /// The checkpoint of one channel and resource type.
        pub(crate) async fn get(pool: &$pool, channel: &str, resource_type: &str) -> Result<Option<PollCheckpoint>> {
            let mut qb = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM poll_checkpoints WHERE channel = "));
            qb.push_bind(channel.to_owned()).push(" AND resource_type = ").push_bind(resource_type.to_owned());
            match qb.build().fetch_optional(pool).await? {
                Some(r) => row(&r).map(Some),
                None => Ok(None),
            }
        }

        /// Every checkpoint (of one channel when given), by channel and type.
        pub(crate) async fn list(pool: &$pool, channel: Option<&str>) -> Result<Vec<PollCheckpoint>> {
            let mut qb = QueryBuilder::<$db>::new(format!("SELECT {COLUMNS} FROM poll_checkpoints"));
            if let Some(channel) = channel {
                qb.push(" WHERE channel = ").push_bind(channel.to_owned());
            }
            qb.push(" ORDER BY channel, resource_type");
            let rows = qb.build().fetch_all(pool).await?;
            rows.iter().map(row).collect()
        }

        /// Removes a channel's checkpoints (of one type when given); returns
        /// how many were removed.
        pub(crate) async fn delete(pool: &$pool, channel: &str, resource_type: Option<&str>) -> Result<u64> {
            let mut qb = QueryBuilder::<$db>::new("DELETE FROM poll_checkpoints WHERE channel = ");
            qb.push_bind(channel.to_owned());
            if let Some(t) = resource_type {
                qb.push(" AND resource_type = ").push_bind(t.to_owned());
            }
            Ok(qb.build().execute(pool).await?.rows_affected())
        }
    };
}

const ON_CONFLICT: &str = "ON CONFLICT (channel, resource_type) DO UPDATE SET last_updated = excluded.last_updated, \
                           seen_at_checkpoint = excluded.seen_at_checkpoint, updated_at = excluded.updated_at";

/// SQLite.
pub(crate) mod sqlite {
    checkpoint_sql!(sqlx::Sqlite, sqlx::SqlitePool, super::ON_CONFLICT);
}

/// PostgreSQL.
pub(crate) mod postgres {
    checkpoint_sql!(sqlx::Postgres, sqlx::PgPool, super::ON_CONFLICT);
}

/// MariaDB / MySQL.
pub(crate) mod mysql {
    checkpoint_sql!(
        sqlx::MySql,
        sqlx::MySqlPool,
        "ON DUPLICATE KEY UPDATE last_updated = VALUES(last_updated), \
         seen_at_checkpoint = VALUES(seen_at_checkpoint), updated_at = VALUES(updated_at)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> PollCheckpoint {
        PollCheckpoint {
            channel: "ehr-poll".into(),
            resource_type: "Patient".into(),
            last_updated: from_micros(1),
            seen_at_checkpoint: vec!["Patient/1/_history/1".into()],
            updated_at: from_micros(2),
        }
    }

    #[test]
    fn validation_refuses_empty_long_and_oversized_fields() {
        assert!(validate(&checkpoint()).is_ok());
        assert!(validate(&PollCheckpoint { channel: " ".into(), ..checkpoint() }).is_err());
        assert!(validate(&PollCheckpoint { resource_type: "x".repeat(65), ..checkpoint() }).is_err());
        let seen = vec!["x".to_string(); MAX_SEEN_AT_CHECKPOINT + 1];
        assert!(validate(&PollCheckpoint { seen_at_checkpoint: seen, ..checkpoint() }).is_err());
    }
}
