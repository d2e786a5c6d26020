//! Package ids: `NAME--VERSION`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Errors from parsing a package id or name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The text has no `--` between name and version.
    #[error("package id {0:?} is not NAME--VERSION (for example nginx--1.25.3)")]
    NoSeparator(String),
    /// The name part breaks the naming rules.
    #[error(
        "package name {0:?} is invalid: use 1-63 lowercase letters, digits and single hyphens, not starting or ending with a hyphen"
    )]
    BadName(String),
    /// The version part breaks the version rules.
    #[error(
        "package version {0:?} is invalid: use 1-64 letters, digits, '.', '_' or '+', and no hyphen"
    )]
    BadVersion(String),
}

/// A package id, `NAME--VERSION`, e.g. `nginx--1.25.3`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PackageId {
    name: String,
    version: String,
}

impl PackageId {
    /// Builds an id from its parts, checking both.
    pub fn new(name: &str, version: &str) -> Result<Self, IdError> {
        validate_name(name)?;
        validate_version(version)?;
        Ok(Self {
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }

    /// The package name, e.g. `nginx`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version, e.g. `1.25.3`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// Checks a package name: lowercase letters, digits and single hyphens, at
/// most 63 characters, no hyphen at either end.
pub fn validate_name(name: &str) -> Result<(), IdError> {
    let bad = || IdError::BadName(name.to_owned());
    if name.is_empty() || name.len() > 63 || name.starts_with('-') || name.ends_with('-') {
        return Err(bad());
    }
    if name.contains("--") {
        return Err(bad());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad());
    }
    Ok(())
}

fn validate_version(version: &str) -> Result<(), IdError> {
    let ok = !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadVersion(version.to_owned()))
    }
}

impl FromStr for PackageId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Names never contain "--", so the first "--" is the separator.
        let (name, version) = s
            .split_once("--")
            .ok_or_else(|| IdError::NoSeparator(s.to_owned()))?;
        Self::new(name, version)
    }
}

impl fmt::Display for PackageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}--{}", self.name, self.version)
    }
}

impl Serialize for PackageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PackageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_naming_rules() {
        let cases: &[(&str, bool)] = &[
            ("nginx--1.25.3", true),
            ("my-app--2.0+build_7", true),
            ("a--1", true),
            ("x1-y2--V1.0", true),
            ("nginx", false),
            ("Nginx--1", false),
            ("my--app--1", false),
            ("-app--1", false),
            ("app---1", false),
            ("app--", false),
            ("--1", false),
            ("app--1-2", false),
            ("app--1/2", false),
            ("app--1 2", false),
        ];
        for (text, ok) in cases {
            assert_eq!(text.parse::<PackageId>().is_ok(), *ok, "{text}");
        }
    }

    #[test]
    fn names_and_versions_have_length_limits() {
        let name63 = "a".repeat(63);
        let version64 = "1".repeat(64);
        assert!(
            format!("{name63}--{version64}")
                .parse::<PackageId>()
                .is_ok()
        );
        assert!(format!("a{name63}--1").parse::<PackageId>().is_err());
        assert!(format!("a--1{version64}").parse::<PackageId>().is_err());
    }

    #[test]
    fn an_id_prints_and_serializes_as_its_text() {
        let id: PackageId = "nginx--1.25.3".parse().unwrap();
        assert_eq!(id.name(), "nginx");
        assert_eq!(id.version(), "1.25.3");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"nginx--1.25.3\"");
        let back: PackageId = serde_json::from_str("\"nginx--1.25.3\"").unwrap();
        assert_eq!(back, id);
    }
}
