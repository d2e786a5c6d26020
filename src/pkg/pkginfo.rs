//! `pkginfo.json`: what a package declares about itself.
//!
//! ```json
//! {
//!   "id": "nginx--1.25.3",
//!   "requires": ["openssl"],
//!   "service": {
//!     "start": ["bin/nginx", "-g", "daemon off;"],
//!     "env": {"NGINX_PORT": "8080"},
//!     "stopTimeoutSeconds": 10,
//!     "healthCheck": {"http": "http://127.0.0.1:8080/", "timeoutSeconds": 5}
//!   },
//!   "systemdUnits": ["nginx.service"],
//!   "stateDirectory": true
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::id::{PackageId, validate_name};

/// The file name of the metadata at the root of every package.
pub const FILE_NAME: &str = "pkginfo.json";

/// Errors from reading or checking a `pkginfo.json`.
#[derive(Debug, thiserror::Error)]
pub enum PkgInfoError {
    /// The file could not be read.
    #[error("cannot read {file}: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The JSON does not match the schema; `field` is a path like `service.start`.
    #[error("{file}: field {field}: {message}")]
    Field {
        /// The file.
        file: PathBuf,
        /// The offending field, as a dotted path (`.` for the document).
        field: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The parsed contents of `pkginfo.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PkgInfo {
    /// The package id; must match the archive's name.
    pub id: PackageId,
    /// Names of packages that must be in the same set.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The long-running service, if the package has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Service>,
    /// systemd unit files, found under `systemd/` in the package.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub systemd_units: Vec<String>,
    /// Whether the package wants `state/NAME/`, kept across versions.
    #[serde(default)]
    pub state_directory: bool,
}

/// A service the node agent starts, stops and health-checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    /// The argv to start it; a relative `start[0]` is inside the package.
    pub start: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Seconds between SIGTERM and SIGKILL when stopping.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_seconds: u64,
    /// How to tell that it is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
}

/// One health probe: exactly one of `http`, `tcp` and `exec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    /// An `http://` or `https://` URL that must answer 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A `HOST:PORT` that must accept a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// An argv that must exit 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// Seconds one probe may take.
    #[serde(default = "default_health_timeout")]
    pub timeout_seconds: u64,
}

fn default_stop_timeout() -> u64 {
    30
}

fn default_health_timeout() -> u64 {
    10
}

impl PkgInfo {
    /// Reads and checks `pkginfo.json` at `file`.
    pub fn read(file: &Path) -> Result<Self, PkgInfoError> {
        let bytes = std::fs::read(file).map_err(|source| PkgInfoError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(&bytes, file)
    }

    /// Reads `pkginfo.json` from the root of the package directory `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self, PkgInfoError> {
        Self::read(&dir.join(FILE_NAME))
    }

    /// Parses and checks the bytes of a `pkginfo.json`; `file` names it in errors.
    pub fn parse(bytes: &[u8], file: &Path) -> Result<Self, PkgInfoError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let info: PkgInfo = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            PkgInfoError::Field {
                file: file.to_owned(),
                field,
                message: e.into_inner().to_string(),
            }
        })?;
        info.check()
            .map_err(|(field, message)| PkgInfoError::Field {
                file: file.to_owned(),
                field,
                message,
            })?;
        Ok(info)
    }

    /// Checks what serde cannot: names, argv, timeouts, unit file names.
    fn check(&self) -> Result<(), (String, String)> {
        for (i, name) in self.requires.iter().enumerate() {
            validate_name(name).map_err(|e| (format!("requires[{i}]"), e.to_string()))?;
            if name == self.id.name() {
                return Err((
                    format!("requires[{i}]"),
                    "a package cannot require itself".into(),
                ));
            }
        }
        for (i, unit) in self.systemd_units.iter().enumerate() {
            if !is_plain_file_name(unit) {
                return Err((
                    format!("systemdUnits[{i}]"),
                    format!("{unit:?} must be a plain file name under systemd/"),
                ));
            }
        }
        if let Some(service) = &self.service {
            service.check()?;
        }
        Ok(())
    }
}

impl Service {
    fn check(&self) -> Result<(), (String, String)> {
        if self.start.first().is_none_or(|a| a.is_empty()) {
            return Err(("service.start".into(), "needs a program to run".into()));
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err((
                    format!("service.env.{key}"),
                    "is not a valid variable name".into(),
                ));
            }
        }
        if self.stop_timeout_seconds == 0 {
            return Err((
                "service.stopTimeoutSeconds".into(),
                "must be above zero".into(),
            ));
        }
        match &self.health_check {
            Some(h) => h.check(),
            None => Ok(()),
        }
    }
}

impl HealthCheck {
    fn check(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("service.healthCheck.{f}");
        let set = [self.http.is_some(), self.tcp.is_some(), self.exec.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err((field("."), "set exactly one of http, tcp and exec".into()));
        }
        if let Some(url) = &self.http
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err((field("http"), format!("{url:?} is not an http(s) URL")));
        }
        if let Some(addr) = &self.tcp
            && !is_tcp_address(addr)
        {
            return Err((
                field("tcp"),
                format!("{addr:?} is not HOST:PORT (the port may be a variable: HOST:${{PORT}})"),
            ));
        }
        if let Some(argv) = &self.exec
            && argv.first().is_none_or(|a| a.is_empty())
        {
            return Err((field("exec"), "needs a program to run".into()));
        }
        if self.timeout_seconds == 0 {
            return Err((field("timeoutSeconds"), "must be above zero".into()));
        }
        Ok(())
    }
}

/// Whether `addr` has the shape `HOST:PORT`. The agent substitutes `${KEY}`
/// variables in health checks when it starts the service, so the port (or
/// the whole address) may be one placeholder whose value is known only then.
fn is_tcp_address(addr: &str) -> bool {
    is_placeholder(addr)
        || addr.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && (port.parse::<u16>().is_ok() || is_placeholder(port))
        })
}

/// Whether `text` is exactly one `${KEY}` placeholder.
fn is_placeholder(text: &str) -> bool {
    text.strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
        .is_some_and(|key| !key.is_empty() && !key.contains(['$', '{', '}', '=', '\0']))
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PkgInfo, String> {
        PkgInfo::parse(text.as_bytes(), Path::new("pkg/pkginfo.json")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_pkginfo_parses() {
        let info = parse(
            r#"{"id":"nginx--1.2","requires":["openssl"],"stateDirectory":true,
                "systemdUnits":["nginx.service"],
                "service":{"start":["bin/nginx"],"env":{"A":"b"},"stopTimeoutSeconds":5,
                           "healthCheck":{"tcp":"127.0.0.1:80","timeoutSeconds":2}}}"#,
        )
        .unwrap();
        assert_eq!(info.id.to_string(), "nginx--1.2");
        let service = info.service.unwrap();
        assert_eq!(
            service.health_check.unwrap().tcp.as_deref(),
            Some("127.0.0.1:80")
        );
        assert!(info.state_directory);
    }

    #[test]
    fn a_tcp_check_may_take_its_port_or_address_from_a_variable() {
        let check = |tcp: &str| {
            parse(&format!(
                r#"{{"id":"a--1","service":{{"start":["x"],"healthCheck":{{"tcp":{tcp:?}}}}}}}"#
            ))
        };
        for ok in [
            "127.0.0.1:${PORT}",
            "${HOST}:${PORT}",
            "${ADDRESS}",
            "localhost:80",
        ] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
        for bad in [
            "127.0.0.1:${}",
            "127.0.0.1:${PORT",
            "127.0.0.1:x${PORT}",
            ":80",
            "nope",
        ] {
            let err = check(bad).unwrap_err();
            assert!(err.contains("is not HOST:PORT"), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{"requires":[]}"#, "field .: missing field `id`"),
            (r#"{"id":"Bad"}"#, "field id:"),
            (r#"{"id":"a--1","requires":[3]}"#, "field requires[0]:"),
            (
                r#"{"id":"a--1","requires":["a"]}"#,
                "field requires[0]: a package cannot require itself",
            ),
            (r#"{"id":"a--1","colour":1}"#, "unknown field `colour`"),
            (
                r#"{"id":"a--1","service":{"start":[]}}"#,
                "field service.start:",
            ),
            (
                r#"{"id":"a--1","service":{"start":["x"],"stopTimeoutSeconds":"9"}}"#,
                "field service.stopTimeoutSeconds:",
            ),
            (
                r#"{"id":"a--1","service":{"start":["x"],"healthCheck":{"tcp":"nope"}}}"#,
                "field service.healthCheck.tcp:",
            ),
            (
                r#"{"id":"a--1","service":{"start":["x"],"healthCheck":{"http":"http://x","exec":["y"]}}}"#,
                "exactly one of",
            ),
            (
                r#"{"id":"a--1","service":{"start":["x"],"healthCheck":{"exec":["y"],"timeoutSeconds":0}}}"#,
                "field service.healthCheck.timeoutSeconds:",
            ),
            (
                r#"{"id":"a--1","systemdUnits":["../x.service"]}"#,
                "field systemdUnits[0]:",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with("pkg/pkginfo.json: "), "{err}");
            assert!(err.contains(expected), "{text}: {err} lacks {expected}");
        }
    }
}
