//! Log setup: tracing to stderr, level from -v/-q unless RUST_LOG says otherwise.

use std::io::{self, IsTerminal, Write};

use tracing_subscriber::EnvFilter;

use crate::cli::Args;

pub(crate) fn init(args: &Args) {
    let level = match (args.verbose, args.quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    // object_store logs each retry of a failing request at INFO ("backing off"): ten
    // lines before the one error that says it all. Shown with -v.
    let default = if level == "info" {
        "info,object_store=warn"
    } else {
        level
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: cron mail and the systemd journal get
    // plain text. NO_COLOR (no-color.org) turns them off everywhere.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(|| QuietStderr)
        .with_target(false)
        .try_init();
}

/// stderr for the log, with write errors ignored. A reader of the log that went away
/// (`filesync serve 2>&1 | head`, a log collector restarted) must not stop the server:
/// tracing-subscriber reports a failed write with `eprintln!`, which panics on the same
/// closed stderr, and the panic aborted the process. The lines are lost; there is nowhere
/// left to write them.
struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}
