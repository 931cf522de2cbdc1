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
    /// Of those, the ones whose hash the layer remembered from an earlier
    /// response handing out the same `Bytes` buffer (not read again).
    hash_memo_hits => HashMemoHits,
    /// Bodies that streamed through without an ETag: over the per-response
    /// limit or over the global buffer budget.
    streamed_unhashed => StreamedUnhashed,
    /// Of those, the ones that streamed because the global budget was used up.
    buffer_budget_exhausted => BufferBudgetExhausted,
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
    /// too, before this returns (queued on the bus).
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
    /// store.
    pub fn invalidate_prefix(&self, prefix: &str) {
        self.store.invalidate_prefix(prefix);
        self.refresh_gauges();
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
