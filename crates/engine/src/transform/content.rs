//! Transforms over JSON content: what `json` and `fhir` channels run.
//!
//! A transform's steps meet the content as it is at that point: HL7 v2 for
//! an `hl7v2` channel (until `hl7_to_fhir`), JSON for a `json` or `fhir`
//! channel until a `fhir_to_hl7` step turns it into an HL7 v2 message, after
//! which the HL7 v2 steps apply. [`Transform::check_content`] checks every
//! step against the content it will meet, when the configuration loads;
//! [`Transform::apply_content`] runs them.
//!
//! On JSON content only `mapping_rules`, `fhir_to_hl7` and `route` steps
//! run, and none has a `when` rule (filters, which may read `json:` paths,
//! decide whether a message goes on at all). So the JSON part of a channel's transform is unconditional, and
//! [`Transform::check_json`] runs it when the message arrives: a body that
//! passes the channel filter and that the rules reject, or that cannot
//! become the chosen HL7 v2 message, is answered with that reason (400)
//! instead of being stored to fail every delivery later.

use std::sync::Arc;

use hl7v2::Message;
use serde_json::Value;

use super::{Action, Transform, TransformContext, TransformError, TransformOutcome};
use crate::config::ConfigErrors;
use crate::filter::{Filter, first_rejecting, first_rejecting_json};

/// The content a transform works on.
#[derive(Debug, Clone)]
pub enum Content {
    /// An HL7 v2 message.
    Hl7(Message),
    /// A JSON document (a FHIR resource or Bundle, or any JSON).
    Json(Value),
}

/// What the content is at a point of a transform, for the checks made when
/// the configuration loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentStage {
    /// An HL7 v2 message.
    Hl7,
    /// JSON (a `json` or `fhir` channel before any `fhir_to_hl7`).
    Json,
    /// An HL7 v2 message that `hl7_to_fhir` converted: only `route` steps
    /// may follow (reported by the transform's own check).
    Converted,
}

impl Transform {
    /// Checks each step against the content it meets when the transform
    /// starts on `input`, recording an error naming the step for each one
    /// that cannot run there, and returns what the content is after the
    /// last step (where a destination's transform starts).
    pub fn check_content(&self, input: ContentStage, errors: &mut ConfigErrors) -> ContentStage {
        let mut stage = input;
        for step in &self.steps {
            if stage == ContentStage::Json && step.when.is_some() {
                errors.push(
                    format!("{}.when", step.name),
                    "a `when` rule reads HL7 v2 fields, but here the content is still JSON (steps on JSON content \
                     run for every message; put conditions after a fhir_to_hl7 step)",
                );
            }
            match (stage, &step.action) {
                (_, Action::Route(_)) | (ContentStage::Converted, _) => {}
                (ContentStage::Hl7, Action::Hl7ToFhir(_)) => stage = ContentStage::Converted,
                (ContentStage::Hl7, Action::FhirToHl7(_) | Action::MappingRules(_)) => errors.push(
                    step.name.clone(),
                    "reads JSON, but here the content is an HL7 v2 message (fhir_to_hl7 and mapping_rules need a \
                     channel with content = \"fhir\" or \"json\", before any fhir_to_hl7)",
                ),
                (ContentStage::Hl7, _) => {}
                (ContentStage::Json, Action::FhirToHl7(_)) => stage = ContentStage::Hl7,
                (ContentStage::Json, Action::MappingRules(_)) => {}
                (ContentStage::Json, _) => errors.push(
                    step.name.clone(),
                    "works on HL7 v2, but here the content is still JSON: convert it with a fhir_to_hl7 step first \
                     (or map JSON with a mapping_rules step)",
                ),
            }
        }
        stage
    }

    /// True when the transform starts with JSON steps (`mapping_rules`,
    /// `fhir_to_hl7`) that [`check_json`](Transform::check_json) can run.
    pub fn checks_json(&self) -> bool {
        self.steps
            .iter()
            .find(|s| !matches!(s.action, Action::Route(_)))
            .is_some_and(|s| matches!(s.action, Action::MappingRules(_) | Action::FhirToHl7(_)))
    }

    /// Runs the leading JSON steps of the transform (up to and including
    /// the first `fhir_to_hl7`) on `doc` and reports the first failure: the
    /// same failure every delivery of that message would meet, since those
    /// steps are unconditional and deterministic.
    pub fn check_json(
        &self,
        doc: &Value,
        received_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), TransformError> {
        let mut current: Option<Value> = None;
        for step in &self.steps {
            let input = current.as_ref().unwrap_or(doc);
            match &step.action {
                Action::Route(_) => {}
                Action::MappingRules(rules) => current = Some(rules.run(&step.name, input)?),
                Action::FhirToHl7(conversion) => {
                    conversion.run(&step.name, input, received_at)?;
                    return Ok(());
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Applies every step in order to `content`, which a `fhir_to_hl7` step
    /// turns from JSON into an HL7 v2 message. A step meeting content it
    /// cannot work on (prevented by [`check_content`](Transform::check_content)
    /// when the configuration loads) fails.
    pub fn apply_content(
        &self,
        content: &mut Content,
        ctx: &mut TransformContext,
    ) -> Result<TransformOutcome, TransformError> {
        let mut outcome = TransformOutcome::all();
        for step in &self.steps {
            let converted = match content {
                Content::Hl7(msg) => {
                    if let Some(when) = &step.when
                        && !when.matches(msg)
                    {
                        continue;
                    }
                    step.run(msg, ctx, &mut outcome)?;
                    None
                }
                Content::Json(doc) => match &step.action {
                    Action::Route(names) => {
                        outcome.keep_only(names.iter().map(String::as_str), &format!("{} (route)", step.name));
                        None
                    }
                    Action::MappingRules(rules) => {
                        *doc = rules.run(&step.name, doc)?;
                        outcome.rewritten = true;
                        None
                    }
                    Action::FhirToHl7(conversion) => Some(conversion.run(&step.name, doc, ctx.received_at)?),
                    _ => {
                        return Err(TransformError::Convert {
                            step: step.name.clone(),
                            reason: "this step works on HL7 v2 and the content is JSON".to_owned(),
                        });
                    }
                },
            };
            if let Some(msg) = converted {
                *content = Content::Hl7(msg);
                outcome.rewritten = true;
            }
        }
        Ok(outcome)
    }

    /// [`apply_content`](Transform::apply_content) for async callers: on
    /// tokio's blocking pool when the transform has a script.
    pub async fn apply_content_blocking(
        self: Arc<Self>,
        content: Content,
        ctx: TransformContext,
    ) -> Result<(Content, TransformContext, TransformOutcome), TransformError> {
        self.off_runtime_if_scripted(content, ctx, Transform::apply_content).await
    }
}

/// What the channel's and a destination's filters and transforms made of a
/// JSON delivery ([`run_json_stages`]).
#[derive(Debug)]
pub enum Staged {
    /// Send this.
    Send {
        /// The content to send.
        content: Vec<u8>,
        /// Its content type, when a step changed it (`None`: the stored one).
        content_type: Option<&'static str>,
        /// A step rewrote the content (keep it with the attempt).
        changed: bool,
    },
    /// Not for this destination: the rule or route step that said so.
    Filtered(String),
    /// A step failed (permanently: steps are deterministic).
    Failed(String),
}

/// One stage: filter rules, then transform steps, and the stage's name for
/// reasons (`channel`, `destination`).
pub type Stage<'a> = (&'a [Filter], &'a Arc<Transform>, &'a str);

/// Runs `stages` on a stored JSON message `raw` for `destination`, as the
/// worker does for HL7 v2: the channel's filter and transform, then the
/// destination's. Filter rules read `json:` paths while the content is
/// JSON and HL7 v2 paths after a `fhir_to_hl7`; the configuration check
/// allows no other.
pub async fn run_json_stages(raw: &[u8], stages: [Stage<'_>; 2], destination: &str, ctx: TransformContext) -> Staged {
    let mut content = match serde_json::from_slice::<Value>(raw) {
        Ok(doc) => Content::Json(doc),
        Err(e) => return Staged::Failed(format!("the stored message is not JSON: {e}")),
    };
    let mut ctx = ctx;
    let mut changed = false;
    // What an hl7_to_fhir step (after a fhir_to_hl7) made: sent instead.
    let mut converted = None;
    for (filter, transform, level) in stages {
        let rejecting = match &content {
            Content::Hl7(msg) => first_rejecting(filter, msg),
            Content::Json(doc) => first_rejecting_json(filter, doc),
        };
        if let Some(rule) = rejecting {
            return Staged::Filtered(format!("{level} filter: {}", rule.source()));
        }
        if transform.is_empty() {
            continue;
        }
        match Arc::clone(transform).apply_content_blocking(content, ctx).await {
            Ok((c, x, outcome)) => {
                content = c;
                ctx = x;
                let mut outcome = outcome;
                converted = outcome.take_converted().or(converted);
                changed |= outcome.rewritten || matches!(content, Content::Hl7(_));
                if !outcome.routes_to(destination) {
                    let by = outcome.routed_by().unwrap_or(level);
                    return Staged::Filtered(format!("routed elsewhere by {by}"));
                }
            }
            Err(e) => return Staged::Failed(format!("{level} transform: {e}")),
        }
    }
    if let Some(c) = converted {
        return Staged::Send { content: c.content, content_type: Some(c.content_type), changed: true };
    }
    match content {
        Content::Hl7(msg) => Staged::Send {
            content: msg.encode(),
            content_type: Some(crate::destinations::HL7_V2_CONTENT_TYPE),
            changed,
        },
        Content::Json(_) if !changed => Staged::Send { content: raw.to_vec(), content_type: None, changed },
        Content::Json(doc) => match serde_json::to_vec(&doc) {
            Ok(bytes) => Staged::Send { content: bytes, content_type: Some(json_media_type(&doc)), changed },
            Err(e) => Staged::Failed(format!("cannot encode the mapped JSON: {e}")),
        },
    }
}

/// `application/fhir+json` for a document with a string `resourceType`,
/// `application/json` otherwise.
pub fn json_media_type(doc: &Value) -> &'static str {
    if doc.get("resourceType").is_some_and(Value::is_string) { super::FHIR_JSON } else { "application/json" }
}
