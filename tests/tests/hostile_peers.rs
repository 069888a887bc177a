//! Hostile or broken peers on the native port, spoken to byte by byte: the server answers
//! with an error or closes, writes nothing outside the client's folder, leaves no partial
//! file, and keeps serving the next client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use filesync_tests::{assert_trees_equal, ts, write_file, Server, SyncCmd};

/// A raw native connection using the JSON encoding, so frames can be written by hand.
struct Raw {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Raw {
    /// Connects, reads the greeting line, and sends the JSON preamble.
    fn connect(server: &Server) -> Raw {
        let stream = TcpStream::connect(server.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut greeting = String::new();
        reader.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("\"filesync\""), "{greeting}");
        let mut raw = Raw { reader, stream };
        raw.send_raw(b"FSNC\x01\x01");
        raw
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed on an earlier frame; that is its right.
        let _ = self.stream.write_all(bytes);
    }

    /// Sends one frame: kind 0 (a JSON message) or 1 (DATA).
    fn frame(&mut self, kind: u8, payload: &[u8]) {
        let mut f = Vec::with_capacity(payload.len() + 5);
        f.extend_from_slice(&(payload.len() as u32 + 1).to_be_bytes());
        f.push(kind);
        f.extend_from_slice(payload);
        self.send_raw(&f);
    }

    fn msg(&mut self, json: &str) {
        self.frame(0, json.as_bytes());
    }

    /// Reads one message frame as JSON; `None` once the server has closed.
    fn recv(&mut self) -> Option<serde_json::Value> {
        let mut len = [0u8; 4];
        self.reader.read_exact(&mut len).ok()?;
        let len = u32::from_be_bytes(len) as usize;
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).ok()?;
        assert_eq!(body[0], 0, "the server sends only message frames");
        Some(serde_json::from_slice(&body[1..]).unwrap())
    }

    /// Reads messages until one of type `ty` (panics on close or ERROR).
    fn expect(&mut self, ty: &str) -> serde_json::Value {
        loop {
            let m = self
                .recv()
                .unwrap_or_else(|| panic!("closed while waiting for {ty}"));
            if m["type"] == ty {
                return m;
            }
            assert_ne!(m["type"], "ERROR", "waiting for {ty}: {m}");
        }
    }

    /// Reads until the server closes; returns the ERROR it sent, if any.
    fn error_then_close(&mut self) -> Option<serde_json::Value> {
        let mut err = None;
        while let Some(m) = self.recv() {
            if m["type"] == "ERROR" {
                err = Some(m);
            }
        }
        err
    }

    /// HELLO as `id`, then wait for READY.
    fn hello(&mut self, id: &str) {
        self.msg(&format!(
            r#"{{"type":"HELLO","version":3,"agent":"hostile-test","client_id":"{id}","capabilities":[],"allow_empty":false}}"#
        ));
        self.expect("WELCOME");
        self.expect("READY");
    }
}

fn mtime_json() -> &'static str {
    r#"{"secs":1700000000,"nanos":5}"#
}

/// The server still serves an honest client, and its root holds only what is expected.
fn still_serves(server: &Server, root: &Path) {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "ok.txt", b"fine", ts(1_600_000_000, 0));
    SyncCmd::new("honest", dir.path())
        .server(&server.addr())
        .run()
        .assert_code(0);
    assert_trees_equal(dir.path(), &root.join("client_honest"));
}

fn temp_files(root: &Path) -> usize {
    std::fs::read_dir(root.join(".filesync/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn oversized_frame_is_refused_before_buffering() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let mut raw = Raw::connect(&server);
    raw.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, 0]);
    let err = raw.error_then_close().expect("an ERROR before closing");
    assert_eq!(err["code"], 1, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{err}"
    );
    still_serves(&server, root.path());
}

#[test]
fn garbage_first_byte_is_dropped() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 512];
    let _ = s.read(&mut greeting).unwrap();
    s.write_all(b"\x00\x01\x02garbage").unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing is said to an unknown dialect");
    assert!(server.wait_for_log("session failed", Duration::from_secs(5)));
    still_serves(&server, root.path());
}

#[test]
fn escaping_paths_are_refused_and_nothing_is_written_outside() {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let server = Server::start(&root);
    // Paths as JSON values: names are bytes, so the `{"hex"}` form must be checked as
    // strictly as a string (`2e2e2f6576696c` is `../evil`).
    for path in [
        r#""../../escape""#,
        r#""/etc/evil""#,
        r#""a/../../b""#,
        r#""a/\u0000b""#,
        r#""""#,
        r#"{"hex":"2e2e2f6576696c"}"#,
        r#"{"hex":"2f6574632f6576696c"}"#,
        r#"{"hex":""}"#,
    ] {
        let mut raw = Raw::connect(&server);
        raw.hello("victim");
        raw.msg(&format!(
            r#"{{"type":"MANIFEST","entries":[{{"path":{path},"kind":"file","size":1,"mtime":{},"mode":420,"target":null}}]}}"#,
            mtime_json()
        ));
        let err = raw
            .error_then_close()
            .unwrap_or_else(|| panic!("{path:?}: no ERROR"));
        assert_eq!(err["code"], 1, "{path:?}: {err}");
    }
    // Nothing outside the server root, and nothing stored for the victim.
    let outside: Vec<_> = std::fs::read_dir(base.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(outside, ["root"]);
    assert!(!root.join("client_victim").exists());
    still_serves(&server, &root);
}

#[test]
fn data_beyond_the_announced_size_stores_nothing() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    let mut raw = Raw::connect(&server);
    raw.hello("liar");
    raw.msg(&format!(
        r#"{{"type":"MANIFEST","entries":[{{"path":"f","kind":"file","size":3,"mtime":{},"mode":420,"target":null}}]}}"#,
        mtime_json()
    ));
    raw.msg(r#"{"type":"MANIFEST_END","entries":1}"#);
    let tasks = raw.expect("TASKS");
    assert_eq!(tasks["paths"][0], "f");
    raw.expect("PLAN_END");
    raw.msg(&format!(
        r#"{{"type":"FILE_HEADER","path":"f","size":3,"mtime":{},"mode":420,"offset":0}}"#,
        mtime_json()
    ));
    raw.frame(1, b"0123456789");
    let err = raw.error_then_close().expect("an ERROR");
    assert_eq!(err["code"], 1, "{err}");
    assert!(server.wait_for_log("session failed", Duration::from_secs(5)));
    assert!(!root.path().join("client_liar/f").exists());
    assert_eq!(temp_files(root.path()), 0, "the partial file was removed");
    still_serves(&server, root.path());
}

#[test]
fn a_client_vanishing_mid_file_leaves_no_partial_file() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    {
        let mut raw = Raw::connect(&server);
        raw.hello("gone");
        raw.msg(&format!(
            r#"{{"type":"MANIFEST","entries":[{{"path":"d/f","kind":"file","size":100000,"mtime":{},"mode":420,"target":null}}]}}"#,
            mtime_json()
        ));
        raw.msg(r#"{"type":"MANIFEST_END","entries":1}"#);
        raw.expect("PLAN_END");
        raw.msg(&format!(
            r#"{{"type":"FILE_HEADER","path":"d/f","size":100000,"mtime":{},"mode":420,"offset":0}}"#,
            mtime_json()
        ));
        raw.frame(1, &[7u8; 4096]);
    }
    assert!(server.wait_for_log("session failed", Duration::from_secs(10)));
    assert!(
        !root.path().join("client_gone/d/f").exists(),
        "a partial file appeared under its final name"
    );
    assert_eq!(temp_files(root.path()), 0);
    still_serves(&server, root.path());
}
