//! Starting a session twice: `start` consumes the ready client.

use filesync_core::session::client::{Client, Ready};

fn start_twice(ready: Client<Ready>) {
    let _syncing = ready.start();
    let _again = ready.start();
}

fn main() {
    let _ = start_twice;
}
