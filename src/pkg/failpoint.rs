//! Failpoints: named places where a test can make the process die abruptly.
//!
//! `THESEUS_FAILPOINT=NAME` makes the process exit at once, without running
//! destructors or cleaning up, when it reaches the step called `NAME` — the
//! closest a test can get to a power cut or `kill -9` at a precise moment.
//! The variable is read once; when it is unset a hit is one relaxed load and
//! a comparison against `None`.

use std::sync::OnceLock;

/// The environment variable that names the failpoint to trigger.
pub const ENV: &str = "THESEUS_FAILPOINT";

/// The exit status of a process stopped by a failpoint.
pub const EXIT_CODE: i32 = 86;

/// Every failpoint on the way through `theseus pkg activate`, in order.
pub const ACTIVATE_STEPS: &[&str] = &[
    "activate-journal-written",
    "fetch-unpacked",
    "fetch-renamed",
    "fetch-done",
    "generation-partial",
    "generation-built",
    "generation-renamed",
    "switch-journaled",
    "switch-link-created",
    "switch-renamed",
    "switch-synced",
    "gc-partial",
    "journal-cleared",
];

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Exits the process with [`EXIT_CODE`] if `THESEUS_FAILPOINT` names `step`.
pub fn hit(step: &str) {
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(step) {
        // `exit` skips destructors of live values: temporary directories,
        // lock guards and half-written files stay exactly as they are.
        eprintln!("theseus: failpoint {step} reached, exiting");
        std::process::exit(EXIT_CODE);
    }
}
