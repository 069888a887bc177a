//! The server's fair queue: at most `max` sessions at once, the rest served first come,
//! first served. The original documented such a queue but created it per connection, so
//! it never engaged; here one queue is shared by every connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

#[derive(Debug)]
struct Inner {
    max: usize,
    active: usize,
    waiting: VecDeque<u64>,
    next_id: u64,
}

/// The queue shared by all connections.
#[derive(Debug)]
pub struct Queue {
    inner: Mutex<Inner>,
    /// Bumped on every change, so waiters re-check their position.
    changed: watch::Sender<u64>,
}

/// One connection's place in the queue. Dropping it leaves the queue (or frees the slot).
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<Queue>,
    id: u64,
    active: bool,
}

impl Queue {
    /// A queue allowing `max` (at least 1) sessions at once.
    pub fn new(max: usize) -> Arc<Queue> {
        Arc::new(Queue {
            inner: Mutex::new(Inner {
                max: max.max(1),
                active: 0,
                waiting: VecDeque::new(),
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
        let id = q.next_id;
        q.next_id += 1;
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

    /// Sessions running now.
    pub fn active(&self) -> usize {
        self.lock().active
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
}
