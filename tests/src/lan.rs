//! One LAN of network namespaces: a namespace holding a Linux bridge, and hosts (each a
//! namespace of its own) plugged into it by veth pairs, with `10.<subnet>.0.<i>/24` and
//! multicast routed over the LAN. Servers, clients and storage (Garage, etcd) run on
//! different hosts and reach each other as on a real network, discovery's multicast
//! included, and nothing of it is visible from the machine's own namespace.
//!
//! ```no_run
//! # use filesync_tests::{netns_or_skip, Lan};
//! let Some((lan, storage, srv)) = netns_or_skip("example", || {
//!     let lan = Lan::create("example", 42)?;
//!     let storage = lan.add_host("storage")?; // 10.42.0.1
//!     let srv = lan.add_host("srv")?; // 10.42.0.2
//!     Ok((lan, storage, srv))
//! }) else {
//!     return;
//! };
//! // ServeCmd::new(root).netns(&srv).bind(srv.addr()) …
//! ```

use std::ops::Deref;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::Netns;

/// The hosts' side of their veth pair, the same name in every host (names are private to
/// each namespace).
const HOST_DEV: &str = "eth0";
/// The bridge, inside the LAN's own namespace.
const BRIDGE: &str = "br0";

/// A bridged LAN. The bridge lives in a namespace of its own, so that dropping the `Lan`
/// unplugs every host (their veth pairs go with it) and nothing is made in the root
/// namespace. Hosts are made with [`add_host`](Self::add_host) and live as long as their
/// [`LanHost`] handle.
#[derive(Debug)]
pub struct Lan {
    bridge: Netns,
    subnet: u8,
    next: AtomicU8,
}

impl Lan {
    /// Creates the bridge for `10.<subnet>.0.0/24`. Multicast snooping is off, so that the
    /// bridge floods multicast to every port, as a dumb switch would, whether or not it
    /// has seen IGMP reports.
    pub fn create(tag: &str, subnet: u8) -> Result<Lan, String> {
        let bridge = Netns::create(&format!("{tag}-lan"))?;
        bridge.exec(&[
            "ip",
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
            "forward_delay",
            "0",
        ])?;
        bridge.exec(&["ip", "link", "set", BRIDGE, "up"])?;
        Ok(Lan {
            bridge,
            subnet,
            next: AtomicU8::new(1),
        })
    }

    /// `10.<subnet>.0`, the LAN's /24 without the host part.
    pub fn prefix(&self) -> String {
        format!("10.{}.0", self.subnet)
    }

    /// Makes a host (a namespace named after `name`) and plugs it in: `eth0` with the next
    /// address, `10.<subnet>.0.1` for the first host, `.2` for the second…, up, with
    /// multicast on and 224.0.0.0/4 routed through it.
    pub fn add_host(&self, name: &str) -> Result<LanHost, String> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i == 0 || i > 250 {
            return Err("a Lan has at most 250 hosts".into());
        }
        let ns = Netns::create(name)?;
        let port = format!("p{i}");
        self.bridge.exec(&[
            "ip",
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            HOST_DEV,
            "netns",
            ns.name(),
        ])?;
        self.bridge
            .exec(&["ip", "link", "set", &port, "master", BRIDGE])?;
        self.bridge.exec(&["ip", "link", "set", &port, "up"])?;
        let addr = format!("{}.{i}", self.prefix());
        ns.exec(&["ip", "addr", "add", &format!("{addr}/24"), "dev", HOST_DEV])?;
        ns.exec(&["ip", "link", "set", HOST_DEV, "multicast", "on"])?;
        ns.exec(&["ip", "link", "set", HOST_DEV, "up"])?;
        ns.route_multicast(HOST_DEV)?;
        Ok(LanHost {
            ns,
            addr,
            name: name.to_owned(),
            bridge: self.bridge.name().to_owned(),
            port,
        })
    }
}

/// A host on a [`Lan`]: a namespace with one interface, [`dev`](Self::dev), on the LAN.
/// Dereferences to its [`Netns`], so it goes wherever a namespace does
/// (`ServeCmd::netns(&host)`, `SyncCmd::netns(&host)`, [`Netns::run`]).
#[derive(Debug)]
pub struct LanHost {
    ns: Netns,
    addr: String,
    name: String,
    /// The namespace holding the bridge, and this host's port on it.
    bridge: String,
    port: String,
}

impl LanHost {
    /// The host's address on the LAN (`10.<subnet>.0.<i>`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The interface on the LAN (`eth0`).
    pub fn dev(&self) -> &str {
        HOST_DEV
    }

    /// Pulls the host's cable: its port on the bridge goes down, so that nothing reaches
    /// the host or leaves it, while its own interface, address and routes stay as they
    /// were (its connections hang, as on a real network, rather than fail at once).
    pub fn unplug(&self) -> Result<(), String> {
        self.set_port("down")
    }

    /// Plugs the cable back in after [`unplug`](Self::unplug).
    pub fn plug(&self) -> Result<(), String> {
        self.set_port("up")
    }

    fn set_port(&self, state: &str) -> Result<(), String> {
        crate::ip(&[
            "netns",
            "exec",
            &self.bridge,
            "ip",
            "link",
            "set",
            &self.port,
            state,
        ])
    }

    /// The name given to [`Lan::add_host`].
    pub fn host_name(&self) -> &str {
        &self.name
    }

    /// The host's namespace.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }
}

impl Deref for LanHost {
    type Target = Netns;

    fn deref(&self) -> &Netns {
        &self.ns
    }
}
