//! `theseus completions SHELL`: shell completion scripts, and the name the
//! binary answers to when it runs as a kubectl plugin.

use std::ffi::OsStr;
use std::path::Path;

use clap::Args;
use clap_complete::Shell;

/// The name of the binary when kubectl runs it as a plugin.
pub const PLUGIN_BINARY: &str = "kubectl-theseus";

/// Print a shell completion script.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    theseus completions bash > /etc/bash_completion.d/theseus\n  \
    theseus completions zsh > \"${fpath[1]}/_theseus\"\n  \
    theseus completions fish > ~/.config/fish/completions/theseus.fish")]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Writes the completion script of `command` (the whole `theseus` tree) for
/// `args.shell` to stdout.
pub fn run(args: &CompletionsArgs, command: &mut clap::Command) -> anyhow::Result<()> {
    clap_complete::generate(args.shell, command, "theseus", &mut std::io::stdout());
    Ok(())
}

/// The name usage lines show: `kubectl theseus` when the binary was started
/// as `kubectl-theseus` (kubectl runs plugins by that file name, copied or
/// symlinked onto PATH), otherwise `theseus`.
pub fn display_name(argv0: Option<&OsStr>) -> &'static str {
    let file = argv0
        .map(Path::new)
        .and_then(Path::file_name)
        .and_then(OsStr::to_str);
    match file {
        Some(name) if name == PLUGIN_BINARY || name.starts_with("kubectl-theseus.") => {
            "kubectl theseus"
        }
        _ => "theseus",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_as_kubectl_theseus_shows_kubectl_theseus() {
        for argv0 in [
            "kubectl-theseus",
            "/usr/local/bin/kubectl-theseus",
            "kubectl-theseus.exe",
        ] {
            assert_eq!(display_name(Some(OsStr::new(argv0))), "kubectl theseus");
        }
    }

    #[test]
    fn any_other_name_shows_theseus() {
        for argv0 in [
            "theseus",
            "/usr/bin/theseus",
            "target/debug/theseus",
            "kubectl",
        ] {
            assert_eq!(display_name(Some(OsStr::new(argv0))), "theseus");
        }
        assert_eq!(display_name(None), "theseus");
    }
}
