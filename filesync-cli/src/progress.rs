//! Progress: a bar on a terminal, log lines otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use filesync_core::net::client::Progress;
use filesync_core::paths::RelPath;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Picks the bar on an interactive stderr, plain logs otherwise (cron, systemd, pipes).
pub(crate) fn for_terminal(quiet: bool) -> Arc<dyn Progress> {
    if !quiet && std::io::stderr().is_terminal() {
        Arc::new(Bar::new())
    } else {
        Arc::new(Logged)
    }
}

struct Bar {
    bar: ProgressBar,
    files: AtomicU64,
    total_files: AtomicU64,
}

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self {
            bar,
            files: AtomicU64::new(0),
            total_files: AtomicU64::new(0),
        }
    }

    fn update_msg(&self) {
        self.bar.set_message(format!(
            "{}/{} files",
            self.files.load(Ordering::Relaxed),
            self.total_files.load(Ordering::Relaxed)
        ));
    }
}

impl Progress for Bar {
    fn queued(&self, position: u32) {
        self.bar
            .set_message(format!("queued at position {position}"));
        self.bar.tick();
    }
    fn requested(&self, files: u64, bytes: u64) {
        self.planned(files, bytes, 0);
    }
    fn planned(&self, files: u64, bytes: u64, _deletions: u64) {
        self.total_files.store(files, Ordering::Relaxed);
        self.bar.set_length(bytes);
        self.update_msg();
    }
    fn sent(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn file_done(&self) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.update_msg();
    }
    fn file_failed(&self, path: &RelPath, why: &str) {
        self.bar
            .suspend(|| tracing::warn!(%path, why, "file not sent"));
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

#[derive(Default)]
struct Logged;

impl Progress for Logged {
    fn queued(&self, position: u32) {
        tracing::info!(position, "server busy; queued");
    }
    fn planned(&self, files: u64, bytes: u64, deletions: u64) {
        tracing::info!(files, bytes, deletions, "plan received");
    }
    fn file_failed(&self, path: &RelPath, why: &str) {
        tracing::warn!(%path, why, "file not sent");
    }
}
