//! What a [`MediaCache`](crate::MediaCache) is configured with: built by
//! [`MediaCacheLayer`](crate::MediaCacheLayer), shared by every clone of the
//! service and read by its response futures.

use std::sync::Arc;
use std::time::SystemTime;

use http::Method;

use crate::body::Budget;
use crate::cache_status::CacheName;
use crate::handle::Counter;
use crate::policy::CachePolicy;
use crate::rules::RouteMatch;
use crate::rules::Rules;
use crate::store::Store;
use crate::tags::TagHeader;
use crate::validators::HashMemo;

pub(crate) type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Everything a [`MediaCache`] needs, shared by all its clones.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) rules: Rules,
    pub(crate) max_buffer: u64,
    pub(crate) budget: Arc<Budget>,
    pub(crate) store: Arc<Store>,
    pub(crate) clock: Clock,
    /// `Some` when fingerprinted URLs are on: the policy for verified ones.
    pub(crate) fingerprints: Option<CachePolicy>,
    /// The layer is the only authority on validators.
    pub(crate) authoritative: bool,
    /// `X-Forwarded-Host` and `Forwarded` select store variants.
    pub(crate) forwarded_host: bool,
    /// Methods whose failed preconditions the layer answers with 412 alone.
    pub(crate) write_methods: Vec<Method>,
    /// Learn the current validators before a conditional write when none is
    /// trusted.
    pub(crate) verify_writes: bool,
    /// A `HEAD` answered without a body to hash learns its validators with
    /// an internal `GET`.
    pub(crate) learn_head: bool,
    /// Bodies too large to read first are hashed as they stream, and their
    /// learned tag put on later answers (verified as they stream).
    pub(crate) hash_large: bool,
    /// Identical `GET`s wait for the one at the inner service.
    pub(crate) coalesce: bool,
    /// How long a waiter waits before it calls the service itself.
    pub(crate) coalesce_timeout: std::time::Duration,
    /// The flights in progress, shared by every clone of the service.
    pub(crate) flights: Arc<crate::coalesce::Flights>,
    /// Content hashes remembered by buffer identity.
    pub(crate) hash_memo: Arc<HashMemo>,
    /// The headers a response's cache tags are written in.
    pub(crate) tag_headers: Vec<TagHeader>,
    /// The layer's name in `Cache-Status`, when it adds its member.
    pub(crate) cache_status: Option<CacheName>,
}

impl Config {
    /// Whether a conditional request with this method is a write whose
    /// failed precondition the layer answers 412 itself (RFC 9110 §13.2.1:
    /// only when the service would otherwise answer 2xx): a configured
    /// write method, or a `POST` where the service has answered `POST`s
    /// with a 2xx (`scope` is the route rule or the path group).
    pub(crate) fn guards_write(&self, method: &Method, scope: u64) -> bool {
        self.write_methods.contains(method)
            || (method == Method::POST && self.store.accepts_post(scope))
    }

    /// Counts one more of `counter` for a request that matched `route`
    /// (the `route` label of its metric, with the `metrics` feature).
    pub(crate) fn count(&self, counter: Counter, route: RouteMatch) {
        self.store.counters.bump(counter);
        self.export(counter, route);
    }

    /// Exports one more of `counter` for `route` as a metric, without
    /// counting it in [`Stats`](crate::Stats): for what the store counted
    /// itself without knowing the route (learned, not learned).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn export(&self, counter: Counter, route: RouteMatch) {
        #[cfg(feature = "metrics")]
        crate::metrics::count(counter, self.rules.pattern(route));
    }
}
