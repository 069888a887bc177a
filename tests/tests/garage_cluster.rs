//! The storage harness itself, before any filesync store uses it: a real 3-node Garage
//! cluster ([`GarageCluster`]) keeps serving reads and writes with a node down, the same
//! cluster on a LAN of namespaces ([`Lan`]) is reached from another host, as etcd is, and
//! the LAN carries discovery's multicast. Objects go in and out with `rclone`, configured
//! by nothing but [`GarageCluster::env`].
//!
//! Without `garage`, `etcd` or `rclone` the tests print `SKIPPED` and pass, unless
//! `FILESYNC_REQUIRE_GARAGE=1` (as CI sets); without root (namespaces) the LAN tests skip
//! unless `FILESYNC_REQUIRE_NETNS=1`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use filesync_tests::garage::rclone_or_skip;
use filesync_tests::{
    assert_trees_equal, etcd_or_skip, garage_or_skip, netns_or_skip, pseudo_random, ts, write_file,
    Etcd, GarageCluster, Lan, Netns, ServeCmd, SyncCmd,
};

/// Runs `rclone ARGS` with `env` (inside `ns` if given), `input` on its standard input;
/// its standard output, or an error with its standard error.
fn rclone(
    ns: Option<&Netns>,
    env: &[(String, String)],
    args: &[&str],
    input: &[u8],
) -> Result<Vec<u8>, String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns.name(), "rclone"]);
            c
        }
        None => Command::new("rclone"),
    };
    // One try each: a failure must show, not be retried away. rclone (1.60) refuses to
    // work at all when AWS_CA_BUNDLE is set ("unable to load custom CA bundle"), even for
    // plain http.
    cmd.env_remove("AWS_CA_BUNDLE")
        .args(args)
        .args(["--retries", "1", "--low-level-retries", "1"])
        .args(["--contimeout", "5s", "--timeout", "20s"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let began = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("running rclone: {e}"))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    // A writer of its own: rclone may stop reading (and fail) before it has it all.
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for rclone: {e}"))?;
    let _ = writer.join();
    eprintln!(
        "rclone {} ({}): {:?}",
        args.join(" "),
        out.status,
        began.elapsed()
    );
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`rclone {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Puts `data` at `key` through the endpoint `env` names.
fn put(ns: Option<&Netns>, env: &[(String, String)], g: &GarageCluster, key: &str, data: &[u8]) {
    let path = format!("{}/{key}", g.rclone_remote());
    rclone(ns, env, &["rcat", &path], data).unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Gets `key` through the endpoint `env` names.
fn get(ns: Option<&Netns>, env: &[(String, String)], g: &GarageCluster, key: &str) -> Vec<u8> {
    let path = format!("{}/{key}", g.rclone_remote());
    rclone(ns, env, &["cat", &path], b"").unwrap_or_else(|e| panic!("get {key}: {e}"))
}

fn start_cluster(n: usize) -> GarageCluster {
    let g = GarageCluster::start(n).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("garage: {n} nodes up in {:?}", g.started_in());
    g
}

#[test]
fn three_nodes_serve_reads_and_writes_with_one_down() {
    let test = "three_nodes_serve_reads_and_writes_with_one_down";
    if garage_or_skip(test).is_none() || !rclone_or_skip(test) {
        return;
    }
    let mut g = start_cluster(3);
    assert_eq!(g.endpoints().len(), 3);
    assert_eq!(g.endpoint(), g.endpoints()[0]);
    assert_eq!(g.region(), "garage");
    assert!(g.key_id().starts_with("GK"), "{}", g.key_id());
    assert_eq!(
        g.store_url("/runs/1/"),
        format!("s3://{}/runs/1", g.bucket())
    );

    // Written through node 0, read through node 1: one cluster. (rclone streams what
    // `rcat` reads past 100 KiB as a multipart upload, and sends less as one PUT: both
    // kinds are tried.)
    let first = pseudo_random(300_000, 1);
    put(None, &g.env(), &g, "a/first.bin", &first);
    assert!(get(None, &g.env_for_node(1), &g, "a/first.bin") == first);

    // Node 2 crashes: with 3 copies and a quorum of 2, nothing is lost or refused,
    // multipart uploads included.
    g.stop_node(2).unwrap();
    assert!(!g.is_running(2));
    let second = pseudo_random(50_000, 2);
    put(None, &g.env_for_node(1), &g, "a/second.bin", &second);
    let third = pseudo_random(200_000, 3);
    put(None, &g.env_for_node(1), &g, "a/third.bin", &third);
    assert!(get(None, &g.env(), &g, "a/first.bin") == first);
    assert!(get(None, &g.env(), &g, "a/second.bin") == second);
    // And its endpoint is down with it.
    assert!(get_fails(&g.env_for_node(2), &g, "a/first.bin"));

    // Back again, it serves what was written while it was down.
    let began = Instant::now();
    g.start_node(2).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("garage: node 2 back in {:?}", began.elapsed());
    assert!(get(None, &g.env_for_node(2), &g, "a/second.bin") == second);
    assert!(get(None, &g.env_for_node(2), &g, "a/third.bin") == third);
    let listing = rclone(None, &g.env(), &["lsf", "-R", &g.rclone_remote()], b"").unwrap();
    let mut listing: Vec<&str> = std::str::from_utf8(&listing).unwrap().lines().collect();
    listing.sort_unstable();
    assert_eq!(
        listing,
        ["a/", "a/first.bin", "a/second.bin", "a/third.bin"]
    );
}

fn get_fails(env: &[(String, String)], g: &GarageCluster, key: &str) -> bool {
    let path = format!("{}/{key}", g.rclone_remote());
    rclone(None, env, &["cat", &path], b"").is_err()
}

/// The cluster and etcd on a "storage" host of a LAN, reached from a client host.
#[test]
fn cluster_and_etcd_on_a_lan_are_reached_from_another_host() {
    let test = "cluster_and_etcd_on_a_lan_are_reached_from_another_host";
    if garage_or_skip(test).is_none() || etcd_or_skip(test).is_none() || !rclone_or_skip(test) {
        return;
    }
    let Some((_lan, storage, client)) = netns_or_skip(test, || {
        let lan = Lan::create("gc", 77)?;
        let storage = lan.add_host("storage")?;
        let client = lan.add_host("client")?;
        Ok((lan, storage, client))
    }) else {
        return;
    };
    assert_eq!(storage.addr(), "10.77.0.1");
    assert_eq!(client.addr(), "10.77.0.2");

    let mut g = GarageCluster::start_in(&storage, 3).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "garage: 3 nodes on {} up in {:?}",
        storage.addr(),
        g.started_in()
    );
    assert!(
        g.endpoint().starts_with("http://10.77.0.1:"),
        "{}",
        g.endpoint()
    );
    let etcd = Etcd::start_in(&storage).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        etcd.url().starts_with("etcd://10.77.0.1:"),
        "{}",
        etcd.url()
    );

    // From the client host, through two different nodes.
    let data = pseudo_random(100_000, 3);
    put(Some(&client), &g.env(), &g, "lan/x.bin", &data);
    assert!(get(Some(&client), &g.env_for_node(2), &g, "lan/x.bin") == data);
    g.stop_node(0).unwrap();
    assert!(get(Some(&client), &g.env_for_node(1), &g, "lan/x.bin") == data);

    let health = client
        .run(|| http_get(&etcd.endpoint(), "/health"))
        .unwrap()
        .unwrap_or_else(|e| panic!("etcd from the client host: {e}"));
    assert!(health.contains(r#""health":"true""#), "{health}");
    // The test's own namespace does not see the LAN (what answers there, if anything,
    // is whatever its default route leads to, not etcd).
    let outside = http_get(&etcd.endpoint(), "/health").unwrap_or_default();
    assert!(!outside.contains(r#""health":"true""#), "{outside}");
}

/// Discovery's multicast crosses the LAN's bridge: a client on one host finds a server
/// on another.
#[test]
fn the_lan_carries_discovery() {
    let test = "the_lan_carries_discovery";
    let Some((_lan, srv, cli)) = netns_or_skip(test, || {
        let lan = Lan::create("disc", 78)?;
        let srv = lan.add_host("srv")?;
        let cli = lan.add_host("cli")?;
        Ok((lan, srv, cli))
    }) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "f.txt",
        b"over the bridge",
        ts(1_700_000_000, 0),
    );
    let group = format!("224.1.1.2:{}", 20_000 + std::process::id() % 20_000);
    let server = ServeCmd::new(root.path())
        .bind("0.0.0.0")
        .discovery(&group)
        .netns(&srv)
        .start();
    let out = SyncCmd::new("lan", dir.path())
        .arg("--group")
        .arg(&group)
        .arg("--discovery-timeout")
        .arg("5")
        .netns(&cli)
        .run();
    out.assert_code(0);
    assert_eq!(
        out.json()["server"],
        format!("{}:{}", srv.addr(), server.port()).as_str()
    );
    assert_trees_equal(dir.path(), &root.path().join("client_lan"));
    // Unplugged, the server is out of reach; plugged back, found again.
    srv.unplug().unwrap();
    SyncCmd::new("lan", dir.path())
        .arg("--group")
        .arg(&group)
        .arg("--discovery-timeout")
        .arg("1")
        .netns(&cli)
        .run()
        .assert_code(3);
    srv.plug().unwrap();
    SyncCmd::new("lan", dir.path())
        .arg("--group")
        .arg(&group)
        .arg("--discovery-timeout")
        .arg("5")
        .netns(&cli)
        .run()
        .assert_code(0);
}

#[test]
fn etcd_starts_dies_and_comes_back() {
    let test = "etcd_starts_dies_and_comes_back";
    if etcd_or_skip(test).is_none() {
        return;
    }
    let mut etcd = Etcd::start().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("etcd up in {:?}", etcd.started_in());
    assert!(
        etcd.url().starts_with("etcd://127.0.0.1:"),
        "{}",
        etcd.url()
    );
    let health = http_get(&etcd.endpoint(), "/health").unwrap();
    assert!(health.contains(r#""health":"true""#), "{health}");
    etcd.kill();
    assert!(!etcd.is_running());
    assert!(http_get(&etcd.endpoint(), "/health").is_err());
    let began = Instant::now();
    etcd.restart().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("etcd back in {:?}", began.elapsed());
    assert!(etcd.is_running());
    assert!(http_get(&etcd.endpoint(), "/health").is_ok());
}

/// The body of `GET path` at `endpoint` (`http://HOST:PORT`).
fn http_get(endpoint: &str, path: &str) -> Result<String, String> {
    let addr: std::net::SocketAddr = endpoint
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    Ok(resp)
}

/// One node per host: a node cut off the LAN (its cable pulled, not stopped) leaves the
/// other two serving, but slowly. Garage sends a quorum read to two of the three nodes
/// only, the nearest, and asks the third only when one of them fails: a crashed node
/// fails at once (connection refused), an unreachable one only after the RPC timeout
/// (`rpc_timeout_msec`, 300 s by default, [`RPC_TIMEOUT`](filesync_tests::garage::RPC_TIMEOUT) here) or once four pings 15 s
/// apart have failed. A request that needs a few such reads takes a few timeouts, 15 s
/// here half the time, which is why this test is not run by default
/// (`cargo test -p filesync-tests --test garage_cluster -- --ignored`).
#[test]
#[ignore = "0 to 40 s: Garage stalls quorum reads for its RPC timeout while a node is unreachable"]
fn nodes_on_three_hosts_survive_one_unplugged() {
    let test = "nodes_on_three_hosts_survive_one_unplugged";
    if garage_or_skip(test).is_none() || !rclone_or_skip(test) {
        return;
    }
    let Some((_lan, hosts, client)) = netns_or_skip(test, || {
        let lan = Lan::create("gx", 79)?;
        let hosts = (0..3)
            .map(|i| lan.add_host(&format!("g{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let client = lan.add_host("client")?;
        Ok((lan, hosts, client))
    }) else {
        return;
    };
    let g = GarageCluster::start_across(&hosts.iter().collect::<Vec<_>>())
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("garage: 3 nodes on 3 hosts up in {:?}", g.started_in());
    for (i, e) in g.endpoints().iter().enumerate() {
        assert!(e.starts_with(&format!("http://10.79.0.{}:", i + 1)), "{e}");
    }
    let data = pseudo_random(20_000, 4);
    put(Some(&client), &g.env(), &g, "x/before.bin", &data);
    hosts[2].unplug().unwrap();
    let began = Instant::now();
    put(Some(&client), &g.env_for_node(1), &g, "x/during.bin", &data);
    assert!(get(Some(&client), &g.env(), &g, "x/before.bin") == data);
    assert!(get(Some(&client), &g.env(), &g, "x/during.bin") == data);
    eprintln!(
        "garage: a put and two gets with node 2 unplugged took {:?}",
        began.elapsed()
    );
    hosts[2].plug().unwrap();
}
