//! The validator store: what the layer learned from `200` answers, shared by
//! every clone of the service, bounded, and invalidated by a handle.
//!
//! Entries are keyed by path and query; under a key, each variant is told
//! apart by its authority (`Host`) and by the request's values of the header
//! fields the response named in `Vary`. The map itself is a
//! [`quick_cache`] sharded concurrent cache with eviction, so a lookup costs
//! one hash-map probe whatever the number of entries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Uri};

use crate::bus::{BusLink, Invalidation, InvalidationBus};
use crate::headers::HttpDate;
use crate::validators::Validators;

/// What the store remembers of one variant of one resource.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) validators: Validators,
    /// The header fields a 304 must repeat (RFC 9110 §15.4.5), without `Date`.
    pub(crate) headers: HeaderMap,
    pub(crate) trusted_until: TrustedUntil,
    /// Re-render `Expires` this long after the 304's `Date`.
    pub(crate) expires_after: Option<Duration>,
    /// When the current ETag was first seen under this key.
    pub(crate) first_seen: HttpDate,
}

/// Until when an entry may answer without the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrustedUntil {
    Never,
    At(SystemTime),
    Invalidated,
}

impl Entry {
    pub(crate) fn is_trusted(&self, now: SystemTime) -> bool {
        match self.trusted_until {
            TrustedUntil::Never => false,
            TrustedUntil::At(until) => now < until,
            TrustedUntil::Invalidated => true,
        }
    }
}

#[derive(Debug)]
struct Variant {
    host: Box<str>,
    vary: Box<[(HeaderName, Box<[u8]>)]>,
    entry: Arc<Entry>,
}

impl Variant {
    fn selected_by(&self, host: &str, request: &HeaderMap) -> bool {
        self.host.eq_ignore_ascii_case(host)
            && self
                .vary
                .iter()
                .all(|(name, value)| *vary_value(request, name) == **value)
    }
}

#[derive(Debug)]
struct Resource {
    variants: Box<[Variant]>,
    /// Set when a newer version of this resource replaces it: quick_cache
    /// reports replacements through the same hook as evictions.
    superseded: std::sync::atomic::AtomicBool,
}

/// How many stripes of keys have an invalidation epoch of their own.
pub(crate) const EPOCH_STRIPES: usize = 256;

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    // The guarded data is `()`: a panic elsewhere cannot leave it broken.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn stripe_of(key: &str) -> usize {
    (twox_hash::XxHash3_64::oneshot(key.as_bytes()) % EPOCH_STRIPES as u64) as usize
}

/// The invalidation epochs a request started in; see [`Store::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch {
    stripe: usize,
    key: u64,
    global: u64,
}

/// At most this many variants (hosts × `Vary` values) are kept per URL; a
/// resource that varies on, say, `User-Agent` replaces its oldest variant.
const MAX_VARIANTS: usize = 16;

#[derive(Debug, Clone)]
struct VariantWeight;

impl quick_cache::Weighter<Box<str>, Arc<Resource>> for VariantWeight {
    fn weight(&self, _key: &Box<str>, resource: &Arc<Resource>) -> u64 {
        resource.variants.len().max(1) as u64
    }
}

#[derive(Debug, Clone)]
struct CountEvictions(Arc<Counters>);

impl quick_cache::Lifecycle<Box<str>, Arc<Resource>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), _key: Box<str>, resource: Arc<Resource>) {
        if resource.superseded.load(Ordering::Acquire) {
            return;
        }
        self.0
            .evicted
            .fetch_add(resource.variants.len() as u64, Ordering::Relaxed);
        tracing::debug!(
            variants = resource.variants.len(),
            "validator store evicted"
        );
    }
}

type Map = quick_cache::sync::Cache<
    Box<str>,
    Arc<Resource>,
    VariantWeight,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// The shared validator store.
pub(crate) struct Store {
    map: Map,
    /// Invalidation epochs: one per stripe of keys, bumped by invalidating
    /// a key of that stripe, and one for the whole store, bumped by prefix
    /// invalidations and clears. A learn whose request started before an
    /// invalidation that covers its key is discarded, so a response
    /// produced before a write is never learned after the write's
    /// invalidation — while writes to other keys (most of them, with
    /// [`EPOCH_STRIPES`] stripes) do not disturb it.
    epochs: Box<[AtomicU64]>,
    global_epoch: AtomicU64,
    /// Makes "check the epochs, then insert" in [`Store::learn`] and "bump
    /// the epoch, then remove" in an invalidation exclusive, per stripe
    /// (and store-wide, through `global_lock`, for prefixes and clears), so
    /// that a stale entry is never visible, not even for an instant.
    /// Lookups take neither.
    stripe_locks: Box<[Mutex<()>]>,
    global_lock: RwLock<()>,
    pub(crate) counters: Arc<Counters>,
    /// The invalidation bus's state: odd while connected (always, without a
    /// bus), even while not; bumped by every change. While disconnected, and
    /// across a change, no entry is trusted (see [`Found::is_trusted`]).
    bus_state: Arc<AtomicU64>,
    /// The invalidation bus, once [`Store::attach_bus`] ran.
    bus: OnceLock<(Arc<dyn InvalidationBus>, BusLink)>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.map.len())
            .field("epoch", &self.global_epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A found variant.
#[derive(Debug)]
pub(crate) struct Found {
    entry: Arc<Entry>,
    /// With an invalidation bus: its state, the state when the lookup
    /// began, and the counters to count the fallbacks in.
    bus: Option<(Arc<AtomicU64>, u64, Arc<Counters>)>,
    /// Whether this lookup was already counted as a bus fallback.
    fallback_counted: AtomicBool,
}

impl Clone for Found {
    fn clone(&self) -> Self {
        Self {
            entry: self.entry.clone(),
            bus: self.bus.clone(),
            fallback_counted: AtomicBool::new(self.fallback_counted.load(Ordering::Relaxed)),
        }
    }
}

impl std::ops::Deref for Found {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl Found {
    /// Whether the entry may answer without the inner service now: its own
    /// trust ([`Entry::is_trusted`], which this shadows for callers holding a
    /// `Found`), and an invalidation bus, if any, that was connected when the
    /// lookup began and has stayed so since. A disconnected bus may have lost
    /// invalidations, so nothing is trusted; the first refusal of an
    /// otherwise trusted entry is counted.
    pub(crate) fn is_trusted(&self, now: SystemTime) -> bool {
        let trusted = self.entry.is_trusted(now);
        match &self.bus {
            Some((state, at_lookup, counters))
                if trusted
                    && (at_lookup % 2 == 0 || state.load(Ordering::SeqCst) != *at_lookup) =>
            {
                if !self.fallback_counted.swap(true, Ordering::Relaxed) {
                    counters
                        .bus_disconnected_fallbacks
                        .fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            _ => trusted,
        }
    }
}

impl Store {
    /// A store holding at most `capacity` variants.
    pub(crate) fn new(capacity: usize) -> Self {
        let counters = Arc::new(Counters::default());
        let capacity = capacity.max(1);
        let map = Map::with(
            capacity,
            capacity as u64,
            VariantWeight,
            quick_cache::DefaultHashBuilder::default(),
            CountEvictions(counters.clone()),
        );
        Self {
            map,
            epochs: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            global_epoch: AtomicU64::new(0),
            stripe_locks: (0..EPOCH_STRIPES).map(|_| Mutex::new(())).collect(),
            global_lock: RwLock::new(()),
            counters,
            bus_state: Arc::new(AtomicU64::new(1)),
            bus: OnceLock::new(),
        }
    }

    /// Attaches an invalidation bus: from now on the store is disconnected
    /// (trusts nothing) until the bus reports it connected, and publishes
    /// its own invalidations on it.
    ///
    /// # Panics
    ///
    /// When the store already has a bus.
    pub(crate) fn attach_bus(self: &Arc<Self>, bus: Arc<dyn InvalidationBus>) {
        let link = BusLink::new(Arc::downgrade(self));
        self.bus_state.fetch_add(1, Ordering::SeqCst);
        if self.bus.set((bus.clone(), link.clone())).is_err() {
            panic!("this validator store already has an invalidation bus");
        }
        tracing::info!(
            replica = %format_args!("{:016x}", link.replica_id()),
            ?bus,
            "invalidation bus attached: not answering from the validator store until it connects"
        );
        bus.attach(link);
    }

    /// Whether the invalidation bus is connected (always, without one).
    pub(crate) fn bus_connected(&self) -> bool {
        self.bus_state.load(Ordering::SeqCst) % 2 == 1
    }

    /// Records the bus's state; returns whether it changed. On a change to
    /// connected, the store is cleared first: it may have missed
    /// invalidations while disconnected.
    pub(crate) fn set_bus_connected(&self, connected: bool) -> bool {
        loop {
            let state = self.bus_state.load(Ordering::SeqCst);
            if (state % 2 == 1) == connected {
                return false;
            }
            if connected {
                // Clear before trusting again. `clear_here` bumps the epoch,
                // so a learn that started while disconnected is discarded.
                self.clear_here();
            }
            if self
                .bus_state
                .compare_exchange(state, state + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Applies an invalidation received from another replica, without
    /// publishing it.
    pub(crate) fn apply_remote(&self, invalidation: &Invalidation) {
        self.counters.bus_received.fetch_add(1, Ordering::Relaxed);
        match invalidation {
            Invalidation::Key(key) => {
                self.invalidate_here(key);
            }
            Invalidation::Prefix(prefix) => self.invalidate_prefix_here(prefix),
            Invalidation::Clear => self.clear_here(),
        }
    }

    fn publish(&self, invalidation: Invalidation) {
        if let Some((bus, link)) = self.bus.get() {
            bus.publish(link, &invalidation);
        }
    }

    /// Changes how many variants the store keeps, evicting if it shrinks.
    pub(crate) fn set_capacity(&self, capacity: usize) {
        self.map.set_capacity(capacity.max(1) as u64);
    }

    /// The invalidation epochs covering `key`, to pass back to
    /// [`Store::learn`].
    pub(crate) fn epoch(&self, key: &str) -> Epoch {
        let stripe = stripe_of(key);
        Epoch {
            stripe,
            key: self.epochs[stripe].load(Ordering::SeqCst),
            global: self.global_epoch.load(Ordering::SeqCst),
        }
    }

    fn epoch_moved(&self, started: Epoch) -> bool {
        self.epochs[started.stripe].load(Ordering::SeqCst) != started.key
            || self.global_epoch.load(Ordering::SeqCst) != started.global
    }

    /// The variant of `key` that a request with these headers selects.
    pub(crate) fn lookup(&self, key: &str, host: &str, request: &HeaderMap) -> Option<Found> {
        // The bus state is read before the map: an entry read after a
        // reconnection's clear began is then never taken for a fresh one.
        let bus = self.bus.get().map(|_| {
            (
                self.bus_state.clone(),
                self.bus_state.load(Ordering::SeqCst),
                self.counters.clone(),
            )
        });
        let resource = self.map.get(key)?;
        resource
            .variants
            .iter()
            .find(|variant| variant.selected_by(host, request))
            .map(|variant| Found {
                entry: variant.entry.clone(),
                bus,
                fallback_counted: AtomicBool::new(false),
            })
    }

    /// Stores what was learned from a `200`, replacing the variant the
    /// request selects. `vary` lists the response's `Vary` field names;
    /// `started` is [`Store::epoch`] read when the request arrived.
    pub(crate) fn learn(
        &self,
        key: &str,
        host: &str,
        vary: &[HeaderName],
        request: &HeaderMap,
        entry: Entry,
        started: Epoch,
    ) {
        let variant = Variant {
            host: host.to_ascii_lowercase().into(),
            vary: vary
                .iter()
                .map(|name| (name.clone(), vary_value(request, name)))
                .collect(),
            entry: Arc::new(entry),
        };
        let _global = self.global_lock.read().unwrap_or_else(|e| e.into_inner());
        let _stripe = lock(&self.stripe_locks[started.stripe]);
        if self.epoch_moved(started) {
            // An invalidation covering this key ran while the response was
            // produced: what it says may be older than the write.
            tracing::debug!(key, "learn discarded: invalidated while in flight");
            return;
        }
        let mut variants: Vec<Variant> = Vec::with_capacity(2);
        if let Some(existing) = self.map.get(key) {
            existing.superseded.store(true, Ordering::Release);
            variants.extend(
                existing
                    .variants
                    .iter()
                    .filter(|v| !(v.host == variant.host && v.vary == variant.vary))
                    .map(|v| Variant {
                        host: v.host.clone(),
                        vary: v.vary.clone(),
                        entry: v.entry.clone(),
                    }),
            );
        }
        if variants.len() >= MAX_VARIANTS {
            variants.remove(0);
        }
        variants.push(variant);
        let resource = Arc::new(Resource {
            variants: variants.into_boxed_slice(),
            superseded: Default::default(),
        });
        self.map.insert(key.into(), resource);
        self.counters.learned.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(key, host, "validator learned");
    }

    /// Removes every variant of a path and query, for every host, and
    /// publishes that on the invalidation bus.
    pub(crate) fn invalidate(&self, key: &str) -> bool {
        let removed = self.invalidate_here(key);
        self.publish(Invalidation::Key(key.into()));
        removed
    }

    fn invalidate_here(&self, key: &str) -> bool {
        let stripe = stripe_of(key);
        let _stripe = lock(&self.stripe_locks[stripe]);
        self.epochs[stripe].fetch_add(1, Ordering::SeqCst);
        let removed = self.map.remove(key);
        if let Some((_, resource)) = &removed {
            self.count_invalidated(resource.variants.len());
        }
        tracing::debug!(key, removed = removed.is_some(), "invalidated");
        removed.is_some()
    }

    /// Removes a key without bumping the epoch: for a `404`/`410` seen on a
    /// `GET`, which says the resource is gone but is no write to order
    /// against.
    pub(crate) fn forget(&self, key: &str) {
        if let Some((_, resource)) = self.map.remove(key) {
            self.count_invalidated(resource.variants.len());
        }
    }

    /// Removes every entry whose path starts with `prefix`, and publishes
    /// that on the invalidation bus.
    pub(crate) fn invalidate_prefix(&self, prefix: &str) {
        self.invalidate_prefix_here(prefix);
        self.publish(Invalidation::Prefix(prefix.into()));
    }

    fn invalidate_prefix_here(&self, prefix: &str) {
        let _global = self.global_lock.write().unwrap_or_else(|e| e.into_inner());
        self.global_epoch.fetch_add(1, Ordering::SeqCst);
        let removed = AtomicU64::new(0);
        self.map.retain(|key, resource| {
            let keep = !key.starts_with(prefix);
            if !keep {
                removed.fetch_add(resource.variants.len() as u64, Ordering::Relaxed);
            }
            keep
        });
        let removed = removed.into_inner();
        self.counters
            .invalidated
            .fetch_add(removed, Ordering::Relaxed);
        tracing::debug!(prefix, removed, "invalidated by prefix");
    }

    /// Removes everything, and publishes that on the invalidation bus.
    pub(crate) fn clear(&self) {
        self.clear_here();
        self.publish(Invalidation::Clear);
    }

    fn clear_here(&self) {
        let _global = self.global_lock.write().unwrap_or_else(|e| e.into_inner());
        self.global_epoch.fetch_add(1, Ordering::SeqCst);
        let count: usize = self.map.iter().map(|(_, r)| r.variants.len()).sum();
        self.map.clear();
        self.count_invalidated(count);
        tracing::debug!(removed = count, "validator store cleared");
    }

    fn count_invalidated(&self, n: usize) {
        self.counters
            .invalidated
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Variants stored: the map's total weight, O(shards), no walk.
    pub(crate) fn len(&self) -> usize {
        self.map.weight() as usize
    }
}

/// The request's value of a header named in `Vary`, normalised: all field
/// lines joined by commas, spaces and tabs around members removed, ASCII
/// lowercased (RFC 9111 §4.1 allows such normalisation).
fn vary_value(request: &HeaderMap, name: &HeaderName) -> Box<[u8]> {
    let mut out = Vec::new();
    for line in request.get_all(name) {
        for member in line.as_bytes().split(|&b| b == b',') {
            let member = crate::headers::trim_ows(member);
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend(member.iter().map(u8::to_ascii_lowercase));
        }
    }
    out.into_boxed_slice()
}

/// The store key of a request: path and query, exactly as sent.
pub(crate) fn key_of(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

/// The authority a request targets: the URI's (HTTP/2, absolute-form) or the
/// `Host` field's. Compared case-insensitively.
pub(crate) fn host_of<'a>(uri: &'a Uri, host_header: Option<&'a http::HeaderValue>) -> &'a str {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| host_header.and_then(|h| h.to_str().ok()))
        .unwrap_or("")
}

/// Counters of what the layer did, shared by the service and its handle.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) short_circuit_not_modified: AtomicU64,
    pub(crate) short_circuit_precondition_failed: AtomicU64,
    pub(crate) not_modified_from_inner: AtomicU64,
    pub(crate) precondition_failed_from_inner: AtomicU64,
    pub(crate) learned: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) invalidated: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) hashed: AtomicU64,
    pub(crate) streamed_unhashed: AtomicU64,
    pub(crate) buffer_budget_exhausted: AtomicU64,
    pub(crate) bus_disconnected_fallbacks: AtomicU64,
    pub(crate) bus_received: AtomicU64,
}

/// A snapshot of the layer's counters, from [`CacheHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// 304s answered from the store or a probe, without the inner service.
    pub short_circuit_not_modified: u64,
    /// 412s answered from the store or a probe, without the inner service.
    pub short_circuit_precondition_failed: u64,
    /// 304s the layer made from the inner service's 2xx answers.
    pub not_modified_from_inner: u64,
    /// 412s the layer made from the inner service's 2xx answers.
    pub precondition_failed_from_inner: u64,
    /// Variants learned.
    pub learned: u64,
    /// Variants evicted to respect the capacity.
    pub evicted: u64,
    /// Variants removed by invalidation.
    pub invalidated: u64,
    /// Probe calls.
    pub probes: u64,
    /// Response bodies buffered and hashed for a content ETag.
    pub hashed: u64,
    /// Bodies that streamed through without an ETag: over the per-response
    /// limit or over the global buffer budget.
    pub streamed_unhashed: u64,
    /// Of those, the ones that streamed because the global budget was used up.
    pub buffer_budget_exhausted: u64,
    /// Requests that a trusted entry would have answered but that went to
    /// the inner service because the invalidation bus was disconnected.
    pub bus_disconnected_fallbacks: u64,
    /// Invalidations received from other replicas over the invalidation bus
    /// and applied.
    pub bus_received: u64,
    /// Variants in the store now.
    pub entries: u64,
}

/// Invalidation and counters for a layer's validator store. Cheap to clone;
/// every clone acts on the same store.
///
/// ```
/// use tower_media_cache::{CachePolicy, MediaCacheLayer};
///
/// let layer = MediaCacheLayer::new(CachePolicy::no_cache());
/// let handle = layer.handle();
/// handle.invalidate("/media/AAAA.jpg");
/// handle.invalidate_prefix("/media/");
/// assert_eq!(handle.stats().entries, 0);
/// ```
#[derive(Debug, Clone)]
pub struct CacheHandle {
    pub(crate) store: Arc<Store>,
}

impl CacheHandle {
    /// Forgets a URL (path and query; scheme and authority, if given, are
    /// ignored, so every host's entries go), all of its `Vary` variants.
    /// Returns whether anything was stored.
    ///
    /// With an [invalidation bus](crate::bus), the other replicas are told
    /// too, before this returns (queued on the bus).
    pub fn invalidate(&self, uri: &str) -> bool {
        match uri.parse::<Uri>() {
            Ok(parsed) => self.store.invalidate(key_of(&parsed)),
            Err(_) => self.store.invalidate(uri),
        }
    }

    /// Forgets every URL whose path starts with `prefix` (for example
    /// `/media/`). Costs a walk over the store.
    pub fn invalidate_prefix(&self, prefix: &str) {
        self.store.invalidate_prefix(prefix);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.store.clear();
    }

    /// Whether the store may answer from its entries as far as the
    /// [invalidation bus](crate::bus) is concerned: `true` without a bus,
    /// otherwise whether the bus is connected.
    pub fn bus_connected(&self) -> bool {
        self.store.bus_connected()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let c = &self.store.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            short_circuit_not_modified: get(&c.short_circuit_not_modified),
            short_circuit_precondition_failed: get(&c.short_circuit_precondition_failed),
            not_modified_from_inner: get(&c.not_modified_from_inner),
            precondition_failed_from_inner: get(&c.precondition_failed_from_inner),
            learned: get(&c.learned),
            evicted: get(&c.evicted),
            invalidated: get(&c.invalidated),
            probes: get(&c.probes),
            hashed: get(&c.hashed),
            streamed_unhashed: get(&c.streamed_unhashed),
            buffer_budget_exhausted: get(&c.buffer_budget_exhausted),
            bus_disconnected_fallbacks: get(&c.bus_disconnected_fallbacks),
            bus_received: get(&c.bus_received),
            entries: self.store.len() as u64,
        }
    }
}

/// The trust an entry learned now gets under a policy's trust mode and the
/// `Cache-Control` actually sent.
pub(crate) fn trusted_until(
    trust: crate::Trust,
    reuse_lifetime: Option<u64>,
    now: SystemTime,
) -> TrustedUntil {
    match trust {
        crate::Trust::MaxAge => match reuse_lifetime {
            Some(secs) if secs > 0 => TrustedUntil::At(now + Duration::from_secs(secs)),
            _ => TrustedUntil::Never,
        },
        crate::Trust::For(window) => TrustedUntil::At(now + window),
        crate::Trust::UntilInvalidated => TrustedUntil::Invalidated,
        crate::Trust::Never => TrustedUntil::Never,
    }
}

/// Whether a header value list names `*` (`Vary: *`).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for line in headers.get_all(http::header::VARY) {
        for member in line.as_bytes().split(|&b| b == b',') {
            let member = crate::headers::trim_ows(member);
            if member == b"*" {
                return None;
            }
            if let Ok(name) = HeaderName::from_bytes(member)
                && !names.contains(&name)
            {
                names.push(name);
            }
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntityTag;
    use http::HeaderValue;

    fn entry(tag: &str) -> Entry {
        Entry {
            validators: Validators::new().with_etag(EntityTag::strong(tag).unwrap()),
            headers: HeaderMap::new(),
            trusted_until: TrustedUntil::Invalidated,
            expires_after: None,
            first_seen: HttpDate::from_secs(0),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(*n, HeaderValue::from_static(v));
        }
        map
    }

    fn tag(found: Option<Found>) -> Option<String> {
        found.map(|f| f.validators.etag().unwrap().to_string())
    }

    #[test]
    fn variants_are_separated_by_host() {
        let store = Store::new(100);
        store.learn(
            "/a",
            "one.example",
            &[],
            &HeaderMap::new(),
            entry("1"),
            store.epoch("/a"),
        );
        assert_eq!(
            tag(store.lookup("/a", "one.example", &HeaderMap::new())),
            Some("\"1\"".into())
        );
        assert_eq!(
            tag(store.lookup("/a", "two.example", &HeaderMap::new())),
            None
        );
    }

    #[test]
    fn variants_are_separated_by_vary_values_normalised() {
        let store = Store::new(100);
        let vary = [http::header::ACCEPT_ENCODING];
        store.learn(
            "/a",
            "h",
            &vary,
            &headers(&[("accept-encoding", "gzip, br")]),
            entry("gz"),
            store.epoch("/a"),
        );
        store.learn(
            "/a",
            "h",
            &vary,
            &headers(&[]),
            entry("id"),
            store.epoch("/a"),
        );
        let gz = headers(&[("accept-encoding", "GZIP"), ("accept-encoding", " br")]);
        assert_eq!(tag(store.lookup("/a", "h", &gz)), Some("\"gz\"".into()));
        assert_eq!(
            tag(store.lookup("/a", "h", &HeaderMap::new())),
            Some("\"id\"".into())
        );
        assert_eq!(
            tag(store.lookup("/a", "h", &headers(&[("accept-encoding", "br")]))),
            None
        );
    }

    #[test]
    fn invalidate_removes_all_variants_and_hosts() {
        let store = Store::new(100);
        store.learn(
            "/a",
            "h1",
            &[],
            &HeaderMap::new(),
            entry("1"),
            store.epoch("/a"),
        );
        store.learn(
            "/a",
            "h2",
            &[],
            &HeaderMap::new(),
            entry("2"),
            store.epoch("/a"),
        );
        assert!(store.invalidate("/a"));
        assert!(store.lookup("/a", "h1", &HeaderMap::new()).is_none());
        assert!(store.lookup("/a", "h2", &HeaderMap::new()).is_none());
    }

    #[test]
    fn a_learn_that_started_before_an_invalidation_is_discarded() {
        let store = Store::new(100);
        let started = store.epoch("/a");
        store.invalidate("/a");
        store.learn("/a", "h", &[], &HeaderMap::new(), entry("old"), started);
        assert!(store.lookup("/a", "h", &HeaderMap::new()).is_none());
        let started = store.epoch("/a");
        store.invalidate_prefix("/zzz");
        store.learn("/a", "h", &[], &HeaderMap::new(), entry("old"), started);
        assert!(store.lookup("/a", "h", &HeaderMap::new()).is_none());
    }

    #[test]
    fn an_invalidation_of_another_stripe_does_not_discard_a_learn() {
        let store = Store::new(100);
        let other = (0..)
            .map(|i| format!("/other/{i}"))
            .find(|k| stripe_of(k) != stripe_of("/a"))
            .unwrap();
        let started = store.epoch("/a");
        store.invalidate(&other);
        store.learn("/a", "h", &[], &HeaderMap::new(), entry("new"), started);
        assert!(store.lookup("/a", "h", &HeaderMap::new()).is_some());
    }

    #[test]
    fn capacity_bounds_the_store_and_counts_evictions() {
        let store = Store::new(50);
        for i in 0..500 {
            store.learn(
                &format!("/{i}"),
                "h",
                &[],
                &HeaderMap::new(),
                entry("x"),
                store.epoch(&format!("/{i}")),
            );
        }
        assert!(store.len() <= 50, "{}", store.len());
        assert!(store.counters.evicted.load(Ordering::Relaxed) >= 450);
    }

    #[test]
    fn prefix_invalidation_keeps_other_paths() {
        let store = Store::new(100);
        store.learn(
            "/media/a",
            "h",
            &[],
            &HeaderMap::new(),
            entry("1"),
            store.epoch("/media/a"),
        );
        store.learn(
            "/live/b",
            "h",
            &[],
            &HeaderMap::new(),
            entry("2"),
            store.epoch("/live/b"),
        );
        store.invalidate_prefix("/media/");
        assert!(store.lookup("/media/a", "h", &HeaderMap::new()).is_none());
        assert!(store.lookup("/live/b", "h", &HeaderMap::new()).is_some());
    }

    #[test]
    fn vary_star_is_reported() {
        assert_eq!(vary_names(&headers(&[("vary", "accept, *")])), None);
        assert_eq!(
            vary_names(&headers(&[
                ("vary", "Accept-Encoding"),
                ("vary", "accept-encoding, origin")
            ])),
            Some(vec![http::header::ACCEPT_ENCODING, http::header::ORIGIN])
        );
    }
}
