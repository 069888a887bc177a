//! Client authentication and encryption (`serve --auth-file`, `sync --secret-file`, spec
//! §16), end to end: the real binary over loopback, with recording relays standing in for
//! a capture on the wire, an attacker replaying a session, and a second server playing
//! the impostor whose key is not the pinned one.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use filesync_tests::{
    assert_trees_equal, filesync_bin, poll_until, pseudo_random, read_until_closed, temp_files, ts,
    write_file, Relay, ServeCmd, Server, SyncCmd, SyncOutput,
};
use tempfile::TempDir;

/// How long a log line or a printed line may take to show.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Keys, secrets and pins
// ---------------------------------------------------------------------------------------

/// A new secret from `filesync gen-secret` (which must print 64 hex digits).
fn gen_secret() -> String {
    let out = Command::new(filesync_bin())
        .arg("gen-secret")
        .stdin(Stdio::null())
        .output()
        .expect("running filesync gen-secret");
    assert!(out.status.success(), "gen-secret failed: {out:?}");
    let s = String::from_utf8(out.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned();
    assert_eq!(s.len(), 64, "gen-secret printed {s:?}");
    assert!(
        s.bytes().all(|b| b.is_ascii_hexdigit()),
        "gen-secret: {s:?}"
    );
    s
}

/// Writes `text` to `path` with permission bits `mode`.
fn write_with_mode(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// The text of an auth file listing `clients` (`(id, secret)`).
fn auth_text(clients: &[(&str, &str)]) -> String {
    let mut t = String::from("# clients allowed in\n\n");
    for (id, secret) in clients {
        t.push_str(&format!("{id} {secret}\n"));
    }
    t
}

/// A folder of key material for one test: the server's auth file, the clients' secret
/// files and known-servers files.
struct Keys {
    dir: TempDir,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes the auth file (mode 0600) and returns its path.
    fn auth_file(&self, clients: &[(&str, &str)]) -> PathBuf {
        let p = self.path("auth");
        write_with_mode(&p, &auth_text(clients), 0o600);
        p
    }

    /// Writes a secret file `name` (mode 0600) and returns its path.
    fn secret_file(&self, name: &str, secret: &str) -> PathBuf {
        let p = self.path(name);
        write_with_mode(&p, &format!("{secret}\n"), 0o600);
        p
    }
}

/// The pins in a known-servers file (its non-empty lines); none if it does not exist.
fn pins(known: &Path) -> Vec<String> {
    match fs::read_to_string(known) {
        Ok(t) => t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The fingerprint a server printed on stdout (`filesync serve: server key sha256:...`).
fn fingerprint(server: &Server) -> String {
    const PREFIX: &str = "filesync serve: server key ";
    let mut found = None;
    poll_until(WAIT, || {
        found = server
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix(PREFIX).map(str::to_owned));
        found.is_some()
    });
    let line = found.unwrap_or_else(|| {
        panic!(
            "the server printed no key line; stdout:\n{}",
            server.stdout()
        )
    });
    let fp = line.trim_end_matches(" (new)").to_owned();
    let hex = fp
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("key line {line:?}"));
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "key line {line:?}"
    );
    fp
}

/// A server requiring authentication with `auth_file`.
fn auth_server(root: &Path, auth_file: &Path) -> Server {
    ServeCmd::new(root)
        .arg("--auth-file")
        .arg(auth_file)
        .start()
}

/// `filesync sync --once --json` of `dir` as `id` to `addr`, authenticating with the
/// secret in `secret`, pinning in `known`.
fn auth_sync(id: &str, dir: &Path, addr: &str, secret: &Path, known: &Path) -> SyncCmd {
    SyncCmd::new(id, dir)
        .server(addr)
        .arg("--secret-file")
        .arg(secret)
        .arg("--known-servers")
        .arg(known)
}

#[track_caller]
fn assert_auth_refused(out: &SyncOutput, says: &str) {
    out.assert_code(9);
    assert!(out.stdout.trim().is_empty(), "no summary on failure; {out}");
    assert!(
        out.stderr.contains(says),
        "the client's message should say {says:?}; {out}"
    );
}

// ---------------------------------------------------------------------------------------
// Trees
// ---------------------------------------------------------------------------------------

/// Version `n` of a client's folder: its sizes, contents and mtimes differ for each `n`.
fn tree(n: u32) -> TempDir {
    let d = tempfile::tempdir().unwrap();
    let n64 = i64::from(n);
    write_file(
        d.path(),
        "notes.txt",
        format!("version {n}\n").repeat(n as usize + 1).as_bytes(),
        ts(1_700_000_000 + n64, n),
    );
    write_file(
        d.path(),
        "sub/data.bin",
        &pseudo_random(3000 + 100 * n as usize, u64::from(n) + 1),
        ts(1_700_001_000 + n64, 7 * n),
    );
    d
}

fn stored(root: &Path, id: &str) -> PathBuf {
    root.join(format!("client_{id}"))
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `filesync serve ARGS` expecting it to exit by itself (within [`WAIT`]): its exit
/// code, stdout and stderr.
fn serve_expecting_exit(root: &Path, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let mut child = Command::new(filesync_bin())
        .args([
            "serve",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--no-discovery",
        ])
        .arg("--root")
        .arg(root)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning filesync serve");
    let deadline = Instant::now() + WAIT;
    while child.try_wait().expect("waiting").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("reaping");
            panic!(
                "filesync serve {args:?} should have refused to start; it ran:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("reaping");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

/// The right secret syncs; the first sync pins exactly the key the server printed, and a
/// second sync neither pins again nor is refused.
#[test]
fn right_secret_syncs_and_pins_the_printed_key() {
    let keys = Keys::new();
    let secret = gen_secret();
    assert_ne!(secret, gen_secret(), "two secrets should differ");
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    let secret_file = keys.secret_file("lab-1.secret", &secret);
    let known = keys.path("known_servers");
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    assert!(
        server.stdout().contains(" (new)") || {
            poll_until(WAIT, || server.stdout().contains(" (new)"))
        },
        "a server's first start makes its key; stdout:\n{}",
        server.stdout()
    );
    let fp = fingerprint(&server);
    let key = root.path().join(".filesync/tls/server.key");
    let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is private", key.display());

    let v1 = tree(1);
    let out = auth_sync("lab-1", v1.path(), &server.addr(), &secret_file, &known).run();
    out.assert_code(0);
    assert_eq!(out.json()["client_id"], "lab-1", "{out}");
    assert_eq!(out.json()["dialect"], "native", "{out}");
    assert_eq!(out.count("files_stored"), 2, "{out}");
    assert!(
        out.stderr.contains("pinned its key"),
        "the first sync says it pinned the key; {out}"
    );
    assert_trees_equal(v1.path(), &stored(root.path(), "lab-1"));
    assert_eq!(pins(&known), vec![format!("lab-1 {fp}")]);
    let mode = fs::metadata(&known).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the known-servers file is private");

    let v2 = tree(2);
    let out = auth_sync("lab-1", v2.path(), &server.addr(), &secret_file, &known).run();
    out.assert_code(0);
    assert!(!out.stderr.contains("pinned its key"), "{out}");
    assert_trees_equal(v2.path(), &stored(root.path(), "lab-1"));
    assert_eq!(pins(&known), vec![format!("lab-1 {fp}")], "pinned once");
    assert!(!server.log().contains("authentication failed"));

    // The secret from the environment works as well as from a file.
    let v3 = tree(3);
    let out = SyncCmd::new("lab-1", v3.path())
        .server(&server.addr())
        .arg("--known-servers")
        .arg(&known)
        .env("FILESYNC_SECRET", &secret)
        .run();
    out.assert_code(0);
    assert_trees_equal(v3.path(), &stored(root.path(), "lab-1"));
}

/// A wrong secret, no secret, another client's secret and an unknown id: each exits 9,
/// changes nothing on the server and pins nothing; the server logs the failures and goes
/// on serving.
#[test]
fn refused_clients_exit_9_and_change_nothing() {
    let keys = Keys::new();
    let (s1, s2) = (gen_secret(), gen_secret());
    let auth = keys.auth_file(&[("lab-1", &s1), ("lab-2", &s2)]);
    let f1 = keys.secret_file("lab-1.secret", &s1);
    let f2 = keys.secret_file("lab-2.secret", &s2);
    let wrong = keys.secret_file("wrong.secret", &gen_secret());
    let known = keys.path("known_servers");
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    let fp = fingerprint(&server);
    let addr = server.addr();

    let v1 = tree(1);
    auth_sync("lab-1", v1.path(), &addr, &f1, &known)
        .run()
        .assert_code(0);
    auth_sync("lab-2", v1.path(), &addr, &f2, &known)
        .run()
        .assert_code(0);
    let pinned = vec![format!("lab-1 {fp}"), format!("lab-2 {fp}")];
    assert_eq!(pins(&known), pinned);

    let v2 = tree(2);
    // The wrong secret for lab-1.
    let out = auth_sync("lab-1", v2.path(), &addr, &wrong, &known).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    // No secret at all: the greeting says the server wants one.
    let out = SyncCmd::new("lab-1", v2.path())
        .server(&addr)
        .arg("--known-servers")
        .arg(&known)
        .run();
    assert_auth_refused(&out, "lets in only clients that authenticate");
    // lab-2 with lab-1's secret, which is valid, for another id.
    let out = auth_sync("lab-2", v2.path(), &addr, &f1, &known).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    // An id the auth file does not list, with a fresh known-servers file: first use, yet
    // nothing is pinned, since the server never proved it knows the secret.
    let fresh = keys.path("fresh_known");
    let out = auth_sync("lab-3", v2.path(), &addr, &f1, &fresh).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    assert!(!fresh.exists(), "nothing pinned after a refusal");
    // The wrong secret on first use pins nothing either.
    let out = auth_sync("lab-1", v2.path(), &addr, &wrong, &fresh).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    assert!(!fresh.exists(), "nothing pinned after a refusal");

    assert_trees_equal(v1.path(), &stored(root.path(), "lab-1"));
    assert_trees_equal(v1.path(), &stored(root.path(), "lab-2"));
    assert!(!stored(root.path(), "lab-3").exists());
    assert_eq!(temp_files(root.path()), Vec::<String>::new());
    assert_eq!(pins(&known), pinned, "the pins are unchanged");

    let log = server.log();
    assert_eq!(
        log.matches("authentication failed:").count(),
        4,
        "one failure logged per refused proof:\n{log}"
    );
    assert_eq!(
        log.matches("authentication failed: wrong secret").count(),
        3
    );
    assert_eq!(
        log.matches("authentication failed: the id is not in the auth file")
            .count(),
        1
    );
    assert!(
        log.contains("lab-3"),
        "the log names the unknown id:\n{log}"
    );
    // Each refused session's own line names the id it claimed, not "-".
    assert!(
        log.contains("session failed client=lab-2 "),
        "no failed session line names lab-2:\n{log}"
    );
    assert!(
        !log.contains("client=- "),
        "a session line without its id:\n{log}"
    );

    // The server still serves.
    let out = auth_sync("lab-1", v2.path(), &addr, &f1, &known).run();
    out.assert_code(0);
    assert_trees_equal(v2.path(), &stored(root.path(), "lab-1"));
}

/// A native client that ignores the greeting's `"auth": true` and sends its `HELLO` in
/// the clear is refused with `ERROR` 4.
#[test]
fn plaintext_hello_to_an_auth_server_gets_error_4() {
    let keys = Keys::new();
    let auth = keys.auth_file(&[("lab-1", &gen_secret())]);
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    let stream = std::net::TcpStream::connect(server.addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).expect("the greeting");
    let g: serde_json::Value = serde_json::from_str(&greeting).expect("a JSON greeting");
    assert_eq!(g["filesync"]["auth"], true, "greeting {greeting:?}");
    let hello = r#"{"type":"HELLO","version":3,"agent":"plain","client_id":"lab-1","capabilities":[],"allow_empty":false}"#;
    let mut out = b"FSNC\x01\x01".to_vec();
    out.extend_from_slice(&(hello.len() as u32 + 1).to_be_bytes());
    out.push(0);
    out.extend_from_slice(hello.as_bytes());
    (&stream).write_all(&out).unwrap();
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).expect("a frame");
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    reader.read_exact(&mut body).expect("a frame");
    let msg: serde_json::Value = serde_json::from_slice(&body[1..]).expect("JSON");
    assert_eq!(msg["type"], "ERROR", "{msg}");
    assert_eq!(msg["code"], 4, "{msg}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "nothing after the ERROR: {rest:?}");
    assert!(!stored(root.path(), "lab-1").exists());
}

/// An attacker who recorded every byte a client sent in one authenticated session and
/// sends them again, verbatim, on a new connection stores nothing.
#[test]
fn a_replayed_session_stores_nothing() {
    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    let f1 = keys.secret_file("lab-1.secret", &secret);
    let known = keys.path("known_servers");
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    let addr = server.addr();

    // The recorded session: version 1, the first sync, every file sent.
    let relay = Relay::recording(&addr);
    let v1 = tree(1);
    auth_sync("lab-1", v1.path(), &relay.addr(), &f1, &known)
        .run()
        .assert_code(0);
    let captures = relay.captures();
    drop(relay);
    assert_eq!(captures.len(), 1, "one connection recorded");
    let recorded = captures[0].up.clone();
    assert!(recorded.len() > 3100, "the session carried the files");

    // Then the client moves on to version 2.
    let v2 = tree(2);
    auth_sync("lab-1", v2.path(), &addr, &f1, &known)
        .run()
        .assert_code(0);
    assert_trees_equal(v2.path(), &stored(root.path(), "lab-1"));

    // The replay.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    let _ = s.write_all(&recorded);
    let _ = s.shutdown(std::net::Shutdown::Write);
    assert!(
        read_until_closed(&mut s, Instant::now() + Duration::from_secs(30)).is_some(),
        "the server closes the replayed connection"
    );
    drop(s);
    assert_trees_equal(v2.path(), &stored(root.path(), "lab-1"));
    assert_eq!(temp_files(root.path()), Vec::<String>::new());

    // And the server still serves.
    let v3 = tree(3);
    auth_sync("lab-1", v3.path(), &addr, &f1, &known)
        .run()
        .assert_code(0);
    assert_trees_equal(v3.path(), &stored(root.path(), "lab-1"));
}

/// A server whose key is not the pinned one (a second server with the same auth file,
/// as an impostor that stole it would be) is refused during the TLS handshake, before a
/// byte of the folder is sent; deleting the pin line lets the client trust the new key.
#[test]
fn a_different_server_key_is_refused_until_the_pin_is_deleted() {
    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    let f1 = keys.secret_file("lab-1.secret", &secret);
    let known = keys.path("known_servers");
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let real = auth_server(root_a.path(), &auth);
    let impostor = auth_server(root_b.path(), &auth);
    let (fp_a, fp_b) = (fingerprint(&real), fingerprint(&impostor));
    assert_ne!(fp_a, fp_b, "two servers, two keys");

    let v1 = tree(1);
    auth_sync("lab-1", v1.path(), &real.addr(), &f1, &known)
        .run()
        .assert_code(0);
    assert_eq!(pins(&known), vec![format!("lab-1 {fp_a}")]);

    let v2 = tree(2);
    let out = auth_sync("lab-1", v2.path(), &impostor.addr(), &f1, &known).run();
    assert_auth_refused(&out, &format!("presented key {fp_b}"));
    assert!(out.stderr.contains(&format!("trusts only {fp_a}")), "{out}");
    assert!(out.stderr.contains("delete that line"), "{out}");
    assert!(out.stderr.contains(&known.display().to_string()), "{out}");
    assert!(!stored(root_b.path(), "lab-1").exists());
    assert_eq!(pins(&known), vec![format!("lab-1 {fp_a}")], "pin unchanged");
    // The client stopped in the TLS handshake: the impostor never saw a HELLO, let alone
    // a proof.
    let log = impostor.log();
    assert!(!log.contains("authentication failed"), "{log}");
    assert!(
        !log.contains("lab-1"),
        "the id never reached the impostor:\n{log}"
    );
    assert_trees_equal(v1.path(), &stored(root_a.path(), "lab-1"));

    // The key was replaced on purpose: delete the line, and the next sync pins the new
    // key (trust on first use again).
    fs::write(&known, "").unwrap();
    let out = auth_sync("lab-1", v2.path(), &impostor.addr(), &f1, &known).run();
    out.assert_code(0);
    assert_trees_equal(v2.path(), &stored(root_b.path(), "lab-1"));
    assert_eq!(pins(&known), vec![format!("lab-1 {fp_b}")]);
    // Now the first server is the one with a key not pinned.
    let out = auth_sync("lab-1", v2.path(), &real.addr(), &f1, &known).run();
    assert_auth_refused(&out, &format!("presented key {fp_a}"));
    assert_trees_equal(v1.path(), &stored(root_a.path(), "lab-1"));

    // The key survives a restart: same fingerprint, not new.
    drop(real);
    let again = auth_server(root_a.path(), &auth);
    assert_eq!(fingerprint(&again), fp_a);
    assert!(!again.stdout().contains("(new)"), "{}", again.stdout());
}

/// A known-servers file edited by hand: comments, several pins for one id (any of them is
/// trusted), and no newline at its end; a pin added by a first sync of another id goes on
/// a line of its own, and every pin keeps working.
#[test]
fn hand_edited_known_servers_with_several_pins() {
    let keys = Keys::new();
    let (s1, s2) = (gen_secret(), gen_secret());
    let auth = keys.auth_file(&[("lab-1", &s1), ("lab-2", &s2)]);
    let f1 = keys.secret_file("lab-1.secret", &s1);
    let f2 = keys.secret_file("lab-2.secret", &s2);
    let known = keys.path("known_servers");
    let (root_a, root_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = auth_server(root_a.path(), &auth);
    let b = auth_server(root_b.path(), &auth);
    let (fp_a, fp_b) = (fingerprint(&a), fingerprint(&b));
    fs::write(
        &known,
        format!("# lab-1 may use either server\nlab-1 {fp_a}\n\nlab-1 {fp_b}  # the spare"),
    )
    .unwrap();
    let v1 = tree(1);
    for server in [&a, &b] {
        auth_sync("lab-1", v1.path(), &server.addr(), &f1, &known)
            .run()
            .assert_code(0);
    }
    // lab-2's first sync pins a's key for lab-2.
    auth_sync("lab-2", v1.path(), &a.addr(), &f2, &known)
        .run()
        .assert_code(0);
    assert_eq!(
        pins(&known).last().map(String::as_str),
        Some(format!("lab-2 {fp_a}").as_str()),
        "{:?}",
        fs::read_to_string(&known)
    );
    for (id, f, server) in [("lab-1", &f1, &b), ("lab-2", &f2, &a)] {
        auth_sync(id, v1.path(), &server.addr(), f, &known)
            .run()
            .assert_code(0);
    }
    let out = auth_sync("lab-2", v1.path(), &b.addr(), &f2, &known).run();
    assert_auth_refused(&out, &format!("presented key {fp_b}"));
    assert!(
        out.stderr.contains("line 5"),
        "names the line to delete; {out}"
    );
    assert_trees_equal(v1.path(), &stored(root_a.path(), "lab-2"));
    assert!(!stored(root_b.path(), "lab-2").exists());

    // A line that cannot be read refuses the sync (rather than trusting any key), and
    // says which line.
    let mut text = fs::read_to_string(&known).unwrap();
    text.push_str("lab-2 md5:0123\n");
    fs::write(&known, &text).unwrap();
    let out = auth_sync("lab-1", v1.path(), &a.addr(), &f1, &known).run();
    assert_auth_refused(&out, "line 6");
}

/// A connection that starts TLS and goes silent, in the middle of the TLS handshake or
/// after it (before its proof), is closed when the handshake timeout is up, and keeps
/// nobody out meanwhile.
#[test]
fn a_stalled_tls_handshake_is_closed_at_the_handshake_timeout() {
    use filesync_core::net::tls::{self, PinVerifier};
    use tokio::io::AsyncReadExt;
    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    let f1 = keys.secret_file("lab-1.secret", &secret);
    let root = tempfile::tempdir().unwrap();
    let server = ServeCmd::new(root.path())
        .arg("--auth-file")
        .arg(&auth)
        .arg("--handshake-timeout")
        .arg("1s")
        .start();

    // Half a ClientHello: a record header announcing more than is sent.
    let mut partial = std::net::TcpStream::connect(server.addr()).unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .unwrap();

    // A whole TLS handshake, then silence: no preamble, no HELLO, no AUTH.
    let addr = server.addr();
    let silent = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let mut greeting = Vec::new();
            while greeting.last() != Some(&b'\n') {
                greeting.push(s.read_u8().await.unwrap());
            }
            let connector = tls::connector(std::sync::Arc::new(PinVerifier::new(vec![]))).unwrap();
            let mut s = connector.connect(tls::server_name(), s).await.unwrap();
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut rest))
                .await
                .is_ok()
        })
    });

    // A real client gets in all the same.
    let known = keys.path("known_servers");
    let v1 = tree(1);
    auth_sync("lab-1", v1.path(), &server.addr(), &f1, &known)
        .run()
        .assert_code(0);

    assert!(
        read_until_closed(&mut partial, Instant::now() + Duration::from_secs(30)).is_some(),
        "the half-open TLS handshake is closed"
    );
    assert!(
        silent.join().unwrap(),
        "the silent TLS session is closed by the server"
    );
    assert_trees_equal(v1.path(), &stored(root.path(), "lab-1"));
}

/// A man in the middle that forwards the greeting, terminates the client's TLS with its
/// own key, opens its own TLS session to `server`, and relays the plaintext both ways:
/// what a host that answered discovery in the real server's place could do. Serves one
/// connection, on a thread of its own; the join handle says whether it relayed a session.
fn man_in_the_middle(server: &str) -> (String, std::thread::JoinHandle<Result<(), String>>) {
    use filesync_core::net::tls::{self, PinVerifier, ServerTls};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = server.to_owned();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let relay = async {
                let key_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
                let (own, _) = ServerTls::load_or_create(&key_dir.path().join("tls"))
                    .map_err(|e| e.to_string())?;
                let listener =
                    tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
                let (mut client, _) = listener.accept().await.map_err(|e| e.to_string())?;
                let mut upstream = tokio::net::TcpStream::connect(&server)
                    .await
                    .map_err(|e| e.to_string())?;
                // The greeting, in the clear, up to its newline.
                let mut greeting = Vec::new();
                while greeting.last() != Some(&b'\n') {
                    let b = upstream.read_u8().await.map_err(|e| e.to_string())?;
                    greeting.push(b);
                }
                client
                    .write_all(&greeting)
                    .await
                    .map_err(|e| e.to_string())?;
                let mut client = own
                    .acceptor
                    .accept(client)
                    .await
                    .map_err(|e| format!("TLS with the client: {e}"))?;
                let connector = tls::connector(std::sync::Arc::new(PinVerifier::new(vec![])))
                    .map_err(|e| e.to_string())?;
                let mut upstream = connector
                    .connect(tls::server_name(), upstream)
                    .await
                    .map_err(|e| format!("TLS with the server: {e}"))?;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                Ok(())
            };
            tokio::time::timeout(Duration::from_secs(30), relay)
                .await
                .map_err(|_| "the man in the middle timed out".to_string())?
        })
    });
    (addr, handle)
}

/// A man in the middle that terminates TLS with its own key and relays the client's
/// proof to the real server gets nothing in, even from a client with no pin yet (which
/// accepts any key at first): the proof is bound to the TLS session it was made in, and
/// the server's session with the relay is another one. Nothing is pinned, nothing stored.
#[test]
fn a_man_in_the_middle_cannot_relay_the_proof() {
    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    let f1 = keys.secret_file("lab-1.secret", &secret);
    let known = keys.path("known_servers");
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);

    let (mitm, relayed) = man_in_the_middle(&server.addr());
    let v1 = tree(1);
    let out = auth_sync("lab-1", v1.path(), &mitm, &f1, &known).run();
    let relayed = relayed.join().expect("the relay thread");
    assert_eq!(relayed, Ok(()), "the man in the middle relayed a session");
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    assert!(
        server.wait_for_log("authentication failed: wrong secret", WAIT),
        "the server got the relayed proof and refused it:\n{}",
        server.log()
    );
    assert!(!known.exists(), "the relay's key is not pinned");
    assert!(!stored(root.path(), "lab-1").exists());

    // Straight to the server, the same client gets in.
    auth_sync("lab-1", v1.path(), &server.addr(), &f1, &known)
        .run()
        .assert_code(0);
    assert_trees_equal(v1.path(), &stored(root.path(), "lab-1"));
    assert_eq!(
        pins(&known),
        vec![format!("lab-1 {}", fingerprint(&server))]
    );
}

/// Everything after the greeting is encrypted: a capture of an authenticated sync holds
/// neither a file's name nor its contents nor the client id, while a capture of the same
/// sync to a server without an auth file holds all three.
#[test]
fn a_capture_of_an_authenticated_sync_shows_no_plaintext() {
    const MARKER: &[u8] = b"ZQX-wire-marker-5d1e9-";
    const NAME: &str = "plans-ZQXNAME-4471.txt";
    const ID: &str = "capture-idZQ";
    let content: Vec<u8> = MARKER.iter().copied().cycle().take(64 << 10).collect();
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), NAME, &content, ts(1_700_000_000, 5));

    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[(ID, &secret)]);
    let f = keys.secret_file("secret", &secret);
    let known = keys.path("known_servers");

    let capture = |server: &Server, authenticated: bool| -> (Vec<u8>, Vec<u8>) {
        let relay = Relay::recording(&server.addr());
        let mut cmd = SyncCmd::new(ID, dir.path()).server(&relay.addr());
        if authenticated {
            cmd = cmd
                .arg("--secret-file")
                .arg(&f)
                .arg("--known-servers")
                .arg(&known);
        }
        cmd.run().assert_code(0);
        let caps = relay.captures();
        assert_eq!(caps.len(), 1, "one connection");
        (caps[0].up.clone(), caps[0].down.clone())
    };

    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    let (up, down) = capture(&server, true);
    assert_trees_equal(dir.path(), &stored(root.path(), ID));
    assert!(up.len() > 64 << 10, "the file crossed the relay");
    let all = [up.as_slice(), down.as_slice()].concat();
    for (what, needle) in [
        ("contents", MARKER),
        ("name", NAME.as_bytes()),
        ("client id", ID.as_bytes()),
    ] {
        assert!(
            !contains(&all, needle),
            "the file's {what} crossed the network in the clear"
        );
    }
    assert_eq!(up[0], 0x16, "the client's first byte opens a TLS handshake");

    // The same sync without authentication does show them: the test can see plaintext.
    let root = tempfile::tempdir().unwrap();
    let plain = Server::start(root.path());
    let (up, down) = capture(&plain, false);
    assert_trees_equal(dir.path(), &stored(root.path(), ID));
    assert!(contains(&up, MARKER) && contains(&up, NAME.as_bytes()));
    assert!(contains(&up, ID.as_bytes()));
    assert!(!down.is_empty());
}

/// An auth file or a secret file that group or others can access is refused.
#[test]
fn secrets_must_be_private_files() {
    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&auth, fs::Permissions::from_mode(mode)).unwrap();
        let root = tempfile::tempdir().unwrap();
        let (code, stdout, stderr) =
            serve_expecting_exit(root.path(), &["--auth-file".as_ref(), auth.as_os_str()]);
        assert_eq!(code, 1, "mode {mode:o}: {stderr}");
        assert!(stderr.contains("chmod 600"), "mode {mode:o}: {stderr}");
        assert!(!stdout.contains("listening on"), "mode {mode:o}: {stdout}");
    }
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o600)).unwrap();
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);

    let f = keys.secret_file("lab-1.secret", &secret);
    let known = keys.path("known_servers");
    let v1 = tree(1);
    for mode in [0o644, 0o640] {
        fs::set_permissions(&f, fs::Permissions::from_mode(mode)).unwrap();
        let out = auth_sync("lab-1", v1.path(), &server.addr(), &f, &known).run();
        assert_auth_refused(&out, "chmod 600");
    }
    assert!(!stored(root.path(), "lab-1").exists());
    assert!(!known.exists());
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    // The secret given twice is a usage error.
    let out = auth_sync("lab-1", v1.path(), &server.addr(), &f, &known)
        .env("FILESYNC_SECRET", &secret)
        .run();
    out.assert_code(2);
    assert!(out.stderr.contains("give the secret once"), "{out}");
    auth_sync("lab-1", v1.path(), &server.addr(), &f, &known)
        .run()
        .assert_code(0);
    assert_trees_equal(v1.path(), &stored(root.path(), "lab-1"));

    // The server's own key, made readable by others, is refused at the next start.
    drop(server);
    let key = root.path().join(".filesync/tls/server.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, stderr) =
        serve_expecting_exit(root.path(), &["--auth-file".as_ref(), auth.as_os_str()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    assert!(stderr.contains("server.key"), "{stderr}");
}

/// A server without an auth file warns at start, serves native and original clients in
/// the clear, and refuses a client that wants to authenticate (it could not prove it
/// knows the secret).
#[test]
fn a_server_without_auth_file_warns_and_refuses_secrets() {
    let root = tempfile::tempdir().unwrap();
    let server = Server::start(root.path());
    assert!(
        server.wait_for_log(
            "no --auth-file: any host on the network can write to and delete from",
            WAIT
        ),
        "the start-up warning:\n{}",
        server.log()
    );
    let log = server.log();
    let line = log.lines().find(|l| l.contains("no --auth-file")).unwrap();
    assert!(line.contains("WARN"), "a warning: {line}");
    // It has a key all the same.
    fingerprint(&server);

    let keys = Keys::new();
    let f = keys.secret_file("secret", &gen_secret());
    let known = keys.path("known_servers");
    let v1 = tree(1);
    let out = auth_sync("lab-1", v1.path(), &server.addr(), &f, &known).run();
    assert_auth_refused(&out, "does not authenticate clients");
    assert!(!stored(root.path(), "lab-1").exists());
    assert!(!known.exists(), "nothing pinned");

    let out = SyncCmd::new("lab-1", v1.path())
        .server(&server.addr())
        .arg("--dialect")
        .arg("seed")
        .run();
    out.assert_code(0);
    assert_eq!(out.json()["dialect"], "seed", "{out}");
    assert!(stored(root.path(), "lab-1").join("notes.txt").is_file());

    let v2 = tree(2);
    let out = SyncCmd::new("lab-1", v2.path())
        .server(&server.addr())
        .run();
    out.assert_code(0);
    assert_trees_equal(v2.path(), &stored(root.path(), "lab-1"));
}

/// A server with an auth file closes an original-dialect client's connection without
/// storing anything (the Python original client); `filesync sync --dialect seed` sees
/// `"auth": true` in the greeting and refuses by itself with exit 9.
#[test]
fn an_auth_server_refuses_the_original_dialect() {
    let keys = Keys::new();
    let secret = gen_secret();
    let auth = keys.auth_file(&[("lab-1", &secret)]);
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    let v1 = tree(1);

    let out = SyncCmd::new("lab-1", v1.path())
        .server(&server.addr())
        .arg("--dialect")
        .arg("seed")
        .run();
    // The greeting said `"auth": true`: the client refuses by itself, saying why.
    assert_auth_refused(&out, "which the original dialect (--dialect seed) cannot");
    assert!(!stored(root.path(), "lab-1").exists());

    // With a secret the client refuses the original dialect by itself.
    let f = keys.secret_file("secret", &secret);
    let out = auth_sync("lab-1", v1.path(), &server.addr(), &f, &keys.path("known"))
        .arg("--dialect")
        .arg("seed")
        .run();
    assert_auth_refused(&out, "cannot authenticate");

    // The Python original client.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("seed_peer/seed_client.py");
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(&script)
        .args(["--once", "--timeout", "20", "--id", "lab-1", "--server"])
        .arg(server.addr())
        .arg("--dir")
        .arg(v1.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    let finished = poll_until(Duration::from_secs(40), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(finished, "the original client hung: {out:?}");
    assert!(!out.status.success(), "{out:?}");
    assert!(!stored(root.path(), "lab-1").exists());
    assert_eq!(temp_files(root.path()), Vec::<String>::new());
    assert!(
        server.wait_for_log("an original FileSync client cannot authenticate", WAIT),
        "{}",
        server.log()
    );
}

/// Kills a child process when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client with a secret refuses an original FileSync server (the Python one of
/// `tests/seed_peer`), which cannot authenticate, with exit 9, before sending its listing;
/// without a secret the same client syncs to it.
#[test]
fn a_client_with_a_secret_refuses_an_original_server() {
    let root = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("seed_peer/seed_server.py");
    let mut child = KillOnDrop(
        Command::new("python3")
            .arg("-u")
            .arg(&script)
            .args(["--port", "0", "--no-discovery", "--root"])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(WAIT)
        .expect("the original server's listening line");
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    let addr = format!("127.0.0.1:{port}");

    let keys = Keys::new();
    let f = keys.secret_file("secret", &gen_secret());
    let known = keys.path("known_servers");
    let v1 = tree(1);
    let out = auth_sync("lab-1", v1.path(), &addr, &f, &known).run();
    assert_auth_refused(
        &out,
        "an original FileSync server, which cannot authenticate",
    );
    assert!(!stored(root.path(), "lab-1").exists());
    assert!(!known.exists());

    let out = SyncCmd::new("lab-1", v1.path()).server(&addr).run();
    out.assert_code(0);
    assert_eq!(out.json()["dialect"], "seed", "{out}");
    assert!(stored(root.path(), "lab-1").join("notes.txt").is_file());
}

/// The auth file is read again for every client: a client added while the server runs
/// gets in, a removed one is refused, and a file that has become unusable leaves the
/// last good list in force.
#[test]
fn the_auth_file_is_read_again_for_every_client() {
    let keys = Keys::new();
    let (s1, s2) = (gen_secret(), gen_secret());
    let auth = keys.auth_file(&[("lab-1", &s1)]);
    let f1 = keys.secret_file("lab-1.secret", &s1);
    let f2 = keys.secret_file("lab-2.secret", &s2);
    let known = keys.path("known_servers");
    let root = tempfile::tempdir().unwrap();
    let server = auth_server(root.path(), &auth);
    let addr = server.addr();
    let v1 = tree(1);

    let out = auth_sync("lab-2", v1.path(), &addr, &f2, &known).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    assert!(!stored(root.path(), "lab-2").exists());

    // Added, without a restart.
    write_with_mode(&auth, &auth_text(&[("lab-1", &s1), ("lab-2", &s2)]), 0o600);
    auth_sync("lab-2", v1.path(), &addr, &f2, &known)
        .run()
        .assert_code(0);
    assert_trees_equal(v1.path(), &stored(root.path(), "lab-2"));

    // Removed, without a restart.
    write_with_mode(&auth, &auth_text(&[("lab-2", &s2)]), 0o600);
    let out = auth_sync("lab-1", v1.path(), &addr, &f1, &known).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    assert!(!stored(root.path(), "lab-1").exists());

    // Made readable by others: ignored (and logged), the last good list stays.
    write_with_mode(&auth, &auth_text(&[("lab-1", &s1), ("lab-2", &s2)]), 0o644);
    let out = auth_sync("lab-1", v1.path(), &addr, &f1, &known).run();
    assert_auth_refused(&out, "the id is unknown or the secret is wrong");
    assert!(
        server.wait_for_log("cannot use the auth file", WAIT),
        "{}",
        server.log()
    );
    let v2 = tree(2);
    auth_sync("lab-2", v2.path(), &addr, &f2, &known)
        .run()
        .assert_code(0);
    assert_trees_equal(v2.path(), &stored(root.path(), "lab-2"));
}
