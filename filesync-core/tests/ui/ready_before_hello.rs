//! The server sending READY before HELLO: a greeted server has not welcomed anyone yet.

use filesync_core::session::server::{Greeted, Server};

fn ready_too_early(greeted: Server<Greeted>) {
    let _ = greeted.ready();
}

fn main() {
    let _ = ready_too_early;
}
