//! Failpoints: named places where a test can make the process die abruptly.
//!
//! `THESEUS_FAILPOINT=NAME` makes the process exit at once, without running
//! destructors or cleaning up, when it reaches the step called `NAME` — the
//! closest a test can get to a power cut or `kill -9` at a precise moment.
//!
//! They exist only in builds with the cargo feature `failpoints` (the test
//! suite enables it: `make test`, `cargo test --features failpoints`). In any
//! other build, release binaries included, [`hit`] compiles to nothing and
//! `THESEUS_FAILPOINT` is never read, so no environment variable can make a
//! production agent or operator exit.

/// The environment variable that names the failpoint to trigger.
pub const ENV: &str = "THESEUS_FAILPOINT";

/// The exit status of a process stopped by a failpoint.
pub const EXIT_CODE: i32 = 86;

/// Whether this build has failpoints (the cargo feature `failpoints`).
pub const ENABLED: bool = cfg!(feature = "failpoints");

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

/// Whether `THESEUS_FAILPOINT` names `step` (never, in a build without the
/// feature). The variable is read once; when it is unset this is one load
/// and a comparison against `None`.
#[cfg(feature = "failpoints")]
pub fn armed(step: &str) -> bool {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|s| !s.is_empty()));
    armed.as_deref() == Some(step)
}

/// Never: this build has no failpoints (see the module docs).
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn armed(_step: &str) -> bool {
    false
}

/// Exits the process with [`EXIT_CODE`] if `THESEUS_FAILPOINT` names `step`.
pub fn hit(step: &str) {
    if armed(step) {
        // `exit` skips destructors of live values: temporary directories,
        // lock guards and half-written files stay exactly as they are.
        eprintln!("theseus: failpoint {step} reached, exiting");
        std::process::exit(EXIT_CODE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The step the child process below reaches.
    const STEP: &str = "unit-test-step";
    /// Set only in the child, so the test run itself never hits the step.
    const CHILD: &str = "THESEUS_FAILPOINT_TEST_CHILD";

    /// Run as a child by the test below: reaches [`STEP`].
    #[test]
    fn reach_the_unit_test_step_when_run_as_a_child() {
        if std::env::var_os(CHILD).is_some() {
            hit(STEP);
        }
    }

    /// Runs this test binary again, with `THESEUS_FAILPOINT` naming the step
    /// the child reaches: with the feature it exits there, without it (a
    /// release build) it ignores the variable and its test passes.
    #[test]
    fn a_named_failpoint_stops_the_process_only_in_a_build_with_the_feature() {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "pkg::failpoint::tests::reach_the_unit_test_step_when_run_as_a_child",
                "--test-threads=1",
            ])
            .env(ENV, STEP)
            .env(CHILD, "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        let expected = if ENABLED { EXIT_CODE } else { 0 };
        assert_eq!(
            status.code(),
            Some(expected),
            "failpoints enabled in this build: {ENABLED}"
        );
    }
}
