//! The `mapping_rules` step: maps the JSON content of a `json` or `fhir`
//! channel through a rule file ([`convert::rules::MappingRules`]), forward
//! (source paths to target paths: a practice-management system's JSON to a
//! FHIR resource) or, with `reverse = true`, backwards (FHIR to that JSON).
//!
//! It is not called `map`: `map` is the HL7 v2 value-table step.
//!
//! The rule file (YAML for `.yaml`/`.yml`, TOML for `.toml`) is read and
//! compiled when the configuration loads, so `plexus check` reports a
//! missing file, a syntax error or a bad rule with the step's path and the
//! file's name. A message whose content breaks rules (a required value
//! missing, a regex or enum failing, a value outside a table without
//! default) fails with every violation, each naming the rule and the input
//! path, never the value.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use convert::rules::MappingRules;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TransformError;

/// `type = "mapping_rules"`: map JSON through a rule file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingRulesStep {
    /// The rule file, relative to the configuration file's folder.
    pub rules: PathBuf,
    /// Apply the rules backwards (target paths to source paths).
    #[serde(default)]
    pub reverse: bool,
    /// The file's text, read by [`super::load_script_files`] (then `rules`
    /// stays as written, for errors).
    #[serde(skip)]
    pub(super) text: Option<String>,
    /// Where the text was read from.
    #[serde(skip)]
    pub(super) loaded_from: Option<PathBuf>,
}

impl MappingRulesStep {
    /// A step applying the rules in `file` (read when compiled, relative to
    /// the current directory unless loaded first).
    pub fn new(file: impl Into<PathBuf>, reverse: bool) -> Self {
        MappingRulesStep { rules: file.into(), reverse, text: None, loaded_from: None }
    }

    /// Reads the file relative to `base_dir`; the error names the full path.
    pub(super) fn load(&mut self, base_dir: &Path) -> Result<(), String> {
        let full = base_dir.join(&self.rules);
        let text = std::fs::read_to_string(&full).map_err(|e| format!("cannot read {}: {e}", full.display()))?;
        self.text = Some(text);
        self.loaded_from = Some(full);
        Ok(())
    }

    /// The compiled rules, or why not (naming the file).
    pub(super) fn compile(&self) -> Result<MappingRulesRun, String> {
        let file = self.loaded_from.as_ref().unwrap_or(&self.rules);
        let text = match &self.text {
            Some(text) => text.clone(),
            None => std::fs::read_to_string(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?,
        };
        let extension = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        let compiled = match extension.as_deref() {
            Some("yaml" | "yml") => MappingRules::from_yaml(&text),
            Some("toml") => MappingRules::from_toml(&text),
            _ => return Err(format!("{}: name a .yaml, .yml or .toml rule file", file.display())),
        };
        let rules = compiled.map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(MappingRulesRun { rules: Arc::new(rules), reverse: self.reverse, file: self.rules.display().to_string() })
    }
}

/// A compiled `mapping_rules` step.
#[derive(Debug, Clone)]
pub(super) struct MappingRulesRun {
    rules: Arc<MappingRules>,
    reverse: bool,
    /// The file as configured, for errors.
    file: String,
}

impl MappingRulesRun {
    /// Maps `doc` for the step named `step`.
    pub(super) fn run(&self, step: &str, doc: &Value) -> Result<Value, TransformError> {
        let mapped = if self.reverse { self.rules.apply_reverse(doc) } else { self.rules.apply(doc) };
        mapped.map_err(|e| TransformError::Convert {
            step: step.to_owned(),
            reason: format!("mapping rules {}{}: {e}", self.file, if self.reverse { " (reverse)" } else { "" }),
        })
    }
}
