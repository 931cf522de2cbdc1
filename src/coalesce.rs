//! Request coalescing (single flight): while an unconditional `GET` for a
//! representation is at the inner service, further `GET`s for the same one
//! wait for it and are answered from its response — each judged against its
//! own preconditions and `Range`, with its own `Date`, its body made of
//! `Bytes` clones of the frames the leader buffered.
//!
//! What may share an answer is decided in [`Exchange`](crate::exchange):
//! requests the store could share (no credentials unless the policy is
//! `public`, no `no-cache` from the client), answers the store could keep
//! (a complete buffered `200` without `Set-Cookie`, `private` or
//! `no-store`), and only requests that select the same variant (`Vary`).
//! Everything else, and every waiter whose leader fails, is cancelled or is
//! late, goes to the inner service itself: a waiter never gets an answer
//! made for another request that the store would not have given it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, Version};
use tokio::sync::watch;

use crate::store::Epoch;

/// Flights are found by the hash of their request's selector, in stripes
/// so that requests for different URLs do not wait on one lock.
const STRIPES: usize = 64;

/// The flights in progress, by the hash of the leader's request's selector
/// (target, authority and, when the leader's answer named them, the values
/// of its `Vary`'d fields). Two selectors may hash alike: a waiter only
/// takes an answer after comparing its own selector with the leader's,
/// byte for byte ([`Shared::selector`]); a mismatch is a wait for nothing,
/// never a wrong answer.
pub(crate) struct Flights {
    stripes: Box<[Mutex<Stripe>]>,
    /// Numbers the flights, so that a leader only ends its own.
    next: AtomicU64,
}

/// The flights of one stripe, by selector hash.
type Stripe = HashMap<u64, Flight>;

/// A flight: the invalidation epoch its leader started in, and — made
/// when the first waiter comes, so that a flight nobody joins (the usual
/// case) costs no channel — where its waiters learn its answer.
struct Flight {
    id: u64,
    started: Epoch,
    answer: Option<watch::Sender<Option<Arc<Shared>>>>,
}

/// What a flight's waiters learn.
pub(crate) type Landing = watch::Receiver<Option<Arc<Shared>>>;

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

/// A complete `200` that waiters are answered from.
pub(crate) struct Shared {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The head as the layer made it (policy and validators applied),
    /// before the leader's own preconditions.
    pub(crate) headers: HeaderMap,
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) len: u64,
    pub(crate) trailers: Option<HeaderMap>,
    /// The answer's `Vary` field names, and the leader's selector under
    /// them: only a request with the same selector shares the answer.
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) selector: Box<[u8]>,
    /// `Expires` is re-rendered this long after each waiter's `Date`.
    pub(crate) expires_after: Option<Duration>,
}

/// Joining the flight of a request.
pub(crate) enum Joined {
    /// No flight for it: this request leads one.
    Lead(Leader),
    /// Another request leads: wait for its answer.
    Wait(Landing),
}

/// How a wait ended.
pub(crate) enum Landed {
    /// The leader's answer, to be judged by the waiter.
    Shared(Arc<Shared>),
    /// The leader ended without an answer to share (an error, a status or
    /// a body that is not shared, a cancelled request).
    Abandoned,
    /// The wait took longer than `coalesce_timeout`.
    TimedOut,
}

/// A waiter's wait, boxed: only waiters pay for it.
pub(crate) type Waiting = Pin<Box<dyn Future<Output = Landed> + Send>>;

impl Flights {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            next: AtomicU64::new(0),
        })
    }

    fn stripe(&self, key: u64) -> &Mutex<Stripe> {
        &self.stripes[(key % STRIPES as u64) as usize]
    }

    /// Joins the flight of `key`, or leads a new one if `may_lead`; `None`
    /// when there is none to join and this request may not lead one.
    /// `started` is the request's invalidation epoch: a flight whose leader
    /// started before an invalidation that this request came after may
    /// answer with what the invalidation removed, so it is not joined (a
    /// new flight replaces it for the requests after; its own waiters are
    /// handed over).
    pub(crate) fn join(
        self: &Arc<Self>,
        key: u64,
        may_lead: bool,
        started: Epoch,
    ) -> Option<Joined> {
        let mut flights = lock(self.stripe(key));
        if let Some(flight) = flights.get_mut(&key) {
            if flight.started == started {
                let answer = flight.answer.get_or_insert_with(|| watch::channel(None).0);
                return Some(Joined::Wait(answer.subscribe()));
            }
            if !started.is_after(&flight.started) {
                // A flight newer than this request: it goes alone.
                return None;
            }
        }
        if !may_lead {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let flight = Flight {
            id,
            started,
            answer: None,
        };
        let replaced = flights.insert(key, flight);
        drop(flights);
        drop(replaced);
        Some(Joined::Lead(Leader {
            flights: self.clone(),
            key,
            id,
            ended: false,
        }))
    }

    /// Ends flight `id` of `key`, if it is still the one there, and gives
    /// back where its waiters (if it had any) wait.
    fn end(&self, key: u64, id: u64) -> Option<watch::Sender<Option<Arc<Shared>>>> {
        let mut flights = lock(self.stripe(key));
        let ours = flights.get(&key).is_some_and(|flight| flight.id == id);
        if !ours {
            return None;
        }
        flights.remove(&key)?.answer
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.stripes.iter().map(|s| lock(s).len()).sum()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The request at the inner service for its flight. Dropped without
/// [`end`](Self::end) — its future was dropped — it hands the waiters over
/// to the service.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: u64,
    id: u64,
    ended: bool,
}

impl Leader {
    /// Ends the flight: its waiters, if any, get what `shared` makes, or
    /// (`None`: not an answer to share) are handed over. Nothing is made
    /// for a flight nobody joined.
    pub(crate) fn end(mut self, shared: impl FnOnce() -> Option<Shared>) {
        self.ended = true;
        let Some(answer) = self.flights.end(self.key, self.id) else {
            return;
        };
        if answer.receiver_count() > 0
            && let Some(shared) = shared()
        {
            answer.send_replace(Some(Arc::new(shared)));
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.ended {
            self.flights.end(self.key, self.id);
        }
    }
}

/// Waits for the flight's answer, at most `timeout`.
pub(crate) fn wait(mut landing: Landing, timeout: Duration) -> Waiting {
    Box::pin(async move {
        let landed = async {
            loop {
                if let Some(shared) = landing.borrow_and_update().clone() {
                    return Landed::Shared(shared);
                }
                if landing.changed().await.is_err() {
                    // The leader is gone: with an answer it sent just before,
                    // or without one.
                    return match landing.borrow().clone() {
                        Some(shared) => Landed::Shared(shared),
                        None => Landed::Abandoned,
                    };
                }
            }
        };
        tokio::time::timeout(timeout, landed)
            .await
            .unwrap_or(Landed::TimedOut)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            status: StatusCode::OK,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            chunks: VecDeque::from([Bytes::from_static(b"media")]),
            len: 5,
            trailers: None,
            vary: Vec::new(),
            selector: Box::new([]),
            expires_after: None,
        }
    }

    fn key(k: &str) -> u64 {
        twox_hash::XxHash3_64::oneshot(k.as_bytes())
    }

    fn epoch() -> Epoch {
        crate::store::Store::new(1 << 20).epoch(crate::key::Key::of_path(b"/a"))
    }

    #[tokio::test]
    async fn a_request_after_an_invalidation_does_not_join_a_flight_from_before() {
        let flights = Flights::new();
        let store = crate::store::Store::new(1 << 20);
        let path = crate::key::Key::of_path(b"/a");
        let before = store.epoch(path);
        let Some(Joined::Lead(old)) = flights.join(key("/a"), true, before) else {
            panic!("leads");
        };
        store.invalidate("/a");
        let after = store.epoch(path);
        assert_ne!(before, after);
        // It may not lead: it goes alone. It may: it leads a new flight,
        // which later requests join, and the old leader's end leaves it.
        assert!(flights.join(key("/a"), false, after).is_none());
        let Some(Joined::Lead(new)) = flights.join(key("/a"), true, after) else {
            panic!("leads a new flight");
        };
        drop(old);
        assert!(matches!(
            flights.join(key("/a"), false, after),
            Some(Joined::Wait(_))
        ));
        drop(new);
    }

    #[tokio::test]
    async fn the_first_leads_the_next_wait_and_get_its_answer() {
        let flights = Flights::new();
        let Some(Joined::Lead(leader)) = flights.join(key("/a"), true, epoch()) else {
            panic!("the first request leads");
        };
        let Some(Joined::Wait(landing)) = flights.join(key("/a"), true, epoch()) else {
            panic!("the second waits");
        };
        // Another URL has a flight of its own; a request that may not lead
        // finds none to join.
        assert!(matches!(
            flights.join(key("/b"), true, epoch()),
            Some(Joined::Lead(_))
        ));
        assert!(flights.join(key("/c"), false, epoch()).is_none());
        let waiting = wait(landing, Duration::from_secs(5));
        leader.end(|| Some(shared()));
        let Landed::Shared(answer) = waiting.await else {
            panic!("the waiter gets the leader's answer");
        };
        assert_eq!(answer.chunks[0], "media");
        // The flight ended with its leader: the next request leads again.
        assert!(matches!(
            flights.join(key("/a"), true, epoch()),
            Some(Joined::Lead(_))
        ));
    }

    #[tokio::test]
    async fn a_leader_dropped_without_an_answer_hands_the_waiters_over() {
        let flights = Flights::new();
        let Some(Joined::Lead(leader)) = flights.join(key("/a"), true, epoch()) else {
            panic!("leads");
        };
        let Some(Joined::Wait(landing)) = flights.join(key("/a"), false, epoch()) else {
            panic!("waits");
        };
        let waiting = wait(landing, Duration::from_secs(5));
        drop(leader);
        assert!(matches!(waiting.await, Landed::Abandoned));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test]
    async fn a_wait_ends_at_the_timeout() {
        let flights = Flights::new();
        let Some(Joined::Lead(_leader)) = flights.join(key("/a"), true, epoch()) else {
            panic!("leads");
        };
        let Some(Joined::Wait(landing)) = flights.join(key("/a"), false, epoch()) else {
            panic!("waits");
        };
        assert!(matches!(
            wait(landing, Duration::from_millis(50)).await,
            Landed::TimedOut
        ));
    }
}
