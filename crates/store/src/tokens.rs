//! API tokens as the store keeps them: a name, scopes, the SHA-256 of the
//! secret (never the secret itself), and their life times. Issuing and
//! checking tokens (secret generation, the `plx_<id>_<secret>` format,
//! constant-time comparison, scopes) is the engine's job (`engine::api::auth`);
//! the store only records them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A token to record.
#[derive(Clone, PartialEq, Eq)]
pub struct NewApiToken {
    /// Public id (the `<id>` part of `plx_<id>_<secret>`): ASCII letters and
    /// digits, at most 64.
    pub id: String,
    /// Human name, unique among tokens that are not revoked; what audit
    /// events record as the actor.
    pub name: String,
    /// SHA-256 of the secret part.
    pub secret_sha256: Vec<u8>,
    /// Scope names (no spaces).
    pub scopes: Vec<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A recorded token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public id.
    pub id: String,
    /// Name.
    pub name: String,
    /// SHA-256 of the secret part (not serialised: listings never show it).
    #[serde(skip)]
    pub secret_sha256: Vec<u8>,
    /// Scope names.
    pub scopes: Vec<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it was last used, to within the engine's update interval.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// Neither revoked nor expired at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }
}

// The hash is not a usable credential, but nothing about a token's secret
// belongs in a log line, so Debug leaves it out.
impl fmt::Debug for NewApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .field("last_used_at", &self.last_used_at)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}
