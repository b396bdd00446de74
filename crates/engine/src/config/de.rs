//! Deserialising one component of the file at a time, so that every error
//! carries its full path and one bad component does not hide the others.
//!
//! serde stops at the first error of a value; the config is therefore cut
//! into components (the store table, one channel's source, one transform
//! step, one destination ...) and each is deserialised on its own with
//! `serde_path_to_error`, whose path is appended to the component's.

use std::fmt;

use serde::de::DeserializeOwned;

use super::ConfigErrors;

/// A path in the file's terms, built as the compiler descends:
/// `channel "adt-in".destination[1].url`.
#[derive(Debug, Clone, Default)]
pub struct PathBuf {
    text: String,
    marks: Vec<usize>,
}

impl PathBuf {
    /// An empty path (the root of the file).
    pub fn root() -> Self {
        PathBuf::default()
    }

    /// A path starting at `text` (already in display form).
    pub fn from_display(text: impl Into<String>) -> Self {
        PathBuf { text: text.into(), marks: Vec::new() }
    }

    /// Descends into table key `key`.
    pub fn push_key(&mut self, key: &str) {
        self.marks.push(self.text.len());
        if !self.text.is_empty() {
            self.text.push('.');
        }
        if is_bare_key(key) {
            self.text.push_str(key);
        } else {
            self.text.push_str(&format!("{key:?}"));
        }
    }

    /// Descends into array element `index`.
    pub fn push_index(&mut self, index: usize) {
        self.marks.push(self.text.len());
        self.text.push_str(&format!("[{index}]"));
    }

    /// Goes back up one level.
    pub fn pop(&mut self) {
        if let Some(len) = self.marks.pop() {
            self.text.truncate(len);
        }
    }

    /// This path extended with `key` (without changing `self`).
    pub fn key(&self, key: &str) -> PathBuf {
        let mut p = self.clone();
        p.push_key(key);
        p
    }

    /// This path extended with `[index]`.
    pub fn index(&self, index: usize) -> PathBuf {
        let mut p = self.clone();
        p.push_index(index);
        p
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for PathBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Deserialises `value` as a `T`, recording the first error at `path` plus
/// the position inside `value` where serde stopped. `None` on error.
pub fn component<T: DeserializeOwned>(value: toml::Value, path: &PathBuf, errors: &mut ConfigErrors) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(err) => {
            let mut full = path.clone();
            for segment in err.path().iter() {
                match segment {
                    serde_path_to_error::Segment::Seq { index } => full.push_index(*index),
                    serde_path_to_error::Segment::Map { key } => full.push_key(key),
                    serde_path_to_error::Segment::Enum { variant } => full.push_key(variant),
                    serde_path_to_error::Segment::Unknown => {}
                }
            }
            let (full, message) = refine(full, &err.into_inner().to_string());
            errors.push(full.to_string(), message);
            None
        }
    }
}

/// Makes serde's messages read well after a path: drops the `in `key``
/// suffix the TOML deserialiser adds (the path says it better) and moves
/// the name of an unknown or missing field into the path.
fn refine(mut path: PathBuf, message: &str) -> (PathBuf, String) {
    let message = match message.find("\nin `") {
        Some(i) => &message[..i],
        None => message,
    }
    .trim();
    for (prefix, what) in [("unknown field `", "unknown field"), ("missing field `", "required")] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            // serde_path_to_error already put an unknown field in the path.
            if !path.as_str().ends_with(field) {
                path.push_key(field);
            }
            let tail = rest[end + 1..].trim_start_matches(',').trim();
            let message = if tail.is_empty() { what.to_string() } else { format!("{what}, {tail}") };
            return (path, message);
        }
    }
    (path, message.to_string())
}

/// The type name of a TOML value, for messages.
pub fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Probe {
        port: u16,
        #[serde(default)]
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        x: u32,
    }

    fn errors_of(text: &str) -> Vec<String> {
        let value = toml::Value::Table(text.parse::<toml::Table>().unwrap());
        let mut errors = ConfigErrors::default();
        let path = PathBuf::from_display("channel \"a\"").key("source");
        assert!(component::<Probe>(value, &path, &mut errors).is_none());
        errors.0.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn paths_name_the_field() {
        assert_eq!(
            errors_of("port = 70000"),
            ["channel \"a\".source.port: invalid value: integer `70000`, expected u16"]
        );
        assert_eq!(
            errors_of("port = 1\nitems = [{x = 1}, {x = \"a\"}]"),
            ["channel \"a\".source.items[1].x: invalid type: string \"a\", expected u32"]
        );
    }

    #[test]
    fn unknown_and_missing_fields_go_into_the_path() {
        assert_eq!(
            errors_of("port = 1\nbogus = 2"),
            ["channel \"a\".source.bogus: unknown field, expected `port` or `items`"]
        );
        assert_eq!(errors_of(""), ["channel \"a\".source.port: required"]);
    }

    #[test]
    fn keys_needing_quotes_are_quoted() {
        let p = PathBuf::root().key("headers").key("X Api Key");
        assert_eq!(p.to_string(), "headers.\"X Api Key\"");
    }
}
