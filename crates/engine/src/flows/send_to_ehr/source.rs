//! The patient source: where `subject` and `context` are resolved (a FHIR
//! server, usually the EHR's). The only I/O of validation, behind a small
//! trait so the flow is tested with an in-memory source and run with a
//! [`fhir::FhirClient`].

use async_trait::async_trait;
use fhir::{ErrorClass, FhirClient, FhirError};
use serde_json::Value;

use super::outcome::Rejection;
use super::request::SendToEhrRequest;

/// Why the patient source could not answer (not: "the resource does not
/// exist", which is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The FHIR server failed or refused the read.
    #[error("patient source: {0}")]
    Fhir(#[from] FhirError),
    /// The server answered with a resource of another type.
    #[error("patient source returned a {found} for {expected}/{{id}}")]
    WrongType {
        /// The type asked for.
        expected: &'static str,
        /// The type received.
        found: String,
    },
}

impl SourceError {
    /// Transient errors (source down, timeout) are answered 503 so the app
    /// retries; the others 502.
    pub fn class(&self) -> ErrorClass {
        match self {
            SourceError::Fhir(e) => e.class(),
            SourceError::WrongType { .. } => ErrorClass::Permanent,
        }
    }
}

/// Reads Patients and Encounters by id.
#[async_trait]
pub trait PatientSource: Send + Sync {
    /// The Patient with this id, `None` when the source has none.
    async fn patient(&self, id: &str) -> Result<Option<Value>, SourceError>;
    /// The Encounter with this id, `None` when the source has none.
    async fn encounter(&self, id: &str) -> Result<Option<Value>, SourceError>;
}

/// A FHIR server as patient source: `GET Patient/{id}`, `GET
/// Encounter/{id}`; 404 and 410 (deleted) mean "no such resource".
#[async_trait]
impl PatientSource for FhirClient {
    async fn patient(&self, id: &str) -> Result<Option<Value>, SourceError> {
        read_typed(self, "Patient", id).await
    }

    async fn encounter(&self, id: &str) -> Result<Option<Value>, SourceError> {
        read_typed(self, "Encounter", id).await
    }
}

async fn read_typed(client: &FhirClient, kind: &'static str, id: &str) -> Result<Option<Value>, SourceError> {
    match client.read(kind, id).await {
        Ok(resource) => {
            let found = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
            if found == kind {
                Ok(Some(resource))
            } else {
                Err(SourceError::WrongType { expected: kind, found: found.to_string() })
            }
        }
        Err(e) if matches!(e.status(), Some(404 | 410)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The request's Patient and Encounter, read from the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The Patient (`subject`).
    pub patient: Value,
    /// The Encounter (`context`), when given.
    pub encounter: Option<Value>,
}

/// Resolves `subject` and `context`. A reference the source does not know
/// is refused with 422 and the diagnostics `Resource contains reference to
/// Patient/123 but this resource is not valid`; an Encounter about another
/// patient is refused too (filing a document in the wrong chart is the
/// failure this check exists for). A source that cannot answer gives 503
/// (transient: retry) or 502.
pub async fn resolve(request: &SendToEhrRequest, source: &dyn PatientSource) -> Result<Resolved, Rejection> {
    let unavailable = |e: SourceError| {
        let status = if e.class() == ErrorClass::Transient { 503 } else { 502 };
        // The error's text holds the request path (`Patient/{id}`): a patient
        // identifier, so only its class and status are logged.
        let http_status = match &e {
            SourceError::Fhir(f) => f.status(),
            SourceError::WrongType { .. } => None,
        };
        tracing::warn!(class = ?e.class(), status = ?http_status, "send-to-ehr: patient source failed");
        Rejection::one(status, None, "transient", "the patient source could not be reached; retry later")
    };
    let patient = source.patient(&request.patient_id).await.map_err(unavailable)?;
    let encounter = match &request.encounter_id {
        Some(id) => Some((id, source.encounter(id).await.map_err(unavailable)?)),
        None => None,
    };
    let mut problems = Vec::new();
    if patient.is_none() {
        problems.push(not_valid("subject", "Patient", &request.patient_id));
    }
    if let Some((id, None)) = &encounter {
        problems.push(not_valid("context", "Encounter", id));
    }
    if let (Some(_), Some((id, Some(enc)))) = (&patient, &encounter) {
        let expected = format!("Patient/{}", request.patient_id);
        // An Encounter that names its patient otherwise (a logical
        // identifier only) or not at all cannot be checked: refused too,
        // since accepting it unchecked could file the document under
        // another patient's encounter.
        let diagnostics = match enc.pointer("/subject/reference").and_then(Value::as_str) {
            Some(subject) if subject == expected || subject.ends_with(&format!("/{expected}")) => None,
            Some(_) => Some(format!("context: Encounter/{id} is not an encounter of {expected}")),
            None => Some(format!(
                "context: Encounter/{id} has no subject reference, so it cannot be checked to be an encounter \
                 of {expected}"
            )),
        };
        if let Some(diagnostics) = diagnostics {
            problems.push(super::outcome::Problem {
                parameter: Some("context".into()),
                code: "business-rule",
                diagnostics,
            });
        }
    }
    match patient {
        Some(patient) if problems.is_empty() => Ok(Resolved { patient, encounter: encounter.and_then(|(_, e)| e) }),
        _ => Err(Rejection { status: 422, problems }),
    }
}

fn not_valid(parameter: &str, kind: &str, id: &str) -> super::outcome::Problem {
    super::outcome::Problem {
        parameter: Some(parameter.into()),
        code: "not-found",
        diagnostics: format!("Resource contains reference to {kind}/{id} but this resource is not valid"),
    }
}
