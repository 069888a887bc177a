//! Sending the file list twice: `send_manifest` consumes the ready client.

use filesync_core::messages::Entry;
use filesync_core::session::client::{Client, Ready};

fn list_twice(ready: Client<Ready>, entries: &[Entry]) {
    let (_listed, _batches) = ready.send_manifest(entries);
    let (_again, _batches) = ready.send_manifest(entries);
}

fn main() {
    let _ = list_twice;
}
