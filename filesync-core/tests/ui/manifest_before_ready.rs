//! Planning before READY: a connected client waits for its turn and cannot list its tree.

use filesync_core::messages::Entry;
use filesync_core::session::client::{Client, Connected};

fn list_too_early(connected: Client<Connected>, entries: &[Entry]) {
    let _ = connected.send_manifest(entries);
}

fn main() {
    let _ = list_too_early;
}
