//! Refusals as FHIR OperationOutcome: every problem found in a request,
//! each naming its parameter, with the HTTP status the whole refusal gets.

use serde_json::{Value, json};

/// One problem with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The operation parameter concerned (`subject`, `payload` ...), when the
    /// problem is about one.
    pub parameter: Option<String>,
    /// The OperationOutcome issue type (`structure`, `required`, `value`,
    /// `business-rule`, `not-found`, `too-long`, `security`, `transient`).
    pub code: &'static str,
    /// What is wrong, for the calling developer; it names the parameter.
    pub diagnostics: String,
}

/// A refused request: an HTTP status and the problems found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// 400 (malformed), 401, 403, 404, 422 (business rules), 502/503
    /// (the patient source failed).
    pub status: u16,
    /// Every problem, in the order the parameters were read.
    pub problems: Vec<Problem>,
}

impl Rejection {
    /// A refusal with one problem.
    pub fn one(status: u16, parameter: Option<&str>, code: &'static str, diagnostics: impl Into<String>) -> Rejection {
        Rejection {
            status,
            problems: vec![Problem { parameter: parameter.map(str::to_string), code, diagnostics: diagnostics.into() }],
        }
    }

    /// The refusal as an OperationOutcome; `expression` points at the
    /// parameter in the request (`Parameters.parameter.where(name='subject')`).
    pub fn to_operation_outcome(&self) -> Value {
        let issues: Vec<Value> = self
            .problems
            .iter()
            .map(|p| {
                let mut issue = json!({"severity": "error", "code": p.code, "diagnostics": p.diagnostics});
                if let Some(name) = &p.parameter {
                    issue["expression"] = json!([format!("Parameters.parameter.where(name='{name}')")]);
                }
                issue
            })
            .collect();
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }

    /// Every diagnostics text, for tests and debug logs.
    pub fn diagnostics(&self) -> Vec<&str> {
        self.problems.iter().map(|p| p.diagnostics.as_str()).collect()
    }
}
