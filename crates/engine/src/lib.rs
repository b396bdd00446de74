//! The Plexus runtime: configuration, channels, sources, destinations, flows
//! and the API, on top of the pure crates (`hl7v2`, `fhir`, `convert`) and
//! the durable store (`store`).

pub mod config;
pub mod destinations;
pub mod filter;
pub mod sources;
pub mod transform;
