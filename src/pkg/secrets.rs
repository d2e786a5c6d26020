//! Secret references in package files, and their resolution on the node.
//!
//! A generated configuration package never holds a secret's value: where a
//! template used a secret parameter, its file holds the reference
//! `${secret:NAME}`. The node's agent reads the values (each a key of a
//! Secret that its target names) and, when it builds the generation, puts
//! a resolved copy of each such file, mode 0600, into the generation's
//! merged tree in place of the link into the shared package. The package
//! in the cache, and every archive a repository serves, keeps the
//! reference.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use zeroize::Zeroizing;

/// The opening of a secret reference: `${secret:NAME}`.
pub const REFERENCE: &str = "${secret:";

/// Resolved secret values, by package name, then parameter. Its `Debug`
/// shows the names, never a value.
#[derive(Clone, Default)]
pub struct SecretValues(BTreeMap<String, BTreeMap<String, Zeroizing<String>>>);

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: BTreeMap<&str, Vec<&str>> = self
            .0
            .iter()
            .map(|(p, v)| (p.as_str(), v.keys().map(String::as_str).collect()))
            .collect();
        f.debug_tuple("SecretValues").field(&names).finish()
    }
}

impl SecretValues {
    /// Sets `parameter` of the package named `package`.
    pub fn insert(&mut self, package: &str, parameter: &str, value: Zeroizing<String>) {
        self.0
            .entry(package.to_owned())
            .or_default()
            .insert(parameter.to_owned(), value);
    }

    /// Whether files of the package named `package` are resolved.
    pub fn has_package(&self, package: &str) -> bool {
        self.0.contains_key(package)
    }

    /// Whether nothing is to be resolved.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` (a file of the package named `package`) with every reference
    /// replaced by its value; `None` when it holds no reference.
    pub fn resolve(
        &self,
        package: &str,
        text: &str,
    ) -> Result<Option<Zeroizing<String>>, Unresolved> {
        if !text.contains(REFERENCE) {
            return Ok(None);
        }
        let values = self.0.get(package);
        let missing: BTreeSet<&str> = references(text)
            .into_iter()
            .filter(|name| values.is_none_or(|v| !v.contains_key(*name)))
            .collect();
        if !missing.is_empty() {
            return Err(Unresolved {
                parameters: missing.into_iter().map(str::to_owned).collect(),
            });
        }
        let values = values.expect("no parameter is missing");
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        let mut rest = text;
        while let Some((before, name, after)) = split_reference(rest) {
            out.push_str(before);
            out.push_str(&values[name]);
            rest = after;
        }
        out.push_str(rest);
        Ok(Some(out))
    }
}

/// Parameters a file refers to but no value was given for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unresolved {
    /// Their names, sorted.
    pub parameters: Vec<String>,
}

/// The parameter names `text` refers to, in order of appearance.
pub fn references(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some((_, name, after)) = split_reference(rest) {
        out.push(name);
        rest = after;
    }
    out
}

/// The text before the first well-formed reference, its name, and the text
/// after it. A `${secret:` with no closing brace, or with a name that is not
/// a parameter name, is not a reference and stays as it is.
fn split_reference(text: &str) -> Option<(&str, &str, &str)> {
    let mut from = 0;
    while let Some(i) = text[from..].find(REFERENCE) {
        let start = from + i;
        let name_at = start + REFERENCE.len();
        if let Some(len) = text[name_at..].find('}') {
            let name = &text[name_at..name_at + len];
            if is_parameter_name(name) {
                return Some((&text[..start], name, &text[name_at + len + 1..]));
            }
        }
        from = name_at;
    }
    None
}

fn is_parameter_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&str, &str, &str)]) -> SecretValues {
        let mut v = SecretValues::default();
        for (package, parameter, value) in pairs {
            v.insert(package, parameter, Zeroizing::new((*value).to_owned()));
        }
        v
    }

    #[test]
    fn references_are_replaced_by_their_values_and_nothing_else_changes() {
        let v = values(&[("web-config", "token", "s3cr$t}"), ("web-config", "b", "B")]);
        let cases: &[(&str, Option<&str>)] = &[
            ("no reference\n", None),
            ("token = ${secret:token}\n", Some("token = s3cr$t}\n")),
            (
                "${secret:token}${secret:b} and ${secret:b}",
                Some("s3cr$t}B and B"),
            ),
            // Not references: no closing brace, not a name.
            (
                "${secret:not a name} ${secret:",
                Some("${secret:not a name} ${secret:"),
            ),
        ];
        for (text, want) in cases {
            let got = v.resolve("web-config", text).unwrap();
            assert_eq!(got.as_deref().map(String::as_str), *want, "{text}");
        }
        assert_eq!(references("a ${secret:x} ${secret:y_2}"), ["x", "y_2"]);
    }

    #[test]
    fn a_reference_without_a_value_is_reported_by_name() {
        let v = values(&[("web-config", "token", "t")]);
        let err = v
            .resolve(
                "web-config",
                "${secret:token} ${secret:other} ${secret:more}",
            )
            .unwrap_err();
        assert_eq!(err.parameters, ["more", "other"]);
        // Values of another package do not resolve this one's files.
        let err = v.resolve("db-config", "${secret:token}").unwrap_err();
        assert_eq!(err.parameters, ["token"]);
    }

    #[test]
    fn debug_shows_names_and_never_a_value() {
        let v = values(&[("web-config", "token", "VALUE-XYZ")]);
        let shown = format!("{v:?}");
        assert!(
            shown.contains("web-config") && shown.contains("token"),
            "{shown}"
        );
        assert!(!shown.contains("VALUE-XYZ"), "{shown}");
    }
}
