//! Sending a file before the plan arrived: `Client<Listed>` has sent its manifest but has
//! no TASKS yet, so it has no file to take, no header to write and no file to end.

use filesync_core::paths::RelPath;
use filesync_core::session::client::{Client, Listed};
use filesync_core::time::MTime;

fn send_too_early(mut listed: Client<Listed>) {
    let path = RelPath::parse("a.txt").unwrap();
    let _ = listed.next_task();
    let _ = listed.header(path.clone(), 1, MTime::new(0, 0).unwrap());
    let _ = listed.file_end(path, 1);
}

fn main() {
    let _ = send_too_early;
}
