//! `filesync serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use color_eyre::eyre::{Result, WrapErr};
use filesync_core::archive::Archive;
use filesync_core::auth::AuthFile;
use filesync_core::lease::EtcdLeases;
use filesync_core::messages::Encoding;
use filesync_core::net::tls::ServerTls;
use filesync_core::net::{self, server::ServeConfig};
use filesync_core::objstore::layout::Location;
use filesync_core::objstore::ObjectArchive;
use filesync_core::planner::DeleteCaps;
use filesync_core::store::Store;
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::exit;
use crate::text::{errln, noteln};

pub(crate) async fn run(args: ServeArgs) -> i32 {
    // A malformed URL is a usage error (2), told before anything is opened.
    if let Some(url) = &args.store {
        if let Err(e) = Location::parse(url) {
            errln!("Error: --store: {e}");
            return exit::USAGE;
        }
    }
    if let Some(url) = &args.lease {
        if let Err(e) = filesync_core::lease::check_url(url) {
            errln!("Error: --lease: {e}");
            return exit::USAGE;
        }
    }
    match serve(args).await {
        Ok(()) => exit::OK,
        Err(e) => {
            // One line, the causes joined: color-eyre's report (colours, a source location,
            // a backtrace when RUST_BACKTRACE is set) is for bugs, not for a mistyped
            // setting.
            errln!("Error: {e:#}");
            exit::LOCAL
        }
    }
}

/// How long a session's lease outlives a server that stops renewing it (killed, or cut
/// off from etcd): the wait before another server may serve that client. Renewed every
/// third of it.
const LEASE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The lock in the lease service under which a server on a store reads, or makes, the
/// servers' shared TLS key (`filesync/locks/tls-key`).
const TLS_KEY_LOCK: &str = "tls-key";

/// How long a starting server waits for that lock: another server holds it for about a
/// second (it makes a key, waits, reads it back), or for its TTL if it died holding it.
const TLS_KEY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

async fn serve(args: ServeArgs) -> Result<()> {
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .wrap_err_with(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    // The lease service is reached before the server says it is listening: a script that
    // waits for that line must not take a server that is about to fail for one that runs.
    let leases = match &args.lease {
        Some(url) => {
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "?".into());
            // What other servers name when they refuse this one's clients: a listen
            // address of 0.0.0.0 would not say which machine it is.
            let holder = if local.ip().is_unspecified() {
                format!("{hostname}:{} (pid {})", local.port(), std::process::id())
            } else {
                format!("{hostname} ({local}, pid {})", std::process::id())
            };
            let leases = EtcdLeases::connect(url, LEASE_TTL, holder)
                .await
                .wrap_err_with(|| format!("connecting to the lease service {url}"))?;
            tracing::info!(lease = %url, ttl = ?leases.ttl(),
                "one session per client id across every server of the store (etcd leases)");
            Some(leases)
        }
        None => None,
    };
    let (store, tls, created): (Arc<dyn Archive>, _, _) = match &args.store {
        None => {
            let store = Store::open(&args.root)
                .wrap_err_with(|| format!("opening the server root {}", args.root.display()))?
                .keep_setid(args.keep_setid)
                .keep_versions(Some(args.keep_versions));
            let (tls, created) =
                ServerTls::load_or_create(&store.root().join(".filesync").join("tls"))
                    .wrap_err("loading the server's TLS key")?;
            (Arc::new(store), tls, created)
        }
        Some(url) => {
            let store = ObjectArchive::open(url)
                .await
                .wrap_err_with(|| format!("opening the store {url}"))?
                .keep_setid(args.keep_setid)
                .keep_versions(Some(args.keep_versions));
            // Every server of one store has the same key: clients pin one per id. With a
            // lease service, servers look for it, and make it if it is missing, under a
            // lock there, so that two starting at once agree on one key.
            let lock = match &leases {
                Some(l) => Some(
                    l.lock(TLS_KEY_LOCK, TLS_KEY_LOCK_WAIT)
                        .await
                        .wrap_err("taking the lock on the servers' TLS key")?,
                ),
                None => None,
            };
            let (pem, created) = store
                .tls_key()
                .await
                .wrap_err("loading the servers' TLS key from the store")?;
            if let Some(lock) = lock {
                // If this fails, etcd frees the lock when its TTL runs out.
                if let Err(e) = lock.release().await {
                    tracing::debug!(error = %e, "releasing the lock on the TLS key");
                }
            }
            let tls = ServerTls::from_key_pem(&pem).wrap_err("loading the servers' TLS key")?;
            (Arc::new(store), tls, created)
        }
    };
    if args.store.is_some() && leases.is_none() {
        tracing::warn!(
            "no --lease: servers sharing this store do not coordinate, so two of them may \
             run sessions of one client at once. Objects are still never torn, replaced \
             ones are kept as versions, and an object rewritten after a session planned \
             its deletions is kept (checked just before, not atomically); but each \
             session writes the client's index as it saw it, so folders and folder \
             attributes set by the other may be lost (objects are found again by the next \
             listing). Give --lease etcd://HOST:PORT to run one session per client at a \
             time across servers"
        );
    }
    let auth = match &args.auth_file {
        Some(path) => Some(Arc::new(
            AuthFile::open(path).wrap_err("reading --auth-file")?,
        )),
        None => None,
    };
    let shutdown = shutdown_signal();
    let discovery = if args.no_discovery {
        None
    } else {
        let sock = net::discovery_socket(args.group)
            .wrap_err_with(|| format!("opening discovery on {}", args.group))?;
        Some(tokio::spawn(net::answer_discovery(sock, local.port())))
    };
    // One stable line on stdout, so that people and scripts see where to connect.
    noteln!(
        "filesync serve: listening on {local}, {} {}, discovery {}",
        if args.store.is_some() {
            "store"
        } else {
            "root"
        },
        store.location(),
        if args.no_discovery {
            "off".to_string()
        } else {
            args.group.to_string()
        }
    );
    // The key's fingerprint on stdout too: clients pin it on first use, and a careful
    // admin compares it with what they pinned.
    noteln!(
        "filesync serve: server key {}{}",
        tls.fingerprint,
        if created { " (new)" } else { "" }
    );
    match &auth {
        Some(a) => tracing::info!(
            auth_file = %a.path().display(),
            clients = a.clients(),
            "only clients that authenticate are let in (TLS 1.3); original FileSync clients are refused"
        ),
        None => tracing::warn!(
            "no --auth-file: any host on the network can write to and delete from any \
             client's archive, and files cross the network unencrypted"
        ),
    }
    tracing::info!(
        interval = ?args.interval,
        max_sessions = args.max_sessions,
        idle_timeout = ?args.idle_timeout,
        handshake_timeout = ?args.handshake_timeout,
        max_unidentified = args.max_unidentified,
        max_unidentified_per_ip = args.max_unidentified_per_ip,
        "serving"
    );
    let cfg = ServeConfig {
        interval: args.interval,
        max_sessions: args.max_sessions as usize,
        idle_timeout: args.idle_timeout,
        encodings: vec![Encoding::Postcard, Encoding::Json],
        delete_caps: DeleteCaps {
            max: args.max_delete,
            max_percent: (args.max_delete_percent < 100).then_some(args.max_delete_percent),
        },
        handshake_timeout: args.handshake_timeout,
        max_unidentified: args.max_unidentified as usize,
        max_unidentified_per_ip: args.max_unidentified_per_ip as usize,
        tls: Some(tls),
        auth,
        leases,
    };
    net::server::serve(listener, store, cfg, shutdown)
        .await
        .wrap_err("serving")?;
    if let Some(d) = discovery {
        d.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A future resolving on Ctrl-C or SIGTERM (systemd's stop). The handlers are installed
/// when this is called, not when the future is first polled, so a signal that arrives
/// right after start-up is still a clean stop rather than the default kill.
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            async fn recv(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = recv(term) => {}
                _ = recv(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
