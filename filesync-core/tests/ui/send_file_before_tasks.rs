//! Sending a file before any TASKS: a ready client has sent no manifest and been asked for
//! nothing, so it has no header to write and no file to end.

use filesync_core::paths::RelPath;
use filesync_core::session::client::{Client, Ready};
use filesync_core::time::MTime;

fn send_too_early(mut ready: Client<Ready>) {
    let path = RelPath::parse("a.txt").unwrap();
    let _ = ready.header(path.clone(), 1, MTime::new(0, 0).unwrap());
    let _ = ready.file_end(path, 1);
}

fn main() {
    let _ = send_too_early;
}
