//! Integration tests of plexus-fhir, one binary (see TESTING.md):
//!
//! - `client`: the REST client against small axum servers on 127.0.0.1:0
//!   (retries, OperationOutcome errors, paging, gzip, conditional headers).
//! - `auth`: token endpoints served by the tests (client credentials, SMART
//!   Backend Services), token reuse and refresh.
//! - `sync`: the patient sync against small axum servers (source and
//!   target behaviour the peers do not have).
//! - `peer`: the client and the patient sync against real FHIR servers (the
//!   Medplum-based peer, `shared/peers/fhir-server.js`); skipped with a
//!   message when `PLEXUS_PEERS` is not set.

mod auth;
mod client;
mod peer;
mod support;
mod sync;
mod telemetry;
