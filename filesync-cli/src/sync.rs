//! `filesync sync`: once, or in a loop on the server's schedule.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use filesync_core::auth::{self, Secret};
use filesync_core::messages::Encoding;
use filesync_core::net::client::{ClientAuth, DialectChoice, SyncConfig, Synced};
use filesync_core::net::{self};
use filesync_core::paths::ClientId;
use filesync_core::session::client::ClientParams;
use filesync_core::walk::ListOptions;
use filesync_core::Error;
use rand::Rng;

use crate::cli::{DialectArg, EncodingArg, SyncArgs};
use crate::progress;
use crate::text::{errln, outln};
use crate::{exit, text};

/// Default server port when `--server` names only a host.
const DEFAULT_PORT: u16 = 9000;
/// Longest wait between failed attempts in loop mode.
const MAX_RETRY: Duration = Duration::from_secs(300);

/// Why one attempt failed, with the exit code it maps to.
struct Failure {
    code: i32,
    message: String,
    /// The server may have moved: discover again before the next attempt.
    rediscover: bool,
}

/// How the command reports: `--json` summary, `-q` quiet.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    pub(crate) json: bool,
    pub(crate) quiet: bool,
}

pub(crate) async fn run(args: SyncArgs, out: Output) -> i32 {
    let id = match args.id.as_deref().map(ClientId::parse).transpose() {
        Ok(id) => id,
        Err(e) => {
            errln!("Error: {e}");
            return exit::REFUSED;
        }
    };
    let params = ClientParams {
        client_id: id,
        encoding: match args.encoding {
            EncodingArg::Postcard => Encoding::Postcard,
            EncodingArg::Json => Encoding::Json,
        },
        agent: format!("filesync/{}", env!("CARGO_PKG_VERSION")),
        allow_empty: args.allow_empty,
        max_delete: args.max_delete,
        whole_file: args.whole_file,
    };
    let auth = match client_auth(&args) {
        Ok(a) => a,
        Err(f) => {
            errln!("Error: {}", f.message);
            return f.code;
        }
    };
    let cfg = SyncConfig {
        auth,
        dir: args.dir.clone(),
        params,
        idle_timeout: args.idle_timeout,
        dialect: match args.dialect {
            DialectArg::Auto => DialectChoice::Auto,
            DialectArg::Native => DialectChoice::Native,
            DialectArg::Seed => DialectChoice::Seed,
        },
        list: ListOptions {
            // An empty FILESYNC_EXCLUDE, or blank lines in it, exclude nothing.
            exclude: args
                .exclude
                .iter()
                .filter(|p| !p.trim().is_empty())
                .cloned()
                .collect(),
            delete_excluded: args.delete_excluded,
        },
    };
    if args.once {
        return match attempt(&args, &cfg, &mut None, out).await {
            Ok(synced) => {
                let r = &synced.report;
                if r.failed_count > 0 || r.tail_failures > 0 {
                    exit::PARTIAL
                } else if r.held_back > 0 {
                    exit::DELETE_LIMIT
                } else {
                    exit::OK
                }
            }
            Err(f) => {
                errln!("Error: {}", f.message);
                f.code
            }
        };
    }
    run_loop(&args, &cfg, out).await
}

/// The client's secret (`--secret-file`, or `FILESYNC_SECRET`) and known-servers file, if
/// it authenticates.
fn client_auth(args: &SyncArgs) -> Result<Option<ClientAuth>, Failure> {
    let fail = |code, message: String| Failure {
        code,
        message,
        rediscover: false,
    };
    let from_env = std::env::var("FILESYNC_SECRET")
        .ok()
        .filter(|s| !s.is_empty());
    let text = match (&args.secret_file, from_env) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(fail(
                exit::USAGE,
                "both --secret-file and FILESYNC_SECRET are given; give the secret once".into(),
            ))
        }
        (Some(path), None) => {
            auth::read_private_file(path).map_err(|e| fail(exit::AUTH, e.to_string()))?
        }
        (None, Some(s)) => s,
    };
    let secret = Secret::parse(&text).map_err(|e| fail(exit::AUTH, e.to_string()))?;
    if args.id.is_none() {
        return Err(fail(
            exit::USAGE,
            "authenticating needs --id: the server's auth file lists secrets by client id".into(),
        ));
    }
    let known_servers = match &args.known_servers {
        Some(p) => p.clone(),
        None => dirs::config_dir()
            .map(|d| d.join("filesync").join("known_servers"))
            .ok_or_else(|| {
                fail(
                    exit::USAGE,
                    "cannot find the user's config folder (HOME is not set?); give \
                     --known-servers FILE"
                        .into(),
                )
            })?,
    };
    Ok(Some(ClientAuth {
        secret,
        known_servers,
    }))
}

/// Loop mode: sync, sleep until the server's NEXT_SYNC, repeat; on failure retry with
/// backoff and jitter. Ctrl-C or SIGTERM ends it with exit 0.
async fn run_loop(args: &SyncArgs, cfg: &SyncConfig, out: Output) -> i32 {
    let mut server = None;
    let mut failures = 0u32;
    let stop = crate::serve::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let wait = tokio::select! {
            r = attempt(args, cfg, &mut server, out) => match r {
                Ok(synced) => {
                    failures = 0;
                    Duration::from_millis(synced.next.delay_ms)
                }
                Err(f) => {
                    if f.code == exit::REFUSED || f.code == exit::WOULD_EMPTY {
                        // Retrying cannot fix these; a person must.
                        tracing::error!("{}", f.message);
                        return f.code;
                    }
                    // A warning, not an error: the loop retries (a busy server, another
                    // server holding this client's lease, a network that comes back).
                    tracing::warn!("{} (retrying)", f.message);
                    if f.rediscover {
                        server = None;
                    }
                    failures += 1;
                    let base = Duration::from_secs(1u64 << failures.min(8)).min(MAX_RETRY);
                    base.mul_f64(rand::rng().random_range(0.5..1.0))
                }
            },
            _ = &mut stop => return exit::OK,
        };
        tracing::info!(wait = ?wait, "next sync");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut stop => return exit::OK,
        }
    }
}

async fn resolve(args: &SyncArgs) -> Result<SocketAddr, Failure> {
    if let Some(s) = &args.server {
        let with_port = if s
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !s.ends_with(']')
        {
            s.clone()
        } else {
            format!("{s}:{DEFAULT_PORT}")
        };
        let mut addrs = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| Failure {
                code: exit::CONNECTION,
                message: format!("cannot resolve server {s}: {e}"),
                rediscover: false,
            })?;
        return addrs.next().ok_or_else(|| Failure {
            code: exit::CONNECTION,
            message: format!("server {s} resolves to no address"),
            rediscover: false,
        });
    }
    tracing::info!(group = %args.group, "discovering the server");
    net::discover(args.group, args.discovery_timeout)
        .await
        .map_err(|e| Failure {
            code: exit::NO_SERVER,
            message: format!(
                "no server answered discovery on {} within {:?} ({e}); is `filesync serve` running, \
                 and does the network pass multicast? Use --server HOST:PORT to skip discovery",
                args.group, args.discovery_timeout
            ),
            rediscover: true,
        })
}

async fn attempt(
    args: &SyncArgs,
    cfg: &SyncConfig,
    server: &mut Option<SocketAddr>,
    out: Output,
) -> Result<Synced, Failure> {
    let started = Instant::now();
    // Walk the folder while connecting: the first chunks of the listing are ready when
    // the server is.
    let listing = net::client::list_in_background(cfg.dir.clone(), cfg.list.clone());
    let addr = match *server {
        Some(a) => a,
        None => {
            let a = resolve(args).await?;
            *server = Some(a);
            a
        }
    };
    // No bar under a JSON summary or -q: the terminal gets only what was asked for.
    let progress = progress::for_terminal(out.json || out.quiet);
    let synced = net::client::sync(addr, cfg, listing, progress)
        .await
        .map_err(|e| failure(e, addr, cfg, args.server.is_none()))?;
    summarise(&synced, started.elapsed(), out.json, addr);
    Ok(synced)
}

fn failure(e: Error, addr: SocketAddr, cfg: &SyncConfig, discovered: bool) -> Failure {
    let code = exit::for_error(&e);
    let message = match (&e, code) {
        (_, exit::WOULD_EMPTY) => format!(
            "refusing to empty the archive: {} is empty or missing but the server holds files \
             for this client (pass --allow-empty if that is really meant)",
            cfg.dir.display()
        ),
        _ => format!("syncing {} to {addr}: {e}", cfg.dir.display()),
    };
    Failure {
        code,
        message,
        // A key that is not the pinned one may come from a host that answered discovery
        // in the real server's place: look again before the next attempt.
        rediscover: discovered && (code == exit::CONNECTION || code == exit::AUTH),
    }
}

fn summarise(s: &Synced, took: Duration, json: bool, addr: SocketAddr) {
    let r = &s.report;
    for (p, code, why) in &r.failed {
        tracing::warn!(path = %p, %code, why, "not stored; will retry next sync");
    }
    if r.tail_failures > 0 {
        tracing::warn!(
            count = r.tail_failures,
            "the server could not apply every deletion, folder or folder time (see its log); \
             will retry next sync"
        );
    }
    if r.held_back > 0 {
        tracing::warn!(
            held_back = r.held_back,
            "deletions held back: {}",
            r.held_back_reason
        );
    }
    if r.failed_count > r.failed.len() as u64 {
        tracing::warn!(
            more = r.failed_count - r.failed.len() as u64,
            "more files not stored; will retry next sync"
        );
    }
    if json {
        let v = serde_json::json!({
            "server": addr.to_string(),
            "client_id": s.client_id.as_str(),
            "dialect": s.dialect.name(),
            "files_requested": r.requested,
            "files_sent": r.sent,
            "files_stored": r.stored,
            "files_failed": r.failed_count,
            "tail_failures": r.tail_failures,
            "bytes_sent": r.bytes_sent,
            "deleted": r.deleted,
            "deletions_held_back": r.held_back,
            "files_resumed": r.resumed,
            "files_delta": r.deltas,
            "excluded": r.excluded,
            "skipped_sockets": r.sockets,
            "skipped_devices": r.devices,
            "duration_secs": took.as_secs_f64(),
            "next_sync_in_secs": s.next.delay_ms as f64 / 1000.0,
        });
        outln!("{v}");
    } else {
        // Entries not archived by design are named, so that a summary never hides one.
        let mut left_out = String::new();
        for (n, what) in [
            (r.held_back, "deletions held back"),
            (r.excluded, "excluded"),
            (r.sockets, "sockets not archived"),
            (r.devices, "device files not archived"),
        ] {
            if n > 0 {
                left_out.push_str(&format!(", {n} {what}"));
            }
        }
        // How the bytes went, where it was not simply whole files.
        let mut how = String::new();
        for (n, what) in [(r.deltas, "as block deltas"), (r.resumed, "resumed")] {
            if n > 0 {
                how.push_str(&format!("; {n} {what}"));
            }
        }
        outln!(
            "synced to {addr} ({}) as {}: {} stored ({} bytes sent{how}), {} deleted, {} failed{left_out}, in {:.2}s; next sync in {:.1}s",
            s.dialect.name(),
            s.client_id,
            text::count(r.stored, "file", "files"),
            r.bytes_sent,
            r.deleted,
            r.failed_count,
            took.as_secs_f64(),
            s.next.delay_ms as f64 / 1000.0
        );
    }
}
