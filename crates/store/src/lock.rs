//! Cluster-wide named locks, so that a periodic job (scheduled retention)
//! runs on one node of a cluster sharing one database.

use std::fmt;

/// A held lock; dropping it releases the lock.
///
/// On PostgreSQL it is a session advisory lock held on a connection of its
/// own (taken out of the pool), on MariaDB/MySQL a `GET_LOCK` on one; both
/// are released by the database if the process dies. On SQLite (one process
/// per database) it holds nothing.
pub struct ClusterLock {
    name: String,
    _held: Option<Box<dyn Send + Sync>>,
}

impl ClusterLock {
    /// A lock that only this process knows about (single-process stores).
    pub fn local(name: &str) -> ClusterLock {
        ClusterLock { name: name.to_string(), _held: None }
    }

    /// A lock whose release is `held`'s drop.
    pub(crate) fn held(name: &str, held: Box<dyn Send + Sync>) -> ClusterLock {
        ClusterLock { name: name.to_string(), _held: Some(held) }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for ClusterLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterLock").field("name", &self.name).field("shared", &self._held.is_some()).finish()
    }
}

/// A stable 64-bit key for a lock name (FNV-1a), for PostgreSQL's integer
/// advisory locks: every node computes the same key for the same name.
pub(crate) fn lock_key(name: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash as i64
}

#[cfg(test)]
mod tests {
    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(super::lock_key("plexus.retention"), super::lock_key("plexus.retention"));
        assert_ne!(super::lock_key("plexus.retention"), super::lock_key("plexus.poll"));
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(super::lock_key("") as u64, 0xcbf2_9ce4_8422_2325);
    }
}
