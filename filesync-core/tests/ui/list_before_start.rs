//! Sending a manifest batch from a ready client that has not started: `start` opens the
//! manifest window, and only a started (`Syncing`) client can list.

use filesync_core::messages::Entry;
use filesync_core::session::client::{Client, Ready};

fn list_unstarted(ready: Client<Ready>, entries: Vec<Entry>) {
    let _ = ready.list(entries);
}

fn main() {
    let _ = list_unstarted;
}
