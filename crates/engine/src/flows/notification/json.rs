//! The `json` output of a notification channel: the bundle's resources
//! mapped to a partner-neutral JSON by mapping rules (`convert::rules`, the
//! same files as `plexus convert map --rules`).
//!
//! ```toml
//! output = "oru_r01"
//! outputs = { crm = { format = "json", rules = "rules/glucose.yaml", resources = ["Observation"] } }
//! ```
//!
//! An output is written as a format name (`"oru_r01"`) or, for `json`, as a
//! table ([`OutputSpec`]) naming the rules file.
//!
//! # Each resource, not the bundle
//!
//! The rules apply to each resource of the bundle (those of the types in
//! `resources`; every resource when the list is empty), and the destination
//! receives a JSON array of the results, in bundle order. Not to the
//! bundle as a whole, because:
//!
//! - a rules file describes one resource type (its `resource_type`), as
//!   written for `plexus convert map` and for channels mapping a system's
//!   JSON to FHIR: the same file (with `reverse = true` when it was written
//!   JSON -> FHIR) maps the partner's Observations back, and can be tried
//!   on one resource from the command line;
//! - a partner bundle mixes types (readings, the meter, insulin doses),
//!   which one set of paths over `entry[*]` cannot tell apart: the rules
//!   language has no per-entry type filter over an array;
//! - a violation names the entry (position and type) and the rule, so the
//!   partner or the integration engineer finds the resource at fault.
//!
//! A violation fails the delivery permanently with the rules' message (it
//! names the rule and the input path, never the value), and the partner is
//! not acknowledged. A bundle with nothing to map completes the delivery
//! as filtered, like `ras_o17` for a bundle without medication.

use std::path::{Path, PathBuf};

use convert::rules::MappingRules;
use serde::Deserialize;
use serde::de::{self, Deserializer, IntoDeserializer, MapAccess, Visitor};
use serde_json::Value;

use super::stage::NotificationOutput;
use crate::config::ConfigErrors;
use crate::flows::FlowError;

/// What one destination (or, for `output`, every other destination)
/// receives: a format and, for `json`, the mapping rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputSpec {
    /// The format.
    pub format: NotificationOutput,
    /// The mapping-rules file (TOML or YAML, by its extension) of the `json`
    /// format; relative to the config file's folder.
    pub rules: Option<PathBuf>,
    /// Apply the rules backwards (`apply_reverse`): for a file written to
    /// map a system's JSON to FHIR (`resource_type` set), which is then
    /// reused to map FHIR back to that JSON.
    pub reverse: bool,
    /// The resource types mapped (`["Observation"]`); every resource of the
    /// bundle when empty.
    pub resources: Vec<String>,
}

impl From<NotificationOutput> for OutputSpec {
    fn from(format: NotificationOutput) -> Self {
        OutputSpec { format, ..OutputSpec::default() }
    }
}

/// The table form of an output.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputTable {
    format: NotificationOutput,
    #[serde(default)]
    rules: Option<PathBuf>,
    #[serde(default)]
    reverse: bool,
    #[serde(default)]
    resources: Vec<String>,
}

impl<'de> Deserialize<'de> for OutputSpec {
    /// A format name (`"ras_o17"`) or a table (`{ format = "json", rules =
    /// "..." }`); each form keeps serde's own messages (unknown variant,
    /// unknown field).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpecVisitor;
        impl<'de> Visitor<'de> for SpecVisitor {
            type Value = OutputSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an output name (oru_r01, ras_o17, fhir, json) or a table with `format` and `rules`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OutputSpec, E> {
                let name: de::value::StrDeserializer<'_, E> = v.into_deserializer();
                let format = NotificationOutput::deserialize(name)?;
                Ok(format.into())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OutputSpec, A::Error> {
                let t = OutputTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(OutputSpec { format: t.format, rules: t.rules, reverse: t.reverse, resources: t.resources })
            }
        }
        deserializer.deserialize_any(SpecVisitor)
    }
}

impl OutputSpec {
    /// Checks how the fields fit together (no I/O; the rules file is read
    /// by [`resolve_rules`]).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        match (self.format, &self.rules) {
            (NotificationOutput::Json, None) => errors.push(
                path.to_string(),
                "the json output needs mapping rules: write { format = \"json\", rules = \"path/to/rules.yaml\" }",
            ),
            (NotificationOutput::Json, Some(_)) => {}
            (other, Some(_)) => errors
                .push(format!("{path}.rules"), format!("rules apply to the json output only, not {}", other.as_str())),
            (_, None) if self.reverse || !self.resources.is_empty() => {
                errors.push(path.to_string(), "`reverse` and `resources` belong to the json output (with `rules`)")
            }
            _ => {}
        }
        for (i, r) in self.resources.iter().enumerate() {
            if !fhir::resource::is_valid_type(r) {
                errors.push(format!("{path}.resources[{i}]"), format!("{r:?} is not a FHIR resource type"));
            }
        }
    }
}

/// Makes a relative `rules` path absolute against `base_dir` (the config
/// file's folder) and loads it, reporting a file that cannot be read or
/// compiled at `path.rules` with the rules engine's message (every
/// definition error at once).
pub(crate) fn resolve_rules(spec: &mut OutputSpec, base_dir: Option<&Path>, path: &str, errors: &mut ConfigErrors) {
    let Some(rules) = &spec.rules else { return };
    if let Some(dir) = base_dir
        && rules.is_relative()
    {
        spec.rules = Some(dir.join(rules));
    }
    if let Some(rules) = &spec.rules
        && let Err(e) = load_rules(rules)
    {
        errors.push(format!("{path}.rules"), e);
    }
}

/// Reads and compiles a rules file, TOML or YAML by its extension.
pub fn load_rules(path: &Path) -> Result<MappingRules, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let compiled = match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => MappingRules::from_yaml(&text),
        Some("toml") => MappingRules::from_toml(&text),
        _ => return Err(format!("{}: a rules file ends in .yaml, .yml or .toml", path.display())),
    };
    compiled.map_err(|e| format!("{}: {e}", path.display()))
}

/// Maps the resources of `bundle` chosen by `spec` with `rules` into a JSON
/// array (see the module docs).
pub fn map_bundle(bundle: &Value, spec: &OutputSpec, rules: &MappingRules) -> Result<Vec<u8>, FlowError> {
    let file = spec.rules.as_deref().and_then(Path::file_name).map_or_else(String::new, |n| n.to_string_lossy().into());
    let mut mapped = Vec::new();
    let entries = bundle.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, entry) in entries.iter().enumerate() {
        let Some(resource) = entry.get("resource") else { continue };
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
        if resource_type == "OperationOutcome" {
            continue;
        }
        if !spec.resources.is_empty() && !spec.resources.iter().any(|r| r == resource_type) {
            continue;
        }
        let result = if spec.reverse { rules.apply_reverse(resource) } else { rules.apply(resource) };
        let value = result
            .map_err(|e| FlowError::Permanent(format!("mapping entry {i} ({resource_type}) with {file}: {e}")))?;
        mapped.push(value);
    }
    if mapped.is_empty() {
        let wanted = if spec.resources.is_empty() { "resource".to_string() } else { spec.resources.join(" or ") };
        return Err(FlowError::Skip(format!("the bundle holds no {wanted} for json")));
    }
    serde_json::to_vec(&Value::Array(mapped)).map_err(|e| FlowError::Permanent(format!("serialising the JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        output: OutputSpec,
    }

    fn spec(text: &str) -> Result<OutputSpec, String> {
        toml::from_str::<Holder>(text).map(|h| h.output).map_err(|e| e.to_string())
    }

    #[test]
    fn an_output_is_a_name_or_a_table() {
        assert_eq!(spec("output = \"ras_o17\"").unwrap(), NotificationOutput::RasO17.into());
        let table = spec("output = { format = \"json\", rules = \"r.yaml\", resources = [\"Observation\"] }").unwrap();
        assert_eq!(table.format, NotificationOutput::Json);
        assert_eq!(table.rules.as_deref(), Some(Path::new("r.yaml")));
        assert!(spec("output = \"xml\"").unwrap_err().contains("unknown variant"));
        assert!(spec("output = { format = \"json\", rule = \"r.yaml\" }").unwrap_err().contains("rule"));
    }

    #[test]
    fn validation_ties_rules_to_the_json_format() {
        let paths = |text: &str| {
            let mut errors = ConfigErrors::default();
            spec(text).unwrap().validate("o", &mut errors);
            errors.0.into_iter().map(|e| e.path).collect::<Vec<_>>()
        };
        assert_eq!(paths("output = \"json\""), ["o"]);
        assert_eq!(paths("output = { format = \"oru_r01\", rules = \"r.yaml\" }"), ["o.rules"]);
        assert_eq!(paths("output = { format = \"fhir\", reverse = true }"), ["o"]);
        assert_eq!(
            paths("output = { format = \"json\", rules = \"r.yaml\", resources = [\"glucose\"] }"),
            ["o.resources[0]"]
        );
        assert!(paths("output = { format = \"json\", rules = \"r.yaml\" }").is_empty());
    }

    const RULES: &str = r#"
version = 1
[[rules]]
name = "value"
source = "valueQuantity.value"
target = "glucose_mg_dl"
required = true
[[rules]]
name = "time"
source = "effectiveDateTime"
target = "measured_at"
"#;

    #[test]
    fn each_chosen_resource_is_mapped_and_a_violation_names_the_entry() {
        let rules = MappingRules::from_toml(RULES).unwrap();
        let spec = OutputSpec {
            format: NotificationOutput::Json,
            rules: Some("rules/glucose.toml".into()),
            reverse: false,
            resources: vec!["Observation".into()],
        };
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Device", "id": "meter"}},
            {"resource": {"resourceType": "Observation", "valueQuantity": {"value": 95}, "effectiveDateTime": "2026-11-21T08:30:00Z"}},
            {"resource": {"resourceType": "Observation", "valueQuantity": {"value": 140}}}
        ]});
        let out: Value = serde_json::from_slice(&map_bundle(&bundle, &spec, &rules).unwrap()).unwrap();
        assert_eq!(out, json!([{"glucose_mg_dl": 95, "measured_at": "2026-11-21T08:30:00Z"}, {"glucose_mg_dl": 140}]));

        let broken = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Observation", "valueQuantity": {"value": 95}}},
            {"resource": {"resourceType": "Observation", "valueString": "high"}}
        ]});
        let Err(FlowError::Permanent(reason)) = map_bundle(&broken, &spec, &rules) else { panic!("a permanent error") };
        assert!(reason.starts_with("mapping entry 1 (Observation) with glucose.toml: rule 'value'"), "{reason}");

        let none = json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Device"}}]});
        assert!(matches!(map_bundle(&none, &spec, &rules), Err(FlowError::Skip(_))));
    }

    #[test]
    fn rules_files_load_by_extension_and_report_their_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("r.toml");
        std::fs::write(&good, RULES).unwrap();
        assert!(load_rules(&good).is_ok());
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "version: 1\nrules:\n  - name: x\n    source: \"a[\"\n    target: b\n").unwrap();
        let e = load_rules(&bad).unwrap_err();
        assert!(e.contains("bad.yaml") && e.contains("rule 'x'"), "{e}");
        assert!(load_rules(&dir.path().join("r.json")).unwrap_err().contains("reading"));
        std::fs::write(dir.path().join("r.json"), "{}").unwrap();
        assert!(load_rules(&dir.path().join("r.json")).unwrap_err().contains(".yaml, .yml or .toml"));

        let mut spec =
            OutputSpec { format: NotificationOutput::Json, rules: Some("r.toml".into()), ..OutputSpec::default() };
        let mut errors = ConfigErrors::default();
        resolve_rules(&mut spec, Some(dir.path()), "o", &mut errors);
        assert!(errors.0.is_empty(), "{errors}");
        assert_eq!(spec.rules.as_deref(), Some(good.as_path()));
        let mut spec = OutputSpec { rules: Some("missing.yaml".into()), ..spec };
        resolve_rules(&mut spec, Some(dir.path()), "o", &mut errors);
        assert_eq!(errors.0[0].path, "o.rules");
    }
}
