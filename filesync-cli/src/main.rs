//! The `filesync` command: `serve` keeps client archives, `sync` pushes a folder,
//! `versions` and `restore` read an archive's kept versions.
//!
//! This binary is glue: it parses flags (`cli`), resolves them, calls filesync-core, and
//! maps failures to the documented exit codes (`exit`).

mod archive;
mod cli;
mod exit;
mod logging;
mod progress;
mod serve;
mod sync;
mod text;

use text::{errln, outln};

fn main() {
    let args = cli::parse();
    // color-eyre's hook formats errors for people; the exit code is chosen by us.
    let _ = color_eyre::install();
    logging::init(&args);
    raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::LOCAL);
        }
    };
    let code = runtime.block_on(async {
        match args.command {
            cli::Command::Serve(a) => serve::run(a).await,
            cli::Command::Sync(a) => {
                let out = sync::Output {
                    json: args.json,
                    quiet: args.quiet > 0,
                };
                sync::run(a, out).await
            }
            cli::Command::Versions(a) => archive::versions(a, args.json),
            cli::Command::Restore(a) => archive::restore(a, args.json),
            cli::Command::GenSecret => match filesync_core::auth::gen_secret() {
                Ok(s) => {
                    outln!("{s}");
                    exit::OK
                }
                Err(e) => {
                    errln!("Error: {e}");
                    exit::LOCAL
                }
            },
        }
    });
    // Dropping the runtime waits for blocking writer threads to finish their cleanup.
    drop(runtime);
    std::process::exit(code);
}

/// Raises the soft limit on open descriptors to the hard limit, as Go's runtime does at
/// start: systemd and most shells give a soft limit of 1024 while allowing far more.
/// filesync never needs more than a small fixed number per session (see the store's
/// module doc); the headroom is for many clients queued at once, each holding a socket.
fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let before = lim.current;
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => tracing::debug!(?before, now = ?lim.current, "raised the descriptor limit"),
            Err(e) => tracing::debug!(error = %e, "cannot raise the descriptor limit"),
        }
    }
}
