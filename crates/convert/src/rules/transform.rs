//! Value transforms of a mapping rule, each with its reverse.
//!
//! Transforms are compiled when the rule file loads (regexes, date formats and
//! tables are checked then), so applying them cannot fail for a reason the
//! rule author could have seen earlier. The errors left at apply time are
//! about the data: a value not in a table without default, a date that does
//! not match its format.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde::Deserialize;
use serde_json::Value;

/// A transform as written in a rule file.
///
/// In YAML: `- trim`, `- upper`, `- map: {table: {M: male}, default: unknown}`,
/// `- date: {from: "%m/%d/%Y", to: "%Y-%m-%d"}`, `- template: "{a} {b}"`,
/// `- concat: " "`, `- split: " "`, `- number`, `- string`, `- boolean`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    /// Removes leading and trailing white space (reverse: unchanged).
    Trim,
    /// Upper case (reverse: unchanged).
    Upper,
    /// Lower case (reverse: unchanged).
    Lower,
    /// Converts a string to a JSON number (reverse: number to string).
    Number,
    /// Converts any scalar to its text (reverse: unchanged).
    String,
    /// Converts "true"/"false"/"1"/"0"/"Y"/"N" to a JSON boolean
    /// (reverse: unchanged).
    Boolean,
    /// A value table.
    Map(MapSpec),
    /// Re-formats a date or date-time between two chrono formats.
    Date(DateSpec),
    /// Fills `{source.path}` placeholders from the rule's sources (forward only).
    Template(String),
    /// Joins the rule's sources (skipping absent ones) with a separator
    /// (reverse: split on it back into the sources).
    Concat(String),
    /// Splits a string on a separator into the targets (reverse: join).
    Split(String),
}

/// A value table: `table` maps input to output; `default` is used for
/// values not in it (else the value is an error). `reverse` (and
/// `reverse_default`) are used backwards; when `reverse` is absent the table
/// is inverted, which must then be one to one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapSpec {
    /// Input value to output value.
    pub table: BTreeMap<String, Value>,
    /// Output for input not in the table.
    #[serde(default)]
    pub default: Option<Value>,
    /// Output value to input value, for the reverse direction.
    #[serde(default)]
    pub reverse: Option<BTreeMap<String, Value>>,
    /// Reverse output for values not in the reverse table.
    #[serde(default)]
    pub reverse_default: Option<Value>,
}

/// Date re-formatting: `from` and `to` are chrono strftime formats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateSpec {
    /// The input format, e.g. `%m/%d/%Y`.
    pub from: String,
    /// The output format, e.g. `%Y-%m-%d`.
    pub to: String,
}

/// A compiled transform.
#[derive(Debug, Clone)]
pub(crate) enum Transform {
    Trim,
    Upper,
    Lower,
    Number,
    String,
    Boolean,
    Map { forward: Table, reverse: Option<Table> },
    Date { from: String, to: String },
    Template(String),
    Concat(String),
    Split(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Table {
    entries: BTreeMap<String, Value>,
    default: Option<Value>,
}

impl Table {
    fn look_up(&self, v: &Value) -> Result<Value, String> {
        let key = scalar_text(v).ok_or_else(|| format!("{} cannot be looked up in a table", kind(v)))?;
        match self.entries.get(&key).or(self.default.as_ref()) {
            Some(out) => Ok(out.clone()),
            None => Err("value is not in the table and the table has no default".into()),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
        _ => "a value",
    }
}

/// The text of a scalar; None for arrays and objects.
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

fn check_format(fmt: &str) -> Result<(), String> {
    if StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
        Err(format!("date format '{fmt}' is not a valid strftime format"))
    } else {
        Ok(())
    }
}

impl Transform {
    pub(crate) fn compile(spec: &TransformSpec) -> Result<Transform, String> {
        Ok(match spec {
            TransformSpec::Trim => Transform::Trim,
            TransformSpec::Upper => Transform::Upper,
            TransformSpec::Lower => Transform::Lower,
            TransformSpec::Number => Transform::Number,
            TransformSpec::String => Transform::String,
            TransformSpec::Boolean => Transform::Boolean,
            TransformSpec::Template(t) => Transform::Template(t.clone()),
            TransformSpec::Concat(s) => Transform::Concat(s.clone()),
            TransformSpec::Split(s) => {
                if s.is_empty() {
                    return Err("split separator is empty".into());
                }
                Transform::Split(s.clone())
            }
            TransformSpec::Date(d) => {
                check_format(&d.from)?;
                check_format(&d.to)?;
                Transform::Date { from: d.from.clone(), to: d.to.clone() }
            }
            TransformSpec::Map(m) => {
                let forward = Table { entries: m.table.clone(), default: m.default.clone() };
                let reverse = match &m.reverse {
                    Some(r) => Some(Table { entries: r.clone(), default: m.reverse_default.clone() }),
                    None => invert(&m.table).map(|entries| Table { entries, default: m.reverse_default.clone() }),
                };
                Transform::Map { forward, reverse }
            }
        })
    }

    /// Whether the transform can run backwards, and if not why.
    pub(crate) fn reversible(&self) -> Result<(), &'static str> {
        match self {
            Transform::Template(_) => Err("a template cannot be reversed; set direction: forward"),
            Transform::Map { reverse: None, .. } => {
                Err("its table maps several inputs to one output, so it cannot be inverted; give a \
                 `reverse` table or set direction: forward")
            }
            _ => Ok(()),
        }
    }

    /// Applies to one value (the transforms that take several sources,
    /// template and concat, are handled by the rule).
    pub(crate) fn apply(&self, v: Value, reverse: bool) -> Result<Value, String> {
        let text = |v: &Value| scalar_text(v).ok_or_else(|| format!("{} is not text", kind(v)));
        Ok(match (self, reverse) {
            (Transform::Trim, false) => Value::String(text(&v)?.trim().to_string()),
            (Transform::Upper, false) => Value::String(text(&v)?.to_uppercase()),
            (Transform::Lower, false) => Value::String(text(&v)?.to_lowercase()),
            (Transform::String, false) => Value::String(text(&v)?),
            (Transform::Trim | Transform::Upper | Transform::Lower | Transform::String, true) => v,
            (Transform::Number, false) => to_number(&v)?,
            (Transform::Number, true) => Value::String(text(&v)?),
            (Transform::Boolean, false) => to_bool(&v)?,
            (Transform::Boolean, true) => v,
            (Transform::Map { forward, .. }, false) => forward.look_up(&v)?,
            (Transform::Map { reverse: Some(r), .. }, true) => r.look_up(&v)?,
            (Transform::Map { reverse: None, .. }, true) => {
                return Err("the table has no reverse".into());
            }
            (Transform::Date { from, to }, false) => Value::String(reformat(&text(&v)?, from, to)?),
            (Transform::Date { from, to }, true) => Value::String(reformat(&text(&v)?, to, from)?),
            (Transform::Template(_) | Transform::Concat(_) | Transform::Split(_), _) => v,
        })
    }
}

fn invert(table: &BTreeMap<String, Value>) -> Option<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for (k, v) in table {
        let key = scalar_text(v)?;
        if out.insert(key, Value::String(k.clone())).is_some() {
            return None;
        }
    }
    Some(out)
}

fn to_number(v: &Value) -> Result<Value, String> {
    match v {
        Value::Number(_) => Ok(v.clone()),
        Value::String(s) => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Ok(Value::from(i));
            }
            serde_json::from_str::<serde_json::Number>(s)
                .map(Value::Number)
                .map_err(|_| format!("'{s}' is not a number"))
        }
        other => Err(format!("{} is not a number", kind(other))),
    }
}

fn to_bool(v: &Value) -> Result<Value, String> {
    match v {
        Value::Bool(_) => Ok(v.clone()),
        other => match scalar_text(other).as_deref().map(str::trim) {
            Some("true" | "TRUE" | "True" | "1" | "Y" | "y" | "yes" | "Yes") => Ok(Value::Bool(true)),
            Some("false" | "FALSE" | "False" | "0" | "N" | "n" | "no" | "No") => Ok(Value::Bool(false)),
            _ => Err("value is not a boolean (true/false, 1/0, Y/N, yes/no)".into()),
        },
    }
}

/// Parses `input` with format `from` as the richest type it holds (date-time
/// with offset, date-time, date) and writes it with format `to`.
fn reformat(input: &str, from: &str, to: &str) -> Result<String, String> {
    let input = input.trim();
    let mut out = String::new();
    // chrono reports a format needing a field the parsed value lacks (a time
    // for a date) through fmt::Error; write! surfaces it instead of panicking
    // as to_string() would.
    let written = if let Ok(dt) = DateTime::parse_from_str(input, from) {
        write!(out, "{}", dt.format(to))
    } else if let Ok(dt) = NaiveDateTime::parse_from_str(input, from) {
        write!(out, "{}", dt.format(to))
    } else if let Ok(d) = NaiveDate::parse_from_str(input, from) {
        write!(out, "{}", d.format(to))
    } else {
        // The value itself is left out: it is often a birth date.
        return Err(format!("value does not match the date format '{from}'"));
    };
    written.map_err(|_| format!("format '{to}' needs more than the value holds (format '{from}')"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_reformat_both_ways() {
        let t = Transform::compile(&TransformSpec::Date(DateSpec { from: "%m/%d/%Y".into(), to: "%Y-%m-%d".into() }))
            .unwrap();
        assert_eq!(t.apply(json!("08/15/1963"), false).unwrap(), json!("1963-08-15"));
        assert_eq!(t.apply(json!("1963-08-15"), true).unwrap(), json!("08/15/1963"));
        let refused = t.apply(json!("15.08.1963"), false).unwrap_err();
        assert!(!refused.contains("1963"), "a refused date must not be echoed: {refused}");
    }

    #[test]
    fn date_format_asking_for_a_time_from_a_date_is_an_error_not_a_panic() {
        assert_eq!(
            reformat("1963-08-15", "%Y-%m-%d", "%H:%M").unwrap_err(),
            "format '%H:%M' needs more than the value holds (format '%Y-%m-%d')"
        );
    }

    #[test]
    fn invalid_date_format_is_rejected_at_compile() {
        let spec = TransformSpec::Date(DateSpec { from: "%Q".into(), to: "%Y".into() });
        assert!(Transform::compile(&spec).is_err());
    }

    #[test]
    fn tables_invert_when_one_to_one_only() {
        let mut table = BTreeMap::new();
        table.insert("M".to_string(), json!("male"));
        table.insert("F".to_string(), json!("female"));
        let spec = MapSpec { table: table.clone(), default: None, reverse: None, reverse_default: None };
        let t = Transform::compile(&TransformSpec::Map(spec)).unwrap();
        assert!(t.reversible().is_ok());
        assert_eq!(t.apply(json!("female"), true).unwrap(), json!("F"));
        assert_eq!(t.apply(json!("X"), false).unwrap_err(), "value is not in the table and the table has no default");

        table.insert("U".to_string(), json!("male"));
        let spec = MapSpec { table, default: Some(json!("unknown")), reverse: None, reverse_default: None };
        let t = Transform::compile(&TransformSpec::Map(spec)).unwrap();
        assert!(t.reversible().is_err());
        assert_eq!(t.apply(json!("Z"), false).unwrap(), json!("unknown"));
    }

    #[test]
    fn numbers_parse_from_text() {
        let t = Transform::Number;
        assert_eq!(t.apply(json!("7.5"), false).unwrap(), json!(7.5));
        assert_eq!(t.apply(json!(" 12 "), false).unwrap(), json!(12));
        assert!(t.apply(json!("twelve"), false).is_err());
    }
}
