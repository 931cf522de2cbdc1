//! What the layer counts, and the handle users read it and invalidate with.
//!
//! Every counter is named once, in the `counters!` list below: the list
//! makes the [`Counter`] names the request path bumps, the public [`Stats`]
//! fields and the snapshot between them, so they cannot drift apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Uri;

use crate::store::Store;

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $field:ident => $name:ident, )*) => {
        /// The name of one of the layer's counters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Counter {
            $( $(#[doc = $doc])* $name, )*
        }

        impl Counter {
            /// How many counters there are.
            pub(crate) const COUNT: usize = [$( Counter::$name, )*].len();

            /// Every counter, in the order of the list.
            #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
            pub(crate) const ALL: [Counter; Self::COUNT] = [$( Counter::$name, )*];

            /// Its name as a metric: `tower_media_cache_<field>_total`.
            #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
            pub(crate) fn metric_name(self) -> &'static str {
                match self {
                    $( Counter::$name => concat!("tower_media_cache_", stringify!($field), "_total"), )*
                }
            }

            /// Its description: the doc comment of its `Stats` field.
            #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
            pub(crate) fn description(self) -> &'static str {
                match self {
                    $( Counter::$name => concat!($($doc, "\n",)*).trim_ascii(), )*
                }
            }
        }

        /// A snapshot of the layer's counters, from [`CacheHandle::stats`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct Stats {
            $( $(#[doc = $doc])* pub $field: u64, )*
            /// Variants in the store now.
            pub entries: u64,
            /// Bytes the store's entries hold now (an estimate of everything
            /// they keep: selectors, header sets, validators), bounded by
            /// [`MediaCacheLayer::store_capacity_bytes`](crate::MediaCacheLayer::store_capacity_bytes).
            pub store_bytes: u64,
        }

        impl Counters {
            /// The counters now (`entries` and `store_bytes` are the store's
            /// to fill in).
            fn snapshot(&self) -> Stats {
                Stats {
                    $( $field: self.get(Counter::$name), )*
                    entries: 0,
                    store_bytes: 0,
                }
            }
        }
    };
}

counters! {
    /// 304s answered from the store or a probe, without the inner service.
    short_circuit_not_modified => ShortCircuitNotModified,
    /// 412s answered from the store, a probe or an internal `GET`, without
    /// calling the inner service with the request.
    short_circuit_precondition_failed => ShortCircuitPreconditionFailed,
    /// 304s the layer made from the inner service's 2xx answers.
    not_modified_from_inner => NotModifiedFromInner,
    /// 412s the layer made from the inner service's 2xx answers.
    precondition_failed_from_inner => PreconditionFailedFromInner,
    /// Variants learned.
    learned => Learned,
    /// Variants evicted to respect the capacity.
    evicted => Evicted,
    /// Variants removed by invalidation.
    invalidated => Invalidated,
    /// Probe calls.
    probes => Probes,
    /// Response bodies buffered and hashed for a content ETag.
    hashed => Hashed,
    /// Of those and of `hashed_streaming`, the ones whose hash the layer
    /// remembered from an earlier response handing out the same `Bytes`
    /// buffer (not read again).
    hash_memo_hits => HashMemoHits,
    /// Bodies that streamed through without a content ETag: `HEAD` bodies
    /// over the per-response limit or the global buffer budget, and bodies
    /// the layer chose not to hash (`.hash_large_bodies(false)`).
    streamed_unhashed => StreamedUnhashed,
    /// Bodies that streamed instead of being read first because the global
    /// buffer budget was used up.
    buffer_budget_exhausted => BufferBudgetExhausted,
    /// Bodies too large to read before the head (or refused by the budget)
    /// that were hashed to their end as they streamed.
    hashed_streaming => HashedStreaming,
    /// Streamed bodies that ended with [`ContentChanged`](crate::ContentChanged):
    /// the bytes were not those of the `ETag` the layer put in the head, or
    /// the representation ended before the range announced.
    content_changed => ContentChanged,
    /// `206` answers the layer cut from a body streaming past.
    ranges_cut_from_stream => RangesCutFromStream,
    /// Requests answered from the response to an identical request that
    /// was at the inner service when they came (a `200`, `206`, `304` or
    /// `412` for each, by its own headers), without calling it.
    coalesced => Coalesced,
    /// Requests that a trusted entry would have answered but that went to
    /// the inner service because the invalidation bus was disconnected.
    bus_disconnected_fallbacks => BusDisconnectedFallbacks,
    /// Invalidations received from other replicas over the invalidation bus
    /// and applied.
    bus_received => BusReceived,
    /// Requests not learned because their selector (path and query,
    /// authority, `Vary`'d values) or their entry is over the store's size
    /// limits, or because they carried several `Host` lines.
    not_learned_too_large => NotLearnedTooLarge,
    /// `GET`s the layer sent to the inner service to learn the current
    /// validators before letting a conditional write through.
    validator_fetches => ValidatorFetches,
    /// Cache tags left out of a tag header because the value would have
    /// gone over [`MAX_TAG_HEADER_BYTES`](crate::tags::MAX_TAG_HEADER_BYTES)
    /// (still indexed: see [`tags`](crate::tags)).
    tags_not_sent => TagsNotSent,
    /// Purges of the front tier that its [`Purger`](crate::purge::Purger)
    /// reported done.
    purged => Purged,
    /// Purge attempts that failed and were tried again.
    purge_retries => PurgeRetries,
    /// Purges given up: every attempt failed, or the purge queue was full.
    purge_failures => PurgeFailures,
    /// Requests whose variant a lookup in the shared second level
    /// (`SharedStore`, feature `redis`) found and installed in the local
    /// store.
    shared_hits => SharedHits,
    /// Lookups in the shared second level that found nothing for the
    /// request's variant.
    shared_misses => SharedMisses,
    /// Lookups in the shared second level without an answer within the
    /// lookup timeout, or that failed: the request went on as a miss.
    shared_unavailable => SharedUnavailable,
    /// Records in the shared second level that could not be read (another
    /// version's, or corrupt): ignored, as misses.
    shared_undecodable => SharedUndecodable,
    /// Variants written to the shared second level.
    shared_writes => SharedWrites,
    /// Writes to the shared second level refused because an invalidation
    /// covering the variant ran after its request began (or failed).
    shared_writes_refused => SharedWritesRefused,
}

/// The counters, shared by the service, its store and its handle.
#[derive(Debug)]
pub(crate) struct Counters {
    counts: [AtomicU64; Counter::COUNT],
    /// A gauge, not a counter: the variants in the store now.
    variants: AtomicU64,
    /// When the `metrics` gauges were last set after a learn (whole seconds
    /// since the epoch, plus one; 0 = never).
    #[cfg(feature = "metrics")]
    pub(crate) gauges_set_at: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            variants: AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            gauges_set_at: AtomicU64::new(0),
        }
    }
}

impl Counter {
    /// Whether the counter belongs to the store as a whole, not to a
    /// request's route: its metric carries no `route` label and is exported
    /// where it is counted. The others are exported by the request's
    /// exchange, with the route ([`Config::count`](crate::config::Config::count)).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn is_store_wide(self) -> bool {
        matches!(
            self,
            Counter::Evicted
                | Counter::Invalidated
                | Counter::BusReceived
                | Counter::BusDisconnectedFallbacks
                | Counter::TagsNotSent
                | Counter::Purged
                | Counter::PurgeRetries
                | Counter::PurgeFailures
                | Counter::SharedHits
                | Counter::SharedMisses
                | Counter::SharedUnavailable
                | Counter::SharedUndecodable
                | Counter::SharedWrites
                | Counter::SharedWritesRefused
        )
    }
}

impl Counters {
    /// Counts one more.
    pub(crate) fn bump(&self, counter: Counter) {
        self.add(counter, 1);
    }

    /// Counts `n` more.
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        self.counts[counter as usize].fetch_add(n, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        if counter.is_store_wide() {
            crate::metrics::count_store_wide(counter, n);
        }
    }

    /// The count so far.
    pub(crate) fn get(&self, counter: Counter) -> u64 {
        self.counts[counter as usize].load(Ordering::Relaxed)
    }

    /// Moves the variants gauge by `added - removed`, never below zero.
    pub(crate) fn count_variants(&self, added: usize, removed: usize) {
        let _ = self
            .variants
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n + added as u64).saturating_sub(removed as u64))
            });
    }

    /// The variants gauge.
    pub(crate) fn variants(&self) -> u64 {
        self.variants.load(Ordering::Relaxed)
    }
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
/// handle.invalidate_tag("album:7");
/// assert_eq!(handle.stats().entries, 0);
/// ```
#[derive(Debug, Clone)]
pub struct CacheHandle {
    pub(crate) store: Arc<Store>,
}

impl CacheHandle {
    /// Forgets a resource: every stored variant of its path, under every
    /// spelling of that path (percent-encoding, case, dot segments, repeated
    /// or trailing slashes), every query, every host and every `Vary` value.
    /// A query, scheme or authority in `uri` is ignored. Returns whether
    /// anything was stored.
    ///
    /// With an [invalidation bus](crate::bus), the other replicas are told
    /// too, before this returns (queued on the bus); with a
    /// [purger](crate::MediaCacheLayer::purger), the front tier (queued,
    /// purged in the background).
    pub fn invalidate(&self, uri: &str) -> bool {
        let found = match uri.parse::<Uri>() {
            Ok(parsed) => self.store.invalidate(parsed.path()),
            Err(_) => self.store.invalidate(uri),
        };
        self.refresh_gauges();
        found
    }

    /// Forgets every resource whose path starts with `prefix` (for example
    /// `/media/`), both compared in their normalised spelling; a prefix that
    /// ends with `/` also covers the directory itself. Costs a walk over the
    /// store. Told to the bus and the purger as [`invalidate`](Self::invalidate) is.
    pub fn invalidate_prefix(&self, prefix: &str) {
        self.store.invalidate_prefix(prefix);
        self.refresh_gauges();
    }

    /// Forgets every resource one of whose stored variants carries `tag`
    /// (from [`CachePolicy::tags`](crate::CachePolicy::tags) or the
    /// response's [`CacheTags`](crate::CacheTags); pass it as given there,
    /// it is rendered the same way, see [`tags`](crate::tags)). Every
    /// variant of such a path goes. Returns the number of variants removed
    /// here; an empty tag does nothing.
    ///
    /// Costs a look-up in the store's tag index, not a walk. Like a prefix,
    /// it discards what requests in flight were about to learn. With an
    /// [invalidation bus](crate::bus), the other replicas are told too, and
    /// with a [purger](crate::MediaCacheLayer::purger), the front tier.
    pub fn invalidate_tag(&self, tag: &str) -> usize {
        self.store.invalidate_tag(tag)
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.store.clear();
        self.refresh_gauges();
    }

    /// Whether the store may answer from its entries as far as the
    /// [invalidation bus](crate::bus) is concerned: `true` without a bus,
    /// otherwise whether the bus is connected.
    pub fn bus_connected(&self) -> bool {
        self.store.bus_connected()
    }

    /// With the `metrics` feature, sets the store's gauges to what it
    /// holds now.
    fn refresh_gauges(&self) {
        #[cfg(feature = "metrics")]
        crate::metrics::store_gauges(&self.store);
    }

    /// A snapshot of the counters (with the `metrics` feature, the store's
    /// gauges are set too).
    pub fn stats(&self) -> Stats {
        self.refresh_gauges();
        Stats {
            entries: self.store.len() as u64,
            store_bytes: self.store.bytes(),
            ..self.store.counters.snapshot()
        }
    }
}
