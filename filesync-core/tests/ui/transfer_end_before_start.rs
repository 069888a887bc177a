//! Ending the transfer before it started: a ready client has listed nothing, so it cannot
//! send TRANSFER_END.

use filesync_core::session::client::{Client, Ready};

fn end_too_early(ready: Client<Ready>) {
    let _ = ready.finish();
}

fn main() {
    let _ = end_too_early;
}
