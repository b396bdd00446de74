//! Integration tests of plexus-convert (one binary: golden files, FHIR
//! validation by an external validator, FHIR -> HL7 v2 with a peer MLLP
//! listener, round trips).

mod fhir_peer;
mod golden;
mod json_output;
mod options;
mod robustness;
mod round_trip;
mod support;
mod to_v2;
mod validate;
mod value_types;
