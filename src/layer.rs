use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Method;
use tower_layer::Layer;

use crate::body::Budget;
use crate::config::Config;
use crate::handle::CacheHandle;
use crate::inner::Wiring;
use crate::policy::CachePolicy;
use crate::rules::{Rule, Rules};
use crate::service::MediaCache;
use crate::store::Store;
use crate::tags::TagHeader;
use crate::validators::HashMemo;

/// Default per-response limit on bytes buffered to compute a content ETag.
pub const DEFAULT_MAX_BUFFER: u64 = 16 * 1024 * 1024;
/// Default cap on bytes buffered across all in-flight responses.
pub const DEFAULT_BUFFER_BUDGET: u64 = 256 * 1024 * 1024;
/// Default number of bytes of response buffers the hash memo keeps alive
/// (64 MiB): see [`MediaCacheLayer::hash_memo_bytes`].
pub const DEFAULT_HASH_MEMO_BYTES: u64 = 64 * 1024 * 1024;
/// Default time a request waits for an identical one at the inner service
/// (5 s): see [`MediaCacheLayer::coalesce_timeout`].
pub const DEFAULT_COALESCE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of bytes the validator store keeps (64 MiB).
pub const DEFAULT_STORE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;
/// What [`MediaCacheLayer::store_capacity`] used to count: the bytes an
/// average variant holds, to convert a count of variants into bytes.
const APPROXIMATE_VARIANT_BYTES: u64 = 1024;

/// [`Layer`] that makes a service cache-friendly for media fetchers: adds
/// validators and `Cache-Control`, and answers conditional requests.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use tower_media_cache::{CachePolicy, MediaCacheLayer};
///
/// let app: Router = Router::new()
///     .route("/media/{name}", get(|| async { "bytes of the image" }))
///     .route("/live/{name}", get(|| async { "latest snapshot" }))
///     .layer(
///         MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(259_200)).public())
///             .route("/live/{*path}", CachePolicy::no_cache()),
///     );
/// ```
#[derive(Clone)]
pub struct MediaCacheLayer {
    config: Arc<Config>,
}

impl fmt::Debug for MediaCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaCacheLayer")
            .field("rules", &self.config.rules)
            .field("max_buffer", &self.config.max_buffer)
            .field("store", &self.config.store)
            .finish_non_exhaustive()
    }
}

impl MediaCacheLayer {
    /// A layer applying `policy` to every route that no other rule claims.
    pub fn new(policy: CachePolicy) -> Self {
        Self {
            config: Arc::new(Config {
                rules: Rules::new(policy),
                max_buffer: DEFAULT_MAX_BUFFER,
                budget: Budget::new(DEFAULT_BUFFER_BUDGET),
                store: Arc::new(Store::new(DEFAULT_STORE_CAPACITY_BYTES)),
                clock: Arc::new(SystemTime::now),
                fingerprints: None,
                authoritative: false,
                forwarded_host: false,
                write_methods: vec![Method::PUT, Method::PATCH, Method::DELETE],
                verify_writes: true,
                learn_head: true,
                hash_large: true,
                coalesce: true,
                coalesce_timeout: DEFAULT_COALESCE_TIMEOUT,
                flights: crate::coalesce::Flights::new(),
                hash_memo: Arc::new(HashMemo::new(DEFAULT_HASH_MEMO_BYTES)),
                tag_headers: Vec::new(),
                cache_status: None,
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// Applies `policy` to request paths matching `pattern` (axum syntax:
    /// `/media/{*path}`, `/avatars/{id}`). The most specific pattern wins:
    /// static segments beat `{param}`, which beats `{*catch_all}`.
    ///
    /// # Panics
    ///
    /// When the pattern is invalid or conflicts with one already added, as
    /// axum's `Router::route` does.
    pub fn route(mut self, pattern: &str, policy: CachePolicy) -> Self {
        self.config().rules.add_route(pattern, Rule::Policy(policy));
        self
    }

    /// Leaves request paths matching `pattern` alone: no headers added, no
    /// preconditions evaluated, nothing learned.
    ///
    /// # Panics
    ///
    /// As [`route`](Self::route).
    pub fn exclude(mut self, pattern: &str) -> Self {
        self.config().rules.add_route(pattern, Rule::Exclude);
        self
    }

    /// Applies `policy` to responses whose `Content-Type` matches `pattern`
    /// (`image/*`, `video/mp4`) when no route rule matched the request.
    /// Exact types beat `type/*`.
    pub fn content_type(mut self, pattern: &str, policy: CachePolicy) -> Self {
        self.config().rules.add_content_type(pattern, policy);
        self
    }

    /// The largest body read before its head is sent, to compute a content
    /// ETag or cut a range (default 16 MiB). A larger body, or one whose size
    /// hint says it will be larger, streams as it comes: to a `GET` it is
    /// hashed as it passes and its tag learned at its end, for later answers
    /// (see [`hash_large_bodies`](Self::hash_large_bodies)).
    pub fn max_buffer_bytes(mut self, bytes: u64) -> Self {
        self.config().max_buffer = bytes;
        self
    }

    /// The most bytes buffered for hashing across all in-flight responses
    /// (default 256 MiB). A response that would go past it streams instead of
    /// waiting, as a body over [`max_buffer_bytes`](Self::max_buffer_bytes)
    /// does; [`Stats::buffer_budget_exhausted`] counts those.
    ///
    /// [`Stats::buffer_budget_exhausted`]: crate::Stats::buffer_budget_exhausted
    pub fn buffer_budget(mut self, bytes: u64) -> Self {
        self.config().budget = Budget::new(bytes);
        self
    }

    /// How many bytes the validator store keeps (default 64 MiB): everything
    /// an entry holds counts — the path and query, the authority, the values
    /// of `Vary`'d fields, the stored 304 header set. Least recently and
    /// least frequently used entries are evicted first. A request whose
    /// selector is over 8 KiB, or an entry over 64 KiB, is not learned at all
    /// ([`Stats::not_learned_too_large`](crate::Stats::not_learned_too_large)).
    ///
    /// When a handle, a clone of the layer or a bus already shares the
    /// store, it is resized in place (the bound is then enforced per shard,
    /// so it is approximate for small capacities) and they keep working.
    pub fn store_capacity_bytes(mut self, bytes: u64) -> Self {
        let config = self.config();
        if Arc::strong_count(&config.store) == 1 && Arc::weak_count(&config.store) == 0 {
            config.store = Arc::new(Store::new(bytes));
        } else {
            config.store.set_capacity(bytes);
        }
        self
    }

    /// Wraps a service that routes **every method itself** — a whole axum
    /// `Router`, a `MethodRouter`, a hyper `service_fn` that matches on the
    /// method, tower-http's `ServeDir` — and lets the layer send it a `GET`
    /// of its own: to judge a conditional write on a resource the store
    /// does not trust ([`verify_conditional_writes`](Self::verify_conditional_writes)),
    /// and to learn the validators of a `HEAD` answered without a body
    /// ([`learn_head_validators`](Self::learn_head_validators)).
    ///
    /// Everything else is as with [`Layer::layer`]. Use this form only
    /// around a service that would send a `GET` to its `GET` handler: axum's
    /// `Router::layer`, `Router::route_layer` and `MethodRouter::layer` wrap
    /// each method's handler on its own, so they call [`Layer::layer`], and
    /// the layer then never sends a request of its own — a conditional
    /// write the store cannot judge goes to its handler with its
    /// preconditions, exactly as without the layer.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use tower_media_cache::{CachePolicy, MediaCacheLayer};
    /// # async fn get_media() -> &'static str { "bytes" }
    /// # async fn put_media() {}
    ///
    /// let routes = Router::new().route("/media/{name}", get(get_media).put(put_media));
    /// let cache = MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(3600)));
    /// // The layer outside the router: a stale `If-Match` on a PUT gets 412
    /// // before `put_media` runs, whether or not the store knew the file.
    /// let app: Router = Router::new().fallback_service(cache.wrap_router(routes));
    /// assert!(cache.wrap_router(Router::<()>::new()).sends_own_requests());
    /// ```
    pub fn wrap_router<S>(&self, service: S) -> MediaCache<S> {
        MediaCache::new(service, self.config.clone(), Wiring::WholeService)
    }

    /// The store's capacity as a number of variants of about 1 KiB each.
    #[deprecated(
        since = "0.2.0",
        note = "the store is bounded in bytes: use `store_capacity_bytes`"
    )]
    pub fn store_capacity(self, variants: usize) -> Self {
        self.store_capacity_bytes((variants as u64).saturating_mul(APPROXIMATE_VARIANT_BYTES))
    }

    /// Whether a `HEAD` answered with no body to hash and no `ETag` — the
    /// service sent the `HEAD` answer itself, as tower-http's `ServeDir`
    /// does — learns the validators the `GET` would carry with an internal
    /// `GET` of the same URL (default `true`): its body is hashed and
    /// dropped, never buffered; **one extra call of the service** for such
    /// a `HEAD` when the store does not already know the answer, after
    /// which the store answers later `HEAD`s. With `false`, such a `HEAD`
    /// carries only the service's own validators.
    ///
    /// The internal `GET` is sent only by a service made with
    /// [`wrap_router`](Self::wrap_router): through [`Layer::layer`] the
    /// inner service may be the `HEAD` handler itself. There such a `HEAD`
    /// carries the tag the store learned from `GET` while that entry is
    /// trusted (or while the `HEAD`'s `Content-Length` and `Last-Modified`
    /// are those the tag was learned with), else the service's own
    /// validators. An empty `HEAD` body is never hashed.
    pub fn learn_head_validators(mut self, learn: bool) -> Self {
        self.config().learn_head = learn;
        self
    }

    /// Whether a `GET`'s body too large to read before its head is sent
    /// (over [`max_buffer_bytes`](Self::max_buffer_bytes), or refused by the
    /// [budget](Self::buffer_budget)) is hashed as it streams (default
    /// `true`). Nothing is buffered; the hash costs about what a copy of the
    /// bytes does.
    ///
    /// * When the body ends, its content ETag is learned, with the service's
    ///   `Content-Length` and `Last-Modified` on that answer. Conditional
    ///   requests with that tag are then answered 304 from the store under
    ///   the route's trust mode, like any other.
    /// * A later `200` whose `Content-Length` and `Last-Modified` (or their
    ///   absence) are unchanged carries the learned tag in its head, and the
    ///   layer **verifies** it as the bytes stream: the last piece is held
    ///   back until the hash is known, and if the bytes are other ones the
    ///   body ends with [`ContentChanged`](crate::ContentChanged) instead of
    ///   completing — the connection is cut short, so no client or cache
    ///   keeps other bytes under that tag — and the new tag is learned for
    ///   the next request ([`Stats::content_changed`](crate::Stats::content_changed)).
    ///   The trade-off: a service that changes a file without changing its
    ///   length or `Last-Modified` costs one failed download per change.
    /// * A `304` is made from such a tag only when the service's
    ///   `Last-Modified` vouches for it; without one the verified `200` goes.
    ///
    /// With `false`, such bodies stream untouched and without a layer ETag,
    /// as in earlier versions. Ranges are cut from them either way.
    pub fn hash_large_bodies(mut self, hash: bool) -> Self {
        self.config().hash_large = hash;
        self
    }

    /// Whether a burst of identical `GET`s costs one call of the service
    /// (default `true`). While a `GET` for a representation is at the inner
    /// service, further `GET`s for the same one (same target, authority and,
    /// once the answer names them, `Vary`'d values) wait for it and are
    /// answered from its response: the same status, headers and bytes
    /// (`Bytes` clones of the frames the layer buffered), each with its own
    /// `Date`, each judged against its own preconditions and `Range` (304,
    /// 412 and 206 as the service's answer would give it).
    ///
    /// Only what a shared cache could share is coalesced:
    ///
    /// * a request leads a flight only when it is unconditional and has no
    ///   `Range`; any `GET` that would call the service may wait for one;
    /// * never requests with `Authorization` or `Cookie` unless the policy
    ///   is `public`, nor requests whose client asks for a fresh answer
    ///   (`Cache-Control: no-cache` or `no-store`, `Pragma: no-cache`);
    /// * only a complete `200` the layer buffered (up to
    ///   [`max_buffer_bytes`](Self::max_buffer_bytes), within the
    ///   [budget](Self::buffer_budget)) without `Set-Cookie`, `private`,
    ///   `no-store` or `Vary: *`. Any other answer — an error, a redirect, a
    ///   404, a body streamed because it is large — is not handed to the
    ///   waiters: they go to the service (the first that may lead a flight
    ///   does, the others wait for it), so nobody gets another request's
    ///   5xx. The same happens when the leader's client disconnects.
    /// * A waiter whose `Vary`'d fields differ from the leader's waits for
    ///   (or leads) a flight of its own variant.
    ///
    /// [`Stats::coalesced`](crate::Stats::coalesced) counts the requests
    /// answered so. Needs Tokio's timer (`#[tokio::main]` and
    /// `Runtime::new` enable it) for [`coalesce_timeout`](Self::coalesce_timeout).
    pub fn coalesce(mut self, coalesce: bool) -> Self {
        self.config().coalesce = coalesce;
        self
    }

    /// How long a request waits for an identical one at the inner service
    /// (default 5 s, [`DEFAULT_COALESCE_TIMEOUT`]) before it calls the
    /// service itself.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.config().coalesce_timeout = timeout;
        self
    }

    /// How many bytes of response buffers the hash memo may keep alive
    /// (default 64 MiB; 0 turns it off).
    ///
    /// A service that hands out the same `Bytes` again — media held in
    /// memory, `Bytes` clones from a cache — answers with a body of one
    /// frame whose buffer the layer has hashed before: the memo recognises
    /// it by address and length and skips reading it. Each entry holds a
    /// clone of the `Bytes`, so the buffer cannot be freed and its memory
    /// reused for other bytes while the entry lives (least recently used
    /// entries go first past the limit). Bodies under 1 KiB, bodies of
    /// several frames and bodies read per request are hashed as always.
    ///
    /// Turn it off for a service whose `Bytes` can change under the same
    /// address, which safe Rust does not allow but `Bytes::from_owner` over
    /// a writable shared memory map would.
    pub fn hash_memo_bytes(mut self, bytes: u64) -> Self {
        self.config().hash_memo = Arc::new(HashMemo::new(bytes));
        self
    }

    /// Tells store variants apart by `X-Forwarded-Host` and `Forwarded` too,
    /// byte for byte, for applications that route by them (behind a proxy
    /// that rewrites `Host`). By default they are ignored: one stored
    /// variant answers requests that differ only in those fields, which is
    /// right when the service does not read them. `Host` (and the URI's
    /// authority) always count.
    pub fn vary_on_forwarded_host(mut self) -> Self {
        self.config().forwarded_host = true;
        self
    }

    /// The methods whose conditional requests the layer treats as writes it
    /// may refuse with `412` itself (default `PUT`, `PATCH`, `DELETE`). A
    /// `POST` is treated so where the service has already answered a `POST`
    /// with a 2xx (under the same route rule, or on the same path when no
    /// rule matched); list `POST` here to guard it from the start.
    /// Conditional requests with any other unsafe method go to the service
    /// with their preconditions, for it to judge: RFC 9110 §13.2.1 says
    /// preconditions only apply where the service would answer 2xx, and a
    /// route without that method answers 405.
    pub fn write_methods<I>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = Method>,
    {
        self.config().write_methods = methods.into_iter().collect();
        self
    }

    /// Whether the layer learns the current validators before a conditional
    /// write when it holds no trusted ones (default `true`).
    ///
    /// A write method ([`write_methods`](Self::write_methods)) carrying
    /// `If-Match`, `If-Unmodified-Since` or `If-None-Match` is judged against
    /// a trusted store entry, else the policy's probe, else the answer to an
    /// internal `GET` of the same URL (same headers without the
    /// preconditions and the write's body fields; its body is hashed and
    /// dropped, never buffered): **one extra call of the service per
    /// conditional write on a resource the store does not trust**. A `404` or
    /// `410` means no current representation: a `PUT` or `PATCH` is judged
    /// against that (`If-Match` fails, `If-None-Match: *` holds), any other
    /// method goes to the service (without the preconditions it would be a
    /// 404, so they are ignored, RFC 9110 §13.2.1); any other non-2xx leaves
    /// the write to the service. Conditional writes to one resource are serialised, so of
    /// concurrent writes carrying the same `If-Match` exactly one runs.
    ///
    /// The internal `GET` is sent only by a service made with
    /// [`wrap_router`](Self::wrap_router). Through [`Layer::layer`] (axum's
    /// `Router::layer`, `route_layer`, `MethodRouter::layer`, a
    /// `ServiceBuilder`), where the inner service may be the write's own
    /// handler, a write that neither a trusted entry nor the probe can judge
    /// goes to the service with its preconditions; writes still take turns.
    ///
    /// With `false`, a conditional write is judged before the service only
    /// when a trusted entry or a probe knows the validators; otherwise it
    /// goes to the service, which must evaluate the preconditions itself.
    pub fn verify_conditional_writes(mut self, verify: bool) -> Self {
        self.config().verify_writes = verify;
        self
    }

    /// Replaces the clock (for tests and simulations). Every time the layer
    /// reads — trust windows, `Date`, `Expires`, `If-Range` — comes from it.
    pub fn clock<C>(mut self, clock: C) -> Self
    where
        C: Fn() -> SystemTime + Send + Sync + 'static,
    {
        self.config().clock = Arc::new(clock);
        self
    }

    /// Serves fingerprinted URLs (`/media/AAAA.3f9c2a1b5d7e9f01.jpg`, made
    /// by [`fingerprinted_path`](crate::fingerprinted_path)): the inner
    /// service sees the plain path (`/media/AAAA.jpg`); when the fingerprint
    /// is the hash of the bytes it returns, the answer carries
    /// `Cache-Control: public, max-age=31536000, immutable`. A fingerprint
    /// that does not match the current bytes gets the current bytes with
    /// `no-cache`, never `immutable`. See [`fingerprint`](crate::fingerprint).
    pub fn fingerprinted_urls(mut self) -> Self {
        self.config().fingerprints = Some(
            CachePolicy::max_age(std::time::Duration::from_secs(31_536_000))
                .public()
                .immutable()
                .override_existing(),
        );
        self
    }

    /// Makes the layer the only authority on validators, for services that
    /// make entity tags of their own from file metadata (tower-http's
    /// `ServeDir`, an nginx upstream): such tags differ between replicas and
    /// change on every deploy, while the content ETag does not.
    ///
    /// For `GET` and `HEAD`:
    ///
    /// * the service's `ETag` is replaced by the content ETag (its
    ///   `Last-Modified` is kept);
    /// * `If-Match`, `If-None-Match`, `If-Modified-Since`,
    ///   `If-Unmodified-Since` and `If-Range` are hidden from the service, so
    ///   it always produces the unconditional answer, and the layer evaluates
    ///   them against the content ETag;
    /// * `Range` is passed on when there is no `If-Range`, or when the layer
    ///   verified `If-Range` against a trusted entry or a probe; otherwise it
    ///   is hidden too, and the layer cuts the range from the full answer
    ///   itself once it has checked `If-Range` against the content (for
    ///   bodies within [`max_buffer_bytes`](Self::max_buffer_bytes)). A `206`
    ///   the service sends carries the trusted entry's content ETag, or none.
    ///
    /// ```
    /// use tower_media_cache::{CachePolicy, MediaCacheLayer};
    /// # let serve_dir = tower::service_fn(|_: http::Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    /// # });
    /// let service = tower::ServiceBuilder::new()
    ///     .layer(MediaCacheLayer::new(CachePolicy::no_cache()).authoritative())
    ///     .service(serve_dir);
    /// # let _ = service;
    /// ```
    pub fn authoritative(mut self) -> Self {
        self.config().authoritative = true;
        self
    }

    /// Shares invalidations with the other replicas of the service over
    /// `bus` (for example `RedisBus`, with the `redis` feature): see
    /// [`bus`](crate::bus) for the guarantee. Until the bus connects,
    /// and whenever it is disconnected, the store answers nothing by itself.
    ///
    /// The bus attaches to the layer's store, which every clone of the
    /// layer and every service it made share.
    ///
    /// # Panics
    ///
    /// When the store already has a bus (this was called before, on this
    /// layer or a clone of it).
    pub fn invalidation_bus<B: crate::bus::InvalidationBus>(self, bus: B) -> Self {
        self.config.store.attach_bus(Arc::new(bus));
        self
    }

    /// Writes each response's cache tags ([`CachePolicy::tags`] and the
    /// response's [`CacheTags`](crate::CacheTags)) in `header`, for the
    /// front tier: [`TagHeader::surrogate_key`] (Fastly),
    /// [`TagHeader::cache_tag`] (Cloudflare), [`TagHeader::xkey`] (Varnish),
    /// or a header of your own. Call it again to write several headers;
    /// the same header twice is written once. Without any, tags are only
    /// indexed, for [`CacheHandle::invalidate_tag`].
    ///
    /// Tags are written on the `2xx` and `304` answers the policy applies
    /// to, after any value the service set in that header (kept), and are
    /// stored with the entry, so the layer's own `304`s repeat them. See
    /// [`tags`](crate::tags) for their syntax and bounds.
    ///
    /// ```
    /// use tower_media_cache::{CachePolicy, MediaCacheLayer, TagHeader};
    ///
    /// let layer = MediaCacheLayer::new(CachePolicy::no_cache().tags(["media"]))
    ///     .tag_header(TagHeader::surrogate_key())
    ///     .tag_header(TagHeader::cache_tag());
    /// # let _ = layer;
    /// ```
    ///
    /// [`CacheHandle::invalidate_tag`]: crate::CacheHandle::invalidate_tag
    pub fn tag_header(mut self, header: TagHeader) -> Self {
        let headers = &mut self.config().tag_headers;
        headers.retain(|h| h.name() != header.name());
        headers.push(header);
        self
    }

    /// Purges the front tier with `purger` after every invalidation made
    /// here (URL, prefix, tag, clear; not those received over the bus), with
    /// the default [`PurgeSettings`](crate::purge::PurgeSettings): see
    /// [`purge`](crate::purge). The purge runs on a task of the Tokio
    /// runtime the invalidation happens on; nothing waits for it.
    ///
    /// Like the bus, the purger attaches to the layer's store, which every
    /// clone of the layer and every service it made share.
    ///
    /// # Panics
    ///
    /// When the store already has a purger.
    pub fn purger<P: crate::purge::Purger>(self, purger: P) -> Self {
        self.purger_with(purger, crate::purge::PurgeSettings::default())
    }

    /// [`purger`](Self::purger) with settings of your own: attempts,
    /// backoff, timeout, queue and concurrency.
    ///
    /// # Panics
    ///
    /// When the store already has a purger.
    pub fn purger_with<P: crate::purge::Purger>(
        self,
        purger: P,
        settings: crate::purge::PurgeSettings,
    ) -> Self {
        self.config
            .store
            .attach_purger(crate::purge::Purging::new(Arc::new(purger), settings));
        self
    }

    /// Adds the layer's member, named `name`, to the `Cache-Status` field
    /// (RFC 9211) of every response it handles (not those of
    /// [excluded](Self::exclude) routes, nor errors of the service):
    ///
    /// | member | when |
    /// |---|---|
    /// | `name; hit` (`; ttl=N` when the store's trust ends in N seconds) | the layer answered alone, from its store or the route's probe (a `304`, or a `412` to a guarded write) |
    /// | `name; fwd=miss` | the service was asked: nothing stored could answer (no entry; an entry that does not satisfy the request; an unconditional request, whose body the layer never stores) |
    /// | `name; fwd=stale` | an entry was found but may not answer alone: its trust is over, its mode is [`Trust::Never`](crate::Trust::Never), or the invalidation bus was disconnected |
    /// | `name; fwd=request` | a trusted entry or a probe could have answered, but the request carried `Cache-Control: no-cache` (or `Pragma: no-cache` without `Cache-Control`), which the layer honours (RFC 9111 §5.2.1.4) |
    /// | `name; fwd=method` | a method other than `GET` and `HEAD` (also a conditional write the layer refused after asking the service for the current validators with an internal `GET`) |
    ///
    /// A forwarded request's member adds `fwd-status=` with the status the
    /// service answered, `stored` when the layer learned the answer's
    /// validators, and `detail=` when it could not do its usual work:
    /// `buffer-budget` or `body-too-large` (the body streamed without a
    /// content `ETag`), `entry-too-large` (not stored: over the store's
    /// size limits).
    ///
    /// A `Cache-Status` already on the service's answer is kept and the
    /// layer's member goes after it: see [`cache_status`](crate::cache_status)
    /// for why that is the order RFC 9211 asks for.
    ///
    /// # Panics
    ///
    /// When `name` is empty or is neither an `sf-token` nor an `sf-string`
    /// (RFC 8941 §3.3): a name with control characters or non-ASCII
    /// characters. A name that is not a token (`"media cache"`) is sent as
    /// a quoted string.
    pub fn cache_status(mut self, name: &str) -> Self {
        match crate::cache_status::CacheName::new(name) {
            Ok(name) => self.config().cache_status = Some(name),
            Err(reason) => panic!("invalid Cache-Status name {name:?}: {reason}"),
        }
        self
    }

    /// A handle on the validator store: invalidation and counters.
    pub fn handle(&self) -> CacheHandle {
        CacheHandle {
            store: self.config.store.clone(),
        }
    }
}

impl<S> Layer<S> for MediaCacheLayer {
    type Service = MediaCache<S>;

    /// Wraps `inner`, whatever it is — one method's handler (axum's
    /// `Router::layer`, `route_layer` and `MethodRouter::layer` call this
    /// once per method) or a whole router. The layer sends it only the
    /// requests its clients sent: see [`MediaCacheLayer::wrap_router`] for
    /// what that leaves out.
    fn layer(&self, inner: S) -> Self::Service {
        MediaCache::new(inner, self.config.clone(), Wiring::PerMethod)
    }
}
