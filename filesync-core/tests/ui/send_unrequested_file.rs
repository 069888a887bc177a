//! Sending a file the server did not ask for: a `Task` comes only from the plan
//! (`Client<Transferring>::next_task`); one cannot be made up for another path.

use filesync_core::paths::RelPath;
use filesync_core::session::client::{Client, Task, Transferring};
use filesync_core::time::MTime;

fn send_unrequested(mut t: Client<Transferring>) {
    let forged = Task {
        path: RelPath::parse("not-requested.txt").unwrap(),
    };
    let _ = t.header(&forged, 1, MTime::new(0, 0).unwrap());
    let _ = t.file_end(forged, 1);
}

fn main() {
    let _ = send_unrequested;
}
