//! The client's known servers: which server key each client id trusts, pinned on first
//! use as ssh's `known_hosts` pins host keys.
//!
//! A pin is keyed by the client id rather than by the server's address, because a client
//! finds its server by discovery, which anyone on the LAN can answer: an address says
//! nothing about who is there. With the pin keyed by id, a spoofed `OFFER` leads at most to
//! a TLS handshake with a key that is not the pinned one, which the client refuses before
//! it sends a byte of its listing.
//!
//! The file has one pin per line, `<client-id> <fingerprint>`, `#` comments and blank
//! lines allowed; an id may have several pins (several servers in front of one archive),
//! any of which is accepted. Parsing is pure; [`KnownServers::load`] and
//! [`KnownServers::pin`] are the I/O.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::paths::ClientId;

/// A server key's fingerprint: SHA-256 of the DER SubjectPublicKeyInfo of its
/// certificate, shown as `sha256:` and 64 lowercase hex digits. The same figure as
/// `openssl x509 -in server.crt -pubkey -noout | openssl pkey -pubin -outform der |
/// sha256sum`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, spki_der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Fingerprint(out)
    }

    /// Parses the `sha256:<hex>` form.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        let v = hex::decode(hex).ok()?;
        Some(Fingerprint(v.try_into().ok()?))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// One pin, and the line it came from (for the message that tells the user which line to
/// delete when a server's key changed on purpose).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The client id it is for.
    pub id: ClientId,
    /// The server key it trusts.
    pub fingerprint: Fingerprint,
    /// 1-based line number in the file.
    pub line: usize,
}

/// A known-servers file, as read.
#[derive(Debug, Clone)]
pub struct KnownServers {
    path: PathBuf,
    pins: Vec<Pin>,
}

/// A known-servers line that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}, line {line}: expected `<client-id> sha256:<64 hex digits>`")]
pub struct PinSyntax {
    /// The file.
    pub path: String,
    /// 1-based line number.
    pub line: usize,
}

impl KnownServers {
    /// Parses a known-servers file's text.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PinSyntax> {
        let mut pins = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = || PinSyntax {
                path: path.display().to_string(),
                line: i + 1,
            };
            let mut w = line.split_whitespace();
            let (Some(id), Some(fp), None) = (w.next(), w.next(), w.next()) else {
                return Err(bad());
            };
            pins.push(Pin {
                id: ClientId::parse(id).map_err(|_| bad())?,
                fingerprint: Fingerprint::parse(fp).ok_or_else(bad)?,
                line: i + 1,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            pins,
        })
    }

    /// Reads the file at `path`; a missing file is an empty one (nothing pinned yet).
    pub fn load(path: &Path) -> Result<Self, crate::Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text).map_err(|e| crate::Error::Refused {
                code: crate::messages::ErrorCode::UNAUTHORIZED,
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                path: path.to_owned(),
                pins: Vec::new(),
            }),
            Err(e) => Err(crate::Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pins for `id`, in file order.
    pub fn pins_for<'a>(&'a self, id: &'a ClientId) -> impl Iterator<Item = &'a Pin> + 'a {
        self.pins.iter().filter(move |p| &p.id == id)
    }

    /// Appends a pin for `id` to the file (creating it and its folder, private to the
    /// user) and flushes it to disk, so that a pin the user was told about is kept.
    pub fn pin(&mut self, id: &ClientId, fingerprint: Fingerprint) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        // A file edited by hand may not end in a newline: the pin must not be glued to its
        // last line (which would corrupt that line, or hide the pin in its comment).
        let existing = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let unterminated = existing.last().is_some_and(|&c| c != b'\n');
        // The pin goes on the line after the file's last one, terminated or not.
        let line = existing.iter().filter(|&&c| c == b'\n').count() + usize::from(unterminated) + 1;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        if unterminated {
            writeln!(f)?;
        }
        writeln!(f, "{id} {fingerprint}")?;
        f.sync_all()?;
        self.pins.push(Pin {
            id: id.clone(),
            fingerprint,
            line,
        });
        Ok(())
    }
}

/// What the client decides about the key a server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// The key is pinned for this id.
    Pinned,
    /// Nothing is pinned for this id: trust on first use, once the server has also proved
    /// it knows the client's secret.
    FirstUse,
    /// Other keys are pinned for this id: refuse.
    Changed(Vec<Pin>),
}

/// Decides about `presented` against the pins for one id. Pure.
pub fn check<'a>(pins: impl IntoIterator<Item = &'a Pin>, presented: &Fingerprint) -> PinCheck {
    let pins: Vec<Pin> = pins.into_iter().cloned().collect();
    if pins.is_empty() {
        PinCheck::FirstUse
    } else if pins.iter().any(|p| &p.fingerprint == presented) {
        PinCheck::Pinned
    } else {
        PinCheck::Changed(pins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn parse_check_and_pin() {
        let fa = Fingerprint::parse(A).unwrap();
        assert_eq!(fa.to_string(), A);
        let fb = Fingerprint::of_spki(b"another key");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_servers");
        let text = format!("# pins\nlab-1 {A}\n\nlab-2 {fb} # the bench\n");
        let ks = KnownServers::parse(&path, &text).unwrap();
        let lab1 = ClientId::parse("lab-1").unwrap();
        let lab3 = ClientId::parse("lab-3").unwrap();
        assert_eq!(check(ks.pins_for(&lab1), &fa), PinCheck::Pinned);
        match check(ks.pins_for(&lab1), &fb) {
            PinCheck::Changed(p) => assert_eq!(p[0].line, 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(check(ks.pins_for(&lab3), &fb), PinCheck::FirstUse);
        for bad in [
            "lab-1\n",
            "lab-1 sha256:00\n",
            "lab-1 md5:00 x\n",
            "../x sha256:00\n",
        ] {
            let e = KnownServers::parse(&path, bad).unwrap_err();
            assert_eq!(e.line, 1);
        }

        let mut ks = KnownServers::load(&path).unwrap();
        assert_eq!(ks.pins_for(&lab3).count(), 0);
        ks.pin(&lab3, fb).unwrap();
        ks.pin(&lab1, fa).unwrap();
        let again = KnownServers::load(&path).unwrap();
        assert_eq!(check(again.pins_for(&lab3), &fb), PinCheck::Pinned);
        assert_eq!(again.pins_for(&lab1).next().unwrap().line, 2);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // A hand-edited file with no newline at its end, its last line a comment.
        std::fs::write(&path, format!("lab-1 {A} # no newline")).unwrap();
        let mut ks = KnownServers::load(&path).unwrap();
        ks.pin(&lab3, fb).unwrap();
        let again = KnownServers::load(&path).unwrap();
        assert_eq!(check(again.pins_for(&lab1), &fa), PinCheck::Pinned);
        assert_eq!(check(again.pins_for(&lab3), &fb), PinCheck::Pinned);
        assert_eq!(again.pins_for(&lab3).next().unwrap().line, 2);
    }
}
