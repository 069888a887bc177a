//! Listing before READY: a connected client waits for its turn and cannot start listing.

use filesync_core::session::client::{Client, Connected};

fn list_too_early(connected: Client<Connected>) {
    let _ = connected.start();
}

fn main() {
    let _ = list_too_early;
}
