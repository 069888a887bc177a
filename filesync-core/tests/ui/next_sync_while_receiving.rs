//! The server sending NEXT_SYNC before the transfer ended: NEXT_SYNC promises the client
//! that its tree is stored, which a receiving server cannot know yet.

use filesync_core::session::server::{Receiving, Server};
use filesync_core::time::MTime;

fn end_too_early(receiving: Server<Receiving>) {
    let _ = receiving.next_sync(MTime::new(0, 0).unwrap(), 60_000);
}

fn main() {
    let _ = end_too_early;
}
