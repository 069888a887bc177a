//! Small pieces of the text that people read, and printing it.

use std::fmt;
use std::io::{ErrorKind, Write};

/// `n` with its noun: `"1 file"`, `"2 files"`, `"0 files"`.
pub(crate) fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The exit code of a process whose output pipe was closed, as a shell reports one
/// killed by `SIGPIPE` (128 + 13).
const BROKEN_PIPE: i32 = 141;

/// Prints a line on stdout. If the reader has gone (`filesync versions … | head`), the
/// process ends at once with [`BROKEN_PIPE`], quietly, as Unix tools do; `println!`
/// would panic. Any other write error (a full disk: `gen-secret > /dev/full`) is said on
/// stderr and ends the process with 1: output that was lost must not pass for success.
pub(crate) fn out_line(args: fmt::Arguments<'_>) {
    if let Err(e) = write_out(args) {
        if e.kind() == ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE);
        }
        err_line(format_args!("error: writing to stdout: {e}"));
        std::process::exit(crate::exit::LOCAL);
    }
}

/// Prints a line on stdout that nothing depends on once it is out (`serve`'s start-up
/// lines): a closed or failing stdout is ignored, so that a server whose reader went away
/// (`filesync serve | head -1`) keeps serving.
pub(crate) fn note_line(args: fmt::Arguments<'_>) {
    let _ = write_out(args);
}

fn write_out(args: fmt::Arguments<'_>) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
}

/// Prints a line on stderr; a closed or failing stderr is ignored (there is nowhere
/// left to say so), where `eprintln!` would panic.
pub(crate) fn err_line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` that ends the process quietly on a closed pipe ([`out_line`]).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::text::out_line(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics ([`err_line`]).
macro_rules! errln {
    ($($arg:tt)*) => { $crate::text::err_line(format_args!($($arg)*)) };
}

/// `println!` for lines nothing depends on: write errors are ignored ([`note_line`]).
macro_rules! noteln {
    ($($arg:tt)*) => { $crate::text::note_line(format_args!($($arg)*)) };
}

pub(crate) use {errln, noteln, outln};

#[cfg(test)]
mod tests {
    #[test]
    fn counts() {
        assert_eq!(super::count(0, "file", "files"), "0 files");
        assert_eq!(super::count(1, "file", "files"), "1 file");
        assert_eq!(super::count(2, "FIFO", "FIFOs"), "2 FIFOs");
    }
}
