//! Backend selection by URL scheme.

/// The value of `$work`, or, when it failed, its error after rolling the
/// transaction `$tx` back at once. A dropped sqlx transaction is rolled
/// back only when its connection is next used; until then its row locks
/// stand, and a `SKIP LOCKED` query on another connection passes those rows
/// over (a refused replay kept retention from removing the message).
macro_rules! or_rollback {
    ($tx:ident, $work:expr) => {
        match $work {
            Ok(value) => value,
            Err(e) => {
                let _ = $tx.rollback().await;
                return Err(e.into());
            }
        }
    };
}

mod common;
mod locks;
mod mysql;
#[cfg(test)]
mod plans;
mod poll_checkpoints;
mod postgres;
mod shared;
mod sqlite;
mod sqlite_writer;
mod sync_jobs;
mod tokens;
mod wal_vfs;
mod writer;

use std::sync::Arc;

use crate::{Result, Store, StoreError, StoreOptions};

/// Opens the backend that `url`'s scheme names.
pub(crate) async fn open(url: &str, options: StoreOptions) -> Result<Arc<dyn Store>> {
    let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
    validate_options(&options)?;
    match scheme.as_str() {
        "sqlite" => sqlite::open(url, options).await,
        "postgres" | "postgresql" => postgres::open(url, options).await,
        "mysql" | "mariadb" => mysql::open(url, options).await,
        _ => Err(StoreError::InvalidUrl(format!("expected sqlite://, postgres:// or mysql://, got {:?}", scheme))),
    }
}

fn validate_options(options: &StoreOptions) -> Result<()> {
    if options.pool_size == 0 {
        return Err(StoreError::invalid("pool_size", "must be at least 1"));
    }
    if options.max_batch == 0 {
        return Err(StoreError::invalid("max_batch", "must be at least 1"));
    }
    Ok(())
}
