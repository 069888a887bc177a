//! Everything that touches a socket: multicast discovery, TCP connect and accept, and the
//! drive loops that move the pure sessions of [`crate::session`] over real streams.
//!
//! The drive loops are generic over `AsyncRead + AsyncWrite` where they can be, so tests
//! can run them over `tokio::io::duplex`.

pub mod client;
pub mod queue;
mod seed_client;
mod seed_server;
pub mod server;
pub mod tls;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpStream, UdpSocket};

use crate::discovery::{self, Backoff, MAX_DATAGRAM, MULTICAST_TTL};
use crate::error::Error;
use crate::messages::seed::Datagram;
use crate::time::MTime;

/// The clock, read here at the edge so that the pure modules take time as an argument.
pub(crate) fn now() -> MTime {
    MTime::from_system(std::time::SystemTime::now()).unwrap_or(MTime::EPOCH)
}

/// How long a TCP connect may take, as the original's 5 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a TCP connection with [`CONNECT_TIMEOUT`].
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, Error> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Error::Timeout(CONNECT_TIMEOUT))?
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    // Small control messages must not wait for Nagle's algorithm.
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// The UDP socket a server answers discovery on: bound to the group's port on all
/// addresses and joined to the group. If the group cannot be joined (no multicast route),
/// the socket still answers probes sent to it directly, and a warning says so.
pub fn discovery_socket(group: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several responders on one host (say, an original server beside ours) may share it.
    s.set_reuse_address(true)?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port()).into())?;
    if let Err(e) = s.join_multicast_v4(group.ip(), &Ipv4Addr::UNSPECIFIED) {
        tracing::warn!(%group, error = %e, "cannot join the discovery group; answering direct probes only");
    }
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// Answers every `DISCOVER` on `socket` with an `OFFER` of `tcp_port`, until dropped.
pub async fn answer_discovery(socket: UdpSocket, tcp_port: u16) {
    let offer = discovery::offer_bytes(tcp_port);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "discovery receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match discovery::parse(&buf[..n]) {
            Ok(Datagram::Discover(_)) => {
                tracing::debug!(%from, "DISCOVER; sending OFFER");
                if let Err(e) = socket.send_to(&offer, from).await {
                    tracing::warn!(%from, error = %e, "cannot send OFFER");
                }
            }
            // Our own OFFERs and other servers' come back on the group: ignore them.
            Ok(Datagram::Offer(_)) => {}
            Err(e) => tracing::debug!(%from, error = %e, "ignoring a stray datagram"),
        }
    }
}

/// Finds a server: sends `DISCOVER` to the multicast group (and to the same port on
/// 127.0.0.1, so a server on this machine is found even without a multicast route), and
/// waits for an `OFFER`, retrying with backoff until `timeout`. The server's address is the
/// `OFFER`'s source address with the offered port, as in the original.
pub async fn discover(group: SocketAddrV4, timeout: Duration) -> Result<SocketAddr, Error> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .await
        .map_err(|e| Error::io("binding the discovery socket", e))?;
    let _ = sock.set_multicast_ttl_v4(MULTICAST_TTL);
    let _ = sock.set_multicast_loop_v4(true);
    let probe = discovery::discover_bytes();
    let local = SocketAddrV4::new(Ipv4Addr::LOCALHOST, group.port());
    let backoff = Backoff::default();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    for attempt in 0u32.. {
        if let Err(e) = sock.send_to(&probe, group).await {
            tracing::debug!(%group, error = %e, "multicast DISCOVER failed");
        }
        let _ = sock.send_to(&probe, local).await;
        let wait = backoff.delay(attempt, rand::random::<f64>());
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        loop {
            match tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(Error::io("receiving OFFER", e)),
                Ok(Ok((n, from))) => match discovery::parse(&buf[..n]) {
                    Ok(Datagram::Offer(o)) => return Ok(SocketAddr::new(from.ip(), o.port)),
                    _ => tracing::debug!(%from, "ignoring a datagram that is not an OFFER"),
                },
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    Err(Error::Timeout(timeout))
}
