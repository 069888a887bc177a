//! Log setup: tracing to stderr, level from -v/-q unless RUST_LOG says otherwise.

use std::io::IsTerminal;

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only for a person at a terminal: cron mail and the systemd journal get
    // plain text. NO_COLOR (no-color.org) turns them off everywhere.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
