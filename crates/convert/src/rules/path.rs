//! Dot paths into JSON documents: `name[0].given[1]`, `telecom[system=phone].value`,
//! `phones[*].number`.
//!
//! A path is parsed once, when the rule file is loaded, into [`Step`]s. Reading
//! follows the steps and yields nothing (not an error) where the document has
//! no such element, because optional input is the norm in mapping. Writing
//! creates what is missing: objects for keys, padding objects for indexes, and
//! for a filter step an element that already satisfies the filter, so
//! `telecom[system=phone].value` on an empty document gives
//! `{"telecom":[{"system":"phone","value":...}]}`.

use std::fmt;

use serde_json::{Map, Value};

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Key(String),
    /// An array element by position.
    Index(usize),
    /// The first array element whose member at `key` (a dot path) equals `value`.
    Filter {
        /// Dot path inside the element, e.g. `system` or `type.text`.
        key: Vec<String>,
        /// The value compared with, as text (numbers and booleans compare by
        /// their JSON text).
        value: String,
    },
    /// Every array element (at most one per path).
    Each,
}

/// A parsed path. Displays as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    text: String,
    steps: Vec<Step>,
}

/// Why a path did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathSyntaxError(pub String);

impl fmt::Display for PathSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonPath {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<JsonPath, PathSyntaxError> {
        let err = |why: &str| PathSyntaxError(format!("path '{text}': {why}"));
        if text.trim().is_empty() {
            return Err(err("is empty"));
        }
        let mut steps = Vec::new();
        let mut rest = text;
        loop {
            // A key (possibly empty when the path continues with '[').
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let key = &rest[..end];
            if !key.is_empty() {
                steps.push(Step::Key(key.to_string()));
            } else if steps.is_empty() || !rest.starts_with('[') {
                return Err(err("empty member name"));
            }
            rest = &rest[end..];
            while let Some(after) = rest.strip_prefix('[') {
                let close = after.find(']').ok_or_else(|| err("'[' without ']'"))?;
                let inner = after[..close].trim();
                steps.push(parse_bracket(inner).map_err(|why| err(&why))?);
                rest = &after[close + 1..];
            }
            if rest.is_empty() {
                break;
            }
            match rest.strip_prefix('.') {
                Some(r) if !r.is_empty() => rest = r,
                _ => return Err(err("expected '.' or '[' after ']'")),
            }
        }
        if steps.iter().filter(|s| matches!(s, Step::Each)).count() > 1 {
            return Err(err("at most one [*] per path"));
        }
        Ok(JsonPath { text: text.to_string(), steps })
    }

    /// The steps.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Whether the path has a `[*]` step.
    pub fn has_each(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Each))
    }

    /// The value at this path (a path with `[*]` yields its first element;
    /// use [`JsonPath::get_each`] for all).
    pub fn get<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        get_steps(doc, &self.steps)
    }

    /// For a path with `[*]`: the value for each element of the array (None
    /// where that element lacks the rest of the path). For a path without:
    /// one item.
    pub fn get_each<'a>(&self, doc: &'a Value) -> Vec<Option<&'a Value>> {
        match self.steps.iter().position(|s| matches!(s, Step::Each)) {
            None => vec![self.get(doc)],
            Some(at) => match get_steps(doc, &self.steps[..at]) {
                Some(Value::Array(items)) => items.iter().map(|item| get_steps(item, &self.steps[at + 1..])).collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Writes `value` at this path, creating what is missing. `each_index`
    /// chooses the element for a `[*]` step. Fails (with the reason) where the
    /// document already has a non-container value in the way.
    pub fn set(&self, doc: &mut Value, value: Value, each_index: usize) -> Result<(), String> {
        set_steps(doc, &self.steps, value, each_index)
    }
}

fn parse_bracket(inner: &str) -> Result<Step, String> {
    if inner == "*" {
        return Ok(Step::Each);
    }
    if let Some((key, value)) = inner.split_once('=') {
        let key: Vec<String> = key.trim().split('.').map(|k| k.trim().to_string()).collect();
        if key.iter().any(String::is_empty) {
            return Err(format!("filter '[{inner}]' has an empty member name"));
        }
        let value = value.trim().trim_matches(|c| c == '\'' || c == '"').to_string();
        return Ok(Step::Filter { key, value });
    }
    inner
        .parse::<usize>()
        .map(Step::Index)
        .map_err(|_| format!("'[{inner}]' is neither an index, '*' nor a filter key=value"))
}

fn matches_filter(item: &Value, key: &[String], want: &str) -> bool {
    let mut cur = item;
    for k in key {
        match cur.get(k) {
            Some(v) => cur = v,
            None => return false,
        }
    }
    match cur {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    }
}

fn get_steps<'a>(doc: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut cur = doc;
    for step in steps {
        cur = match step {
            Step::Key(k) => cur.as_object()?.get(k)?,
            Step::Index(i) => cur.as_array()?.get(*i)?,
            Step::Each => cur.as_array()?.first()?,
            Step::Filter { key, value } => cur.as_array()?.iter().find(|item| matches_filter(item, key, value))?,
        };
    }
    match cur {
        Value::Null => None,
        v => Some(v),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a step needs as its container.
fn container_for(step: &Step) -> Value {
    match step {
        Step::Key(_) => Value::Object(Map::new()),
        _ => Value::Array(Vec::new()),
    }
}

fn set_steps(doc: &mut Value, steps: &[Step], value: Value, each_index: usize) -> Result<(), String> {
    let Some((step, rest)) = steps.split_first() else {
        *doc = value;
        return Ok(());
    };
    if doc.is_null() {
        *doc = container_for(step);
    }
    let next_default = rest.first().map(container_for).unwrap_or(Value::Null);
    let slot: &mut Value = match step {
        Step::Key(k) => {
            let kind = describe(doc);
            let obj = doc.as_object_mut().ok_or_else(|| format!("cannot set member '{k}' on {kind}"))?;
            obj.entry(k.clone()).or_insert(next_default)
        }
        Step::Index(_) | Step::Each | Step::Filter { .. } => {
            let kind = describe(doc);
            let arr = doc.as_array_mut().ok_or_else(|| format!("cannot index into {kind}"))?;
            let at = match step {
                Step::Index(i) => *i,
                Step::Each => each_index,
                Step::Filter { key, value } => match arr.iter().position(|item| matches_filter(item, key, value)) {
                    Some(p) => p,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        let mut cur = &mut fresh;
                        for (n, k) in key.iter().enumerate() {
                            let obj = cur.as_object_mut().ok_or("filter key path")?;
                            let leaf = n + 1 == key.len();
                            cur = obj.entry(k.clone()).or_insert(if leaf {
                                Value::String(value.clone())
                            } else {
                                Value::Object(Map::new())
                            });
                        }
                        arr.push(fresh);
                        arr.len() - 1
                    }
                },
                Step::Key(k) => return Err(format!("internal: member '{k}' handled as an index")),
            };
            // Padding elements are empty objects; `prune_empty` removes the
            // ones no rule filled before the document is returned.
            while arr.len() <= at {
                arr.push(next_default.clone());
            }
            &mut arr[at]
        }
    };
    set_steps(slot, rest, value, each_index)
}

/// Removes nulls, empty strings, empty objects and empty arrays, bottom up:
/// FHIR forbids empty elements, and index padding leaves empty objects.
pub fn prune_empty(v: &mut Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => {
            items.retain_mut(|i| !prune_empty(i));
            items.is_empty()
        }
        Value::Object(map) => {
            map.retain(|_, i| !prune_empty(i));
            map.is_empty()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> JsonPath {
        JsonPath::parse(s).unwrap()
    }

    #[test]
    fn parses_keys_indexes_filters_and_each() {
        assert_eq!(
            p("name[0].given[1]").steps(),
            &[Step::Key("name".into()), Step::Index(0), Step::Key("given".into()), Step::Index(1)]
        );
        assert_eq!(
            p("telecom[system=phone].value").steps()[1],
            Step::Filter { key: vec!["system".into()], value: "phone".into() }
        );
        assert_eq!(p("a[*].b").steps()[1], Step::Each);
        assert_eq!(p("a[0][1]").steps(), &[Step::Key("a".into()), Step::Index(0), Step::Index(1)]);
    }

    #[test]
    fn rejects_malformed_paths() {
        for bad in ["", "a..b", "a[", "a[x]", "a[0]b", ".a", "a[*].b[*]", "a.", "a[=x]"] {
            assert!(JsonPath::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn reads_through_filters_and_missing_elements() {
        let doc = json!({"telecom":[{"system":"email","value":"a@b"},{"system":"phone","value":"123"}],
                         "n": null});
        assert_eq!(p("telecom[system=phone].value").get(&doc), Some(&json!("123")));
        assert_eq!(p("telecom[1].value").get(&doc), Some(&json!("123")));
        assert_eq!(p("telecom[system=fax].value").get(&doc), None);
        assert_eq!(p("telecom[5].value").get(&doc), None);
        assert_eq!(p("n").get(&doc), None, "null counts as absent");
        assert_eq!(p("telecom[*].system").get_each(&doc), vec![Some(&json!("email")), Some(&json!("phone"))]);
    }

    #[test]
    fn writes_create_missing_structure() {
        let mut doc = Value::Null;
        p("telecom[system=phone].value").set(&mut doc, json!("123"), 0).unwrap();
        p("telecom[system=phone].use").set(&mut doc, json!("home"), 0).unwrap();
        p("name[1].family").set(&mut doc, json!("Doe"), 0).unwrap();
        p("ids[*].value").set(&mut doc, json!("x"), 1).unwrap();
        assert_eq!(
            doc,
            json!({"telecom":[{"system":"phone","value":"123","use":"home"}],
                   "name":[{}, {"family":"Doe"}], "ids":[{}, {"value":"x"}]})
        );
        prune_empty(&mut doc);
        assert_eq!(doc["name"], json!([{"family":"Doe"}]));
    }

    #[test]
    fn write_through_a_scalar_is_an_error_not_a_panic() {
        let mut doc = json!({"a": "text"});
        assert!(p("a.b").set(&mut doc, json!(1), 0).is_err());
        assert!(p("a[0]").set(&mut doc, json!(1), 0).is_err());
    }
}
