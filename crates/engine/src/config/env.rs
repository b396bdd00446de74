//! `${VAR}` expansion from the environment, applied to every string of the
//! parsed TOML tree before it is compiled.
//!
//! Secrets (passwords, tokens, HMAC keys) stay out of the file this way. Only
//! names in upper case (`[A-Z_][A-Z0-9_]*`) are environment variables:
//! templates of destinations use `${control_id}`-style lower-case names of
//! their own, which pass through untouched. `$${` writes a literal `${`.
//!
//! Expansion happens on the tree rather than on the text so that a value
//! holding quotes or newlines cannot change the file's structure, and so an
//! unset variable is reported at the path of the value that uses it.

use super::ConfigErrors;

/// One step of the walk: a table key or an array index.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// Expands `${VAR}` in every string of `value`, in place. `lookup` reads the
/// environment (tests pass their own). Unset variables are reported at the
/// path of the value, written as the compiler writes paths
/// (`channel "adt-in".destination[1].url`).
pub(crate) fn expand_tree(
    value: &mut toml::Value,
    path: &mut Vec<Seg>,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut ConfigErrors,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match expand_str(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(message) => errors.push(display(path), message),
        },
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(Seg::Index(i));
                expand_tree(item, path, lookup, errors);
                path.pop();
            }
        }
        toml::Value::Table(table) => {
            for (key, item) in table.iter_mut() {
                path.push(Seg::Key(key.clone()));
                expand_tree(item, path, lookup, errors);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A raw TOML path in the compiler's notation: `channels.NAME` becomes
/// `channel "NAME"` and a channel's `destinations[i]` becomes
/// `destination[i]`.
fn display(segs: &[Seg]) -> String {
    let mut out = super::de::PathBuf::root();
    let mut rest = segs;
    if let [Seg::Key(root), Seg::Key(name), tail @ ..] = segs
        && root == "channels"
    {
        out = super::de::PathBuf::from_display(format!("channel {name:?}"));
        rest = tail;
        if let [Seg::Key(d), Seg::Index(i), tail @ ..] = rest
            && d == "destinations"
        {
            out = super::de::PathBuf::from_display(format!("{out}.destination[{i}]"));
            rest = tail;
        }
    }
    for seg in rest {
        match seg {
            Seg::Key(k) => out.push_key(k),
            Seg::Index(i) => out.push_index(*i),
        }
    }
    out.to_string()
}

/// Expands one string. Errors name every unset variable in it.
pub(crate) fn expand_str(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut missing: Vec<&str> = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("$${") {
            // `$${` is an escaped `${`.
            out.push_str("${");
            rest = after;
            continue;
        }
        if let Some(body) = tail.strip_prefix("${")
            && let Some(end) = body.find('}')
        {
            let name = &body[..end];
            if is_env_name(name) {
                match lookup(name) {
                    Some(v) => out.push_str(&v),
                    None => missing.push(name),
                }
            } else {
                // A template placeholder of some component: keep it as is.
                out.push_str(&tail[..end + 3]);
            }
            rest = &body[end + 1..];
            continue;
        }
        out.push('$');
        rest = &tail[1..];
    }
    out.push_str(rest);
    match missing.as_slice() {
        [] => Ok(out),
        [one] => Err(format!("environment variable {one} is not set")),
        many => Err(format!("environment variables {} are not set", many.join(", "))),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cr3t".into()),
            "PORT" => Some("2575".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_upper_case_names() {
        assert_eq!(expand_str("Bearer ${TOKEN}", &env).unwrap(), "Bearer s3cr3t");
        assert_eq!(expand_str("127.0.0.1:${PORT}", &env).unwrap(), "127.0.0.1:2575");
        assert_eq!(expand_str("no vars, $5 only", &env).unwrap(), "no vars, $5 only");
    }

    #[test]
    fn leaves_template_placeholders_alone() {
        assert_eq!(expand_str("${control_id}.hl7", &env).unwrap(), "${control_id}.hl7");
        assert_eq!(expand_str("${Mixed}", &env).unwrap(), "${Mixed}");
    }

    #[test]
    fn escaped_dollar_brace_is_literal() {
        assert_eq!(expand_str("$${TOKEN}", &env).unwrap(), "${TOKEN}");
    }

    #[test]
    fn unset_variables_are_named() {
        assert_eq!(expand_str("${NOPE}", &env).unwrap_err(), "environment variable NOPE is not set");
        assert_eq!(expand_str("${A1}:${TOKEN}:${B2}", &env).unwrap_err(), "environment variables A1, B2 are not set");
    }

    #[test]
    fn tree_errors_use_the_compilers_path_notation() {
        let mut value: toml::Value = toml::Value::Table(
            "[channels.lab]\ndestinations = [{ url = \"${NOPE}\" }]\n[store]\nurl = \"${NOPE2}\"\n"
                .parse::<toml::Table>()
                .unwrap(),
        );
        let mut errors = ConfigErrors::default();
        expand_tree(&mut value, &mut Vec::new(), &env, &mut errors);
        let got: Vec<String> = errors.0.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            [
                "channel \"lab\".destination[0].url: environment variable NOPE is not set",
                "store.url: environment variable NOPE2 is not set",
            ]
        );
    }

    #[test]
    fn unterminated_brace_is_literal() {
        assert_eq!(expand_str("${TOKEN", &env).unwrap(), "${TOKEN");
    }
}
