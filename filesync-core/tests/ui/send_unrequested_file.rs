//! Sending a file the server did not ask for: a `Task` comes only from a `TASKS` message
//! (`Client<Syncing>::on_message`); one cannot be made up for another path.

use filesync_core::messages::Entry;
use filesync_core::paths::RelPath;
use filesync_core::session::client::{Client, Syncing, Task};

fn send_unrequested(mut s: Client<Syncing>, e: &Entry) {
    let forged = Task {
        path: RelPath::parse("not-requested.txt").unwrap(),
    };
    let _ = s.header(&forged, e);
    let _ = s.file_end(forged, 1);
}

fn main() {
    let _ = send_unrequested;
}
