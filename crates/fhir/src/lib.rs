//! FHIR R4 for Plexus: resources as JSON values, the reference graph, a REST
//! client, and patient synchronisation between two servers.
//!
//! Resources stay `serde_json::Value` from end to end (with the
//! `preserve_order` feature, so element order survives): unknown elements
//! and vendor extensions pass through untouched, which a typed model cannot
//! promise.
//!
//! - [`resource`]: identity (`Type/id`), identifiers, content comparison.
//! - [`reference`](mod@reference): every Reference anywhere in a resource (extensions and
//!   contained resources included), classified and rewritten.
//! - [`bundle`]: batch and transaction Bundles, search pages, responses.
//! - [`ServerConfig`] / [`FhirClient`]: one configured server and its REST
//!   client (paging, conditional create/update, transactions, retries,
//!   OAuth2 client credentials and SMART Backend Services).
//! - [`sync`]: the patient synchronisation flow (search candidates, sync one
//!   patient with chosen resource types, idempotently, with a report).
//!
//! ```no_run
//! # async fn example() -> Result<(), fhir::FhirError> {
//! use fhir::sync::{self, NoProgress, PatientQuery, SyncOptions};
//! use fhir::{FhirClient, ServerConfig};
//!
//! let ehr = FhirClient::new("ehr", &ServerConfig::new("https://ehr.example.org/fhir/R4".parse().unwrap()))?;
//! let crm = FhirClient::new("crm", &ServerConfig::new("https://crm.example.org/fhir".parse().unwrap()))?;
//! let query = PatientQuery {
//!     family: "Brekke496".into(),
//!     given: Some("Aaron697".into()),
//!     birth_date: Some("1945-12-10".into()),
//!     ..PatientQuery::default()
//! };
//! let found = sync::search_patients(&ehr, &query, 20).await?;
//! if let [patient] = found.candidates.as_slice() {
//!     let report = sync::sync_patient(&ehr, &crm, &patient.id, &SyncOptions::default(), &NoProgress).await;
//!     println!("{:?}: {:?}", report.status, report.totals());
//! }
//! # Ok(())
//! # }
//! ```

pub mod bundle;
pub mod reference;
pub mod resource;
pub mod sync;
pub mod telemetry;

mod auth;
mod client;
mod config;
mod error;

pub use client::{
    Capabilities, ClientStats, FhirClient, Search, SearchResults, Support, WriteOutcome, backoff_delay,
    parse_retry_after,
};
pub use config::{
    AuthConfig, ClientAuthMethod, ConfigProblem, JwtAlgorithm, MAX_ASSERTION_LIFETIME_SECS, RetryConfig, ServerConfig,
};
pub use error::{ErrorClass, FhirError, OperationOutcome, OutcomeIssue, RequestContext};
pub use resource::ResourceKey;
