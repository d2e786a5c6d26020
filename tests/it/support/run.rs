//! Running a command that must succeed.

use std::process::Command;

/// Runs `cmd` and returns its stdout; fails the test, naming the command and
/// showing its output, when it cannot start or does not exit 0.
pub fn stdout_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
