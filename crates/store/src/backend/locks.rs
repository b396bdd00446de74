//! [`ClusterLock`]s on PostgreSQL (session advisory locks) and MariaDB /
//! MySQL (`GET_LOCK`): each held on a connection detached from the pool, so
//! the pool never hands a locked session to other work, and closing that
//! connection (or the process dying) releases the lock.

use sqlx::{Connection, MySqlPool, PgPool};

use crate::lock::{ClusterLock, lock_key};
use crate::{Result, StoreError};

/// Takes `name` if no session holds it; `None` when another does.
pub(super) async fn postgres(pool: &PgPool, name: &str) -> Result<Option<ClusterLock>> {
    let mut conn = pool.acquire().await.map_err(StoreError::from)?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(lock_key(name))
        .fetch_one(&mut conn)
        .await
        .map_err(StoreError::from)?;
    if !got {
        let _ = conn.close().await;
        return Ok(None);
    }
    Ok(Some(ClusterLock::held(name, Box::new(Held(Some(Session::Postgres(conn)))))))
}

/// Takes `name` if no session holds it; `None` when another does.
pub(super) async fn mysql(pool: &MySqlPool, name: &str) -> Result<Option<ClusterLock>> {
    let mut conn = pool.acquire().await.map_err(StoreError::from)?.detach();
    // MySQL lock names are at most 64 characters.
    let key = format!("plexus:{:016x}", lock_key(name));
    let got: Option<i64> =
        sqlx::query_scalar("SELECT GET_LOCK(?, 0)").bind(key).fetch_one(&mut conn).await.map_err(StoreError::from)?;
    if got != Some(1) {
        let _ = conn.close().await;
        return Ok(None);
    }
    Ok(Some(ClusterLock::held(name, Box::new(Held(Some(Session::Mysql(conn)))))))
}

enum Session {
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

/// Closes the lock's session on drop, which releases the lock.
struct Held(Option<Session>);

impl Drop for Held {
    fn drop(&mut self) {
        let Some(session) = self.0.take() else { return };
        // A graceful close needs the runtime; without one (process exit)
        // dropping the socket ends the session just the same.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = match session {
                    Session::Postgres(c) => c.close().await,
                    Session::Mysql(c) => c.close().await,
                };
            });
        }
    }
}
