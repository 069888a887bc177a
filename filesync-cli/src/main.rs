//! The `filesync` command: `serve` keeps client archives, `sync` pushes a folder.
//!
//! This binary is glue: it parses flags (`cli`), resolves them, calls filesync-core, and
//! maps failures to the documented exit codes (`exit`).

mod cli;
mod exit;
mod logging;
mod progress;
mod serve;
mod sync;

use clap::Parser;

fn main() {
    let args = cli::Args::parse();
    // color-eyre's hook formats errors for people; the exit code is chosen by us.
    let _ = color_eyre::install();
    logging::init(&args);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
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
        }
    });
    // Dropping the runtime waits for blocking writer threads to finish their cleanup.
    drop(runtime);
    std::process::exit(code);
}
