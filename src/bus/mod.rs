//! Invalidation bus: share invalidations between replicas.
//!
//! Each replica of a service keeps its own validator store and answers
//! conditional requests from it. When replica A invalidates a URL (with
//! [`CacheHandle::invalidate`], [`invalidate_prefix`], [`invalidate_tag`],
//! [`clear`], or because an unsafe method through A succeeded), replica B
//! must stop answering from what it learned before. An [`InvalidationBus`], set with
//! [`MediaCacheLayer::invalidation_bus`], carries those invalidations:
//!
//! * every invalidation made on a replica is applied to its own store, then
//!   published on the bus before the invalidating call returns;
//! * invalidations published by other replicas are applied to the store as if
//!   made locally (the same code, so they order against in-flight learns the
//!   same way), and are not published again;
//! * **fail safe**: while the bus is not connected — before its first
//!   successful subscription, after a connection error, while the broker
//!   restarts — the store answers nothing by itself: every request goes to
//!   the inner service, as under [`Trust::Never`], and
//!   [`Stats::bus_disconnected_fallbacks`] counts the requests a trusted
//!   entry would have answered. Each change of state is logged once (a
//!   `warn` on disconnection, an `info` on connection). On (re)connection
//!   the store is cleared, since invalidations may have been missed, and
//!   then answers from what it learns again.
//!
//! # Guarantee
//!
//! After `invalidate` returns on replica A, replica B stops answering from
//! the old entry within the bus delivery time, or as soon as it notices it
//! is disconnected.
//!
//! "Stops answering" is about requests B looks up from then on; a request
//! B had already matched against the old entry when the message arrived may
//! still be answered from it, exactly as with a local invalidation. An entry
//! looked up before a disconnection, or before a reconnection, is never
//! trusted after it.
//!
//! The delivery time is the time for the message to go from A's queue
//! through the broker to B's store. It includes the time A needs to get its
//! own connection back if that is down when A invalidates: A keeps what it
//! published in a queue (bounded: when it overflows, the queue is replaced by
//! one "clear everything") and sends it, in order, once reconnected.
//!
//! For [`RedisBus`] (feature `redis`), B *notices* it is disconnected when
//! its pub/sub connection reports an error or is closed (the broker stopped
//! or restarted, a reset connection), or when a `PING` sent on the pub/sub
//! connection every [`ping_interval`] is not answered within
//! [`ping_timeout`] (a silent network failure): at most
//! `ping_interval + ping_timeout` after the failure, 2 s by default. Redis
//! pub/sub delivers at most once, but in order on a live connection, and any
//! message lost with a connection is covered by the clear on reconnection.
//!
//! The in-process default is no bus at all, which behaves as [`NoopBus`]:
//! always connected, nothing published.
//!
//! # Sharing what replicas learned
//!
//! With [`SharedStore`] (feature `redis`), the Redis bus also keeps a second
//! level of the validator store in Redis: what one replica learns, the
//! others — a replica that just started included — answer from. Its lookups
//! and writes go through the bus's connection and follow its state: nothing
//! is looked up while the bus is disconnected.
//!
//! # Writing a bus
//!
//! [`InvalidationBus::attach`] hands the bus a [`BusLink`] to the store.
//! The bus calls [`BusLink::set_connected`] once it receives other replicas'
//! messages, [`BusLink::set_disconnected`] as soon as it may miss some, and
//! [`BusLink::apply`] for each message from another replica (tell them apart
//! with [`BusLink::replica_id`]). [`InvalidationBus::publish`] must not
//! block: queue the message and send it from a task of your own.
//!
//! [`CacheHandle::invalidate`]: crate::CacheHandle::invalidate
//! [`invalidate_prefix`]: crate::CacheHandle::invalidate_prefix
//! [`invalidate_tag`]: crate::CacheHandle::invalidate_tag
//! [`clear`]: crate::CacheHandle::clear
//! [`MediaCacheLayer::invalidation_bus`]: crate::MediaCacheLayer::invalidation_bus
//! [`Trust::Never`]: crate::Trust::Never
//! [`Stats::bus_disconnected_fallbacks`]: crate::Stats::bus_disconnected_fallbacks
#![cfg_attr(
    feature = "redis",
    doc = "[`RedisBus`]: redis::RedisBus\n\
           [`SharedStore`]: redis::SharedStore\n\
           [`ping_interval`]: redis::RedisBusBuilder::ping_interval\n\
           [`ping_timeout`]: redis::RedisBusBuilder::ping_timeout"
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`RedisBus`]: https://docs.rs/tower-media-cache/latest/tower_media_cache/bus/redis/struct.RedisBus.html\n\
           [`SharedStore`]: https://docs.rs/tower-media-cache/latest/tower_media_cache/bus/redis/struct.SharedStore.html\n\
           [`ping_interval`]: https://docs.rs/tower-media-cache/latest/tower_media_cache/bus/redis/struct.RedisBusBuilder.html#method.ping_interval\n\
           [`ping_timeout`]: https://docs.rs/tower-media-cache/latest/tower_media_cache/bus/redis/struct.RedisBusBuilder.html#method.ping_timeout"
)]

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use crate::store::Store;

pub(crate) mod gate;
pub(crate) mod shared;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(feature = "redis")]
mod redis_store;

/// One invalidation, as carried between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invalidation {
    /// Every variant of one store key: a path and query, as sent
    /// (`/media/AAAA.jpg?size=small`).
    Key(String),
    /// Every key whose path starts with this prefix.
    Prefix(String),
    /// Every key one of whose entries carries this cache tag, as rendered
    /// in the tag headers (see [`tags`](crate::tags): never empty, no
    /// spaces, no commas, visible ASCII).
    Tag(String),
    /// Everything.
    Clear,
}

/// Carries invalidations between the replicas of a service. See the
/// [module documentation](self) for what the layer expects of it.
pub trait InvalidationBus: fmt::Debug + Send + Sync + 'static {
    /// Called once, when the bus is given to a layer's store. The bus keeps
    /// `link` to report its connection state and deliver the other
    /// replicas' invalidations. Until [`BusLink::set_connected`], the store
    /// answers nothing by itself.
    fn attach(&self, link: BusLink);

    /// Sends an invalidation made on the replica of `from` to the other
    /// replicas. Called after the store applied it, on the invalidating
    /// request's thread: must not block (queue the message).
    fn publish(&self, from: &BusLink, invalidation: &Invalidation);
}

impl<B: InvalidationBus + ?Sized> InvalidationBus for Arc<B> {
    fn attach(&self, link: BusLink) {
        (**self).attach(link);
    }

    fn publish(&self, from: &BusLink, invalidation: &Invalidation) {
        (**self).publish(from, invalidation);
    }
}

/// The bus of a single replica: always connected, publishes nothing.
///
/// A layer without a bus behaves the same; this type is for code that
/// chooses a bus at run time.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopBus;

impl InvalidationBus for NoopBus {
    fn attach(&self, link: BusLink) {
        link.set_connected();
    }

    fn publish(&self, _from: &BusLink, _invalidation: &Invalidation) {}
}

/// A bus's link to one validator store. Cheap to clone; does not keep the
/// store alive (every method returns `false` once the layer is gone).
#[derive(Clone)]
pub struct BusLink {
    store: Weak<Store>,
    replica_id: u64,
}

impl fmt::Debug for BusLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusLink")
            .field("replica_id", &format_args!("{:016x}", self.replica_id))
            .field("attached", &self.is_attached())
            .finish()
    }
}

impl BusLink {
    pub(crate) fn new(store: Weak<Store>) -> Self {
        Self {
            store,
            replica_id: new_replica_id(),
        }
    }

    /// A random identifier of this store, to tag published messages with and
    /// recognise (and ignore) them when the broker sends them back.
    pub fn replica_id(&self) -> u64 {
        self.replica_id
    }

    /// Whether the store still exists.
    pub fn is_attached(&self) -> bool {
        self.store.strong_count() > 0
    }

    /// Whether the store currently sees the bus as connected.
    pub fn is_connected(&self) -> bool {
        self.store.upgrade().is_some_and(|s| s.bus_connected())
    }

    /// Applies an invalidation received from another replica, without
    /// publishing it. Returns whether the store still exists.
    pub fn apply(&self, invalidation: &Invalidation) -> bool {
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        tracing::debug!(?invalidation, "invalidation received from another replica");
        store.apply_remote(invalidation);
        true
    }

    /// Gives the store a shared second level (the Redis bus's
    /// [`SharedStore`](crate::bus::redis::SharedStore)).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn attach_second_level(&self, second: Arc<dyn shared::SecondLevel>) {
        if let Some(store) = self.store.upgrade() {
            store.attach_second_level(second);
        }
    }

    /// Reports the bus connected: it now receives every invalidation the
    /// other replicas publish. If it was not, the store is cleared (it may
    /// have missed some) and then answers from what it learns again. Returns
    /// whether the store still exists.
    pub fn set_connected(&self) -> bool {
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        if store.set_bus_connected(true) {
            tracing::info!(
                replica = %format_args!("{:016x}", self.replica_id),
                "invalidation bus connected: validator store cleared, answering from it again"
            );
        }
        true
    }

    /// Reports the bus disconnected: it may miss invalidations, so the store
    /// answers nothing by itself until [`set_connected`](Self::set_connected).
    /// Returns whether the store still exists.
    pub fn set_disconnected(&self, reason: &dyn fmt::Display) -> bool {
        let Some(store) = self.store.upgrade() else {
            return false;
        };
        if store.set_bus_connected(false) {
            tracing::warn!(
                replica = %format_args!("{:016x}", self.replica_id),
                %reason,
                "invalidation bus disconnected: every request goes to the inner service until it reconnects"
            );
        }
        true
    }
}

fn new_replica_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    std::process::id().hash(&mut hasher);
    SystemTime::now().hash(&mut hasher);
    NEXT.fetch_add(1, Ordering::Relaxed).hash(&mut hasher);
    hasher.finish()
}

/// The wire format of a message: `tmc1 <origin, 16 hex digits> key <key>`,
/// `… prefix <prefix>`, `… tag <tag>` or `… clear`. (A replica of a version
/// before tags reads a `tag` message as unreadable, and clears: safe.)
#[cfg_attr(not(any(feature = "redis", test)), allow(dead_code))]
pub(crate) fn encode(origin: u64, invalidation: &Invalidation) -> String {
    match invalidation {
        Invalidation::Key(key) => format!("tmc1 {origin:016x} key {key}"),
        Invalidation::Prefix(prefix) => format!("tmc1 {origin:016x} prefix {prefix}"),
        Invalidation::Tag(tag) => format!("tmc1 {origin:016x} tag {tag}"),
        Invalidation::Clear => format!("tmc1 {origin:016x} clear"),
    }
}

/// Reads a message. A message that cannot be read yields `(None, Clear)`:
/// it may be an invalidation from a newer version, and clearing is safe.
///
/// Besides `tmc1`, reads `tmc2 <origin> <generation> …`, which a
/// [shared store](crate::bus::redis::SharedStore) publishes from Redis with
/// the invalidation generation it moved to (see [`generation`]).
#[cfg_attr(not(any(feature = "redis", test)), allow(dead_code))]
pub(crate) fn decode(message: &[u8]) -> (Option<u64>, Invalidation) {
    match parse(message) {
        Some((origin, _, invalidation)) => (Some(origin), invalidation),
        None => (None, Invalidation::Clear),
    }
}

/// The generation a `tmc2` message carries.
#[cfg_attr(not(any(feature = "redis", test)), allow(dead_code))]
pub(crate) fn generation(message: &[u8]) -> Option<u64> {
    parse(message).and_then(|(_, generation, _)| generation)
}

fn parse(message: &[u8]) -> Option<(u64, Option<u64>, Invalidation)> {
    let text = std::str::from_utf8(message).ok()?;
    let (version, rest) = text.split_once(' ')?;
    let (origin, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let origin = u64::from_str_radix(origin, 16).ok()?;
    let (generation, rest) = match version {
        "tmc1" => (None, rest),
        "tmc2" => {
            let (generation, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            (Some(generation.parse().ok()?), rest)
        }
        _ => return None,
    };
    let invalidation = match rest.split_once(' ') {
        Some(("key", key)) => Invalidation::Key(key.into()),
        Some(("prefix", prefix)) => Invalidation::Prefix(prefix.into()),
        Some(("tag", tag)) if !tag.is_empty() => Invalidation::Tag(tag.into()),
        None if rest == "clear" => Invalidation::Clear,
        _ => return None,
    };
    Some((origin, generation, invalidation))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use http::HeaderMap;

    use super::*;
    use crate::EntityTag;
    use crate::handle::Counter;
    use crate::headers::HttpDate;
    use crate::key::Key;
    use crate::policy::TrustedUntil;
    use crate::store::Entry;
    use crate::validators::Validators;

    #[derive(Debug, Default)]
    struct TestBus {
        link: Mutex<Option<BusLink>>,
        published: Mutex<Vec<Invalidation>>,
    }

    impl InvalidationBus for TestBus {
        fn attach(&self, link: BusLink) {
            *self.link.lock().unwrap() = Some(link);
        }
        fn publish(&self, _from: &BusLink, invalidation: &Invalidation) {
            self.published.lock().unwrap().push(invalidation.clone());
        }
    }

    impl TestBus {
        fn link(&self) -> BusLink {
            self.link.lock().unwrap().clone().expect("attached")
        }
        fn published(&self) -> Vec<Invalidation> {
            std::mem::take(&mut self.published.lock().unwrap())
        }
    }

    fn entry() -> Entry {
        Entry {
            validators: Validators::new().with_etag(EntityTag::strong("1").unwrap()),
            headers: HeaderMap::new(),
            trusted_until: TrustedUntil::Invalidated,
            expires_after: None,
            first_seen: HttpDate::from_secs(0),
            basis: None,
            tags: crate::tags::Tags::default(),
        }
    }

    fn learn(store: &Store, path: &str) {
        store.learn_path(path, entry());
    }

    /// Learns `/a` as a request that started in epoch `started`.
    fn learn_started(store: &Store, started: crate::store::Epoch) -> bool {
        let uri: http::Uri = "/a".parse().unwrap();
        let headers = HeaderMap::new();
        let request = crate::key::Selecting::new(&uri, &headers, false);
        store
            .learn(Key::of(&uri), request, &[], entry(), started)
            .is_ok()
    }

    fn trusted(store: &Store, path: &str) -> Option<bool> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1);
        store.lookup_path(path).map(|found| found.may_answer(now))
    }

    fn with_bus() -> (Arc<Store>, Arc<TestBus>) {
        let store = Arc::new(Store::new(1 << 20));
        let bus = Arc::new(TestBus::default());
        store.attach_bus(Arc::new(bus.clone()));
        (store, bus)
    }

    #[test]
    fn without_a_bus_the_store_is_connected() {
        let store = Store::new(1 << 20);
        assert!(store.bus_connected());
        learn(&store, "/a");
        assert_eq!(trusted(&store, "/a"), Some(true));
    }

    #[test]
    fn noop_bus_connects_at_once() {
        let store = Arc::new(Store::new(1 << 20));
        store.attach_bus(Arc::new(NoopBus));
        assert!(store.bus_connected());
        learn(&store, "/a");
        assert_eq!(trusted(&store, "/a"), Some(true));
    }

    #[test]
    fn nothing_is_trusted_until_connected_and_fallbacks_are_counted_once() {
        let (store, bus) = with_bus();
        learn(&store, "/a");
        let found = store.lookup_path("/a").unwrap();
        let now = SystemTime::UNIX_EPOCH;
        assert!(!found.may_answer(now));
        assert!(!found.may_answer(now));
        let counted = || store.counters.get(Counter::BusDisconnectedFallbacks);
        assert_eq!(counted(), 1);
        assert_eq!(trusted(&store, "/a"), Some(false));
        assert_eq!(counted(), 2);

        // Connecting clears what was learned while disconnected.
        assert!(bus.link().set_connected());
        assert!(store.bus_connected());
        assert_eq!(trusted(&store, "/a"), None);
        learn(&store, "/a");
        assert_eq!(trusted(&store, "/a"), Some(true));

        // A disconnection distrusts at once, even a lookup made before it.
        let found = store.lookup_path("/a").unwrap();
        assert!(bus.link().set_disconnected(&"test"));
        assert!(!found.may_answer(now));
        assert_eq!(trusted(&store, "/a"), Some(false));
        assert!(bus.link().set_connected());
        assert_eq!(trusted(&store, "/a"), None);
    }

    #[test]
    fn a_lookup_across_a_reconnection_is_not_trusted() {
        let (store, bus) = with_bus();
        let now = SystemTime::UNIX_EPOCH;
        // Looked up while disconnected, used after the reconnection.
        learn(&store, "/a");
        let found = store.lookup_path("/a").unwrap();
        bus.link().set_connected();
        assert!(!found.may_answer(now));
        // Looked up while connected, used after an outage.
        learn(&store, "/a");
        let found = store.lookup_path("/a").unwrap();
        assert!(found.may_answer(now));
        bus.link().set_disconnected(&"test");
        bus.link().set_connected();
        assert!(!found.may_answer(now));
        // Reporting connected again changes nothing, clears nothing.
        learn(&store, "/a");
        bus.link().set_connected();
        assert_eq!(trusted(&store, "/a"), Some(true));
    }

    #[test]
    fn local_invalidations_are_published_and_remote_ones_are_not() {
        let (store, bus) = with_bus();
        bus.link().set_connected();
        store.invalidate("/a");
        store.invalidate_prefix("/media/");
        store.invalidate_tag("album 7");
        store.invalidate_tag("");
        store.clear();
        store.forget(Key::of_path(b"/gone"));
        assert_eq!(
            bus.published(),
            [
                Invalidation::Key("/a".into()),
                Invalidation::Prefix("/media/".into()),
                Invalidation::Tag("album%207".into()),
                Invalidation::Clear
            ]
        );

        learn(&store, "/a");
        learn(&store, "/media/x");
        learn(&store, "/b");
        let link = bus.link();
        assert!(link.apply(&Invalidation::Key("/a".into())));
        assert_eq!(trusted(&store, "/a"), None);
        assert!(link.apply(&Invalidation::Prefix("/media/".into())));
        assert_eq!(trusted(&store, "/media/x"), None);
        assert_eq!(trusted(&store, "/b"), Some(true));
        store.learn_path(
            "/t",
            Entry {
                tags: crate::tags::Tags::new(["album 7"]),
                ..entry()
            },
        );
        // A remote tag is applied as rendered, not rendered again.
        assert!(link.apply(&Invalidation::Tag("album 7".into())));
        assert_eq!(trusted(&store, "/t"), Some(true));
        assert!(link.apply(&Invalidation::Tag("album%207".into())));
        assert_eq!(trusted(&store, "/t"), None);
        assert!(link.apply(&Invalidation::Clear));
        assert_eq!(trusted(&store, "/b"), None);
        assert_eq!(bus.published(), []);
        assert_eq!(store.counters.get(Counter::BusReceived), 5);
    }

    #[test]
    fn a_remote_invalidation_discards_learns_in_flight() {
        let (store, bus) = with_bus();
        bus.link().set_connected();
        let started = store.epoch(Key::of_path(b"/a"));
        bus.link().apply(&Invalidation::Key("/a".into()));
        assert!(!learn_started(&store, started));
        assert_eq!(trusted(&store, "/a"), None);
    }

    #[test]
    fn a_learn_in_flight_across_a_reconnection_is_discarded() {
        let (store, bus) = with_bus();
        let started = store.epoch(Key::of_path(b"/a"));
        bus.link().set_connected();
        assert!(!learn_started(&store, started));
        assert_eq!(trusted(&store, "/a"), None);
    }

    #[test]
    fn links_outlive_their_store_harmlessly() {
        let (store, bus) = with_bus();
        let link = bus.link();
        drop(store);
        assert!(!link.is_attached());
        assert!(!link.apply(&Invalidation::Clear));
        assert!(!link.set_connected());
        assert!(!link.set_disconnected(&"gone"));
    }

    #[test]
    #[should_panic(expected = "already has an invalidation bus")]
    fn one_bus_per_store() {
        let (store, _bus) = with_bus();
        store.attach_bus(Arc::new(NoopBus));
    }

    #[test]
    fn wire_format_round_trips_and_unknown_messages_clear() {
        for invalidation in [
            Invalidation::Key("/a b?c=d e".into()),
            Invalidation::Prefix("/media/".into()),
            Invalidation::Prefix(String::new()),
            Invalidation::Tag("album%207".into()),
            Invalidation::Clear,
        ] {
            let text = encode(0xfeed, &invalidation);
            assert_eq!(decode(text.as_bytes()), (Some(0xfeed), invalidation));
        }
        for junk in [
            &b"tmc3 0 clear"[..],
            b"tmc2 0 clear",
            b"tmc2 0 x key /a",
            b"tmc1 zz key /a",
            b"tmc1 1 key",
            b"tmc1 1 tag ",
            b"tmc1 1 tag",
            b"tmc1 1 clear x",
            b"tmc1",
            b"\xff",
        ] {
            assert_eq!(decode(junk), (None, Invalidation::Clear));
            assert_eq!(generation(junk), None);
        }
    }

    #[test]
    fn shared_store_messages_carry_a_generation() {
        let (origin, invalidation) = decode(b"tmc2 00000000000000ff 42 key /a b");
        assert_eq!(origin, Some(0xff));
        assert_eq!(invalidation, Invalidation::Key("/a b".into()));
        assert_eq!(generation(b"tmc2 00000000000000ff 42 key /a b"), Some(42));
        assert_eq!(generation(b"tmc2 1 7 clear"), Some(7));
        assert_eq!(
            decode(b"tmc2 1 7 prefix /media/"),
            (Some(1), Invalidation::Prefix("/media/".into()))
        );
        assert_eq!(generation(b"tmc1 1 clear"), None);
    }
}
