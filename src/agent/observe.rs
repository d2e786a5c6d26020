//! What the node's services are doing, for people: per service of the
//! active set, whether it runs, its process, CPU seconds, resident memory,
//! how often the agent restarted it, and the tail of its log. Served on the
//! agent's authenticated API (`GET /services.json`, `GET /logs/NAME`) and
//! as Prometheus metrics (`GET /metrics`); the operator's dashboard proxies
//! the first two onto a node's page.
//!
//! CPU and memory are summed over the service's process group (the process
//! supervisor starts each service as a group leader; for systemd units,
//! the group of the unit's main process), read from `/proc`: `utime` and
//! `stime` of `/proc/PID/stat` in the kernel's fixed `USER_HZ` of 100 ticks
//! a second, and `VmRSS` of `/proc/PID/status`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::service::ServiceSpec;
use super::supervisor::Supervisor;

/// Lines of a log the API returns at most.
pub const MAX_LINES: usize = 1000;

/// Lines of a log the API returns when not told.
pub const DEFAULT_LINES: usize = 100;

/// Bytes at the end of a log read for its tail: a line longer than this
/// is cut.
const TAIL_BYTES: u64 = 256 * 1024;

/// Ticks of `/proc/PID/stat`'s times per second: the kernel reports them
/// in `USER_HZ`, 100 on every Linux architecture Theseus builds for.
const USER_HZ: f64 = 100.0;

/// How often the agent started each service again after finding it not
/// running, by service name, since the agent started. Shared by the
/// switcher (which counts) and the local API (which reports).
#[derive(Debug, Clone, Default)]
pub struct Restarts(Arc<Mutex<BTreeMap<String, u64>>>);

impl Restarts {
    /// Counts one restart of `service`.
    pub fn bump(&self, service: &str) {
        let mut counts = self.0.lock().expect("restart counts lock");
        *counts.entry(service.to_owned()).or_default() += 1;
    }

    /// The restarts of `service` so far.
    pub fn of(&self, service: &str) -> u64 {
        self.0
            .lock()
            .expect("restart counts lock")
            .get(service)
            .copied()
            .unwrap_or_default()
    }
}

/// One service of the active set, as `GET /services.json` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    /// The service's name (its package's name).
    pub name: String,
    /// The package id providing it.
    pub id: String,
    /// Whether it runs.
    pub running: bool,
    /// Its main process, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Processes in its group.
    #[serde(default)]
    pub processes: u32,
    /// CPU time of its processes, user and system, in seconds.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Resident memory of its processes, in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Times the agent started it again after finding it not running.
    #[serde(default)]
    pub restarts: u64,
}

/// The body of `GET /services.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicesReport {
    /// The active set's services, in start order.
    pub services: Vec<ServiceReport>,
}

/// What a process group uses.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub processes: u32,
    pub cpu_seconds: f64,
    pub memory_bytes: u64,
}

/// Reports the services `services` (the active set's) as they run now.
pub async fn report(
    services: &[ServiceSpec],
    supervisor: &dyn Supervisor,
    restarts: &Restarts,
) -> ServicesReport {
    let mut out = Vec::with_capacity(services.len());
    for svc in services {
        let running = supervisor.is_running(svc).await;
        let pid = if running {
            supervisor.main_pid(svc).await
        } else {
            None
        };
        let usage = match pid {
            Some(pid) => tokio::task::spawn_blocking(move || group_usage(Path::new("/proc"), pid))
                .await
                .unwrap_or_default(),
            None => Usage::default(),
        };
        out.push(ServiceReport {
            name: svc.name().to_owned(),
            id: svc.id.to_string(),
            running,
            pid,
            processes: usage.processes,
            cpu_seconds: usage.cpu_seconds,
            memory_bytes: usage.memory_bytes,
            restarts: restarts.of(svc.name()),
        });
    }
    ServicesReport { services: out }
}

/// The usage of the process group led by `pid` (and of `pid` itself,
/// should it have left its group), read under `proc` (`/proc`).
pub fn group_usage(proc: &Path, pid: u32) -> Usage {
    let mut usage = Usage::default();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return usage;
    };
    for entry in entries.flatten() {
        let Some(this) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let Ok(stat) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some(fields) = stat_fields(&stat) else {
            continue;
        };
        if fields.pgrp != pid && this != pid {
            continue;
        }
        usage.processes += 1;
        usage.cpu_seconds += (fields.utime + fields.stime) as f64 / USER_HZ;
        usage.memory_bytes += std::fs::read_to_string(dir.join("status"))
            .ok()
            .and_then(|s| vm_rss(&s))
            .unwrap_or_default();
    }
    usage
}

/// The fields of `/proc/PID/stat` used here.
#[derive(Debug, PartialEq)]
struct StatFields {
    pgrp: u32,
    utime: u64,
    stime: u64,
}

/// Parses `/proc/PID/stat`: the command name (field 2) is in parentheses
/// and may hold spaces and parentheses, so fields are counted after its
/// last `)`; field 5 is the process group, 14 and 15 the user and system
/// times.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (the state).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(StatFields {
        pgrp: field(5)?.parse().ok()?,
        utime: field(14)?.parse().ok()?,
        stime: field(15)?.parse().ok()?,
    })
}

/// `VmRSS` of `/proc/PID/status`, in bytes (the kernel writes kB).
fn vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The last `lines` lines of the file at `path` (at most [`MAX_LINES`]),
/// read from its last [`TAIL_BYTES`]; a missing file has none. Invalid
/// UTF-8 is replaced, never refused: a log holds what the service wrote.
pub fn tail(path: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let lines = lines.min(MAX_LINES);
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let start = len.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::with_capacity((len - start) as usize);
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    // A read that began mid-file starts in the middle of a line.
    if start > 0 && !all.is_empty() {
        all.remove(0);
    }
    let skip = all.len().saturating_sub(lines);
    Ok(all[skip..].iter().map(|l| (*l).to_owned()).collect())
}

/// A metric family: name, type, help, and its value for a service.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ServiceReport) -> String,
);

/// The services as Prometheus metrics (text exposition format 0.0.4).
pub fn prometheus(node: &str, report: &ServicesReport) -> String {
    let mut out = String::new();
    let families: [Family; 5] = [
        (
            "theseus_service_up",
            "gauge",
            "Whether the service runs (1) or not (0).",
            |s| u8::from(s.running).to_string(),
        ),
        (
            "theseus_service_cpu_seconds_total",
            "counter",
            "CPU time of the service's processes, user and system.",
            |s| format!("{:.2}", s.cpu_seconds),
        ),
        (
            "theseus_service_memory_bytes",
            "gauge",
            "Resident memory of the service's processes.",
            |s| s.memory_bytes.to_string(),
        ),
        (
            "theseus_service_processes",
            "gauge",
            "Processes in the service's group.",
            |s| s.processes.to_string(),
        ),
        (
            "theseus_service_restarts_total",
            "counter",
            "Times the agent started the service again after finding it not running.",
            |s| s.restarts.to_string(),
        ),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in &report.services {
            let _ = writeln!(
                out,
                "{name}{{node=\"{}\",service=\"{}\",package=\"{}\"}} {}",
                label(node),
                label(&s.name),
                label(&s.id),
                value(s)
            );
        }
    }
    out
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        // A command name with spaces and a parenthesis of its own.
        let stat = "4242 (we (ird) name) S 1 4200 4200 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000000 300 18446744073709551615";
        assert_eq!(
            stat_fields(stat),
            Some(StatFields {
                pgrp: 4200,
                utime: 250,
                stime: 75
            })
        );
        assert_eq!(stat_fields("garbage"), None);
        assert_eq!(vm_rss("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048 * 1024));
        assert_eq!(vm_rss("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn a_process_group_is_summed_from_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        let write = |pid: u32, pgrp: u32, utime: u64, rss_kb: u64| {
            let d = proc.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(
                d.join("stat"),
                format!(
                    "{pid} (sh) S 1 {pgrp} {pgrp} 0 -1 0 0 0 0 0 {utime} 50 0 0 20 0 1 0 1 1 1"
                ),
            )
            .unwrap();
            std::fs::write(d.join("status"), format!("VmRSS:\t{rss_kb} kB\n")).unwrap();
        };
        write(100, 100, 150, 1000); // the leader
        write(101, 100, 50, 500); // its child
        write(200, 200, 999, 9999); // someone else
        std::fs::create_dir_all(proc.join("self")).unwrap();
        let usage = group_usage(proc, 100);
        assert_eq!(usage.processes, 2);
        assert!((usage.cpu_seconds - 3.0).abs() < 1e-9, "{usage:?}");
        assert_eq!(usage.memory_bytes, 1500 * 1024);
        assert_eq!(group_usage(proc, 300), Usage::default(), "no such group");
    }

    #[test]
    fn a_real_process_group_is_measured() {
        // This test's own process: a group of at least one, using memory.
        let me = std::process::id();
        let usage = group_usage(Path::new("/proc"), me);
        assert!(usage.processes >= 1, "{usage:?}");
        assert!(usage.memory_bytes > 1024 * 1024, "{usage:?}");
    }

    #[test]
    fn the_tail_of_a_log_is_its_last_lines_even_past_the_read_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.log");
        assert!(tail(&path, 10).unwrap().is_empty(), "no log yet");
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("line {i:05} {}\n", "x".repeat(20)));
        }
        std::fs::write(&path, &text).unwrap();
        let last = tail(&path, 3).unwrap();
        assert_eq!(
            last,
            [19_997, 19_998, 19_999].map(|i| format!("line {i:05} {}", "x".repeat(20)))
        );
        // More lines than the window holds: whole lines only.
        let many = tail(&path, MAX_LINES * 10).unwrap();
        assert_eq!(many.len(), MAX_LINES);
        assert!(many.iter().all(|l| l.starts_with("line ")));
        // A short file; invalid UTF-8 is replaced.
        std::fs::write(&path, b"one\ntw\xffo\n").unwrap();
        assert_eq!(tail(&path, 10).unwrap(), ["one", "tw\u{fffd}o"]);
    }

    #[test]
    fn metrics_name_the_node_service_and_package() {
        let report = ServicesReport {
            services: vec![ServiceReport {
                name: "web".into(),
                id: "web--1.0".into(),
                running: true,
                pid: Some(7),
                processes: 2,
                cpu_seconds: 1.5,
                memory_bytes: 4096,
                restarts: 3,
            }],
        };
        let text = prometheus("node-\"1\"", &report);
        assert!(text.contains("# TYPE theseus_service_up gauge"), "{text}");
        assert!(
            text.contains(
                r#"theseus_service_cpu_seconds_total{node="node-\"1\"",service="web",package="web--1.0"} 1.50"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"theseus_service_restarts_total{node="node-\"1\"",service="web",package="web--1.0"} 3"#));
        assert!(text.contains(r#"theseus_service_memory_bytes{node="node-\"1\"",service="web",package="web--1.0"} 4096"#));
        let r = Restarts::default();
        r.bump("web");
        r.bump("web");
        assert_eq!((r.of("web"), r.of("db")), (2, 0));
    }
}
