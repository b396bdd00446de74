//! FHIR R4 to HL7 v2 (2.5.1 by default): ORU^R01, MDM^T02, ADT^A04/A08,
//! SIU^S12, RAS^O17.
//!
//! The input is a Bundle (of any type) or a single resource. Resources are
//! indexed by `fullUrl` and by `Type/id`, so references of every usual form
//! (`urn:uuid:...`, `Patient/1`, absolute URLs) resolve inside the input;
//! nothing is fetched. Each message starts from the Patient (PID), then maps
//! the resources its type carries; see the functions below for the
//! groupings. The output is built segment by segment ([`writer`]) with the
//! HL7 v2 crate's escaping, and is deterministic: MSH-7 and MSH-10 come from
//! the options or from the input, never from the clock.

mod datatypes;
mod messages;
mod writer;

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::ConvertError;
use crate::options::{FhirToHl7Options, TargetMessage};

pub(crate) use datatypes::TimeKind;
pub(crate) use writer::SegW;

/// A JSON value that should hold a FHIR time, as a DTM (None for null).
fn time_value(v: &Value, kind: TimeKind) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(t) => datatypes::v2_time(t, kind).map(Some),
        _ => Err(format!("not a string (a FHIR {} is written as a JSON string)", kind.name())),
    }
}

/// The resources of the input, with reference resolution.
#[derive(Debug)]
pub(crate) struct Input<'a> {
    /// Every resource, in input order.
    pub resources: Vec<&'a Value>,
    /// For a Bundle, the index of each resource's entry (entries without a
    /// resource are skipped, so the two can differ): for error paths.
    entry_index: Option<Vec<usize>>,
    by_url: HashMap<String, usize>,
    /// The Bundle's timestamp, if any.
    pub timestamp: Option<&'a str>,
}

impl<'a> Input<'a> {
    fn new(root: &'a Value) -> Result<Input<'a>, ConvertError> {
        let kind = root.get("resourceType").and_then(Value::as_str).ok_or_else(|| ConvertError::Invalid {
            path: "resourceType".into(),
            reason: "the input is not a FHIR resource".into(),
        })?;
        let mut input = Input { resources: Vec::new(), entry_index: None, by_url: HashMap::new(), timestamp: None };
        if kind == "Bundle" {
            input.timestamp = root.get("timestamp").and_then(Value::as_str);
            let mut entry_index = Vec::new();
            for (n, entry) in root.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
                let Some(res) = entry.get("resource") else { continue };
                let i = input.resources.len();
                input.resources.push(res);
                entry_index.push(n);
                if let Some(url) = entry.get("fullUrl").and_then(Value::as_str) {
                    input.by_url.insert(url.to_string(), i);
                }
                input.index_type_id(res, i);
            }
            input.entry_index = Some(entry_index);
        } else {
            input.resources.push(root);
            input.index_type_id(root, 0);
        }
        Ok(input)
    }

    fn index_type_id(&mut self, res: &Value, i: usize) {
        if let (Some(t), Some(id)) =
            (res.get("resourceType").and_then(Value::as_str), res.get("id").and_then(Value::as_str))
        {
            self.by_url.insert(format!("{t}/{id}"), i);
        }
    }

    /// The resource a Reference points at, if it is in the input.
    pub fn resolve(&self, reference: &Value) -> Option<&'a Value> {
        let r = reference.get("reference").and_then(Value::as_str)?;
        if let Some(&i) = self.by_url.get(r) {
            return Some(self.resources[i]);
        }
        // An absolute URL ending in Type/id (optionally /_history/n).
        let trimmed = match r.find("/_history/") {
            Some(at) => &r[..at],
            None => r,
        };
        let mut parts = trimmed.rsplitn(3, '/');
        let id = parts.next()?;
        let kind = parts.next()?;
        self.by_url.get(&format!("{kind}/{id}")).map(|&i| self.resources[i])
    }

    /// Where `element` (a FHIR path inside resource `r`, e.g.
    /// `effectivePeriod.start`) is, for an error: `Observation.effectivePeriod.start`,
    /// and in a Bundle ` at Bundle.entry[3]` after it.
    pub fn path(&self, r: &Value, element: &str) -> String {
        let kind = r.get("resourceType").and_then(Value::as_str).unwrap_or("Resource");
        let entry = self
            .entry_index
            .as_ref()
            .and_then(|entries| entries.get(self.resources.iter().position(|x| std::ptr::eq(*x, r))?));
        match entry {
            Some(n) => format!("{kind}.{element} at Bundle.entry[{n}]"),
            None => format!("{kind}.{element}"),
        }
    }

    /// The time at `element` of resource `r` (see [`Input::path`]) as a v2
    /// DTM: None when absent, an error naming the element when it is not
    /// a valid FHIR `kind`.
    pub fn time(&self, r: &Value, element: &str, kind: TimeKind) -> Result<Option<String>, ConvertError> {
        let mut at = r;
        for step in element.split('.') {
            let (name, index) = match step.split_once('[') {
                Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (step, None),
            };
            at = match at.get(name) {
                Some(v) => match index {
                    Some(i) => match v.get(i) {
                        Some(v) => v,
                        None => return Ok(None),
                    },
                    None => v,
                },
                None => return Ok(None),
            };
        }
        time_value(at, kind).map_err(|reason| ConvertError::Invalid { path: self.path(r, element), reason })
    }

    /// Every resource of one type.
    pub fn of_type<'s>(&'s self, kind: &'s str) -> impl Iterator<Item = &'a Value> + 's {
        self.resources.iter().copied().filter(move |r| r.get("resourceType").and_then(Value::as_str) == Some(kind))
    }

    /// The message's patient: the subject of the first resource that names
    /// one, else the first Patient.
    pub fn patient(&self) -> Option<&'a Value> {
        for r in &self.resources {
            for key in ["subject", "patient", "beneficiary"] {
                if let Some(p) = r.get(key).and_then(|s| self.resolve(s))
                    && p.get("resourceType").and_then(Value::as_str) == Some("Patient")
                {
                    return Some(p);
                }
            }
            if let Some(parts) = r.get("participant").and_then(Value::as_array) {
                for p in parts {
                    if let Some(actor) = p.get("actor").and_then(|a| self.resolve(a))
                        && actor.get("resourceType").and_then(Value::as_str) == Some("Patient")
                    {
                        return Some(actor);
                    }
                }
            }
        }
        self.of_type("Patient").next()
    }
}

/// Converts FHIR `input` to `target`.
pub(crate) fn convert(
    input: &Value,
    target: TargetMessage,
    opts: &FhirToHl7Options,
) -> Result<hl7v2::Message, ConvertError> {
    let parsed = Input::new(input)?;
    let control_id = if opts.control_id.is_empty() {
        // A hash of the input: converting the same input twice gives the same
        // message (and a receiver's duplicate detection works).
        let digest = Sha256::digest(serde_json::to_vec(input).unwrap_or_default());
        hex::encode(&digest[..10])
    } else {
        opts.control_id.clone()
    };
    messages::build(&parsed, target, opts, &control_id)
}
