//! Using a session after it finished: a done client takes no more messages.

use filesync_core::messages::{Ready, ServerMsg};
use filesync_core::session::client::{Client, Done};

fn keep_going(done: Client<Done>) {
    let _ = done.on_message(ServerMsg::Ready(Ready {}));
}

fn main() {
    let _ = keep_going;
}
