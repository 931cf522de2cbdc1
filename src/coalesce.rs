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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, StatusCode, Version};
use tokio::sync::watch;

use crate::store::Epoch;

/// Flights are found by the exact selector of their request, in stripes so
/// that requests for different URLs do not wait on one lock.
const STRIPES: usize = 64;

/// The flights in progress, by the exact selector of the leader's request
/// (target, authority and, when the leader's answer named them, the values
/// of its `Vary`'d fields).
pub(crate) struct Flights {
    stripes: Box<[Mutex<Stripe>]>,
}

/// The flights of one stripe, by selector.
type Stripe = HashMap<Box<[u8]>, Flight>;

/// A flight: where its waiters learn its answer, and the invalidation
/// epoch its leader started in.
struct Flight {
    landing: Landing,
    started: Epoch,
}

/// What a flight's waiters learn.
type Landing = watch::Receiver<Option<Arc<Shared>>>;

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
        })
    }

    fn stripe(&self, key: &[u8]) -> &Mutex<Stripe> {
        let hash = twox_hash::XxHash3_64::oneshot(key);
        &self.stripes[(hash % STRIPES as u64) as usize]
    }

    /// Joins the flight of `key`, or leads a new one if `may_lead`; `None`
    /// when there is none to join and this request may not lead one.
    /// `started` is the request's invalidation epoch: a flight whose leader
    /// started before an invalidation that this request came after may
    /// answer with what the invalidation removed, so it is not joined (a
    /// new flight replaces it for the requests after).
    pub(crate) fn join(
        self: &Arc<Self>,
        key: Box<[u8]>,
        may_lead: bool,
        started: Epoch,
    ) -> Option<Joined> {
        let mut flights = lock(self.stripe(&key));
        if let Some(flight) = flights.get(&key) {
            // A leader that is gone leaves its entry until its drop runs.
            if flight.started == started && flight.landing.has_changed().is_ok() {
                return Some(Joined::Wait(flight.landing.clone()));
            }
        }
        if !may_lead {
            return None;
        }
        let (answer, landing) = watch::channel(None);
        flights.insert(key.clone(), Flight { landing, started });
        Some(Joined::Lead(Leader {
            flights: self.clone(),
            key,
            answer,
        }))
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
/// [`publish`](Self::publish) — its answer is not shared, or its future
/// was dropped — it hands the waiters over to the service.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: Box<[u8]>,
    answer: watch::Sender<Option<Arc<Shared>>>,
}

impl Leader {
    /// Whether any request waits for this flight's answer (the map holds
    /// one receiver; each waiter a clone of it).
    pub(crate) fn has_waiters(&self) -> bool {
        self.answer.receiver_count() > 1
    }

    /// Answers the waiters, and ends the flight.
    pub(crate) fn publish(self, shared: Shared) {
        self.answer.send_replace(Some(Arc::new(shared)));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        let mut flights = lock(self.flights.stripe(&self.key));
        let ours = flights
            .get(&self.key)
            .is_some_and(|flight| flight.landing.same_channel(&self.answer.subscribe()));
        if ours {
            flights.remove(&self.key);
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

    fn key(k: &str) -> Box<[u8]> {
        k.as_bytes().into()
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
        leader.publish(shared());
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
