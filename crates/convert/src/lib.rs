//! Plexus conversions: HL7 v2 <-> FHIR R4, and declarative JSON mapping rules.
//!
//! Pure code: no I/O, no clock, no randomness. The same input always gives
//! the same output, so re-sending a message updates the FHIR server instead
//! of duplicating (ids are hashes of identifying fields and Bundle entries are
//! conditional).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod rules;
