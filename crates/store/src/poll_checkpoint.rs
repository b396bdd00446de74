//! Checkpoints of scheduled FHIR polls (the engine's `fhir_poll` source):
//! per channel and resource type, the `meta.lastUpdated` instant up to
//! which every resource has been read and stored as a message.
//!
//! A checkpoint moves only after the messages of the page that justified it
//! are committed, so a crash between the two re-reads that page (the
//! duplicate detection absorbs the re-read) rather than skipping it.
//! `seen_at_checkpoint` lists the resource versions read *at* that instant:
//! the next poll asks for `_lastUpdated=ge<checkpoint>` (a resource written
//! in the same millisecond after the last read must not be missed) and skips
//! these without asking the store, however old the duplicate window says
//! they are.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Most entries of [`PollCheckpoint::seen_at_checkpoint`] kept: past this
/// many resources at one instant, the store's duplicate window alone
/// absorbs the re-reads.
pub const MAX_SEEN_AT_CHECKPOINT: usize = 1000;

/// Where a channel's poll of one resource type stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollCheckpoint {
    /// The channel whose source polls.
    pub channel: String,
    /// The resource type polled (`Observation`).
    pub resource_type: String,
    /// Every resource with an earlier `meta.lastUpdated` has been stored.
    pub last_updated: DateTime<Utc>,
    /// The resource versions (`Type/id/_history/version`) already stored
    /// whose `meta.lastUpdated` is `last_updated` (at most
    /// [`MAX_SEEN_AT_CHECKPOINT`]).
    pub seen_at_checkpoint: Vec<String>,
    /// When the checkpoint was last written (the store's clock).
    pub updated_at: DateTime<Utc>,
}
