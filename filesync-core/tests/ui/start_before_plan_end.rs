//! Starting the transfer before PLAN_END: a listed client does not know its tasks yet.

use filesync_core::session::client::{Client, Listed};

fn start_too_early(listed: Client<Listed>) {
    let _ = listed.start();
}

fn main() {
    let _ = start_too_early;
}
