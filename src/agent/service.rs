//! The services of a package set, resolved for one node: argv with `${KEY}`
//! substituted, the environment, the log file and the health probe.
//!
//! Several agents may share a machine (tests, the demo), so a service must
//! be able to listen on a per-agent port: the agent's `--env KEY=VALUE`
//! variables are passed to every service and substituted into its start argv
//! and its health check, together with `THESEUS_NODE_NAME` and
//! `THESEUS_ROOT`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pkg::vars::expand;
use crate::pkg::{PackageId, PkgInfo, Root};

use super::health::Probe;

/// Errors from resolving the services of a set.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// `${KEY}` names a variable nobody set.
    #[error(
        "package {id}: {field} uses ${{{key}}}, which neither the package's service.env nor the agent's --env sets; start the agent with --env {key}=VALUE"
    )]
    UnknownVariable {
        /// The package.
        id: PackageId,
        /// Where the reference is, e.g. `service.start[1]`.
        field: String,
        /// The variable name.
        key: String,
    },
    /// The package's metadata cannot be read.
    #[error(
        "package {id}: {message}; the cached package is damaged, remove it with `theseus pkg remove` and fetch it again"
    )]
    Unreadable {
        /// The package.
        id: PackageId,
        /// What went wrong.
        message: String,
    },
}

/// One service, ready to start: every path absolute, every `${KEY}`
/// substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The package that provides it.
    pub id: PackageId,
    /// The program and its arguments.
    pub argv: Vec<String>,
    /// Variables added to the agent's own environment.
    pub env: BTreeMap<String, String>,
    /// The working directory: the unpacked package.
    pub dir: PathBuf,
    /// Where stdout and stderr go (process supervisor).
    pub log_file: PathBuf,
    /// Time between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// The health probe, if the package declares one.
    pub probe: Option<Probe>,
    /// systemd unit files of the package (systemd supervisor).
    pub units: Vec<PathBuf>,
}

impl ServiceSpec {
    /// The service's name: its package name, stable across versions.
    pub fn name(&self) -> &str {
        self.id.name()
    }
}

/// The variables every service of this agent gets.
#[derive(Debug, Clone, Default)]
pub struct AgentEnv {
    /// `--env KEY=VALUE` pairs plus `THESEUS_NODE_NAME` and `THESEUS_ROOT`.
    pub vars: BTreeMap<String, String>,
}

impl AgentEnv {
    /// The environment of the agent on `node` with root `root` and extra
    /// `--env` pairs.
    pub fn new(node: &str, root: &Path, extra: &[(String, String)]) -> Self {
        let mut vars: BTreeMap<String, String> = extra.iter().cloned().collect();
        vars.insert("THESEUS_NODE_NAME".into(), node.into());
        vars.insert("THESEUS_ROOT".into(), root.display().to_string());
        Self { vars }
    }
}

/// The services of `ids` in set order (sorted ids), read from the cache.
pub fn services_of(
    root: &Root,
    ids: &[PackageId],
    env: &AgentEnv,
) -> Result<Vec<ServiceSpec>, ServiceError> {
    let mut out = Vec::new();
    for id in ids {
        let dir = root.package_dir(id);
        let info = PkgInfo::read_dir(&dir).map_err(|e| ServiceError::Unreadable {
            id: id.clone(),
            message: e.to_string(),
        })?;
        if let Some(spec) = resolve(&info, &dir, &root.path().join("logs"), env)? {
            out.push(spec);
        }
    }
    Ok(out)
}

/// Resolves the service of one package, if it has one.
pub fn resolve(
    info: &PkgInfo,
    dir: &Path,
    log_dir: &Path,
    env: &AgentEnv,
) -> Result<Option<ServiceSpec>, ServiceError> {
    let Some(service) = &info.service else {
        return Ok(None);
    };
    let mut vars = service.env.clone();
    vars.extend(env.vars.clone());
    let sub = |field: String, text: &str| substitute(text, &vars, &info.id, field);
    let mut argv = Vec::new();
    for (i, arg) in service.start.iter().enumerate() {
        argv.push(sub(format!("service.start[{i}]"), arg)?);
    }
    if !argv[0].starts_with('/') && argv[0].contains('/') {
        argv[0] = dir.join(&argv[0]).display().to_string();
    }
    let probe = match &service.health_check {
        Some(h) => Some(Probe::from_check(h, |f, t| {
            sub(format!("service.healthCheck.{f}"), t)
        })?),
        None => None,
    };
    Ok(Some(ServiceSpec {
        id: info.id.clone(),
        argv,
        env: vars,
        dir: dir.to_owned(),
        log_file: log_dir.join(format!("{}.log", info.id.name())),
        stop_timeout: Duration::from_secs(service.stop_timeout_seconds),
        probe,
        units: info
            .systemd_units
            .iter()
            .map(|u| dir.join("systemd").join(u))
            .collect(),
    }))
}

/// Replaces every `${KEY}` in `text` with its value from `vars`.
pub fn substitute(
    text: &str,
    vars: &BTreeMap<String, String>,
    id: &PackageId,
    field: String,
) -> Result<String, ServiceError> {
    expand(text, vars).map_err(|key| ServiceError::UnknownVariable {
        id: id.clone(),
        field,
        key: key.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn substitution_replaces_known_variables_and_names_unknown_ones() {
        let id: PackageId = "web--1".parse().unwrap();
        let v = vars(&[("PORT", "8081"), ("HOST", "127.0.0.1")]);
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("plain", Ok("plain")),
            ("http://${HOST}:${PORT}/v", Ok("http://127.0.0.1:8081/v")),
            ("${PORT}", Ok("8081")),
            ("unterminated ${PORT", Ok("unterminated ${PORT")),
            ("${NOPE}", Err("uses ${NOPE}")),
        ];
        for (text, expected) in cases {
            let got = substitute(text, &v, &id, "f".into()).map_err(|e| e.to_string());
            match expected {
                Ok(s) => assert_eq!(got.as_deref(), Ok(*s), "{text}"),
                Err(s) => assert!(got.unwrap_err().contains(s), "{text}"),
            }
        }
    }

    #[test]
    fn a_service_is_resolved_with_agent_variables_overriding_the_package() {
        let info = PkgInfo::parse(
            br#"{"id":"web--1","service":{"start":["bin/web","--port","${PORT}"],
                 "env":{"PORT":"80"},"stopTimeoutSeconds":3,
                 "healthCheck":{"http":"http://127.0.0.1:${PORT}/","timeoutSeconds":2}}}"#,
            Path::new("pkginfo.json"),
        )
        .unwrap();
        let env = AgentEnv::new("n1", Path::new("/r"), &[("PORT".into(), "9000".into())]);
        let spec = resolve(
            &info,
            Path::new("/r/packages/web--1"),
            Path::new("/r/logs"),
            &env,
        )
        .unwrap()
        .unwrap();
        assert_eq!(spec.argv, ["/r/packages/web--1/bin/web", "--port", "9000"]);
        assert_eq!(spec.env["THESEUS_NODE_NAME"], "n1");
        assert_eq!(spec.env["PORT"], "9000");
        assert_eq!(spec.log_file, Path::new("/r/logs/web.log"));
        assert_eq!(
            spec.probe.unwrap().target,
            super::super::health::Target::Http("http://127.0.0.1:9000/".into())
        );
    }
}
