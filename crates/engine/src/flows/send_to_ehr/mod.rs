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
//! - [`api`]: the axum router over a [`api::TrackingStore`].
//!
//! Not here (runtime wiring): processing through a channel's destination,
//! persistence in the store, API token checks (the router has a
//! [`api::CallerAuth`] hook for them).

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
