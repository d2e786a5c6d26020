//! `pkginfo.json` parsing and validation: errors name the file and the
//! field, never panic; what is accepted keeps every documented rule and
//! survives a round trip.

use std::path::Path;

use rand::rngs::StdRng;
use theseus::pkg::PkgInfo;

use crate::engine::Verdict;
use crate::json::mutate_json;

const FILE: &str = "fuzz/pkginfo.json";

pub const KEYS: &[&str] = &[
    "id",
    "requires",
    "service",
    "start",
    "env",
    "stopTimeoutSeconds",
    "healthCheck",
    "http",
    "tcp",
    "exec",
    "timeoutSeconds",
    "systemdUnits",
    "stateDirectory",
    "colour",
];

pub const STRINGS: &[&str] = &[
    "web--1.0.0",
    "web",
    "a--1",
    "a",
    "Web--1",
    "web--1-2",
    "-web--1",
    "we--b--1",
    "bin/run",
    "../../bin/sh",
    "/bin/sh",
    "",
    "127.0.0.1:${PORT}",
    "127.0.0.1:80",
    ":80",
    "[::1]:80",
    "host:99999",
    "http://127.0.0.1:${PORT}/",
    "ftp://x",
    "web.service",
    "../x.service",
    ".",
    "A=B",
    "\u{0}",
    "\u{feff}web",
];

/// Names: lowercase letters, digits and single hyphens, at most 63 bytes,
/// no hyphen at either end (the package id rules, restated).
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn version_ok(version: &str) -> bool {
    !version.is_empty()
        && version.len() <= 64
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+".contains(&b))
}

/// The documented rules of an accepted `pkginfo.json`.
fn rules(info: &PkgInfo) -> Result<(), String> {
    let id = &info.id;
    if !name_ok(id.name()) || !version_ok(id.version()) {
        return Err(format!("accepted the id {id}"));
    }
    if let Some(r) = info
        .requires
        .iter()
        .find(|r| !name_ok(r) || *r == id.name())
    {
        return Err(format!("accepted requires {r:?}"));
    }
    let plain = |u: &String| !u.is_empty() && u != "." && u != ".." && !u.contains(['/', '\0']);
    if let Some(u) = info.systemd_units.iter().find(|u| !plain(u)) {
        return Err(format!("accepted the unit {u:?}"));
    }
    let Some(service) = &info.service else {
        return Ok(());
    };
    if service.start.first().is_none_or(|s| s.is_empty()) || service.stop_timeout_seconds == 0 {
        return Err(format!("accepted the service {service:?}"));
    }
    if let Some(k) = service
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains(['=', '\0']))
    {
        return Err(format!("accepted the variable {k:?}"));
    }
    if let Some(h) = &service.health_check {
        let set = [h.http.is_some(), h.tcp.is_some(), h.exec.is_some()];
        let http_ok = h
            .http
            .as_ref()
            .is_none_or(|u| u.starts_with("http://") || u.starts_with("https://"));
        let exec_ok = h
            .exec
            .as_ref()
            .is_none_or(|a| a.first().is_some_and(|p| !p.is_empty()));
        if set.iter().filter(|s| **s).count() != 1 || !http_ok || !exec_ok || h.timeout_seconds == 0
        {
            return Err(format!("accepted the health check {h:?}"));
        }
    }
    Ok(())
}

/// Parses `input` and checks the outcome.
pub fn check(input: &[u8]) -> Verdict {
    match PkgInfo::parse(input, Path::new(FILE)) {
        Err(e) => {
            let text = e.to_string();
            if !text.starts_with(&format!("{FILE}: field ")) {
                return Err(format!(
                    "the error does not name the file and field: {text}"
                ));
            }
            Ok(())
        }
        Ok(info) => {
            rules(&info)?;
            let again = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
            match PkgInfo::parse(&again, Path::new(FILE)) {
                Ok(back) if back == info => Ok(()),
                Ok(back) => Err(format!("round trip changed it: {back:?}")),
                Err(e) => Err(format!("its own serialization is refused: {e}")),
            }
        }
    }
}

pub fn generate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let seed = crate::engine::pick(rng, corpus);
    mutate_json(rng, seed, corpus, KEYS, STRINGS)
}
