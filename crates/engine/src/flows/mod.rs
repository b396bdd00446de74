//! Flows: orchestrations that are more than one message through one channel
//! (document submission, partner notifications). Each flow is a folder or a
//! file with its pure parts (validation, resource building, status models)
//! separated from the I/O, so the pure parts are tested without a runtime
//! and the runtime wires the I/O.

pub mod notification;
pub mod patient_sync;
pub mod send_to_ehr;
