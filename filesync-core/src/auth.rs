//! Client authentication by shared secret: the auth file's format, secrets, and the proofs
//! each side sends inside TLS.
//!
//! A secret never crosses the wire. Inside a TLS 1.3 session, each side proves it knows the
//! client's secret with an HMAC-SHA256 (RFC 2104) keyed by the secret over the session's
//! exporter value (RFC 8446 §7.5, used as a channel binding the way RFC 9266's
//! `tls-exporter` is) and the client id. The exporter is different for every TLS session, so
//! a proof recorded from one session is worthless in any other (no replay), and a relay
//! that terminates TLS itself sees a different exporter from the real server's, so a proof
//! it relays does not verify (no man in the middle). See `spec/PROTOCOL.md` §16.
//!
//! Parsing and the proofs are pure; [`read_private_file`] is the one function that reads a
//! file, because its permission check is part of the rule.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::messages::Hash;
use crate::paths::ClientId;

/// The label of the TLS exporter value the proofs are computed over (RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-filesync-auth";
/// Length of the exported value, bytes.
pub const EXPORTER_LEN: usize = 32;
/// The shortest secret accepted, in bytes. `filesync gen-secret` makes 64 characters
/// (32 random bytes in hex); a short secret could be guessed offline from a proof sent to
/// a server that is not the pinned one.
pub const MIN_SECRET_LEN: usize = 16;
/// The bytes of randomness in a secret made by [`gen_secret`].
pub const GENERATED_SECRET_BYTES: usize = 32;

/// Why a secret, an auth file or a proof was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A file holding secrets can be read or written by group or others.
    #[error(
        "{path} is accessible by group or others (mode {mode:04o}); secrets must be private to \
         their owner: run `chmod 600 {path}`"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line of an auth file is malformed.
    #[error("{path}, line {line}: {why}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A secret is unusable (too short, or contains whitespace).
    #[error("{0}")]
    BadSecret(String),
}

/// A client's shared secret: the bytes of its text form. Its `Debug` form hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Parses a secret as given in a secret file or `FILESYNC_SECRET`: surrounding
    /// whitespace (a trailing newline) is dropped; what remains must be at least
    /// [`MIN_SECRET_LEN`] bytes with no whitespace inside.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let s = text.trim();
        if s.is_empty() {
            return Err(AuthError::BadSecret(
                "the secret is empty; make one with `filesync gen-secret`".into(),
            ));
        }
        if s.chars().any(char::is_whitespace) {
            return Err(AuthError::BadSecret(
                "a secret is one word with no whitespace; make one with `filesync gen-secret`"
                    .into(),
            ));
        }
        if s.len() < MIN_SECRET_LEN {
            return Err(AuthError::BadSecret(format!(
                "the secret is {} bytes; at least {MIN_SECRET_LEN} are needed (`filesync \
                 gen-secret` makes a strong one)",
                s.len()
            )));
        }
        Ok(Secret(s.as_bytes().to_vec()))
    }
}

/// A new random secret: [`GENERATED_SECRET_BYTES`] bytes from the operating system's
/// generator, as lowercase hex.
pub fn gen_secret() -> Result<String, AuthError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; GENERATED_SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuthError::BadSecret("the system's random generator failed".into()))?;
    Ok(hex::encode(b))
}

/// The clients a server lets in: `<client-id> <secret>` per line, `#` starts a comment,
/// blank lines are ignored. An id may appear once.
#[derive(Debug, Clone, Default)]
pub struct AuthTable {
    secrets: HashMap<ClientId, Secret>,
}

impl AuthTable {
    /// Parses an auth file's text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self, AuthError> {
        let mut secrets = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax = |why: String| AuthError::Syntax {
                path: path.to_owned(),
                line: i + 1,
                why,
            };
            let mut words = line.split_whitespace();
            let (Some(id), Some(secret), None) = (words.next(), words.next(), words.next()) else {
                return Err(syntax("expected `<client-id> <secret>`".into()));
            };
            let id = ClientId::parse(id).map_err(|e| syntax(e.to_string()))?;
            let secret = Secret::parse(secret).map_err(|e| syntax(e.to_string()))?;
            if secrets.insert(id.clone(), secret).is_some() {
                return Err(syntax(format!("client id {id} is listed twice")));
            }
        }
        Ok(Self { secrets })
    }

    /// The secret of `id`, if it is allowed in.
    pub fn secret(&self, id: &ClientId) -> Option<&Secret> {
        self.secrets.get(id)
    }

    /// How many clients are listed.
    pub fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Whether no client is listed (then none can get in).
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }
}

/// Reads a file that holds secrets (an auth file, a client's secret file), refusing one
/// that group or others may read or write, as ssh refuses a private key with such
/// permissions: a secret others can read is no longer a secret.
pub fn read_private_file(path: &Path) -> Result<String, AuthError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display().to_string();
    let read = |source| AuthError::Read {
        path: shown.clone(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthError::TooOpen { path: shown, mode });
    }
    std::fs::read_to_string(path).map_err(read)
}

/// A server's auth file, read again for every client that authenticates (as rsync's
/// daemon reads its secrets file), so that adding or removing a client needs no restart.
/// If the file later becomes unreadable, too open or malformed, the last good table stays
/// in force and the problem is logged: a typo must not lock every client out, nor let
/// anyone in.
#[derive(Debug)]
pub struct AuthFile {
    path: std::path::PathBuf,
    last_good: std::sync::Mutex<std::sync::Arc<AuthTable>>,
}

impl AuthFile {
    /// Reads the file now; any problem is an error, so that the server does not start with
    /// a file it cannot use.
    pub fn open(path: &Path) -> Result<Self, AuthError> {
        let table = AuthTable::parse(&read_private_file(path)?, &path.display().to_string())?;
        Ok(Self {
            path: path.to_owned(),
            last_good: std::sync::Mutex::new(std::sync::Arc::new(table)),
        })
    }

    /// The table as the file is now, or the last good one if it cannot be used.
    pub fn table(&self) -> std::sync::Arc<AuthTable> {
        let fresh = read_private_file(&self.path)
            .and_then(|t| AuthTable::parse(&t, &self.path.display().to_string()));
        let mut last = self
            .last_good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match fresh {
            Ok(t) => *last = std::sync::Arc::new(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot use the auth file; keeping the clients it last allowed")
            }
        }
        std::sync::Arc::clone(&last)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many clients the table last read allows in (without reading the file again).
    pub fn clients(&self) -> usize {
        self.last_good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// Which side a proof speaks for: the two proofs of a session differ, so one cannot be
/// reflected as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client's proof, sent in `AUTH`.
    Client,
    /// The server's proof, sent in `AUTH_OK`.
    Server,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"filesync-auth-v1 client\0",
            Role::Server => b"filesync-auth-v1 server\0",
        }
    }
}

/// The proof of knowing `secret`: HMAC-SHA256(secret, label ‖ exporter ‖ client id), where
/// the label names the role and `exporter` is the TLS session's exported value
/// ([`EXPORTER_LABEL`], [`EXPORTER_LEN`] bytes, no context).
pub fn proof(secret: &Secret, role: Role, exporter: &[u8; EXPORTER_LEN], id: &ClientId) -> Hash {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(role.label());
    ctx.update(exporter);
    ctx.update(id.as_str().as_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    Hash(out)
}

/// Why a server refused a client's proof. The client is told the same for both, so that
/// it cannot learn which ids exist; the server's log tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The id is not in the auth file.
    UnknownId,
    /// The proof does not verify with the id's secret.
    WrongSecret,
}

impl Refusal {
    /// For the server's log.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UnknownId => "the id is not in the auth file",
            Refusal::WrongSecret => "wrong secret",
        }
    }
}

impl AuthTable {
    /// Checks the client's `proof` for `id` in the session whose exporter value is
    /// `exporter`, and returns the server's proof to send back in `AUTH_OK`.
    pub fn admit(
        &self,
        id: &ClientId,
        exporter: &[u8; EXPORTER_LEN],
        proof: &Hash,
    ) -> Result<Hash, Refusal> {
        let secret = self.secret(id).ok_or(Refusal::UnknownId)?;
        if verify(secret, Role::Client, exporter, id, proof) {
            Ok(self::proof(secret, Role::Server, exporter, id))
        } else {
            Err(Refusal::WrongSecret)
        }
    }
}

/// Checks a peer's proof in constant time (ring's `hmac::verify`).
pub fn verify(
    secret: &Secret,
    role: Role,
    exporter: &[u8; EXPORTER_LEN],
    id: &ClientId,
    got: &Hash,
) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret.0);
    let mut msg = Vec::with_capacity(64 + id.as_str().len());
    msg.extend_from_slice(role.label());
    msg.extend_from_slice(exporter);
    msg.extend_from_slice(id.as_str().as_bytes());
    ring::hmac::verify(&key, &msg, &got.0).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::parse(s).unwrap()
    }

    #[test]
    fn secrets_are_trimmed_and_checked() {
        assert_eq!(
            Secret::parse("  0123456789abcdef\n").unwrap(),
            Secret(b"0123456789abcdef".to_vec())
        );
        assert!(Secret::parse("short").is_err());
        assert!(Secret::parse("").is_err());
        assert!(Secret::parse("0123456789 abcdef").is_err());
        assert_eq!(
            format!("{:?}", Secret::parse(&"x".repeat(20)).unwrap()),
            "Secret(…)"
        );
        let g = gen_secret().unwrap();
        assert_eq!(g.len(), 2 * GENERATED_SECRET_BYTES);
        assert_ne!(g, gen_secret().unwrap());
        Secret::parse(&g).unwrap();
    }

    #[test]
    fn auth_file_lines() {
        let t = AuthTable::parse(
            "# lab clients\n\nlab-1 0123456789abcdef0123\n  lab-2\t fedcba9876543210fedc  # bench\n",
            "auth",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.secret(&id("lab-2")),
            Some(&Secret(b"fedcba9876543210fedc".to_vec()))
        );
        assert!(t.secret(&id("lab-3")).is_none());
        for bad in [
            "lab-1\n",
            "lab-1 a b\n",
            "../x 0123456789abcdef0123\n",
            "lab-1 short\n",
            "lab-1 0123456789abcdef0123\nlab-1 0123456789abcdef0124\n",
        ] {
            let e = AuthTable::parse(bad, "auth").unwrap_err();
            assert!(e.to_string().starts_with("auth, line "), "{e}");
        }
    }

    #[test]
    fn proofs_bind_secret_role_session_and_id() {
        let s = Secret::parse("0123456789abcdef0123").unwrap();
        let other = Secret::parse("0123456789abcdef0124").unwrap();
        let x = [7u8; EXPORTER_LEN];
        let y = [8u8; EXPORTER_LEN];
        let p = proof(&s, Role::Client, &x, &id("lab-1"));
        assert!(verify(&s, Role::Client, &x, &id("lab-1"), &p));
        assert!(!verify(&other, Role::Client, &x, &id("lab-1"), &p));
        assert!(!verify(&s, Role::Server, &x, &id("lab-1"), &p));
        assert!(!verify(&s, Role::Client, &y, &id("lab-1"), &p));
        assert!(!verify(&s, Role::Client, &x, &id("lab-2"), &p));
        // RFC 4231 test case 2 pins the primitive: HMAC-SHA256("Jefe", "what do ya want
        // for nothing?").
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        let tag = ring::hmac::sign(&key, b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(tag.as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn admission() {
        let t = AuthTable::parse(
            "lab-1 0123456789abcdef0123\nlab-2 fedcba9876543210fedc\n",
            "auth",
        )
        .unwrap();
        let s1 = Secret::parse("0123456789abcdef0123").unwrap();
        let x = [9u8; EXPORTER_LEN];
        let good = proof(&s1, Role::Client, &x, &id("lab-1"));
        let back = t.admit(&id("lab-1"), &x, &good).unwrap();
        assert!(verify(&s1, Role::Server, &x, &id("lab-1"), &back));
        // Another client's secret, a proof for another session, an unknown id.
        assert_eq!(
            t.admit(
                &id("lab-2"),
                &x,
                &proof(&s1, Role::Client, &x, &id("lab-2"))
            ),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(
            t.admit(&id("lab-1"), &[1u8; EXPORTER_LEN], &good),
            Err(Refusal::WrongSecret)
        );
        assert_eq!(t.admit(&id("lab-3"), &x, &good), Err(Refusal::UnknownId));
        // The server's own proof is not a client proof (no reflection).
        assert_eq!(t.admit(&id("lab-1"), &x, &back), Err(Refusal::WrongSecret));
    }

    #[test]
    fn private_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth");
        std::fs::write(&p, "lab-1 0123456789abcdef0123\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = read_private_file(&p);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if !ok {
                assert!(r.unwrap_err().to_string().contains("chmod 600"));
            }
        }
    }
}
