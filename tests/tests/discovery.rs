//! Discovery by multicast, inside network namespaces that each test creates, so that no
//! datagram ever reaches the machine's real interfaces. Needs root (`ip netns`); without
//! it the tests print `SKIPPED` and pass, unless `FILESYNC_REQUIRE_NETNS=1`.

use std::time::Duration;

use filesync_tests::{
    assert_trees_equal, make_dir, netns_or_skip, pseudo_random, ts, write_file, Netns, ServeCmd,
    SyncCmd,
};

/// A non-default group port. Each namespace is private, so any port is free in it; the
/// process id only makes runs easy to tell apart in logs.
fn group() -> String {
    format!("224.1.1.1:{}", 20_000 + std::process::id() % 20_000)
}

fn build(dir: &std::path::Path) {
    write_file(dir, "found/it.txt", b"discovered", ts(1_680_000_000, 11));
    write_file(
        dir,
        "data.bin",
        &pseudo_random(100_000, 5),
        ts(1_680_000_001, 12),
    );
    make_dir(dir, "empty");
}

/// One namespace with its loopback carrying multicast.
fn single(tag: &str) -> Result<Netns, String> {
    let ns = Netns::create(tag)?;
    ns.route_multicast("lo")?;
    Ok(ns)
}

#[test]
fn finds_a_server_in_the_same_namespace() {
    let Some(ns) = netns_or_skip("finds_a_server_in_the_same_namespace", || single("same")) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let client = tempfile::tempdir().unwrap();
    build(client.path());
    let group = group();
    let server = ServeCmd::new(root.path())
        .discovery(&group)
        .netns(&ns)
        .start();
    assert!(
        server
            .listening_line()
            .ends_with(&format!("discovery {group}")),
        "{}",
        server.listening_line()
    );

    let out = SyncCmd::new("disc", client.path())
        .arg("--group")
        .arg(&group)
        .arg("--discovery-timeout")
        .arg("5")
        .netns(&ns)
        .run();
    out.assert_code(0);
    assert_eq!(out.json()["server"], server.addr().as_str());
    assert_trees_equal(client.path(), &root.path().join("client_disc"));
}

#[test]
fn finds_a_server_across_a_link() {
    let subnet = (std::process::id() % 200 + 10) as u8;
    let Some((server_ns, client_ns, (server_ip, client_ip))) =
        netns_or_skip("finds_a_server_across_a_link", || {
            let a = Netns::create("srv")?;
            let b = Netns::create("cli")?;
            let addrs = a.link(&b, subnet)?;
            Ok((a, b, addrs))
        })
    else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let client = tempfile::tempdir().unwrap();
    build(client.path());
    let group = group();
    let server = ServeCmd::new(root.path())
        .bind("0.0.0.0")
        .discovery(&group)
        .netns(&server_ns)
        .start();

    let out = SyncCmd::new("remote", client.path())
        .arg("--group")
        .arg(&group)
        .arg("--discovery-timeout")
        .arg("5")
        .netns(&client_ns)
        .run();
    out.assert_code(0);
    assert_eq!(
        out.json()["server"],
        format!("{server_ip}:{}", server.port()).as_str(),
        "the client connects to the address the OFFER came from"
    );
    assert_trees_equal(client.path(), &root.path().join("client_remote"));
    // The session came over the link, not through a loopback probe.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("session started") && l.contains(&format!("peer={client_ip}:"))),
        "no session from {client_ip} in the server log:\n{log}"
    );
}

#[test]
fn no_server_exits_3_within_the_discovery_timeout() {
    let Some(ns) = netns_or_skip("no_server_exits_3_within_the_discovery_timeout", || {
        single("none")
    }) else {
        return;
    };
    let client = tempfile::tempdir().unwrap();
    build(client.path());
    let out = SyncCmd::new("lonely", client.path())
        .arg("--group")
        .arg(group())
        .arg("--discovery-timeout")
        .arg("2")
        .netns(&ns)
        .timeout(Duration::from_secs(20))
        .run();
    out.assert_code(3);
    assert!(
        out.elapsed >= Duration::from_millis(1900) && out.elapsed < Duration::from_secs(6),
        "gave up after {:?}, not about 2 s",
        out.elapsed
    );
}

/// `--no-discovery` means the server answers nothing, even on the loopback probe.
#[test]
fn server_without_discovery_is_not_found() {
    let Some(ns) = netns_or_skip("server_without_discovery_is_not_found", || single("off")) else {
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let client = tempfile::tempdir().unwrap();
    build(client.path());
    // The same group as the client's, but switched off.
    let group = group();
    let server = ServeCmd::new(root.path())
        .arg("--group")
        .arg(&group)
        .netns(&ns)
        .start();
    assert!(server.listening_line().ends_with("discovery off"));
    let out = SyncCmd::new("hidden", client.path())
        .arg("--group")
        .arg(&group)
        .arg("--discovery-timeout")
        .arg("2")
        .netns(&ns)
        .timeout(Duration::from_secs(20))
        .run();
    out.assert_code(3);
    assert!(!root.path().join("client_hidden").exists());
}
