//! Declarative JSON-to-JSON mapping rules, for systems that speak neither
//! HL7 v2 nor FHIR (a practice-management system's JSON), in both directions.
//!
//! A rule file (TOML or YAML, `version = 1`) lists rules; each moves one value
//! (or several, combined) from a `source` path to a `target` path through a
//! chain of transforms:
//!
//! ```yaml
//! version: 1
//! resource_type: Patient          # forward output starts {"resourceType": "Patient"}
//! rules:
//!   - name: mrn
//!     source: patient.mrn
//!     target: identifier[0].value
//!     required: true
//!     validate: { regex: "^[0-9]{6,10}$" }
//!   - name: mrn system
//!     value: "urn:oid:1.2.3.4"      # a constant (forward only)
//!     target: identifier[0].system
//!   - name: phone
//!     source: contact.phone
//!     target: telecom[system=phone].value
//!     transforms: [trim]
//!   - name: sex
//!     source: sex
//!     target: gender
//!     transforms:
//!       - map: { table: { M: male, F: female }, default: unknown, reverse: { male: M, female: F }, reverse_default: U }
//!   - name: full name
//!     sources: [first, last]
//!     target: name[0].text
//!     direction: forward
//!     transforms: [{ template: "{first} {last}" }]
//! ```
//!
//! Design:
//! - Everything the author can get wrong is found when the file loads, all at
//!   once ([`RulesError::Definition`]): path syntax, regexes, date formats, a
//!   table that cannot be inverted for a bidirectional rule, a template naming
//!   an unknown source.
//! - Applying collects every violation in the input (missing required
//!   values, failed validation, values outside a table) into
//!   [`RulesError::Violations`], each naming the rule and the input path,
//!   so one round trip with the sender fixes all of them.
//! - `direction` (`both` by default) says which ways a rule runs. Reverse
//!   reads the target path and writes the source path, running the
//!   transforms backwards (tables through their reverse, dates with the
//!   formats swapped, concat by splitting). Validation checks the
//!   source-side value in both directions: forward what is read, reverse
//!   what is written.
//! - Empty strings, nulls, empty objects and arrays are pruned from the
//!   output: FHIR forbids empty elements. So a rule takes such a value, as
//!   read or as its transforms leave it (`trim` of blanks), for an absent
//!   one: `required` reports it missing, `default` stands in, validation is
//!   not run on it, and nothing is written.

mod path;
mod transform;

use std::fmt;

use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use path::{JsonPath, Step};
pub use transform::{DateSpec, MapSpec, TransformSpec};
use transform::{Transform, scalar_text};

/// Which ways a rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Forward and reverse.
    #[default]
    Both,
    /// Source to target only.
    Forward,
    /// Target to source only.
    Reverse,
}

/// Checks on the source-side value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateSpec {
    /// The value's text must match this regex (anchor it yourself).
    #[serde(default)]
    pub regex: Option<String>,
    /// The value's text must be one of these.
    #[serde(default, rename = "enum")]
    pub one_of: Option<Vec<String>>,
}

/// One rule as written in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Name used in errors (default: `#N -> target`).
    #[serde(default)]
    pub name: Option<String>,
    /// The input path.
    #[serde(default)]
    pub source: Option<String>,
    /// Several input paths, combined by a leading `template` or `concat`.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
    /// A constant instead of a source.
    #[serde(default)]
    pub value: Option<Value>,
    /// The output path.
    #[serde(default)]
    pub target: Option<String>,
    /// Several output paths, filled by a trailing `split`.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// Used (untransformed) when the source is absent.
    #[serde(default)]
    pub default: Option<Value>,
    /// An absent input is a violation.
    #[serde(default)]
    pub required: bool,
    /// Applied in order (reverse: backwards, in reverse order).
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    /// Checks on the source-side value.
    #[serde(default)]
    pub validate: Option<ValidateSpec>,
    /// Which ways the rule runs.
    #[serde(default)]
    pub direction: Direction,
}

/// A rule file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Format version; must be 1.
    pub version: u32,
    /// A name for the mapping (informational).
    #[serde(default)]
    pub name: Option<String>,
    /// The FHIR resource type the forward output is (sets `resourceType`,
    /// and reverse checks it).
    #[serde(default)]
    pub resource_type: Option<String>,
    /// The rules, applied in order.
    pub rules: Vec<RuleSpec>,
}

/// A mistake in a rule definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    /// The rule's name (or `#N`).
    pub rule: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule '{}': {}", self.rule, self.message)
    }
}

/// Something in the input that a rule rejects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleViolation {
    /// The rule's name.
    pub rule: String,
    /// The input path the rule read (the target path in reverse).
    pub path: String,
    /// What is wrong, without the value where it could be patient data.
    pub message: String,
}

impl fmt::Display for RuleViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rule '{}' at input path '{}': {}", self.rule, self.path, self.message)
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Errors of the mapping-rules engine.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file is not valid TOML/YAML or not the rule-file shape.
    #[error("rule file ({format}): {message}")]
    Syntax {
        /// `toml` or `yaml`.
        format: &'static str,
        /// The parser's message, with its location.
        message: String,
    },
    /// One or more rules are malformed.
    #[error("{}", join(.0))]
    Definition(Vec<DefinitionError>),
    /// The input breaks one or more rules.
    #[error("{}", join(.0))]
    Violations(Vec<RuleViolation>),
}

#[derive(Debug, Clone)]
enum Input {
    One(JsonPath),
    Many(Vec<JsonPath>),
    Constant(Value),
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    input: Input,
    targets: Vec<JsonPath>,
    default: Option<Value>,
    required: bool,
    transforms: Vec<Transform>,
    regex: Option<Regex>,
    one_of: Option<Vec<String>>,
    direction: Direction,
}

/// A compiled, validated set of mapping rules.
#[derive(Debug, Clone)]
pub struct MappingRules {
    name: Option<String>,
    resource_type: Option<String>,
    rules: Vec<Rule>,
}

impl<'de> Deserialize<'de> for MappingRules {
    /// Lets an engine config embed a rule set inline.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let file = RulesFile::deserialize(d)?;
        MappingRules::compile(file).map_err(serde::de::Error::custom)
    }
}

impl MappingRules {
    /// Loads a TOML rule file.
    pub fn from_toml(text: &str) -> Result<MappingRules, RulesError> {
        let file: RulesFile =
            toml::from_str(text).map_err(|e| RulesError::Syntax { format: "toml", message: e.to_string() })?;
        MappingRules::compile(file)
    }

    /// Loads a YAML rule file.
    pub fn from_yaml(text: &str) -> Result<MappingRules, RulesError> {
        let file: RulesFile =
            serde_saphyr::from_str(text).map_err(|e| RulesError::Syntax { format: "yaml", message: e.to_string() })?;
        MappingRules::compile(file)
    }

    /// The mapping's name, if the file gave one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Compiles a parsed rule file, reporting every definition error.
    pub fn compile(file: RulesFile) -> Result<MappingRules, RulesError> {
        let mut errors = Vec::new();
        if file.version != 1 {
            errors.push(DefinitionError {
                rule: "(file)".into(),
                message: format!("version {} is not supported (expected 1)", file.version),
            });
        }
        let mut rules = Vec::new();
        for (n, spec) in file.rules.iter().enumerate() {
            let name = spec.name.clone().unwrap_or_else(|| {
                let target = spec.target.as_deref().unwrap_or("?");
                format!("#{} -> {target}", n + 1)
            });
            match compile_rule(&name, spec) {
                Ok(rule) => rules.push(rule),
                Err(msgs) => {
                    errors.extend(msgs.into_iter().map(|message| DefinitionError { rule: name.clone(), message }))
                }
            }
        }
        if errors.is_empty() {
            Ok(MappingRules { name: file.name, resource_type: file.resource_type, rules })
        } else {
            Err(RulesError::Definition(errors))
        }
    }

    /// Maps `input` forward (source paths to target paths).
    pub fn apply(&self, input: &Value) -> Result<Value, RulesError> {
        let mut out = Map::new();
        if let Some(rt) = &self.resource_type {
            out.insert("resourceType".into(), Value::String(rt.clone()));
        }
        let mut out = Value::Object(out);
        let mut violations = Vec::new();
        for rule in self.rules.iter().filter(|r| r.direction != Direction::Reverse) {
            rule.forward(input, &mut out, &mut violations);
        }
        finish(out, violations)
    }

    /// Maps `input` backwards (target paths to source paths).
    pub fn apply_reverse(&self, input: &Value) -> Result<Value, RulesError> {
        let mut violations = Vec::new();
        if let Some(rt) = &self.resource_type {
            let found = input.get("resourceType").and_then(Value::as_str);
            if found != Some(rt.as_str()) {
                violations.push(RuleViolation {
                    rule: "(file)".into(),
                    path: "resourceType".into(),
                    message: format!("expected resourceType '{rt}', found {}", found.unwrap_or("none")),
                });
            }
        }
        let mut out = Value::Object(Map::new());
        for rule in self.rules.iter().filter(|r| r.direction != Direction::Forward) {
            rule.reverse(input, &mut out, &mut violations);
        }
        finish(out, violations)
    }
}

/// Whether `v` is no value: null, `""`, or an object or array holding
/// nothing else. The output prunes such values (FHIR forbids empty
/// elements), so a rule treats one, read or made by its transforms, as
/// absent: `required` reports it, `default` stands in for it, and nothing
/// is written for it (a filter target such as `telecom[system=phone]` would
/// otherwise be left holding its `system` and no value).
fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.iter().all(is_blank),
        Value::Object(map) => map.values().all(is_blank),
        Value::Bool(_) | Value::Number(_) => false,
    }
}

fn finish(mut out: Value, violations: Vec<RuleViolation>) -> Result<Value, RulesError> {
    if !violations.is_empty() {
        return Err(RulesError::Violations(violations));
    }
    if path::prune_empty(&mut out) {
        out = Value::Object(Map::new());
    }
    Ok(out)
}

fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            None => break,
        }
    }
    out
}

fn compile_rule(name: &str, spec: &RuleSpec) -> Result<Rule, Vec<String>> {
    let mut errs = Vec::new();
    let mut path_errs = Vec::new();
    let mut parse = |p: &str| match JsonPath::parse(p) {
        Ok(p) => Some(p),
        Err(e) => {
            path_errs.push(e.0);
            None
        }
    };
    let input = match (&spec.source, &spec.sources, &spec.value) {
        (Some(s), None, None) => parse(s).map(Input::One),
        (None, Some(list), None) if !list.is_empty() => {
            let paths: Vec<_> = list.iter().filter_map(|p| parse(p)).collect();
            (paths.len() == list.len()).then_some(Input::Many(paths))
        }
        (None, None, Some(v)) => Some(Input::Constant(v.clone())),
        _ => {
            errs.push("give exactly one of source, sources (non-empty) or value".into());
            None
        }
    };
    let targets: Vec<JsonPath> = match (&spec.target, &spec.targets) {
        (Some(t), None) => parse(t).into_iter().collect(),
        (None, Some(list)) if !list.is_empty() => list.iter().filter_map(|p| parse(p)).collect(),
        _ => {
            errs.push("give exactly one of target or targets (non-empty)".into());
            Vec::new()
        }
    };
    errs.append(&mut path_errs);
    let mut transforms = Vec::new();
    for t in &spec.transforms {
        match Transform::compile(t) {
            Ok(t) => transforms.push(t),
            Err(e) => errs.push(e),
        }
    }
    let combining = |t: &Transform| matches!(t, Transform::Template(_) | Transform::Concat(_));
    match &input {
        Some(Input::Many(paths)) => {
            if !transforms.first().is_some_and(combining) {
                errs.push("several sources need a template or concat as the first transform".into());
            }
            if let Some(Transform::Template(t)) = transforms.first() {
                for ph in placeholders(t) {
                    if !paths.iter().any(|p| p.to_string() == ph) {
                        errs.push(format!("template placeholder '{{{ph}}}' is not one of the sources"));
                    }
                }
            }
            if paths.iter().any(JsonPath::has_each) {
                errs.push("[*] is not supported with several sources".into());
            }
        }
        _ => {
            if transforms.iter().any(combining) {
                errs.push("template and concat need several sources (use sources: [...])".into());
            }
        }
    }
    if transforms.iter().skip(1).any(combining) {
        errs.push("template or concat must be the first transform".into());
    }
    let splits = transforms.iter().filter(|t| matches!(t, Transform::Split(_))).count();
    if spec.targets.is_some() && !matches!(transforms.last(), Some(Transform::Split(_))) {
        errs.push("several targets need split as the last transform".into());
    }
    if splits > 0 && (spec.targets.is_none() || !matches!(transforms.last(), Some(Transform::Split(_))) || splits > 1) {
        errs.push("split must be the last transform, once, with targets: [...]".into());
    }
    let source_each = matches!(&input, Some(Input::One(p)) if p.has_each());
    let target_each = targets.iter().any(JsonPath::has_each);
    if source_each != target_each {
        errs.push("[*] must appear in both the source and the target, or in neither".into());
    }
    if target_each && targets.len() > 1 {
        errs.push("[*] is not supported with several targets".into());
    }
    if spec.direction != Direction::Forward && !matches!(input, Some(Input::Constant(_))) {
        for t in &transforms {
            if let Err(why) = t.reversible() {
                errs.push(format!("direction is {:?} but {why}", spec.direction).to_lowercase());
            }
        }
    }
    let validate = spec.validate.clone().unwrap_or_default();
    let regex = match validate.regex.as_deref().map(Regex::new) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            errs.push(format!("invalid regex: {e}"));
            None
        }
    };
    match input {
        Some(input) if errs.is_empty() => Ok(Rule {
            name: name.to_string(),
            input,
            targets,
            default: spec.default.clone(),
            required: spec.required,
            transforms,
            regex,
            one_of: validate.one_of,
            direction: spec.direction,
        }),
        _ => Err(errs),
    }
}

impl Rule {
    fn violation(&self, path: &dyn fmt::Display, message: impl Into<String>) -> RuleViolation {
        RuleViolation { rule: self.name.clone(), path: path.to_string(), message: message.into() }
    }

    fn check(&self, v: &Value) -> Result<(), String> {
        let text = scalar_text(v);
        if let Some(re) = &self.regex {
            match &text {
                Some(t) if re.is_match(t) => {}
                _ => return Err(format!("value does not match the pattern /{}/", re.as_str())),
            }
        }
        if let Some(allowed) = &self.one_of
            && !text.as_ref().is_some_and(|t| allowed.iter().any(|a| a == t))
        {
            return Err(format!("value is not one of [{}]", allowed.join(", ")));
        }
        Ok(())
    }

    fn forward(&self, input: &Value, out: &mut Value, violations: &mut Vec<RuleViolation>) {
        let in_path = match &self.input {
            Input::One(p) => p.to_string(),
            Input::Many(ps) => ps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            Input::Constant(_) => "(constant)".into(),
        };
        // One item per element for [*]; otherwise exactly one.
        let items: Vec<Option<Value>> = match &self.input {
            Input::Constant(v) => vec![Some(v.clone())],
            Input::One(p) => {
                let each = p.get_each(input);
                if each.is_empty() { vec![None] } else { each.into_iter().map(|v| v.cloned()).collect() }
            }
            Input::Many(paths) => {
                let parts: Vec<Option<&Value>> = paths.iter().map(|p| p.get(input)).collect();
                if parts.iter().all(Option::is_none) {
                    vec![None]
                } else {
                    match self.combine(paths, &parts) {
                        Ok(v) => vec![Some(v)],
                        Err(e) => {
                            violations.push(self.violation(&in_path, e));
                            return;
                        }
                    }
                }
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            let value = match item.filter(|v| !is_blank(v)) {
                Some(v) => {
                    if !matches!(self.input, Input::Many(_))
                        && let Err(e) = self.check(&v)
                    {
                        violations.push(self.violation(&in_path, e));
                        continue;
                    }
                    match self.run(v, false) {
                        Ok(v) => Some(v).filter(|v| !is_blank(v)),
                        Err(e) => {
                            violations.push(self.violation(&in_path, e));
                            continue;
                        }
                    }
                }
                None => None,
            };
            let value = match value {
                Some(v) => v,
                None => match (&self.default, self.required) {
                    (Some(d), _) => d.clone(),
                    (None, true) => {
                        violations.push(self.violation(&in_path, "required value is missing"));
                        continue;
                    }
                    (None, false) => continue,
                },
            };
            self.write(&self.targets, value, out, index, &in_path, violations);
        }
    }

    fn reverse(&self, input: &Value, out: &mut Value, violations: &mut Vec<RuleViolation>) {
        if matches!(self.input, Input::Constant(_)) {
            return;
        }
        let in_path = self.targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let items: Vec<Option<Value>> = if self.targets.len() > 1 {
            // Reverse of split: join the targets with its separator.
            let sep = match self.transforms.last() {
                Some(Transform::Split(s)) => s.as_str(),
                _ => " ",
            };
            let parts: Vec<String> = self
                .targets
                .iter()
                .filter_map(|t| t.get(input))
                .filter(|v| !is_blank(v))
                .filter_map(scalar_text)
                .collect();
            vec![(!parts.is_empty()).then(|| Value::String(parts.join(sep)))]
        } else {
            let each = self.targets[0].get_each(input);
            if each.is_empty() { vec![None] } else { each.into_iter().map(|v| v.cloned()).collect() }
        };
        for (index, item) in items.into_iter().enumerate() {
            let v = match item.filter(|v| !is_blank(v)).map(|v| self.run(v, true)) {
                Some(Ok(v)) if !is_blank(&v) => v,
                Some(Err(e)) => {
                    violations.push(self.violation(&in_path, e));
                    continue;
                }
                _ => {
                    if self.required {
                        violations.push(self.violation(&in_path, "required value is missing"));
                    }
                    continue;
                }
            };
            match &self.input {
                Input::One(p) => {
                    if let Err(e) = self.check(&v) {
                        violations.push(self.violation(&in_path, e));
                        continue;
                    }
                    self.write(std::slice::from_ref(p), v, out, index, &in_path, violations);
                }
                Input::Many(paths) => {
                    // Only concat is reversible: split back into the sources.
                    let sep = match self.transforms.first() {
                        Some(Transform::Concat(s)) if !s.is_empty() => s.as_str(),
                        _ => " ",
                    };
                    let text = scalar_text(&v).unwrap_or_default();
                    let parts: Vec<Value> =
                        text.splitn(paths.len(), sep).map(|s| Value::String(s.to_string())).collect();
                    for (p, part) in paths.iter().zip(parts) {
                        self.write(std::slice::from_ref(p), part, out, index, &in_path, violations);
                    }
                }
                Input::Constant(_) => {}
            }
        }
    }

    /// Runs the single-value transforms (forward in order, reverse backwards).
    fn run(&self, mut v: Value, reverse: bool) -> Result<Value, String> {
        if reverse {
            for t in self.transforms.iter().rev() {
                v = t.apply(v, true)?;
            }
        } else {
            for t in &self.transforms {
                v = t.apply(v, false)?;
            }
        }
        Ok(v)
    }

    fn combine(&self, paths: &[JsonPath], parts: &[Option<&Value>]) -> Result<Value, String> {
        match self.transforms.first() {
            Some(Transform::Template(t)) => {
                // One pass over the template: a value holding `{other}` is
                // text, not a placeholder to fill in turn.
                let mut s = String::with_capacity(t.len());
                let mut rest = t.as_str();
                while let Some(open) = rest.find('{') {
                    s.push_str(&rest[..open]);
                    let after = &rest[open + 1..];
                    let Some(close) = after.find('}') else {
                        rest = &rest[open..];
                        break;
                    };
                    let name = &after[..close];
                    match paths.iter().position(|p| p.to_string() == name) {
                        Some(i) => s.push_str(&parts[i].and_then(scalar_text).unwrap_or_default()),
                        None => s.push_str(&rest[open..open + close + 2]),
                    }
                    rest = &after[close + 1..];
                }
                s.push_str(rest);
                Ok(Value::String(s.trim().to_string()))
            }
            Some(Transform::Concat(sep)) => {
                let texts: Vec<String> =
                    parts.iter().flatten().filter(|v| !is_blank(v)).filter_map(|v| scalar_text(v)).collect();
                Ok(Value::String(texts.join(sep)))
            }
            _ => Err("several sources without template or concat".into()),
        }
    }

    fn write(
        &self,
        targets: &[JsonPath],
        value: Value,
        out: &mut Value,
        index: usize,
        in_path: &str,
        violations: &mut Vec<RuleViolation>,
    ) {
        let values = if targets.len() > 1 {
            // Forward split: one part per target, the last keeps the rest.
            let sep = match self.transforms.last() {
                Some(Transform::Split(s)) => s.clone(),
                _ => " ".into(),
            };
            let text = scalar_text(&value).unwrap_or_default();
            text.splitn(targets.len(), sep.as_str()).map(|s| Value::String(s.to_string())).collect()
        } else {
            vec![value]
        };
        for (target, v) in targets.iter().zip(values) {
            if let Err(e) = target.set(out, v, index) {
                violations.push(self.violation(&in_path, format!("cannot write '{target}': {e}")));
            }
        }
    }
}

#[cfg(test)]
mod tests;
