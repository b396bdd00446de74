//! Document submission: the FHIR operation `POST
//! CommunicationRequest/$send-to-ehr`, its tracking, and what the EHR
//! receives (issue 8).
//!
//! The pure core, each part tested on its own:
//!
//! ```text
//! Parameters ──validate_request──> SendToEhrRequest ──resolve (PatientSource: I/O)──> Resolved
//!      │ (400/422 OperationOutcome)                                                        │
//!      ▼                                                                          build::outputs
//!   Rejection                                    Binary + DocumentReference + CommunicationRequest
//!                                                                                          │
//!                                                        build::ehr_message (ORU^R01 / MDM^T02 / JSON)
//! ```
//!
//! - [`config`]: [`SendToEhrConfig`], validated without I/O.
//! - [`request`]: the Parameters to a typed request, content sniffing.
//! - [`source`]: [`PatientSource`] (a FHIR server) and reference resolution.
//! - [`build`]: the FHIR resources and the message for the EHR.
//! - [`tracking`]: statuses, the `$tracking` Bundle, the success Parameters.
//! - [`api`]: the axum router over a [`api::TrackingStore`] and a
//!   [`api::CallerAuth`] (the engine's API tokens).
//! - [`persist`]: the store-backed [`api::TrackingStore`]: a submission is a
//!   stored message of the channel, its status read from its deliveries.
//!
//! The runtime wiring (the `send_to_ehr` channel source, the flow stage that
//! converts a stored submission in each destination's worker, API tokens) is
//! in `crate::sources::send_to_ehr`.

pub mod api;
pub mod build;
pub mod config;
pub mod outcome;
pub mod persist;
pub mod request;
pub mod source;
pub mod tracking;

pub use config::{EncounterRule, OutputFormat, SendToEhrConfig};
pub use outcome::{Problem, Rejection};
pub use request::{SendToEhrRequest, Sender, validate_request};
pub use source::{PatientSource, Resolved, SourceError, resolve};
