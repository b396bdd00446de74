//! The SQL of API tokens, the same on the three backends apart from the
//! database type and placeholder style, stamped out by [`tokens_side!`].
//!
//! Every statement stands alone (no read-then-write transaction): token
//! writes are rare (the CLI, and a `last_used_at` update at most once per
//! interval per token), and on SQLite they run on the read pool rather than
//! through the group-commit writer, so a single statement is what lets
//! SQLite's busy handler wait for the writer instead of failing a deferred
//! transaction's upgrade. Name uniqueness among active tokens is therefore
//! checked inside the INSERT (`WHERE NOT EXISTS`).

use sqlx::FromRow;

use super::common::limits;
use crate::clock::from_micros;
use crate::tokens::{ApiToken, NewApiToken};
use crate::{Result, StoreError};

/// Columns of [`TokenRow`], in its order.
pub(crate) const TOKEN_COLUMNS: &str =
    "id, name, secret_sha256, scopes, created_at, last_used_at, expires_at, revoked_at";

/// One `api_tokens` row.
#[derive(Debug, FromRow)]
pub(crate) struct TokenRow {
    id: String,
    name: String,
    secret_sha256: Vec<u8>,
    scopes: String,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl TokenRow {
    pub(crate) fn into_token(self) -> ApiToken {
        ApiToken {
            id: self.id,
            name: self.name,
            secret_sha256: self.secret_sha256,
            scopes: self.scopes.split_whitespace().map(str::to_owned).collect(),
            created_at: from_micros(self.created_at),
            last_used_at: self.last_used_at.map(from_micros),
            expires_at: self.expires_at.map(from_micros),
            revoked_at: self.revoked_at.map(from_micros),
        }
    }
}

/// Rejects a token the store cannot record faithfully.
pub(crate) fn validate_token(t: &NewApiToken) -> Result<()> {
    if t.id.is_empty() || t.id.len() > 64 || !t.id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(StoreError::invalid("id", "1 to 64 ASCII letters and digits"));
    }
    if t.name.trim().is_empty() {
        return Err(StoreError::invalid("name", "must not be empty"));
    }
    if t.name.chars().count() > limits::SHORT_TEXT {
        return Err(StoreError::invalid("name", format!("at most {} characters", limits::SHORT_TEXT)));
    }
    if t.secret_sha256.len() != 32 {
        return Err(StoreError::invalid("secret_sha256", "must be 32 bytes"));
    }
    if t.scopes.is_empty() {
        return Err(StoreError::invalid("scopes", "at least one scope"));
    }
    if t.scopes.iter().any(|s| s.is_empty() || s.len() > 64 || s.chars().any(char::is_whitespace)) {
        return Err(StoreError::invalid("scopes", "scope names are 1 to 64 characters without spaces"));
    }
    Ok(())
}

/// The error for a name already held by an active token.
pub(crate) fn name_taken() -> StoreError {
    StoreError::invalid("name", "an active token already has this name (revoke it first)")
}

/// Defines `token_insert`, `token_by_id`, `token_list`, `token_revoke` and
/// `token_touch` for database `$db` on pool type `$pool`. `$dual` is what
/// a `SELECT` without a table needs before `WHERE` (" FROM DUAL" on
/// MariaDB).
macro_rules! tokens_side {
    ($db:ty, $pool:ty, $placeholders:path, $dual:expr) => {
        async fn token_insert(
            pool: &$pool,
            token: &crate::tokens::NewApiToken,
            now: chrono::DateTime<chrono::Utc>,
        ) -> Result<crate::tokens::ApiToken> {
            super::tokens::validate_token(token)?;
            let sql = $placeholders(&format!(
                "INSERT INTO api_tokens (id, name, secret_sha256, scopes, created_at, expires_at) \
                 SELECT ?, ?, ?, ?, ?, ?{} WHERE NOT EXISTS \
                 (SELECT 1 FROM api_tokens WHERE name = ? AND revoked_at IS NULL)",
                $dual
            ));
            let done = sqlx::query::<$db>(AssertSqlSafe(sql))
                .bind(&token.id)
                .bind(&token.name)
                .bind(&token.secret_sha256)
                .bind(token.scopes.join(" "))
                .bind(to_micros(now))
                .bind(token.expires_at.map(to_micros))
                .bind(&token.name)
                .execute(pool)
                .await?;
            if done.rows_affected() == 0 {
                return Err(super::tokens::name_taken());
            }
            token_by_id(pool, &token.id).await?.ok_or_else(|| StoreError::NotFound("api token just created".into()))
        }

        async fn token_by_id(pool: &$pool, id: &str) -> Result<Option<crate::tokens::ApiToken>> {
            let sql = $placeholders(&format!("SELECT {} FROM api_tokens WHERE id = ?", super::tokens::TOKEN_COLUMNS));
            let row: Option<super::tokens::TokenRow> =
                sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?;
            Ok(row.map(super::tokens::TokenRow::into_token))
        }

        async fn token_list(pool: &$pool) -> Result<Vec<crate::tokens::ApiToken>> {
            let sql = format!("SELECT {} FROM api_tokens ORDER BY created_at, id", super::tokens::TOKEN_COLUMNS);
            let rows: Vec<super::tokens::TokenRow> = sqlx::query_as(AssertSqlSafe(sql)).fetch_all(pool).await?;
            Ok(rows.into_iter().map(super::tokens::TokenRow::into_token).collect())
        }

        async fn token_revoke(pool: &$pool, name_or_id: &str, now: chrono::DateTime<chrono::Utc>) -> Result<u64> {
            let sql =
                $placeholders("UPDATE api_tokens SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at IS NULL");
            let done = sqlx::query::<$db>(AssertSqlSafe(sql))
                .bind(to_micros(now))
                .bind(name_or_id)
                .bind(name_or_id)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        }

        async fn token_touch(pool: &$pool, id: &str, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
            let sql = $placeholders(
                "UPDATE api_tokens SET last_used_at = ? WHERE id = ? AND (last_used_at IS NULL OR last_used_at < ?)",
            );
            sqlx::query::<$db>(AssertSqlSafe(sql))
                .bind(to_micros(at))
                .bind(id)
                .bind(to_micros(at))
                .execute(pool)
                .await?;
            Ok(())
        }
    };
}

pub(crate) use tokens_side;
