//! Discovery as data: the datagrams, the multicast defaults and the retry schedule.
//!
//! Pure; the sockets are in [`crate::net`]. The wire format is the original's
//! (`{"type":"DISCOVER"}` → `{"type":"OFFER","port":9000}`), so original clients find
//! filesync servers and filesync clients find original servers.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use crate::codec::CodecError;
use crate::messages::seed::{Datagram, Discover, Offer};

/// The original's multicast group and port.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(224, 1, 1, 1), 9999);
/// Multicast TTL of DISCOVER datagrams: crosses one router at most, as the original.
pub const MULTICAST_TTL: u32 = 2;
/// Largest datagram read; discovery messages are a few dozen bytes.
pub const MAX_DATAGRAM: usize = 2048;

/// The bytes of a `DISCOVER`.
pub fn discover_bytes() -> Vec<u8> {
    serde_json::to_vec(&Datagram::Discover(Discover {})).expect("static message serialises")
}

/// The bytes of an `OFFER` for TCP `port`.
pub fn offer_bytes(port: u16) -> Vec<u8> {
    serde_json::to_vec(&Datagram::Offer(Offer { port })).expect("static message serialises")
}

/// Parses a datagram; anything else on the group is an error the caller logs and ignores.
pub fn parse(bytes: &[u8]) -> Result<Datagram, CodecError> {
    serde_json::from_slice(bytes).map_err(|e| CodecError::Message {
        encoding: "json",
        detail: e.to_string(),
    })
}

/// When to send the next `DISCOVER`: quickly at first, then backing off, with jitter so
/// that many clients started together (a power cut) do not probe in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First wait.
    pub initial: Duration,
    /// Longest wait.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The wait after attempt `n` (0-based), scaled by `jitter` in `[0, 1)`: between 75%
    /// and 125% of the doubled base, capped at `max`.
    pub fn delay(&self, n: u32, jitter: f64) -> Duration {
        let base = self.initial.saturating_mul(1u32 << n.min(16)).min(self.max);
        base.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
            .min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_the_originals() {
        assert_eq!(discover_bytes(), br#"{"type":"DISCOVER"}"#);
        assert_eq!(offer_bytes(9000), br#"{"type":"OFFER","port":9000}"#);
        assert_eq!(
            parse(br#"{"type":"OFFER","port":9000,"x":1}"#).unwrap(),
            Datagram::Offer(Offer { port: 9000 })
        );
        assert!(parse(b"garbage").is_err());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(500));
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(30, 0.5), Duration::from_secs(10));
        assert!(b.delay(2, 0.0) < b.delay(2, 0.99));
    }
}
