//! The store's error type and its retry class.

use sqlx::error::DatabaseError as _;

use crate::model::DeliveryId;

/// How a caller should react to an error: retry it, give up on this item, or
/// fix the configuration. It drives the engine's ACK code (a transient store
/// failure answers AE so the sender retries), retries and HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Worth retrying as it is: connection lost, database busy, lock timeout,
    /// deadlock victim, pool exhausted, store shutting down.
    Transient,
    /// Retrying the same request will fail the same way: invalid input, a
    /// lost lease, an unknown id, a constraint violation.
    Permanent,
    /// The store is set up wrongly: bad URL, failed migration, unreachable
    /// database at start-up with a bad host name.
    Config,
}

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The `store.url` is not `sqlite://`, `postgres://` or `mysql://`, or
    /// does not parse.
    #[error("invalid store url: {0}")]
    InvalidUrl(String),

    /// The database rejected or could not run the embedded migrations.
    #[error("store migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),

    /// A request the store refuses before touching the database (an empty
    /// channel name, a zero lease, an oversized field ...).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which request field is wrong.
        field: &'static str,
        /// Why, without echoing patient data.
        reason: String,
    },

    /// `complete` or `extend_lease` was called with a lease token that is no
    /// longer current: the lease expired, or another worker claimed the
    /// delivery since. The caller must drop the delivery; its outcome is not
    /// recorded.
    #[error("lease on delivery {0} is no longer held")]
    LeaseLost(DeliveryId),

    /// A replay or read named a message or delivery that does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// A search cursor that this store did not produce (or that was mangled).
    #[error("invalid search cursor")]
    InvalidCursor,

    /// The database is busy: a lock another process holds was not released
    /// in time.
    #[error("store busy: {0}")]
    Busy(&'static str),

    /// The store was closed (shutdown) while the request was pending. The
    /// request was not committed.
    #[error("store is closed")]
    Closed,

    /// The group commit this request was part of failed as a whole (BEGIN
    /// or COMMIT); nothing of the request was stored. Carries the batch's
    /// error, shared by every request of the batch.
    #[error("group commit failed: {0}")]
    Batch(#[source] std::sync::Arc<StoreError>),

    /// An error from the database driver; [`StoreError::class`] inspects it to
    /// tell a busy database from a broken query.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

/// The SQLite writer's errors (rusqlite) join sqlx's as database errors, so
/// that [`StoreError::class`] and [`StoreError::summary`] treat them alike.
impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(failure, message) => {
                StoreError::Database(sqlx::Error::Database(Box::new(SqliteWriteError {
                    extended_code: failure.extended_code,
                    message: message.unwrap_or_else(|| failure.to_string()),
                })))
            }
            // Everything else is a row that does not decode or a misused
            // statement: this crate's bug or a corrupt value, not a busy
            // database.
            e => StoreError::Database(sqlx::Error::Decode(Box::new(e))),
        }
    }
}

/// An error SQLite returned to the writer's connection, with its extended
/// result code (what sqlx's own SQLite errors carry too).
#[derive(Debug)]
pub(crate) struct SqliteWriteError {
    extended_code: std::ffi::c_int,
    message: String,
}

impl std::fmt::Display for SqliteWriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteWriteError {}

impl sqlx::error::DatabaseError for SqliteWriteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.extended_code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use sqlx::error::ErrorKind;
        // SQLITE_CONSTRAINT_{UNIQUE, PRIMARYKEY, FOREIGNKEY, NOTNULL, CHECK}
        match self.extended_code {
            2067 | 1555 => ErrorKind::UniqueViolation,
            787 => ErrorKind::ForeignKeyViolation,
            1299 => ErrorKind::NotNullViolation,
            275 => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

impl StoreError {
    /// Whether to retry, give up on the item, or fix the configuration.
    pub fn class(&self) -> ErrorClass {
        match self {
            StoreError::InvalidUrl(_) | StoreError::Migrate(_) => ErrorClass::Config,
            StoreError::Invalid { .. }
            | StoreError::LeaseLost(_)
            | StoreError::NotFound(_)
            | StoreError::InvalidCursor => ErrorClass::Permanent,
            StoreError::Closed | StoreError::Busy(_) => ErrorClass::Transient,
            StoreError::Batch(e) => e.class(),
            StoreError::Database(e) => classify_sqlx(e),
        }
    }

    /// A description safe to log at any level: a database's own error text
    /// can quote the offending value (MariaDB's "Duplicate entry '...'"),
    /// which may be a patient identifier, so database errors are reduced to
    /// their code. Everything else this crate writes is free of message
    /// data already.
    pub fn summary(&self) -> String {
        match self {
            StoreError::Database(e) => sqlx_summary(e),
            StoreError::Batch(e) => format!("group commit failed: {}", e.summary()),
            StoreError::Migrate(_) => "store migration failed".to_owned(),
            other => other.to_string(),
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid { field, reason: reason.into() }
    }
}

fn sqlx_summary(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            format!("database error {}", db.code().as_deref().unwrap_or("without a code"))
        }
        sqlx::Error::Io(io) => format!("database i/o error: {}", io.kind()),
        sqlx::Error::PoolTimedOut => "database pool timed out".to_owned(),
        sqlx::Error::PoolClosed => "database pool closed".to_owned(),
        sqlx::Error::Tls(_) => "database TLS error".to_owned(),
        sqlx::Error::Protocol(_) => "database protocol error".to_owned(),
        sqlx::Error::RowNotFound => "row not found".to_owned(),
        sqlx::Error::ColumnDecode { index, .. } => format!("cannot decode column {index}"),
        sqlx::Error::Decode(_) => "cannot decode a stored value".to_owned(),
        _ => "database error".to_owned(),
    }
}

/// Error codes that mean "the database is busy or the connection broke; the
/// same request may well succeed in a moment".
fn classify_sqlx(e: &sqlx::Error) -> ErrorClass {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorClass::Transient,
        sqlx::Error::Configuration(_) => ErrorClass::Config,
        sqlx::Error::Database(db) => {
            let transient = if let Some(e) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                e.code().and_then(|c| c.parse::<i64>().ok()).is_some_and(sqlite_transient)
            } else if let Some(e) = db.try_downcast_ref::<SqliteWriteError>() {
                sqlite_transient(i64::from(e.extended_code))
            } else if let Some(e) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                mysql_transient(e.number())
            } else {
                db.code().as_deref().is_some_and(postgres_transient)
            };
            if transient { ErrorClass::Transient } else { ErrorClass::Permanent }
        }
        _ => ErrorClass::Permanent,
    }
}

/// SQLite extended result code; the primary code is its low byte.
/// 5 BUSY, 6 LOCKED, 10 IOERR, 13 FULL (disk full: may clear), 15 PROTOCOL.
fn sqlite_transient(extended: i64) -> bool {
    matches!(extended & 0xff, 5 | 6 | 10 | 13 | 15)
}

/// MySQL / MariaDB error numbers: 1205 lock wait timeout, 1213 deadlock,
/// 1040 too many connections, 2006/2013 server gone, 1927 connection killed,
/// 4031 disconnected for inactivity, 1290/1836 read-only (failover).
fn mysql_transient(number: u16) -> bool {
    matches!(number, 1205 | 1213 | 1040 | 2006 | 2013 | 1927 | 4031 | 1290 | 1836)
}

/// PostgreSQL SQLSTATEs: serialization failure, deadlock, lock not
/// available, statement timeout, admin shutdown / crash, cannot connect now,
/// connection exceptions (08), insufficient resources (53), read-only
/// transaction during failover (25006).
fn postgres_transient(code: &str) -> bool {
    matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25006")
        || code.starts_with("08")
        || code.starts_with("53")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_deadlock_codes_are_transient() {
        for code in [5, 517, 773, 6, 10, 3338] {
            assert!(sqlite_transient(code), "{code}");
        }
        for code in ["40001", "40P01", "55P03", "08006", "53300"] {
            assert!(postgres_transient(code), "{code}");
        }
        for number in [1205, 1213, 2013] {
            assert!(mysql_transient(number), "{number}");
        }
    }

    #[test]
    fn constraint_and_syntax_codes_are_permanent() {
        // 2067 SQLITE_CONSTRAINT_UNIQUE, 1 SQLITE_ERROR, 23505 unique
        // violation, 42601 syntax error, 1062 MySQL duplicate entry.
        for code in [2067, 1, 19] {
            assert!(!sqlite_transient(code), "{code}");
        }
        for code in ["23505", "42601", ""] {
            assert!(!postgres_transient(code), "{code}");
        }
        assert!(!mysql_transient(1062));
    }

    #[test]
    fn summary_never_quotes_the_database_message() {
        let e = StoreError::Database(sqlx::Error::Protocol("row MRN-123456 broke".into()));
        assert!(!e.summary().contains("MRN"));
        let e = StoreError::Batch(std::sync::Arc::new(e));
        assert!(!e.summary().contains("MRN"));
        assert_eq!(StoreError::LeaseLost(DeliveryId(7)).summary(), "lease on delivery 7 is no longer held");
    }

    #[test]
    fn lost_lease_is_permanent_and_closed_is_transient() {
        assert_eq!(StoreError::LeaseLost(DeliveryId(1)).class(), ErrorClass::Permanent);
        assert_eq!(StoreError::Closed.class(), ErrorClass::Transient);
        assert_eq!(StoreError::InvalidUrl("x".into()).class(), ErrorClass::Config);
    }
}
