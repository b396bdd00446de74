//! Fetching the announced bundle (in progress).

/// Why a bundle could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {}

/// Fetches bundles.
#[derive(Debug)]
pub struct BundleFetcher;
