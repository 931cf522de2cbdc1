//! The validator store: what the layer learned from `200` answers, shared by
//! every clone of the service, bounded in bytes, and invalidated by a handle
//! or by writes.
//!
//! Resources are grouped by their normalised path ([`Key`]): every spelling
//! of a path and every query share one group, so a write through any of them
//! forgets them all (RFC 9111 §4.4 — invalidating more is always safe).
//! Within a group, each variant is told apart by its exact selector (the
//! path and query as sent, the authority, the values of the fields the
//! response named in `Vary`; see [`crate::key`]). The map itself is a
//! [`quick_cache`] sharded concurrent cache weighted by the bytes each group
//! holds, so a lookup costs one hash-map probe whatever the number of
//! entries, and memory stays within the configured capacity.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, Uri};

use crate::bus::gate::{Gate, Watch};
use crate::bus::shared::{self, Looked, Lookup, SecondLevel, SharedEpoch, SharedVariant};
use crate::bus::{BusLink, Invalidation, InvalidationBus};
use crate::handle::{Counter, Counters};
use crate::headers::HttpDate;
use crate::key::{Key, Selecting, normalize_path};
use crate::policy::TrustedUntil;
use crate::purge::Purging;
use crate::tags::{Tag, TagIndex, Tags, posting_weight};
use crate::validators::Validators;

/// What the store remembers of one variant of one resource.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) validators: Validators,
    /// The header fields a 304 must repeat (RFC 9110 §15.4.5), `Date` first.
    pub(crate) headers: HeaderMap,
    pub(crate) trusted_until: TrustedUntil,
    /// Re-render `Expires` this long after the 304's `Date`.
    pub(crate) expires_after: Option<Duration>,
    /// When the current ETag was first seen under this key.
    pub(crate) first_seen: HttpDate,
    /// When the ETag is the layer's content hash: what the service's own
    /// cheap validators said of the bytes it hashed.
    pub(crate) basis: Option<Basis>,
    /// The response's cache tags, rendered.
    pub(crate) tags: Tags,
}

/// What the service said of a representation whose content ETag the layer
/// computed. A later answer whose body is too large to read before its head
/// is sent may carry that ETag while the service still says the same
/// (verified as the bytes stream: see [`crate::stream`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Basis {
    /// The representation's length: the bytes hashed.
    pub(crate) len: u64,
    /// The service's `Last-Modified` on that answer.
    pub(crate) last_modified: Option<HttpDate>,
}

impl Entry {
    pub(crate) fn is_trusted(&self, now: SystemTime) -> bool {
        self.trusted_until.holds_at(now)
    }

    /// The bytes this entry holds on the heap and inline, estimated from
    /// what `HeaderMap` allocates per field.
    fn weight(&self) -> u64 {
        let fields: usize = self
            .headers
            .iter()
            .map(|(name, value)| FIELD_OVERHEAD + name.as_str().len() + value.len())
            .sum();
        let tags = self.validators.etag().map_or(0, |e| e.opaque().len() * 2);
        (std::mem::size_of::<Self>() + ARC_OVERHEAD + fields + tags + self.tags.weight()) as u64
    }
}

/// Bytes a `HeaderMap` spends per field besides the name and value bytes
/// (its bucket, index slot and `Bytes` handle), rounded up.
const FIELD_OVERHEAD: usize = 96;
/// An `Arc`'s counters and the allocator's rounding, rounded up.
const ARC_OVERHEAD: usize = 32;

#[derive(Debug)]
struct Variant {
    /// The field names the response's `Vary` listed.
    vary: Box<[HeaderName]>,
    /// The exact request bytes that select this variant ([`Selecting`]).
    selector: Box<[u8]>,
    entry: Arc<Entry>,
}

impl Variant {
    fn weight(&self) -> u64 {
        let names: usize = self.vary.iter().map(|n| n.as_str().len() + 32).sum();
        (std::mem::size_of::<Self>() + self.selector.len() + names) as u64 + self.entry.weight()
    }
}

#[derive(Debug)]
struct Resource {
    /// The normalised path of the group, for prefix invalidation.
    path: Box<[u8]>,
    variants: Box<[Variant]>,
    /// Everything above, in bytes: the resource's weight in the map.
    weight: u64,
    /// Set when a newer version of this resource replaces it: quick_cache
    /// reports replacements through the same hook as evictions.
    superseded: AtomicBool,
    /// The tags of all its variants: its postings in the tag index, which
    /// its weight counts.
    tags: Tags,
}

impl Resource {
    fn new(path: Box<[u8]>, variants: Vec<Variant>) -> Self {
        let tags = variants
            .iter()
            .fold(Tags::default(), |all, v| all.merged(&v.entry.tags));
        let weight = (std::mem::size_of::<Self>() + ARC_OVERHEAD + path.len()) as u64
            + variants.iter().map(Variant::weight).sum::<u64>()
            + tags.iter().map(posting_weight).sum::<u64>();
        Self {
            path,
            variants: variants.into_boxed_slice(),
            weight,
            superseded: AtomicBool::new(false),
            tags,
        }
    }

    /// Whether a prefix invalidation (normalised like paths, see
    /// [`prefix_matches`]) covers this group.
    fn under(&self, prefix: &[u8]) -> bool {
        prefix_matches(&self.path, prefix)
    }
}

/// Whether the normalised `path` lies under the normalised `prefix`: a
/// prefix of its bytes, or, for a prefix ending in `/`, the directory itself
/// or anything below it (normalised paths have no trailing slash).
fn prefix_matches(path: &[u8], prefix: &[u8]) -> bool {
    match prefix.strip_suffix(b"/") {
        Some(dir) if !dir.is_empty() => {
            path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
        }
        _ => path.starts_with(prefix),
    }
}

/// A prefix normalised like a path, keeping a trailing slash.
fn normalize_prefix(prefix: &str) -> Vec<u8> {
    let mut normal = normalize_path(prefix.as_bytes()).into_owned();
    if prefix.ends_with('/') && normal.last() != Some(&b'/') {
        normal.push(b'/');
    }
    normal
}

/// How many stripes of groups have an invalidation epoch and a write lock
/// of their own.
pub(crate) const EPOCH_STRIPES: usize = 256;

/// At most this many variants (queries × hosts × `Vary` values) are kept
/// per path group; a resource that varies on, say, `User-Agent` replaces
/// its oldest variant.
const MAX_VARIANTS: usize = 32;

/// The longest selector (path and query, authority, `Vary`'d values) the
/// store learns; requests with longer ones are not learned.
pub(crate) const MAX_SELECTOR_BYTES: usize = 8 * 1024;

/// The heaviest single entry the store learns (mostly its 304 header set).
const MAX_ENTRY_BYTES: u64 = 64 * 1024;

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    // The guarded data is `()`: a panic elsewhere cannot leave it broken.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The invalidation epochs a request started in; see [`Store::epoch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Epoch {
    stripe: usize,
    key: u64,
    global: u64,
    /// The second level's, when the store has one and it is connected.
    shared: Option<SharedEpoch>,
}

impl Epoch {
    /// Whether this epoch began after `other` (of the same key): an
    /// invalidation ran between them, and none the other way.
    pub(crate) fn is_after(&self, other: &Epoch) -> bool {
        self != other && self.key >= other.key && self.global >= other.global
    }
}

#[derive(Debug, Clone)]
struct ByteWeight;

impl quick_cache::Weighter<u64, Arc<Resource>> for ByteWeight {
    fn weight(&self, _key: &u64, resource: &Arc<Resource>) -> u64 {
        resource.weight
    }
}

#[derive(Debug, Clone)]
struct CountEvictions(Arc<Counters>, Arc<TagIndex>);

impl quick_cache::Lifecycle<u64, Arc<Resource>> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, _state: &mut (), key: u64, resource: Arc<Resource>) {
        if resource.superseded.load(Ordering::Acquire) {
            return;
        }
        if !resource.tags.is_empty() {
            // The index may not be locked in here: queued, settled later.
            self.1.evicted(key, resource.tags.clone());
        }
        self.0.add(Counter::Evicted, resource.variants.len() as u64);
        self.0.count_variants(0, resource.variants.len());
        tracing::debug!(
            variants = resource.variants.len(),
            "validator store evicted"
        );
    }
}

type Map = quick_cache::sync::Cache<
    u64,
    Arc<Resource>,
    ByteWeight,
    quick_cache::DefaultHashBuilder,
    CountEvictions,
>;

/// The shared validator store.
pub(crate) struct Store {
    map: Map,
    /// Invalidation epochs: one per stripe of groups, bumped by invalidating
    /// a group of that stripe, and one for the whole store, bumped by prefix
    /// invalidations and clears. A learn whose request started before an
    /// invalidation that covers its group is discarded, so a response
    /// produced before a write is never learned after the write's
    /// invalidation — while writes to other groups (most of them, with
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
    /// Serialises conditional writes per stripe of groups: of concurrent
    /// writes carrying the same precondition, one runs and the others see
    /// its effect (RFC 9110 §13.1.1 "lost update").
    write_locks: Box<[Arc<tokio::sync::Mutex<()>>]>,
    /// Routes and paths whose `POST`s the service answered with a 2xx, so
    /// that a failed precondition on a `POST` there is answered 412 by the
    /// layer (elsewhere the service may not accept `POST` at all).
    accepted_posts: Mutex<HashSet<u64>>,
    pub(crate) counters: Arc<Counters>,
    /// The invalidation bus: while disconnected, and across a change, no
    /// entry may answer (see [`Found::may_answer`]).
    gate: Gate,
    /// Which groups carry which tag, for [`Store::invalidate_tag`].
    tags: Arc<TagIndex>,
    /// Purges the front tier after each local invalidation, once attached.
    purging: OnceLock<Purging>,
    /// The shared second level, when the bus brought one
    /// ([`crate::bus::shared`]).
    second: OnceLock<Arc<dyn SecondLevel>>,
}

/// At most this many routes and paths are remembered as accepting `POST`;
/// past it the set starts over (forgetting only makes the layer pass more
/// `POST`s to the service).
const MAX_ACCEPTED_POSTS: usize = 4096;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("entries", &self.map.len())
            .field("bytes", &self.map.weight())
            .field("epoch", &self.global_epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A variant a lookup found.
#[derive(Debug)]
pub(crate) struct Found {
    entry: Arc<Entry>,
    /// The bus's state when the lookup began (`None` without a bus).
    watch: Option<Watch>,
}

impl Found {
    /// What was stored.
    pub(crate) fn entry(&self) -> &Entry {
        &self.entry
    }

    /// Whether the entry may answer without the inner service now: its own
    /// trust window ([`Entry::is_trusted`]), and an invalidation bus, if
    /// any, connected since the lookup began. A disconnected bus may have
    /// lost invalidations, so nothing may answer (the first refusal of an
    /// otherwise trusted entry is counted by the [`Watch`]).
    pub(crate) fn may_answer(&self, now: SystemTime) -> bool {
        self.entry.is_trusted(now) && self.watch.as_ref().is_none_or(Watch::connected_throughout)
    }
}

/// Why [`Store::learn`] did not store an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotLearned {
    /// An invalidation covering the group ran while the response was made.
    Invalidated,
    /// The selector or the entry is over the size limits.
    TooLarge,
}

impl Store {
    /// A store holding at most `capacity` bytes of entries.
    pub(crate) fn new(capacity: u64) -> Self {
        let counters = Arc::new(Counters::default());
        let tags = Arc::new(TagIndex::default());
        let capacity = capacity.max(1);
        let map = Map::with(
            (capacity / 1024).clamp(16, 1 << 20) as usize,
            capacity,
            ByteWeight,
            quick_cache::DefaultHashBuilder::default(),
            CountEvictions(counters.clone(), tags.clone()),
        );
        Self {
            map,
            epochs: (0..EPOCH_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            global_epoch: AtomicU64::new(0),
            stripe_locks: (0..EPOCH_STRIPES).map(|_| Mutex::new(())).collect(),
            global_lock: RwLock::new(()),
            write_locks: (0..EPOCH_STRIPES)
                .map(|_| Arc::new(tokio::sync::Mutex::new(())))
                .collect(),
            accepted_posts: Mutex::new(HashSet::new()),
            counters,
            gate: Gate::default(),
            tags,
            purging: OnceLock::new(),
            second: OnceLock::new(),
        }
    }

    /// Attaches the purger of the front tier: every invalidation made here
    /// (not those received from other replicas) is handed to it too.
    ///
    /// # Panics
    ///
    /// When the store already has a purger.
    pub(crate) fn attach_purger(&self, purging: Purging) {
        if self.purging.set(purging).is_err() {
            panic!("this validator store already has a purger");
        }
    }

    /// Attaches an invalidation bus: from now on the store is disconnected
    /// (answers nothing) until the bus reports it connected, and publishes
    /// its own invalidations on it.
    ///
    /// # Panics
    ///
    /// When the store already has a bus.
    pub(crate) fn attach_bus(self: &Arc<Self>, bus: Arc<dyn InvalidationBus>) {
        self.gate.attach(bus, BusLink::new(Arc::downgrade(self)));
    }

    /// Gives the store a shared second level (once; later calls are
    /// ignored).
    pub(crate) fn attach_second_level(&self, second: Arc<dyn SecondLevel>) {
        let _ = self.second.set(second);
    }

    /// Whether the invalidation bus is connected (always, without one).
    pub(crate) fn bus_connected(&self) -> bool {
        self.gate.connected()
    }

    /// Records the bus's state; returns whether it changed. On a change to
    /// connected, the store is cleared first: it may have missed
    /// invalidations while disconnected. (`clear_here` bumps the epoch, so a
    /// learn that started while disconnected is discarded.)
    pub(crate) fn set_bus_connected(&self, connected: bool) -> bool {
        self.gate.set_connected(connected, || self.clear_here())
    }

    /// Applies an invalidation received from another replica, without
    /// publishing it.
    pub(crate) fn apply_remote(&self, invalidation: &Invalidation) {
        self.counters.bump(Counter::BusReceived);
        match invalidation {
            Invalidation::Key(path) => {
                self.invalidate_here(Key::of_path(path.as_bytes()));
            }
            Invalidation::Prefix(prefix) => self.invalidate_prefix_here(prefix),
            Invalidation::Tag(tag) => {
                self.invalidate_tag_here(tag);
            }
            Invalidation::Clear => self.clear_here(),
        }
    }

    /// Tells the other replicas (the bus) and the front tier (the purger)
    /// about a local invalidation. Neither blocks: both queue.
    fn publish(&self, invalidation: Invalidation) {
        if let Some(purging) = self.purging.get() {
            purging.send(&invalidation, &self.counters);
        }
        self.gate.publish(invalidation);
    }

    /// Changes how many bytes the store keeps, evicting if it shrinks.
    pub(crate) fn set_capacity(&self, bytes: u64) {
        self.map.set_capacity(bytes.max(1));
        self.settle_evictions();
    }

    /// Takes the groups the map evicted out of the tag index.
    fn settle_evictions(&self) {
        self.tags
            .settle(|key| self.map.peek(&key).map(|r| r.tags.clone()));
    }

    /// The invalidation epochs covering `key`, to pass back to
    /// [`Store::learn`].
    pub(crate) fn epoch(&self, key: Key) -> Epoch {
        let stripe = key.stripe(EPOCH_STRIPES);
        Epoch {
            stripe,
            key: self.epochs[stripe].load(Ordering::SeqCst),
            global: self.global_epoch.load(Ordering::SeqCst),
            shared: self.second.get().and_then(|second| second.epoch(stripe)),
        }
    }

    fn epoch_moved(&self, started: Epoch) -> bool {
        self.epochs[started.stripe].load(Ordering::SeqCst) != started.key
            || self.global_epoch.load(Ordering::SeqCst) != started.global
    }

    /// The lock that serialises conditional writes to `key`'s stripe.
    pub(crate) fn write_lock(&self, key: Key) -> Arc<tokio::sync::Mutex<()>> {
        self.write_locks[key.stripe(EPOCH_STRIPES)].clone()
    }

    /// Records that the service answered a `POST` under `scope` (a route
    /// rule or a path group, see `service.rs`) with a 2xx.
    pub(crate) fn accept_post(&self, scope: u64) {
        let mut accepted = self
            .accepted_posts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if accepted.len() >= MAX_ACCEPTED_POSTS && !accepted.contains(&scope) {
            accepted.clear();
        }
        accepted.insert(scope);
    }

    /// Whether [`Store::accept_post`] recorded `scope`.
    pub(crate) fn accepts_post(&self, scope: u64) -> bool {
        self.accepted_posts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&scope)
    }

    /// The variant of `key` that this request selects.
    pub(crate) fn lookup(&self, key: Key, request: Selecting<'_>) -> Option<Found> {
        let watch = self.gate.watch(&self.counters);
        let resource = self.map.get(&key.hash())?;
        resource
            .variants
            .iter()
            .find(|variant| request.matches(&variant.vary, &variant.selector))
            .map(|variant| Found {
                entry: variant.entry.clone(),
                watch,
            })
    }

    /// Stores what was learned from a `200`, replacing the variant the
    /// request selects (and every variant learned under another `Vary`: the
    /// resource changed how it varies). `vary` lists the response's `Vary`
    /// field names; `started` is [`Store::epoch`] read when the request
    /// arrived.
    ///
    /// A variant new to this store is written to the second level, if any,
    /// in the background.
    pub(crate) fn learn(
        &self,
        key: Key,
        request: Selecting<'_>,
        vary: &[HeaderName],
        entry: Entry,
        started: Epoch,
    ) -> Result<(), NotLearned> {
        let shared = self.put(key, request, vary, entry, started)?;
        self.counters.bump(Counter::Learned);
        tracing::debug!(uri = %request.uri(), "validator learned");
        if let (Some(second), Some(started), Some(variant)) =
            (self.second.get(), started.shared, shared)
        {
            second.write(key, variant, started, self.counters.clone());
        }
        Ok(())
    }

    /// Inserts a variant unless an invalidation covering its group ran since
    /// `started`. Returns it for the second level when it is new: an entry
    /// trusted until invalidated that replaces one with the same validators
    /// is already there.
    fn put(
        &self,
        key: Key,
        request: Selecting<'_>,
        vary: &[HeaderName],
        entry: Entry,
        started: Epoch,
    ) -> Result<Option<SharedVariant>, NotLearned> {
        let Some(selector) = request.encode(vary, MAX_SELECTOR_BYTES) else {
            return Err(self.too_large(request.uri()));
        };
        let variant = Variant {
            vary: vary.into(),
            selector,
            entry: Arc::new(entry),
        };
        if variant.weight() > MAX_ENTRY_BYTES {
            return Err(self.too_large(request.uri()));
        }
        let path: Box<[u8]> = normalize_path(request.uri().path().as_bytes()).into();
        let _global = self.global_lock.read().unwrap_or_else(|e| e.into_inner());
        let _stripe = lock(&self.stripe_locks[started.stripe]);
        if self.epoch_moved(started) {
            // An invalidation covering this group ran while the response was
            // produced: what it says may be older than the write.
            tracing::debug!(uri = %request.uri(), "learn discarded: invalidated while in flight");
            return Err(NotLearned::Invalidated);
        }
        let mut variants: Vec<Variant> = Vec::with_capacity(2);
        let mut replaced = 0;
        let mut existing_tags = None;
        let mut known = false;
        if let Some(existing) = self.map.get(&key.hash()) {
            known = existing.variants.iter().any(|v| {
                v.vary == variant.vary
                    && v.selector == variant.selector
                    && v.entry.validators == variant.entry.validators
                    && v.entry.trusted_until == TrustedUntil::Invalidated
                    && variant.entry.trusted_until == TrustedUntil::Invalidated
            });
            existing.superseded.store(true, Ordering::Release);
            replaced = existing.variants.len();
            existing_tags = Some(existing.tags.clone());
            variants.extend(
                existing
                    .variants
                    .iter()
                    .filter(|v| v.vary == variant.vary && v.selector != variant.selector)
                    .map(|v| Variant {
                        vary: v.vary.clone(),
                        selector: v.selector.clone(),
                        entry: v.entry.clone(),
                    }),
            );
        }
        if variants.len() >= MAX_VARIANTS {
            variants.remove(0);
        }
        let shared = (self.second.get().is_some() && !known).then(|| SharedVariant {
            vary: variant.vary.clone(),
            selector: variant.selector.clone(),
            entry: variant.entry.clone(),
        });
        variants.push(variant);
        self.counters.count_variants(variants.len(), replaced);
        let resource = Arc::new(Resource::new(path, variants));
        let tags = resource.tags.clone();
        self.map.insert(key.hash(), resource);
        // The index follows the map: the replaced group's tags that the new
        // one lacks go, the new one's come (after the insert, so a
        // concurrent settling sees the group that carries them). The same
        // tags again (the usual re-learn) are posted already.
        if existing_tags.as_ref() != Some(&tags) {
            if let Some(old) = &existing_tags {
                self.tags
                    .remove(key.hash(), old.iter().filter(|t| !tags.contains(t)));
            }
            self.tags.add(key.hash(), tags.iter());
        }
        self.settle_evictions();
        Ok(shared)
    }

    /// Whether the store has a shared second level.
    pub(crate) fn shares(&self) -> bool {
        self.second.get().is_some()
    }

    /// Starts looking `key` up in the second level, when there is one and
    /// the bus is connected (else nothing of it may answer anyway).
    pub(crate) fn shared_lookup(&self, key: Key) -> Option<Lookup> {
        let second = self.second.get()?;
        if !self.gate.connected() {
            return None;
        }
        second.lookup(key)
    }

    /// Installs what a second-level lookup found for the request's variant
    /// — unless an invalidation covering its group ran since `started`, when
    /// the request began — and returns it as a local lookup does. An
    /// unreadable record, or none for this variant, is a miss.
    pub(crate) fn install(
        &self,
        key: Key,
        request: Selecting<'_>,
        looked: Looked,
        started: Epoch,
    ) -> Option<Found> {
        let records = match looked {
            Looked::Found(records) => records,
            Looked::Failed => {
                self.counters.bump(Counter::SharedUnavailable);
                return None;
            }
        };
        let mut undecodable = 0;
        let found = records
            .iter()
            .find_map(|record| match shared::decode(record) {
                Ok(decoded) if request.matches(&decoded.vary, &decoded.selector) => Some(decoded),
                Ok(_) => None,
                Err(_) => {
                    undecodable += 1;
                    None
                }
            });
        if undecodable > 0 {
            // Counted; logged at debug only: records of another version
            // would otherwise log at the request rate during an upgrade.
            self.counters.add(Counter::SharedUndecodable, undecodable);
            tracing::debug!(
                undecodable,
                "unreadable records in the shared validator store: ignored"
            );
        }
        let Some(decoded) = found else {
            self.counters.bump(Counter::SharedMisses);
            return None;
        };
        self.put(key, request, &decoded.vary, decoded.entry, started)
            .ok()?;
        self.counters.bump(Counter::SharedHits);
        tracing::debug!(uri = %request.uri(), "validator installed from the shared store");
        self.lookup(key, request)
    }

    fn too_large(&self, uri: &Uri) -> NotLearned {
        self.counters.bump(Counter::NotLearnedTooLarge);
        tracing::debug!(
            path_bytes = uri.path().len(),
            "not learned: request or entry over the store's size limits"
        );
        NotLearned::TooLarge
    }

    /// Removes every variant of a path's group — every spelling, query,
    /// host and `Vary` value — and publishes that on the invalidation bus.
    pub(crate) fn invalidate(&self, path: &str) -> bool {
        // A query, if the caller left one, does not narrow the group.
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let removed = self.invalidate_here(Key::of_path(path.as_bytes()));
        self.publish(Invalidation::Key(path.into()));
        removed
    }

    /// After a `2xx`/`3xx` answer to an unsafe method, RFC 9111 §4.4:
    /// invalidates the target and the `Location` / `Content-Location`
    /// references of the answer that are on the request's host (`authority`),
    /// however they are spelled.
    pub(crate) fn invalidate_after_write(
        &self,
        target: &Uri,
        authority: &[u8],
        response: &HeaderMap,
    ) {
        self.invalidate(target.path());
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            for value in response.get_all(&name) {
                if let Some(path) = crate::key::same_host_path(value.as_bytes(), target, authority)
                {
                    self.invalidate(&path);
                }
            }
        }
    }

    fn invalidate_here(&self, key: Key) -> bool {
        let stripe = key.stripe(EPOCH_STRIPES);
        let _stripe = lock(&self.stripe_locks[stripe]);
        self.epochs[stripe].fetch_add(1, Ordering::SeqCst);
        let removed = self.map.remove(&key.hash());
        if let Some((_, resource)) = &removed {
            self.tags.remove(key.hash(), resource.tags.iter());
            self.count_invalidated(resource.variants.len());
        }
        tracing::debug!(removed = removed.is_some(), "invalidated");
        removed.is_some()
    }

    /// Removes a group without bumping the epoch: for a `404`/`410` seen on
    /// a `GET`, which says the resource is gone but is no write to order
    /// against.
    pub(crate) fn forget(&self, key: Key) {
        if let Some((_, resource)) = self.map.remove(&key.hash()) {
            self.tags.remove(key.hash(), resource.tags.iter());
            self.count_invalidated(resource.variants.len());
        }
    }

    /// Removes every group whose normalised path starts with `prefix`
    /// (normalised the same way), and publishes that on the invalidation
    /// bus.
    pub(crate) fn invalidate_prefix(&self, prefix: &str) {
        self.invalidate_prefix_here(prefix);
        self.publish(Invalidation::Prefix(prefix.into()));
    }

    fn invalidate_prefix_here(&self, prefix: &str) {
        let prefix_bytes = normalize_prefix(prefix);
        let _global = self.global_lock.write().unwrap_or_else(|e| e.into_inner());
        self.global_epoch.fetch_add(1, Ordering::SeqCst);
        let removed = AtomicU64::new(0);
        let untagged: Mutex<Vec<(u64, Tags)>> = Mutex::new(Vec::new());
        self.map.retain(|&key, resource| {
            let keep = !resource.under(&prefix_bytes);
            if !keep {
                removed.fetch_add(resource.variants.len() as u64, Ordering::Relaxed);
                if !resource.tags.is_empty() {
                    untagged
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((key, resource.tags.clone()));
                }
            }
            keep
        });
        for (key, tags) in untagged.into_inner().unwrap_or_else(|e| e.into_inner()) {
            self.tags.remove(key, tags.iter());
        }
        let removed = removed.into_inner();
        self.count_invalidated(removed as usize);
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
        self.tags.clear();
        self.count_invalidated(count);
        tracing::debug!(removed = count, "validator store cleared");
    }

    /// Removes every group one of whose variants carries `tag` (as given
    /// by the user: rendered here, see [`crate::tags`]), and publishes that
    /// on the invalidation bus. Returns the variants removed.
    pub(crate) fn invalidate_tag(&self, tag: &str) -> usize {
        let Some(tag) = crate::tags::render(tag) else {
            return 0;
        };
        let removed = self.invalidate_tag_here(&tag);
        self.publish(Invalidation::Tag(tag.to_string()));
        removed
    }

    /// Removes the groups carrying the rendered `tag`. Store-wide like a
    /// prefix: a learn in flight may carry the tag without being indexed
    /// yet, so every learn in flight is discarded (the global epoch).
    fn invalidate_tag_here(&self, tag: &str) -> usize {
        let _global = self.global_lock.write().unwrap_or_else(|e| e.into_inner());
        self.global_epoch.fetch_add(1, Ordering::SeqCst);
        self.settle_evictions();
        let mut removed = 0;
        for key in self.tags.keys(tag) {
            match self
                .map
                .remove_if(&key, |resource| resource.tags.contains(tag))
            {
                Some((_, resource)) => {
                    self.tags.remove(key, resource.tags.iter());
                    removed += resource.variants.len();
                }
                // Replaced by a group without the tag since: not posted.
                None => self.tags.remove(key, [Tag::from(tag)].iter()),
            }
        }
        self.count_invalidated(removed);
        tracing::debug!(tag, removed, "invalidated by tag");
        removed
    }

    /// (tags, postings) in the tag index (tests).
    #[cfg(test)]
    pub(crate) fn tag_index_size(&self) -> (usize, usize) {
        self.settle_evictions();
        self.tags.size()
    }

    fn count_invalidated(&self, n: usize) {
        self.counters.add(Counter::Invalidated, n as u64);
        self.counters.count_variants(0, n);
    }

    /// Variants stored: a gauge kept by every insert and removal, O(1).
    pub(crate) fn len(&self) -> usize {
        self.counters.variants() as usize
    }

    /// Bytes held by the entries: the map's total weight, O(shards).
    pub(crate) fn bytes(&self) -> u64 {
        self.map.weight()
    }
}

#[cfg(test)]
impl Store {
    /// Learns `entry` for `path` with no `Host` and no `Vary` (unit tests).
    pub(crate) fn learn_path(&self, path: &str, entry: Entry) {
        let uri: Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let key = Key::of(&uri);
        let request = Selecting::new(&uri, &headers, false);
        self.learn(key, request, &[], entry, self.epoch(key))
            .unwrap();
    }

    /// Looks `path` up with no `Host` and no other field (unit tests).
    pub(crate) fn lookup_path(&self, path: &str) -> Option<Found> {
        let uri: Uri = path.parse().unwrap();
        let headers = HeaderMap::new();
        let request = Selecting::new(&uri, &headers, false);
        self.lookup(Key::of(&uri), request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EntityTag;
    use http::HeaderValue;

    pub(crate) fn entry(tag: &str) -> Entry {
        Entry {
            validators: Validators::new().with_etag(EntityTag::strong(tag).unwrap()),
            headers: HeaderMap::new(),
            trusted_until: TrustedUntil::Invalidated,
            expires_after: None,
            first_seen: HttpDate::from_secs(0),
            basis: None,
            tags: Tags::default(),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(*n, HeaderValue::from_static(v));
        }
        map
    }

    fn at<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Selecting<'a> {
        Selecting::new(uri, headers, false)
    }

    fn learn(store: &Store, uri: &str, h: &HeaderMap, vary: &[HeaderName], tag: &str) {
        let uri: Uri = uri.parse().unwrap();
        let key = Key::of(&uri);
        store
            .learn(key, at(&uri, h), vary, entry(tag), store.epoch(key))
            .unwrap();
    }

    fn lookup(store: &Store, uri: &str, h: &HeaderMap) -> Option<String> {
        let uri: Uri = uri.parse().unwrap();
        store
            .lookup(Key::of(&uri), at(&uri, h))
            .map(|f| f.entry().validators.etag().unwrap().to_string())
    }

    #[test]
    fn variants_are_separated_by_host() {
        let store = Store::new(1 << 20);
        let one = headers(&[("host", "one.example")]);
        learn(&store, "/a", &one, &[], "1");
        assert_eq!(lookup(&store, "/a", &one), Some("\"1\"".into()));
        assert_eq!(
            lookup(&store, "/a", &headers(&[("host", "two.example")])),
            None
        );
        assert_eq!(lookup(&store, "/a", &HeaderMap::new()), None);
    }

    #[test]
    fn variants_are_separated_by_exact_vary_values() {
        let store = Store::new(1 << 20);
        let vary = [http::header::ACCEPT_ENCODING];
        learn(
            &store,
            "/a",
            &headers(&[("accept-encoding", "gzip, br")]),
            &vary,
            "gz",
        );
        learn(&store, "/a", &headers(&[]), &vary, "id");
        let gz = headers(&[("accept-encoding", "gzip, br")]);
        assert_eq!(lookup(&store, "/a", &gz), Some("\"gz\"".into()));
        assert_eq!(
            lookup(&store, "/a", &HeaderMap::new()),
            Some("\"id\"".into())
        );
        for other in [
            headers(&[("accept-encoding", "GZIP, br")]),
            headers(&[("accept-encoding", "gzip,br")]),
            headers(&[("accept-encoding", "gzip"), ("accept-encoding", "br")]),
            headers(&[("accept-encoding", "")]),
            headers(&[("accept-encoding", "br")]),
        ] {
            assert_eq!(lookup(&store, "/a", &other), None, "{other:?}");
        }
    }

    #[test]
    fn a_new_vary_replaces_variants_learned_under_another() {
        let store = Store::new(1 << 20);
        learn(&store, "/a", &HeaderMap::new(), &[], "plain");
        let vary = [http::header::ACCEPT_LANGUAGE];
        let fr = headers(&[("accept-language", "fr")]);
        learn(&store, "/a", &fr, &vary, "fr");
        assert_eq!(lookup(&store, "/a", &HeaderMap::new()), None);
        assert_eq!(lookup(&store, "/a", &fr), Some("\"fr\"".into()));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn queries_are_variants_of_one_group() {
        let store = Store::new(1 << 20);
        let none = HeaderMap::new();
        learn(&store, "/a?v=1", &none, &[], "1");
        learn(&store, "/a", &none, &[], "0");
        assert_eq!(lookup(&store, "/a?v=1", &none), Some("\"1\"".into()));
        assert_eq!(lookup(&store, "/a", &none), Some("\"0\"".into()));
        assert_eq!(lookup(&store, "/a?v=2", &none), None);
        assert_eq!(
            lookup(&store, "/%61", &none),
            None,
            "spellings never answer each other"
        );
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn invalidate_removes_every_spelling_query_host_and_variant() {
        const LEARNED: [(&str, &str); 4] = [
            ("/a", "h1"),
            ("/a?v=1", "h2"),
            ("/%61/", "h1"),
            ("/A", "h3"),
        ];
        let store = Store::new(1 << 20);
        let learn_all = |store: &Store| {
            for (uri, host) in LEARNED {
                learn(store, uri, &headers(&[("host", host)]), &[], uri);
            }
        };
        learn_all(&store);
        assert_eq!(store.len(), 4);
        for spelling in ["/a?x=2", "/%41", "//a/", "/b/../a"] {
            learn_all(&store);
            assert!(store.invalidate(spelling), "{spelling}");
            for (uri, host) in LEARNED {
                assert_eq!(lookup(&store, uri, &headers(&[("host", host)])), None);
            }
            assert_eq!(store.len(), 0);
        }
    }

    #[test]
    fn a_learn_that_started_before_an_invalidation_is_discarded() {
        let store = Store::new(1 << 20);
        let uri: Uri = "/a".parse().unwrap();
        let none = HeaderMap::new();
        let key = Key::of(&uri);
        let started = store.epoch(key);
        store.invalidate("/a?other=query");
        assert_eq!(
            store.learn(key, at(&uri, &none), &[], entry("old"), started),
            Err(NotLearned::Invalidated)
        );
        assert!(store.lookup_path("/a").is_none());
        let started = store.epoch(key);
        store.invalidate_prefix("/zzz");
        assert_eq!(
            store.learn(key, at(&uri, &none), &[], entry("old"), started),
            Err(NotLearned::Invalidated)
        );
        assert!(store.lookup_path("/a").is_none());
    }

    #[test]
    fn an_invalidation_of_another_stripe_does_not_discard_a_learn() {
        let store = Store::new(1 << 20);
        let a = Key::of_path(b"/a");
        let other = (0..)
            .map(|i| format!("/other/{i}"))
            .find(|k| Key::of_path(k.as_bytes()).stripe(EPOCH_STRIPES) != a.stripe(EPOCH_STRIPES))
            .unwrap();
        let uri: Uri = "/a".parse().unwrap();
        let none = HeaderMap::new();
        let started = store.epoch(a);
        store.invalidate(&other);
        store
            .learn(a, at(&uri, &none), &[], entry("new"), started)
            .unwrap();
        assert!(store.lookup_path("/a").is_some());
    }

    #[test]
    fn capacity_bounds_the_bytes_held_and_counts_evictions() {
        let store = Store::new(64 * 1024);
        for i in 0..2000 {
            store.learn_path(&format!("/{i}?{}", "q".repeat(500)), entry("x"));
        }
        assert!(store.bytes() <= 64 * 1024, "{}", store.bytes());
        assert!(store.len() < 200, "{}", store.len());
        assert!(store.counters.get(Counter::Evicted) >= 1800);
        assert_eq!(
            store.len() as u64,
            2000 - store.counters.get(Counter::Evicted)
        );
    }

    #[test]
    fn oversized_selectors_and_entries_are_not_learned() {
        let store = Store::new(1 << 30);
        let long: Uri = format!("/a?{}", "q".repeat(MAX_SELECTOR_BYTES))
            .parse()
            .unwrap();
        let none = HeaderMap::new();
        let key = Key::of(&long);
        assert_eq!(
            store.learn(key, at(&long, &none), &[], entry("x"), store.epoch(key)),
            Err(NotLearned::TooLarge)
        );
        let vary = [http::header::ACCEPT_LANGUAGE];
        let mut big = HeaderMap::new();
        big.insert(
            "accept-language",
            HeaderValue::from_str(&"x".repeat(MAX_SELECTOR_BYTES)).unwrap(),
        );
        let short: Uri = "/a".parse().unwrap();
        assert_eq!(
            store.learn(key, at(&short, &big), &vary, entry("x"), store.epoch(key)),
            Err(NotLearned::TooLarge)
        );
        let mut heavy = entry("x");
        heavy.headers.insert(
            "x-big",
            HeaderValue::from_str(&"y".repeat(MAX_ENTRY_BYTES as usize)).unwrap(),
        );
        assert_eq!(
            store.learn(key, at(&short, &none), &[], heavy, store.epoch(key)),
            Err(NotLearned::TooLarge)
        );
        assert_eq!(store.len(), 0);
        assert_eq!(store.counters.get(Counter::NotLearnedTooLarge), 3);
    }

    #[test]
    fn prefix_invalidation_keeps_other_paths() {
        let store = Store::new(1 << 20);
        store.learn_path("/media/a", entry("1"));
        store.learn_path("/media", entry("dir"));
        store.learn_path("/mediaX/b", entry("x"));
        store.learn_path("/live/b", entry("2"));
        store.invalidate_prefix("/Media/");
        assert!(store.lookup_path("/media/a").is_none());
        assert!(store.lookup_path("/media").is_none());
        assert!(store.lookup_path("/mediaX/b").is_some());
        assert!(store.lookup_path("/live/b").is_some());
        store.invalidate_prefix("/li");
        assert!(store.lookup_path("/live/b").is_none());
    }

    fn tagged(etag: &str, tags: &[&str]) -> Entry {
        Entry {
            tags: Tags::new(tags),
            ..entry(etag)
        }
    }

    #[test]
    fn invalidate_tag_removes_every_group_carrying_it_and_no_other() {
        let store = Store::new(1 << 20);
        let none = HeaderMap::new();
        learn(&store, "/a", &none, &[], "a");
        store.learn_path("/b?v=1", tagged("b1", &["album 7", "owner:1"]));
        store.learn_path("/b?v=2", tagged("b2", &[]));
        store.learn_path("/c", tagged("c", &["owner:1"]));
        store.learn_path("/d", tagged("d", &["album 7"]));
        assert_eq!(store.invalidate_tag(""), 0);
        assert_eq!(
            store.invalidate_tag("album%207"),
            0,
            "rendered once, not twice"
        );
        assert_eq!(
            store.invalidate_tag("album 7"),
            3,
            "both variants of /b, and /d"
        );
        for gone in ["/b?v=1", "/b?v=2", "/d"] {
            assert!(store.lookup_path(gone).is_none(), "{gone}");
        }
        assert!(store.lookup_path("/a").is_some());
        assert!(store.lookup_path("/c").is_some());
        assert_eq!(store.tag_index_size(), (1, 1), "only owner:1 -> /c is left");
        assert_eq!(store.invalidate_tag("album 7"), 0);
        assert_eq!(store.invalidate_tag("owner:1"), 1);
        assert_eq!(store.tag_index_size(), (0, 0));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_group_learned_again_with_other_tags_leaves_no_posting_behind() {
        let store = Store::new(1 << 20);
        store.learn_path("/a", tagged("1", &["old", "kept"]));
        store.learn_path("/a", tagged("2", &["new", "kept"]));
        assert_eq!(store.tag_index_size(), (2, 2));
        assert_eq!(store.invalidate_tag("old"), 0);
        assert!(store.lookup_path("/a").is_some());
        // Another variant keeps its own tags: the group carries both.
        store.learn_path("/a?v=2", tagged("3", &["other"]));
        assert_eq!(store.tag_index_size(), (3, 3));
        store.learn_path("/a?v=2", tagged("4", &[]));
        assert_eq!(store.tag_index_size(), (2, 2));
        assert_eq!(store.invalidate_tag("kept"), 2);
        assert_eq!(store.tag_index_size(), (0, 0));
        // Key, prefix, forget and clear take their postings along.
        store.learn_path("/k", tagged("k", &["t"]));
        store.invalidate("/k");
        store.learn_path("/p/1", tagged("p", &["t"]));
        store.invalidate_prefix("/p/");
        store.learn_path("/f", tagged("f", &["t"]));
        store.forget(Key::of_path(b"/f"));
        assert_eq!(store.tag_index_size(), (0, 0));
        store.learn_path("/c", tagged("c", &["t"]));
        store.clear();
        assert_eq!(store.tag_index_size(), (0, 0));
    }

    #[test]
    fn the_tag_index_is_bounded_by_the_capacity_and_follows_evictions() {
        let store = Store::new(64 * 1024);
        for i in 0..2000 {
            store.learn_path(
                &format!("/{i}"),
                tagged("x", &[&format!("media:{i}"), "all", &"long".repeat(50)]),
            );
        }
        let (tags, postings) = store.tag_index_size();
        let resident = store.len();
        assert!(store.bytes() <= 64 * 1024, "{}", store.bytes());
        assert!(resident < 200, "{resident}");
        assert_eq!(
            tags,
            resident + 2,
            "one per resident media, plus the shared two"
        );
        assert_eq!(postings, 3 * resident);
        assert_eq!(store.invalidate_tag("all"), resident);
        assert_eq!(store.tag_index_size(), (0, 0));
    }

    #[test]
    fn tags_count_in_an_entrys_weight_and_size_limit() {
        let store = Store::new(1 << 30);
        store.learn_path("/plain", entry("x"));
        let plain = store.bytes();
        store.learn_path("/tagged", tagged("x", &["t".repeat(1000).as_str()]));
        assert!(
            store.bytes() - plain >= plain + 2000,
            "{} vs {plain}",
            store.bytes()
        );
        let many: Vec<String> = (0..200)
            .map(|i| format!("{i}{}", "t".repeat(400)))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let uri: Uri = "/heavy".parse().unwrap();
        let none = HeaderMap::new();
        let key = Key::of(&uri);
        assert_eq!(
            store.learn(
                key,
                at(&uri, &none),
                &[],
                tagged("x", &many),
                store.epoch(key)
            ),
            Err(NotLearned::TooLarge)
        );
    }

    #[test]
    fn a_tag_invalidation_discards_learns_in_flight() {
        let store = Store::new(1 << 20);
        let uri: Uri = "/a".parse().unwrap();
        let none = HeaderMap::new();
        let key = Key::of(&uri);
        let started = store.epoch(key);
        store.invalidate_tag("t");
        assert_eq!(
            store.learn(key, at(&uri, &none), &[], tagged("old", &["t"]), started),
            Err(NotLearned::Invalidated)
        );
        assert_eq!(store.tag_index_size(), (0, 0));
    }

    #[test]
    fn huge_lifetimes_saturate_instead_of_overflowing() {
        let now = SystemTime::now();
        assert!(matches!(
            crate::Trust::MaxAge.until(Some(u64::MAX), now),
            TrustedUntil::At(t) if t > now
        ));
        assert!(matches!(
            crate::Trust::For(Duration::MAX).until(None, now),
            TrustedUntil::At(t) if t > now
        ));
    }
}
