//! The Plexus runtime: configuration, channels, sources, destinations, flows
//! and the API, on top of the pure crates (`hl7v2`, `fhir`, `convert`) and
//! the durable store (`store`).
//!
//! How a message travels:
//!
//! ```text
//! source (sources/) ──> ingest (parse, validate, ACK, store.accept) ──> ACK to the sender
//!                                         │
//!                     store: one queued delivery per destination
//!                                         │
//! worker (worker.rs): claim ──> filter ──> transform ──> destination.send ──> complete
//! ```
//!
//! [`config::Config`] compiles the file; [`runtime::Engine`] starts the
//! store, the ingest paths, the workers, the sources and the HTTP listener
//! from it, and stops them in order.

pub mod alerts;
pub mod api;
pub mod config;
pub mod destinations;
pub mod filter;
pub mod flows;
pub mod ingest;
pub mod metrics;
pub mod retention;
pub mod runtime;
pub mod sources;
pub mod transform;
pub mod worker;
