//! Sending the file list twice: the listed client that `send_manifest` returns cannot
//! send another.

use filesync_core::messages::Entry;
use filesync_core::session::client::{Client, Listed};

fn list_again(listed: Client<Listed>, entries: &[Entry]) {
    let _ = listed.send_manifest(entries);
}

fn main() {
    let _ = list_again;
}
