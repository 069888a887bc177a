//! The server's fair queue: at most `max` sessions at once, the rest served first come,
//! first served. The original documented such a queue but created it per connection, so
//! it never engaged; here one queue is shared by every connection.
//!
//! Only a connection that has identified itself (the native preamble and `HELLO`, or the
//! original dialect's `CLIENT_FILES_INFO`) takes a place in line, as a [`Ticket`]. Before
//! that it holds a [`Pending`]: it was greeted READY (a soft reservation, which any
//! identified client may take over) or BUSY (standing by; an original client told BUSY
//! waits in silence for READY, and gets it if a slot frees before its handshake time is
//! up). Unidentified connections are counted by the [`Gate`], per peer and in total, so
//! that silent peers cost a bounded number of descriptors and never a place in line.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Inner {
    max: usize,
    /// Identified connections holding a slot.
    active: usize,
    /// Identified connections in line, first come first.
    waiting: VecDeque<u64>,
    /// Unidentified connections greeted READY.
    reserved: usize,
    /// Unidentified connections greeted BUSY, oldest first.
    standby: VecDeque<u64>,
    next_id: u64,
}

impl Inner {
    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Whether a newcomer would find a slot that nobody else is owed.
    fn free_for_newcomer(&self) -> bool {
        self.waiting.is_empty() && self.standby.is_empty() && self.active + self.reserved < self.max
    }
}

/// The queue shared by all connections.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    /// Bumped on every change, so waiters re-check their position.
    changed: watch::Sender<u64>,
}

/// One identified connection's place in the queue. Dropping it leaves the queue (or
/// frees the slot).
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<Queue>,
    id: u64,
    active: bool,
}

/// Where an unidentified connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Greeted READY (or told READY after standing by): counted in `reserved`.
    Reserved,
    /// Greeted BUSY: in `standby`.
    Standby,
}

/// A connection that was greeted but has not identified itself yet. It holds no place in
/// line. Dropping it gives back what it holds.
#[derive(Debug)]
pub struct Pending {
    queue: Arc<Queue>,
    id: u64,
    hold: Hold,
    greeted_busy: Option<u32>,
}

impl Queue {
    /// A queue allowing `max` (at least 1) sessions at once.
    pub fn new(max: usize) -> Arc<Queue> {
        Arc::new(Queue {
            inner: Mutex::new(Inner {
                max: max.max(1),
                active: 0,
                waiting: VecDeque::new(),
                reserved: 0,
                standby: VecDeque::new(),
                next_id: 0,
            }),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain counters behind; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Joins the queue: the ticket is active at once if a slot is free and nobody waits.
    pub fn join(self: &Arc<Self>) -> Ticket {
        let mut q = self.lock();
        self.join_locked(&mut q)
    }

    fn join_locked(self: &Arc<Self>, q: &mut Inner) -> Ticket {
        let id = q.id();
        // Reservations are soft: an identified client takes a slot held only by a
        // greeting, so connections that never identify cannot keep anyone waiting.
        let active = q.waiting.is_empty() && q.active < q.max;
        if active {
            q.active += 1;
        } else {
            q.waiting.push_back(id);
        }
        Ticket {
            queue: Arc::clone(self),
            id,
            active,
        }
    }

    /// A new connection, to be greeted: READY (holding a soft reservation) if a slot is
    /// free and nobody is owed it, else BUSY, standing by, with the position it would
    /// take in line if it identified now.
    pub fn greet(self: &Arc<Self>) -> Pending {
        let mut q = self.lock();
        let id = q.id();
        let (hold, greeted_busy) = if q.free_for_newcomer() {
            q.reserved += 1;
            (Hold::Reserved, None)
        } else {
            q.standby.push_back(id);
            let pos = u32::try_from(q.waiting.len() + 1).unwrap_or(u32::MAX);
            (Hold::Standby, Some(pos))
        };
        Pending {
            queue: Arc::clone(self),
            id,
            hold,
            greeted_busy,
        }
    }

    /// Sessions running now.
    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// Identified connections waiting in line.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl Pending {
    /// The greeting's position: `None` for READY, the provisional place in line for BUSY.
    pub fn greeting(&self) -> Option<u32> {
        self.greeted_busy
    }

    /// Whether it stands by (greeted BUSY, not yet told READY).
    pub fn standing_by(&self) -> bool {
        self.hold == Hold::Standby
    }

    /// For a connection standing by: takes a free slot's reservation if it is the oldest
    /// one standing by and no identified client waits. True once it holds a reservation.
    pub fn try_promote(&mut self) -> bool {
        if self.hold == Hold::Reserved {
            return true;
        }
        let mut q = self.queue.lock();
        let first = q.standby.front() == Some(&self.id);
        if first && q.waiting.is_empty() && q.active + q.reserved < q.max {
            q.standby.pop_front();
            q.reserved += 1;
            self.hold = Hold::Reserved;
            drop(q);
            self.queue.bump();
            return true;
        }
        false
    }

    /// A receiver that changes whenever the queue does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.queue.changed.subscribe()
    }

    /// The connection identified itself: it gives back what the greeting gave it and
    /// joins the line, in one step.
    pub fn identify(mut self) -> Ticket {
        let queue = Arc::clone(&self.queue);
        let ticket = {
            let mut q = queue.lock();
            self.release(&mut q);
            queue.join_locked(&mut q)
        };
        queue.bump();
        ticket
    }

    fn release(&mut self, q: &mut Inner) {
        match self.hold {
            Hold::Reserved => q.reserved -= 1,
            Hold::Standby => q.standby.retain(|&i| i != self.id),
        }
        // Released: dropping it now changes nothing.
        self.hold = Hold::Reserved;
        self.id = u64::MAX;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.id == u64::MAX {
            return;
        }
        let queue = Arc::clone(&self.queue);
        {
            let mut q = queue.lock();
            self.release(&mut q);
        }
        queue.bump();
    }
}

impl Ticket {
    /// Takes a free slot if this ticket is first in line; otherwise returns its position
    /// (1 = next).
    pub fn try_activate(&mut self) -> Result<(), u32> {
        if self.active {
            return Ok(());
        }
        let mut q = self.queue.lock();
        let pos = q.waiting.iter().position(|&i| i == self.id).unwrap_or(0);
        if pos == 0 && q.active < q.max {
            q.waiting.pop_front();
            q.active += 1;
            self.active = true;
            drop(q);
            self.queue.bump();
            return Ok(());
        }
        Err(u32::try_from(pos + 1).unwrap_or(u32::MAX))
    }

    /// The position in line, `None` once active.
    pub fn position(&self) -> Option<u32> {
        if self.active {
            return None;
        }
        let q = self.queue.lock();
        let pos = q.waiting.iter().position(|&i| i == self.id).unwrap_or(0);
        Some(u32::try_from(pos + 1).unwrap_or(u32::MAX))
    }

    /// A receiver that changes whenever the queue does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.queue.changed.subscribe()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        {
            let mut q = self.queue.lock();
            if self.active {
                q.active -= 1;
            } else {
                q.waiting.retain(|&i| i != self.id);
            }
        }
        self.queue.bump();
    }
}

/// What unidentified connections are counted by: the IPv4 address, or the /64 of an
/// IPv6 address (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKey {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl From<IpAddr> for PeerKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => PeerKey::V4(a.into()),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => PeerKey::V4(v4.into()),
                None => PeerKey::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

#[derive(Debug)]
struct GateInner {
    next_id: u64,
    /// Unidentified connections, oldest first.
    conns: BTreeMap<u64, (PeerKey, CancellationToken)>,
    per_peer: HashMap<PeerKey, usize>,
}

impl GateInner {
    fn forget(&mut self, id: u64) -> Option<CancellationToken> {
        let (peer, token) = self.conns.remove(&id)?;
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
        Some(token)
    }
}

/// Counts the connections that have not identified themselves yet: at most `per_peer`
/// from one peer (more are refused), at most `total` in all (a newcomer past it evicts the
/// oldest, which has had the longest to identify itself: refusing newcomers instead would
/// let a few peers that hold the total lock every client out).
#[derive(Debug)]
pub struct Gate {
    inner: Mutex<GateInner>,
    total: usize,
    per_peer: usize,
}

/// An unidentified connection let in by the [`Gate`]. Dropping it (on identification,
/// or when the connection ends) gives its place back.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    id: u64,
    evicted: CancellationToken,
}

/// How the [`Gate`] let a connection in.
#[derive(Debug)]
pub enum Admission {
    /// Let in; `evicted` tells whether the oldest unidentified connection was evicted
    /// to make room.
    In {
        /// The connection's place.
        admitted: Admitted,
        /// An older connection was evicted for it.
        evicted: bool,
    },
    /// Refused: its peer already has `per_peer` unidentified connections.
    PeerFull,
}

impl Gate {
    /// At most `total` unidentified connections, `per_peer` from one peer (both at least
    /// 1; `per_peer` at most `total`).
    pub fn new(total: usize, per_peer: usize) -> Arc<Gate> {
        let total = total.max(1);
        Arc::new(Gate {
            inner: Mutex::new(GateInner {
                next_id: 0,
                conns: BTreeMap::new(),
                per_peer: HashMap::new(),
            }),
            total,
            per_peer: per_peer.clamp(1, total),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a new connection from `ip` in, or refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let peer = PeerKey::from(ip);
        let mut g = self.lock();
        if g.per_peer.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            return Admission::PeerFull;
        }
        let mut evicted = false;
        while g.conns.len() >= self.total {
            let Some((&oldest, _)) = g.conns.first_key_value() else {
                break;
            };
            if let Some(token) = g.forget(oldest) {
                token.cancel();
                evicted = true;
            }
        }
        let id = g.next_id;
        g.next_id += 1;
        let token = CancellationToken::new();
        g.conns.insert(id, (peer, token.clone()));
        *g.per_peer.entry(peer).or_insert(0) += 1;
        Admission::In {
            admitted: Admitted {
                gate: Arc::clone(self),
                id,
                evicted: token,
            },
            evicted,
        }
    }

    /// Unidentified connections now.
    pub fn unidentified(&self) -> usize {
        self.lock().conns.len()
    }
}

impl Admitted {
    /// Resolves when the connection was evicted to make room for a newer one.
    pub async fn evicted(&self) {
        self.evicted.cancelled().await;
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.lock().forget(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_come_first_served() {
        let q = Queue::new(1);
        let a = q.join();
        let mut b = q.join();
        let mut c = q.join();
        assert_eq!(a.position(), None);
        assert_eq!(b.try_activate(), Err(1));
        assert_eq!(c.try_activate(), Err(2));
        drop(a);
        assert_eq!(c.try_activate(), Err(2), "c may not jump ahead of b");
        assert_eq!(b.try_activate(), Ok(()));
        assert_eq!(c.try_activate(), Err(1));
        drop(b);
        assert_eq!(c.try_activate(), Ok(()));
        assert_eq!(q.active(), 1);
    }

    #[test]
    fn leaving_the_line_moves_it() {
        let q = Queue::new(2);
        let _a = q.join();
        let _b = q.join();
        let c = q.join();
        let mut d = q.join();
        assert_eq!(d.try_activate(), Err(2));
        drop(c);
        assert_eq!(d.try_activate(), Err(1));
    }

    #[test]
    fn greetings_hold_no_place_in_line() {
        let q = Queue::new(1);
        // Many connections greeted, none identified: one READY, the rest BUSY.
        let first = q.greet();
        assert_eq!(first.greeting(), None);
        let silent: Vec<_> = (0..100).map(|_| q.greet()).collect();
        assert!(silent.iter().all(|p| p.greeting() == Some(1)));
        // An identified client is served at once, ahead of every silent one.
        let late = q.greet();
        let mut t = late.identify();
        assert_eq!(t.try_activate(), Ok(()));
        // The next one to identify is first in line, whatever was greeted before it.
        let p = q.greet();
        assert_eq!(p.greeting(), Some(1));
        let mut u = p.identify();
        assert_eq!(u.try_activate(), Err(1));
        drop(t);
        assert_eq!(u.try_activate(), Ok(()));
        drop((first, silent));
        assert_eq!(q.active(), 1);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn standing_by_turns_ready_in_order_when_nobody_waits() {
        let q = Queue::new(1);
        let mut t = q.join();
        assert_eq!(t.try_activate(), Ok(()));
        let mut a = q.greet();
        let mut b = q.greet();
        assert!(a.standing_by() && b.standing_by());
        assert!(!a.try_promote(), "the slot is taken");
        drop(t);
        assert!(!b.try_promote(), "a stood by first");
        assert!(a.try_promote());
        assert!(!b.try_promote(), "a holds the free slot's reservation");
        // An identified newcomer still goes first: reservations are soft.
        let mut c = q.greet().identify();
        assert_eq!(c.try_activate(), Ok(()));
        let mut a = a.identify();
        assert_eq!(a.try_activate(), Err(1));
        drop(c);
        assert_eq!(a.try_activate(), Ok(()));
        drop(a);
        assert!(b.try_promote());
    }

    #[test]
    fn gate_caps_per_peer_and_evicts_the_oldest() {
        let gate = Gate::new(4, 2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let admit = |s: &str| match gate.admit(ip(s)) {
            Admission::In { admitted, evicted } => Some((admitted, evicted)),
            Admission::PeerFull => None,
        };
        let a1 = admit("10.0.0.1").unwrap();
        let _a2 = admit("10.0.0.1").unwrap();
        assert!(admit("10.0.0.1").is_none(), "per-peer cap");
        assert!(
            admit("::ffff:10.0.0.1").is_none(),
            "mapped IPv6 is the same peer"
        );
        let _b1 = admit("2001:db8::1").unwrap();
        let _b2 = admit("2001:db8::2").unwrap();
        assert!(admit("2001:db8::3").is_none(), "one /64 is one peer");
        assert_eq!(gate.unidentified(), 4);
        let (_c, evicted) = admit("10.0.0.2").unwrap();
        assert!(evicted, "the total is full: the oldest goes");
        assert!(a1.0.evicted.is_cancelled());
        assert_eq!(gate.unidentified(), 4);
        drop(a1);
        assert_eq!(
            gate.unidentified(),
            4,
            "an evicted one was already forgotten"
        );
        assert!(admit("10.0.0.1").is_some(), "its peer has room again");
    }
}
