//! Command-line flags exactly as typed. Parsing touches nothing on the system; `serve.rs`
//! and `sync.rs` resolve them (addresses, folders) when they run.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args as ClapArgs, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::text::errln;

/// Keeps archive folders of many machines copied onto one server on a LAN.
///
/// A client finds the server by UDP multicast (or is told where it is), pushes only
/// what changed, one way, and the server tells it when to come back.
#[derive(Debug, Parser)]
#[command(name = "filesync", version, propagate_version = true)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Command,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub(crate) verbose: u8,

    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: u8,

    /// Print the final summary as one JSON object on stdout (for scripts).
    #[arg(long, global = true, env = "FILESYNC_JSON", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a server: store each client's folder under --root and answer discovery.
    Serve(ServeArgs),
    /// Push a folder to a server, once (--once) or on the server's schedule.
    Sync(SyncArgs),
    /// List the kept versions of a client's files (on the server, newest first).
    Versions(VersionsArgs),
    /// Write a client's folder, as the archive holds it now or held it at a time, into
    /// a new folder (on the server; never into the archive).
    Restore(RestoreArgs),
    /// Print a new random secret for a client (32 bytes from the system's generator, in
    /// hex), to put in the server's --auth-file and the client's --secret-file.
    GenSecret,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct VersionsArgs {
    /// The server root (as given to `serve --root`).
    #[arg(long, default_value = "./filesync-data", env = "FILESYNC_ROOT")]
    pub(crate) root: PathBuf,

    /// The client whose versions to list.
    #[arg(long, env = "FILESYNC_ID")]
    pub(crate) id: String,

    /// Read the archive from an S3-compatible object store instead of --root (which is
    /// then not used): s3://BUCKET[/PREFIX], with credentials, endpoint and region from
    /// the AWS_* environment variables.
    #[arg(long, value_name = "URL", env = "FILESYNC_STORE")]
    pub(crate) store: Option<String>,

    /// Only versions of these paths (relative to the client's folder) and what is under
    /// them.
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct RestoreArgs {
    /// The server root (as given to `serve --root`).
    #[arg(long, default_value = "./filesync-data", env = "FILESYNC_ROOT")]
    pub(crate) root: PathBuf,

    /// The client whose folder to restore.
    #[arg(long, env = "FILESYNC_ID")]
    pub(crate) id: String,

    /// Read the archive from an S3-compatible object store instead of --root (which is
    /// then not used): s3://BUCKET[/PREFIX], with credentials, endpoint and region from
    /// the AWS_* environment variables.
    #[arg(long, value_name = "URL", env = "FILESYNC_STORE")]
    pub(crate) store: Option<String>,

    /// Where to write it: a new or empty folder outside the server root.
    #[arg(long)]
    pub(crate) to: PathBuf,

    /// The time to restore: RFC 3339 (2026-11-30T09:00:00Z), a local `YYYY-MM-DD
    /// HH:MM[:SS]`, or an age (2h, 3d). Without it, the archive as it is now.
    #[arg(long)]
    pub(crate) at: Option<String>,

    /// Only these paths (relative to the client's folder) and what is under them.
    pub(crate) paths: Vec<PathBuf>,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct ServeArgs {
    /// TCP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 9000, env = "FILESYNC_PORT")]
    pub(crate) port: u16,

    /// Time between a client's syncs: seconds, or with a unit (90s, 5m, 1h).
    #[arg(long, default_value = "30", value_parser = parse_duration, env = "FILESYNC_INTERVAL")]
    pub(crate) interval: Duration,

    /// Where client folders are kept (`client_<id>` each) and filesync's own state (.filesync).
    #[arg(long, default_value = "./filesync-data", env = "FILESYNC_ROOT")]
    pub(crate) root: PathBuf,

    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0", env = "FILESYNC_BIND")]
    pub(crate) bind: IpAddr,

    /// Multicast group and port on which to answer discovery.
    #[arg(long, default_value = "224.1.1.1:9999", env = "FILESYNC_GROUP")]
    pub(crate) group: SocketAddrV4,

    /// Do not answer discovery (clients must be given --server).
    #[arg(long, env = "FILESYNC_NO_DISCOVERY", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) no_discovery: bool,

    /// Sessions served at once; further clients are queued first come, first served.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..), env = "FILESYNC_MAX_SESSIONS")]
    pub(crate) max_sessions: u32,

    /// A client silent this long loses its turn: seconds, or with a unit.
    #[arg(long, default_value = "60", value_parser = parse_duration, env = "FILESYNC_IDLE_TIMEOUT")]
    pub(crate) idle_timeout: Duration,

    /// A connection must identify itself (a filesync client's HELLO, an original client's
    /// file list) this soon after connecting, or it is closed: seconds, or with a unit.
    /// Until then it holds no place in the queue.
    #[arg(long, default_value = "10", value_parser = parse_positive_duration, env = "FILESYNC_HANDSHAKE_TIMEOUT")]
    pub(crate) handshake_timeout: Duration,

    /// Connections that have not identified themselves yet, at most; past it a new one
    /// closes the oldest.
    #[arg(long, value_name = "N", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..), env = "FILESYNC_MAX_UNIDENTIFIED")]
    pub(crate) max_unidentified: u32,

    /// Connections not yet identified from one IP address (IPv6: one /64), at most; past
    /// it new ones from that address are closed at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..), env = "FILESYNC_MAX_UNIDENTIFIED_PER_IP")]
    pub(crate) max_unidentified_per_ip: u32,

    /// Keep setuid and setgid bits of clients' files (dropped by default: a server must
    /// not grow setuid programs from the network).
    #[arg(long, env = "FILESYNC_KEEP_SETID", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) keep_setid: bool,

    /// Delete at most N entries per session (a deleted folder counts each entry in it);
    /// past it, deletions stop, the rest of the session completes and the client is told.
    #[arg(long, value_name = "N", env = "FILESYNC_MAX_DELETE")]
    pub(crate) max_delete: Option<u64>,

    /// Delete nothing in a session that would delete more than this percentage of a
    /// client's archive (a wrong folder, a cloned id, ransomware); 100 turns it off.
    #[arg(long, value_name = "P", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100), env = "FILESYNC_MAX_DELETE_PERCENT")]
    pub(crate) max_delete_percent: u32,

    /// Keep files that syncs replace or delete for this long, under
    /// ROOT/.filesync/versions, or PREFIX/.filesync/versions with --store (`filesync
    /// versions`, `filesync restore`); 0 keeps none.
    #[arg(long, default_value = "30d", value_parser = parse_duration, env = "FILESYNC_KEEP_VERSIONS")]
    pub(crate) keep_versions: Duration,
    /// Let in only the clients listed in FILE, one `<client-id> <secret>` per line (`#`
    /// comments), each proving its secret over TLS; original FileSync clients, which
    /// cannot, are refused. FILE must not be accessible by group or others. It is read
    /// again for each client, so clients can be added without a restart. Without it, any
    /// host on the network can write to any client's archive, in the clear.
    #[arg(long, value_name = "FILE", env = "FILESYNC_AUTH_FILE")]
    pub(crate) auth_file: Option<PathBuf>,

    /// Keep the archive in an S3-compatible object store instead of under --root (which
    /// is then not used): s3://BUCKET[/PREFIX], one object per file under
    /// PREFIX/client_ID/. Credentials, endpoint and region come from the standard AWS_*
    /// environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT,
    /// AWS_REGION, AWS_ALLOW_HTTP). Any number of servers may serve one store; see
    /// --lease.
    #[arg(long, value_name = "URL", env = "FILESYNC_STORE")]
    pub(crate) store: Option<String>,

    /// With --store: take a lease on each client id in etcd
    /// (etcd://HOST:PORT[,HOST:PORT...]) before its session, so that servers sharing the
    /// store never run two sessions of one client at once.
    #[arg(long, value_name = "URL", requires = "store", env = "FILESYNC_LEASE")]
    pub(crate) lease: Option<String>,
}

#[derive(Debug, ClapArgs)]
pub(crate) struct SyncArgs {
    /// Client id, naming the folder on the server (`client_<id>`); 1-64 of A-Z a-z 0-9 . _ -.
    /// Without it the server uses the client's IP address.
    #[arg(long, env = "FILESYNC_ID")]
    pub(crate) id: Option<String>,

    /// Server as HOST:PORT (or HOST, port 9000). Without it the server is found by
    /// multicast discovery.
    #[arg(long, env = "FILESYNC_SERVER")]
    pub(crate) server: Option<String>,

    /// Folder to push.
    #[arg(long, default_value = ".", env = "FILESYNC_DIR")]
    pub(crate) dir: PathBuf,

    /// Sync once and exit: 0 means the server holds the whole tree durably on disk.
    #[arg(long, env = "FILESYNC_ONCE", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) once: bool,

    /// Multicast group and port to discover the server on.
    #[arg(long, default_value = "224.1.1.1:9999", env = "FILESYNC_GROUP")]
    pub(crate) group: SocketAddrV4,

    /// Give up discovery after this long: seconds, or with a unit.
    #[arg(long, default_value = "30", value_parser = parse_duration, env = "FILESYNC_DISCOVERY_TIMEOUT")]
    pub(crate) discovery_timeout: Duration,

    /// Encoding of the session.
    #[arg(long, value_enum, default_value_t = EncodingArg::Postcard, env = "FILESYNC_ENCODING")]
    pub(crate) encoding: EncodingArg,

    /// Protocol: auto (native if the server offers it, else the original FileSync's),
    /// native, or seed (the original's).
    #[arg(long, value_enum, default_value_t = DialectArg::Auto, env = "FILESYNC_DIALECT")]
    pub(crate) dialect: DialectArg,

    /// Let an empty or missing folder empty the server's copy (normally refused, so that
    /// an unmounted disk cannot wipe an archive).
    #[arg(long, env = "FILESYNC_ALLOW_EMPTY", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) allow_empty: bool,

    /// Give up on a server silent this long: seconds, or with a unit.
    #[arg(long, default_value = "120", value_parser = parse_duration, env = "FILESYNC_IDLE_TIMEOUT")]
    pub(crate) idle_timeout: Duration,

    /// Leave out paths matching PATTERN (gitignore syntax, rooted at --dir; repeatable;
    /// in FILESYNC_EXCLUDE one per line). `.filesyncignore` files in the folder add more.
    /// The server keeps its copies of excluded paths unless --delete-excluded.
    #[arg(
        long,
        value_name = "PATTERN",
        env = "FILESYNC_EXCLUDE",
        value_delimiter = '\n'
    )]
    pub(crate) exclude: Vec<String>,

    /// Delete the server's copies of excluded paths too.
    #[arg(long, env = "FILESYNC_DELETE_EXCLUDED", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) delete_excluded: bool,

    /// Let the server delete at most N entries this session (a deleted folder counts each
    /// entry in it); past it deletions stop and `--once` exits 8.
    #[arg(long, value_name = "N", env = "FILESYNC_MAX_DELETE")]
    pub(crate) max_delete: Option<u64>,

    /// Send changed files whole, never as block deltas against the server's copy (as
    /// rsync's --whole-file): less CPU on both sides where the network is faster than
    /// the disks. An interrupted file still resumes.
    #[arg(short = 'W', long, env = "FILESYNC_WHOLE_FILE", value_parser = on_off, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value = "false", action = ArgAction::Set)]
    pub(crate) whole_file: bool,

    /// Authenticate with the secret in FILE (made by `filesync gen-secret`, listed for
    /// --id in the server's --auth-file; FILE must not be accessible by group or others),
    /// or with the secret in the environment variable FILESYNC_SECRET. The session is then
    /// encrypted (TLS 1.3), and the server's key is pinned on first use in --known-servers.
    #[arg(long, value_name = "FILE", env = "FILESYNC_SECRET_FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// Where the keys of known servers are pinned, one `<client-id> sha256:<hex>` per line
    /// [default: the user's config folder, filesync/known_servers]. A server whose key is
    /// not the one pinned for --id is refused (exit 9).
    #[arg(long, value_name = "FILE", env = "FILESYNC_KNOWN_SERVERS")]
    pub(crate) known_servers: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum EncodingArg {
    /// Compact binary (default).
    Postcard,
    /// Readable JSON, for debugging.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum DialectArg {
    /// Native when the server offers it, the original's otherwise.
    Auto,
    /// Native only.
    Native,
    /// The original FileSync's protocol.
    Seed,
}

/// Parses the command line (and the `FILESYNC_*` environment); on a bad value, prints the
/// error and exits 2, as clap does, but names the environment variable when the value came
/// from one (clap names only the flag, which the user may never have typed).
pub(crate) fn parse() -> Args {
    let argv: Vec<OsString> = std::env::args_os().collect();
    match Args::try_parse_from(&argv) {
        Ok(a) => a,
        Err(e) => match from_environment(&e, &argv, |k| std::env::var_os(k)) {
            Some((flag, var)) => {
                let text = e.render().to_string();
                errln!(
                    "{}",
                    text.trim_end().replacen(
                        &format!("'{flag}'"),
                        &format!("'{flag}' (from the environment variable {var})"),
                        1
                    )
                );
                std::process::exit(e.exit_code());
            }
            None => e.exit(),
        },
    }
}

/// For an error about a bad value: the flag as clap names it and the environment variable
/// the value came from, if it came from one (the variable is set and `argv` does not give
/// the flag).
fn from_environment(
    e: &clap::Error,
    argv: &[OsString],
    env: impl Fn(&str) -> Option<OsString>,
) -> Option<(String, String)> {
    if !matches!(
        e.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    let mut cmd = Args::command();
    // An argument shows as clap names it in errors only once built.
    cmd.build();
    let args = cmd
        .get_arguments()
        .chain(cmd.get_subcommands().flat_map(|c| c.get_arguments()));
    for arg in args {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        if arg.to_string() != *flag || env(&var.to_string_lossy()).is_none() {
            continue;
        }
        let long = format!("--{long}");
        let typed = argv.iter().skip(1).any(|a| {
            let a = a.to_string_lossy();
            a == long
                || a.starts_with(&format!("{long}="))
                || arg
                    .get_short()
                    .is_some_and(|c| a.starts_with('-') && !a.starts_with("--") && a.contains(c))
        });
        return (!typed).then(|| (flag.clone(), var.to_string_lossy().into_owned()));
    }
    None
}

/// An on/off value, on the command line (`--once=no`) or in the environment
/// (`FILESYNC_ONCE=1`): true, yes, on, 1 (y, t) or false, no, off, 0 (n, f), in any case,
/// as clap's `BoolishValueParser`; and empty for off, as an environment file may leave a
/// variable (`FILESYNC_ONCE=`).
fn on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" | "n" | "f" => Ok(false),
        "1" | "true" | "yes" | "on" | "y" | "t" => Ok(true),
        _ => Err("use true/false, yes/no, on/off or 1/0".into()),
    }
}

/// Plain seconds (`30`) or a humantime duration (`90s`, `5m`, `1h`, `1h 30m`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (use seconds, or a unit: 90s, 5m, 1h)"))
}

/// A duration as [`parse_duration`], but not zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn flags_parse() {
        Args::command().debug_assert();
        let a =
            Args::try_parse_from(["filesync", "serve", "--port", "0", "--interval", "5m"]).unwrap();
        match a.command {
            Command::Serve(s) => {
                assert_eq!(s.port, 0);
                assert_eq!(s.interval, Duration::from_secs(300));
                assert_eq!(s.max_sessions, 1);
                assert_eq!(s.handshake_timeout, Duration::from_secs(10));
                assert_eq!(s.max_unidentified, 256);
                assert_eq!(s.max_unidentified_per_ip, 32);
            }
            _ => panic!(),
        }
        assert!(Args::try_parse_from(["filesync", "serve", "--max-sessions", "0"]).is_err());
        assert!(Args::try_parse_from(["filesync", "serve", "--handshake-timeout", "0"]).is_err());
        assert!(Args::try_parse_from(["filesync", "serve", "--max-unidentified", "0"]).is_err());
        let a = Args::try_parse_from([
            "filesync",
            "serve",
            "--handshake-timeout",
            "2500ms",
            "--max-unidentified-per-ip",
            "4",
        ])
        .unwrap();
        match a.command {
            Command::Serve(s) => {
                assert_eq!(s.handshake_timeout, Duration::from_millis(2500));
                assert_eq!(s.max_unidentified_per_ip, 4);
            }
            _ => panic!(),
        }
        let a = Args::try_parse_from([
            "filesync",
            "sync",
            "--exclude",
            "*.tmp",
            "--exclude",
            "/build/",
        ])
        .unwrap();
        match a.command {
            Command::Sync(s) => assert_eq!(s.exclude, ["*.tmp", "/build/"]),
            _ => panic!(),
        }
        // On/off flags: alone, or with =BOOL (which can turn off what the environment
        // turned on); a following word is never taken as their value.
        let sync = |args: &[&str]| match Args::try_parse_from(
            ["filesync", "sync"].iter().chain(args).copied(),
        )
        .unwrap()
        .command
        {
            Command::Sync(s) => s,
            _ => panic!(),
        };
        let s = sync(&["--once", "--id", "x", "-W"]);
        assert!(s.once && s.whole_file);
        assert_eq!(s.id.as_deref(), Some("x"));
        let s = sync(&["--once=false", "--whole-file=0", "--allow-empty=yes"]);
        assert!(!s.once && !s.whole_file && s.allow_empty);
        let s = sync(&[]);
        assert!(!s.once && !s.whole_file && !s.allow_empty && !s.delete_excluded);
        assert!(Args::try_parse_from(["filesync", "sync", "--once=maybe"]).is_err());
        let s = sync(&["--once=", "--whole-file=ON"]);
        assert!(!s.once && s.whole_file);
    }

    /// A bad value names the environment variable it came from, and only then.
    #[test]
    fn bad_values_name_their_environment_variable() {
        let argv = |a: &[&str]| -> Vec<OsString> { a.iter().map(OsString::from).collect() };
        let once_set = |k: &str| (k == "FILESYNC_ONCE").then(|| OsString::from("maybe"));
        // As clap reports FILESYNC_ONCE=maybe (the value is parsed the same way).
        let from_env = ["filesync", "sync", "--id", "x"];
        let e = Args::try_parse_from(["filesync", "sync", "--once=maybe"]).unwrap_err();
        assert_eq!(
            from_environment(&e, &argv(&from_env), once_set),
            Some(("--once[=<BOOL>]".into(), "FILESYNC_ONCE".into()))
        );
        // Typed on the command line, or the variable unset: clap's message stands.
        let typed = ["filesync", "sync", "--once=maybe"];
        assert_eq!(from_environment(&e, &argv(&typed), once_set), None);
        assert_eq!(from_environment(&e, &argv(&from_env), |_| None), None);
        // A short flag typed (-W is --whole-file), and other flags' variables.
        let e = Args::try_parse_from(["filesync", "sync", "--whole-file=x"]).unwrap_err();
        let w_set = |k: &str| (k == "FILESYNC_WHOLE_FILE").then(|| OsString::from("x"));
        assert_eq!(
            from_environment(&e, &argv(&["filesync", "sync", "-qW"]), w_set),
            None
        );
        assert!(from_environment(&e, &argv(&["filesync", "sync"]), w_set).is_some());
        let e = Args::try_parse_from(["filesync", "serve", "--interval", "soon"]).unwrap_err();
        let i_set = |k: &str| (k == "FILESYNC_INTERVAL").then(|| OsString::from("soon"));
        assert_eq!(
            from_environment(&e, &argv(&["filesync", "serve"]), i_set),
            Some(("--interval <INTERVAL>".into(), "FILESYNC_INTERVAL".into()))
        );
        // Not about a value: nothing to add.
        let e = Args::try_parse_from(["filesync", "sync", "--nope"]).unwrap_err();
        assert_eq!(from_environment(&e, &argv(&from_env), once_set), None);
    }
}
