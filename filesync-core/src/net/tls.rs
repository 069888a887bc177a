//! TLS 1.3 (rustls, ring's primitives) for authenticated sessions: the server's key,
//! kept under `<root>/.filesync/tls/`, the client's verifier that trusts a key by its
//! pinned fingerprint instead of a certificate authority, and [`Transport`], the stream a
//! session runs over whether it is encrypted or not.
//!
//! The server's certificate is self-signed and only carries its key: nobody checks its
//! names or dates. What the client checks is that the key's fingerprint is the one pinned
//! for its id (see [`crate::pins`]) and, through rustls, that the server holds the key's
//! private half (its signature over the handshake).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::auth::{EXPORTER_LABEL, EXPORTER_LEN};
use crate::error::Error;
use crate::pins::{self, Fingerprint, PinCheck};

/// The name a client asks for in its ClientHello. The server has one key and the client
/// checks it by fingerprint, so the name only has to be syntactically valid.
pub const SERVER_NAME: &str = "filesync";

/// The stream under a session: plain TCP, or TLS on either side.
#[derive(Debug)]
pub enum Transport {
    /// Unencrypted TCP (no authentication, or the original dialect).
    Plain(TcpStream),
    /// The client's end of a TLS session.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// The server's end of a TLS session.
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Transport {
    /// The session's exported value for the authentication proofs (RFC 8446 §7.5,
    /// [`EXPORTER_LABEL`], no context); `None` for plain TCP.
    pub fn exporter(&self) -> Option<[u8; EXPORTER_LEN]> {
        let out = [0u8; EXPORTER_LEN];
        let r = match self {
            Transport::Plain(_) => return None,
            Transport::Client(s) => s
                .get_ref()
                .1
                .export_keying_material(out, EXPORTER_LABEL, None),
            Transport::Server(s) => s
                .get_ref()
                .1
                .export_keying_material(out, EXPORTER_LABEL, None),
        };
        r.ok()
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Transport::Plain(_))
    }
}

// Every variant is `Unpin`, so pinning by `Pin::new` is sound without unsafe code.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Transport::Plain($s) => $e,
            Transport::Client($s) => $e,
            Transport::Server($s) => $e,
        }
    };
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Client(s) => s.is_write_vectored(),
            Transport::Server(s) => s.is_write_vectored(),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS identity: what accepts connections, and the key's fingerprint to print
/// at start.
#[derive(Clone)]
pub struct ServerTls {
    /// Accepts TLS 1.3 connections with the server's key.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// The fingerprint clients pin.
    pub fingerprint: Fingerprint,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// Makes ring rustls's process-wide default provider, for the HTTP clients (the object
/// store's, etcd's) that take the default: one crypto stack in the binary, the same as
/// filesync's own TLS. Idempotent.
pub fn install_default_provider() {
    // Err means one is installed already, which is all that is needed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

const KEY_FILE: &str = "server.key";
const CERT_FILE: &str = "server.crt";

impl ServerTls {
    /// Loads the server's key from `dir` (`<root>/.filesync/tls`), making a new ECDSA P-256
    /// key and a self-signed certificate for it on first start. The key file is created
    /// private to the server's user; one that group or others can read is refused, as ssh
    /// refuses such a host key. Whether it was made now is returned beside it.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), Error> {
        use std::os::unix::fs::DirBuilderExt;
        let ctx = |what: &str, e: io::Error| Error::io(format!("{what} {}", dir.display()), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ctx("creating", e))?;
        let key_path = dir.join(KEY_FILE);
        let cert_path = dir.join(CERT_FILE);
        let (key_pem, created) = match crate::auth::read_private_file(&key_path) {
            Ok(pem) => (pem, false),
            Err(crate::auth::AuthError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                let key = rcgen::KeyPair::generate().map_err(tls_setup)?;
                let pem = key.serialize_pem();
                write_new(&key_path, pem.as_bytes(), 0o600)?;
                (pem, true)
            }
            Err(e) => return Err(refused(e.to_string())),
        };
        let key = rcgen::KeyPair::from_pem(&key_pem).map_err(tls_setup)?;
        // The certificate is derived from the key: made again whenever it is missing.
        let cert_der = match std::fs::read_to_string(&cert_path) {
            Ok(pem) if !created => pem_cert(&pem)?,
            _ => {
                let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
                    .map_err(tls_setup)?;
                let cert = params.self_signed(&key).map_err(tls_setup)?;
                let _ = std::fs::remove_file(&cert_path);
                write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
                cert.der().clone()
            }
        };
        Ok((Self::with_key(&key, cert_der)?, created))
    }

    /// A new ECDSA P-256 key, as PEM: for servers that keep their key elsewhere (the
    /// object store's servers share one).
    pub fn generate_key_pem() -> Result<String, Error> {
        Ok(rcgen::KeyPair::generate()
            .map_err(tls_setup)?
            .serialize_pem())
    }

    /// The TLS set-up for the key in `key_pem`, with a self-signed certificate made now
    /// (the certificate only carries the key; its fingerprint is the key's).
    pub fn from_key_pem(key_pem: &str) -> Result<Self, Error> {
        let key = rcgen::KeyPair::from_pem(key_pem).map_err(tls_setup)?;
        let params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()]).map_err(tls_setup)?;
        let cert = params.self_signed(&key).map_err(tls_setup)?;
        Self::with_key(&key, cert.der().clone())
    }

    fn with_key(key: &rcgen::KeyPair, cert_der: CertificateDer<'static>) -> Result<Self, Error> {
        let fingerprint = cert_fingerprint(&cert_der).map_err(tls_setup)?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(tls_setup)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_setup)?
            .with_no_client_auth()
            .with_single_cert(vec![cert_der], key_der)
            .map_err(tls_setup)?;
        // Every session is a full handshake: no tickets, nothing to resume.
        config.send_tls13_tickets = 0;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        })
    }
}

/// The fingerprint of a certificate's key (its SubjectPublicKeyInfo), the same on both
/// sides.
fn cert_fingerprint(cert: &CertificateDer<'_>) -> Result<Fingerprint, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(Fingerprint::of_spki(
        parsed.subject_public_key_info().as_ref(),
    ))
}

fn pem_cert(pem: &str) -> Result<CertificateDer<'static>, Error> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(tls_setup)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let e = |e| Error::io(format!("writing {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(e)?;
    f.write_all(bytes).map_err(e)?;
    f.sync_all().map_err(e)
}

fn tls_setup(e: impl std::fmt::Display) -> Error {
    Error::io("setting up TLS", io::Error::other(e.to_string()))
}

fn refused(message: String) -> Error {
    Error::Refused {
        code: crate::messages::ErrorCode::UNAUTHORIZED,
        message,
    }
}

/// Trusts a server key by the pins of one client id, as [`pins::check`] decides: any key
/// when there is none (first use; the caller pins it once the server has also proved it
/// knows the client's secret), else only a pinned one. It records the key it was shown
/// and the decision, so the caller can say which key a refused server presented, or pin
/// the key of a first use.
#[derive(Debug)]
pub struct PinVerifier {
    pins: Vec<pins::Pin>,
    verdict: Mutex<Option<(Fingerprint, PinCheck)>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinVerifier {
    /// A verifier that trusts `pins` (or, none, any key).
    pub fn new(pins: Vec<pins::Pin>) -> Self {
        Self {
            pins,
            verdict: Mutex::new(None),
            algorithms: provider().signature_verification_algorithms,
        }
    }

    /// The fingerprint of the key the server presented, once the handshake got that far.
    pub fn seen(&self) -> Option<Fingerprint> {
        self.verdict().map(|(fp, _)| fp)
    }

    /// The key the server presented and what the pins said of it, once the handshake got
    /// that far.
    pub fn verdict(&self) -> Option<(Fingerprint, PinCheck)> {
        self.verdict.lock().ok().and_then(|v| v.clone())
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = cert_fingerprint(end_entity)?;
        let check = pins::check(&self.pins, &fp);
        let refused = matches!(check, PinCheck::Changed(_));
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some((fp, check));
        }
        if refused {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        } else {
            Ok(ServerCertVerified::assertion())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The config offers TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The proof that the server holds the private half of the pinned key.
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A TLS 1.3 connector that trusts the server keys `verifier` allows.
pub fn connector(verifier: Arc<PinVerifier>) -> Result<tokio_rustls::TlsConnector, Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_setup)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    // No session resumption: the pin is checked on every connection.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The server name the client sends.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("a valid DNS name")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A TLS session over real loopback TCP, the client trusting `allowed`.
    async fn session(
        server: &ServerTls,
        allowed: Vec<Fingerprint>,
    ) -> (
        Result<Transport, io::Error>,
        Arc<PinVerifier>,
        Option<Transport>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = server.acceptor.clone();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor
                .accept(tcp)
                .await
                .ok()
                .map(|s| Transport::Server(Box::new(s)))
        });
        let pins = allowed
            .into_iter()
            .map(|fingerprint| pins::Pin {
                id: crate::paths::ClientId::parse("lab-1").unwrap(),
                fingerprint,
                line: 1,
            })
            .collect();
        let verifier = Arc::new(PinVerifier::new(pins));
        let tcp = TcpStream::connect(addr).await.unwrap();
        let client = connector(Arc::clone(&verifier))
            .unwrap()
            .connect(server_name(), tcp)
            .await
            .map(|s| Transport::Client(Box::new(s)));
        (client, verifier, accept.await.unwrap())
    }

    #[tokio::test]
    async fn pinned_key_exporter_and_refusal() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("tls");
        let (server, created) = ServerTls::load_or_create(&tls_dir).unwrap();
        assert!(created);
        let mode = std::fs::metadata(tls_dir.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same key at the next start, and the certificate made again if it is lost.
        std::fs::remove_file(tls_dir.join(CERT_FILE)).unwrap();
        let (again, created) = ServerTls::load_or_create(&tls_dir).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint, server.fingerprint);

        // First use (nothing pinned) and the pinned key: both connect, and both ends
        // export the same value, which no other session shares.
        let mut exported = Vec::new();
        for allowed in [vec![], vec![server.fingerprint]] {
            let (client, verifier, accepted) = session(&server, allowed).await;
            let (mut client, mut accepted) = (client.unwrap(), accepted.unwrap());
            assert_eq!(verifier.seen(), Some(server.fingerprint));
            assert!(client.is_tls());
            client.write_all(b"ping").await.unwrap();
            client.flush().await.unwrap();
            let mut b = [0u8; 4];
            accepted.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            let x = client.exporter().unwrap();
            assert_eq!(Some(x), accepted.exporter());
            exported.push(x);
        }
        assert_ne!(exported[0], exported[1]);

        // Another key pinned: the handshake fails, and the verifier saw which key it was.
        let other = Fingerprint::of_spki(b"some other key");
        let (client, verifier, accepted) = session(&server, vec![other]).await;
        assert!(client.is_err());
        assert!(accepted.is_none());
        assert_eq!(verifier.seen(), Some(server.fingerprint));

        // A key file others can read is refused.
        std::fs::set_permissions(
            tls_dir.join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = ServerTls::load_or_create(&tls_dir).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
