//! When each client comes back: `NEXT_SYNC` times spread so that clients do not return
//! in the same second (a thundering herd after a power cut or a server restart).
//!
//! Pure: `now` is an argument.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::paths::ClientId;
use crate::time::MTime;

/// Hands out return times, at most one client per second where the spread window allows.
#[derive(Debug)]
pub struct Scheduler {
    interval: Duration,
    /// Whole seconds already handed out, with how many clients each.
    taken: BTreeMap<i64, u32>,
}

impl Scheduler {
    /// A scheduler asking clients back after about `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            taken: BTreeMap::new(),
        }
    }

    /// The spread window: a tenth of the interval, at least one second, at most ten
    /// minutes.
    fn window_secs(&self) -> i64 {
        (self.interval.as_secs() / 10).clamp(1, 600) as i64
    }

    /// When `client` should come back, and how long that is from `now`. Never earlier
    /// than `now + interval`, never in the past; later by a per-client offset inside the
    /// window, moved to the first free second after it when that is taken.
    pub fn next(&mut self, now: MTime, client: &ClientId) -> (MTime, Duration) {
        self.taken.retain(|&s, _| s >= now.secs);
        let window = self.window_secs();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        client.hash(&mut h);
        let offset = (h.finish() % window as u64) as i64;
        // The first whole second at or after now + interval (and after now).
        let due = now.plus(self.interval);
        let base = (due.secs + i64::from(due.nanos > 0)).max(now.secs + 1);
        let start = base + offset;
        let slot = (0..window)
            .map(|i| base + (offset + i) % window)
            .find(|s| !self.taken.contains_key(s))
            .unwrap_or(start);
        *self.taken.entry(slot).or_default() += 1;
        let at = MTime {
            secs: slot,
            nanos: 0,
        };
        let delay_ns = (i128::from(slot) * 1_000_000_000)
            - (i128::from(now.secs) * 1_000_000_000 + i128::from(now.nanos));
        let delay = Duration::from_nanos(u64::try_from(delay_ns.max(0)).unwrap_or(u64::MAX));
        (at, delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_early_never_past_and_spread() {
        let mut s = Scheduler::new(Duration::from_secs(300));
        let now = MTime::new(1_000, 500_000_000).unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..30 {
            let id = ClientId::parse(&format!("c{i}")).unwrap();
            let (at, delay) = s.next(now, &id);
            // Due at 1300.5, so from 1301, spread over a window of 30 seconds.
            assert!((1_301..1_301 + 30).contains(&at.secs), "{at}");
            assert!(delay >= Duration::from_secs(300), "{delay:?}");
            assert!(seen.insert(at.secs), "two clients in second {}", at.secs);
        }
    }

    #[test]
    fn tiny_interval_is_still_in_the_future() {
        let mut s = Scheduler::new(Duration::ZERO);
        let now = MTime::new(50, 999_999_999).unwrap();
        let (at, delay) = s.next(now, &ClientId::parse("a").unwrap());
        assert!(at > now);
        assert!(delay > Duration::ZERO);
    }
}
