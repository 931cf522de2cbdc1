//! `Cache-Control` policies (RFC 9111 §5.2.2, RFC 8246, RFC 5861) and the
//! trust modes that decide when the validator store may answer on its own.
//!
//! A policy renders its `Cache-Control` value once, when it is built; the
//! request path only clones the rendered `HeaderValue`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_media_cache::CachePolicy;
//!
//! let images = CachePolicy::max_age(Duration::from_secs(259_200)).public();
//! assert_eq!(images.header_value(), "public, max-age=259200");
//!
//! let live = CachePolicy::no_cache();
//! assert_eq!(live.header_value(), "no-cache");
//!
//! let assets = CachePolicy::max_age(Duration::from_secs(31_536_000)).public().immutable();
//! assert_eq!(assets.header_value(), "public, max-age=31536000, immutable");
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use http::request::Parts;

use crate::headers::add_saturating;
use crate::tags::Tags;
use crate::validators::Validators;

/// How long a response may be cached and by whom: the `Cache-Control` value
/// the layer sends, plus what the layer itself may do with it.
#[derive(Clone)]
pub struct CachePolicy {
    freshness: Freshness,
    visibility: Visibility,
    s_maxage: Option<u64>,
    must_revalidate: bool,
    proxy_revalidate: bool,
    no_transform: bool,
    immutable: bool,
    stale_while_revalidate: Option<u64>,
    stale_if_error: Option<u64>,
    expires: bool,
    override_existing: bool,
    trust: Option<Trust>,
    probe: Option<Arc<dyn Probe>>,
    synthesize_last_modified: bool,
    tags: Tags,
    rendered: HeaderValue,
    /// The targeted field values for CDNs: see [`CachePolicy::cdn`].
    targeted: Option<Box<Targeted>>,
    /// Send `Surrogate-Control` too.
    surrogate_control: bool,
}

/// What a policy says to CDNs apart from browsers (RFC 9213), rendered once.
#[derive(Debug, Clone)]
struct Targeted {
    /// The `CDN-Cache-Control` value.
    cdn: HeaderValue,
    /// The `Surrogate-Control` value, sent when asked for.
    surrogate: HeaderValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    MaxAge(u64),
    NoCache,
    NoStore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visibility {
    Unspecified,
    Public,
    Private,
}

/// When a learned validator may answer a conditional request without the
/// inner service being called. Set with [`CachePolicy::trust`].
///
/// | mode | the inner service is skipped … | choose it when |
/// |---|---|---|
/// | `MaxAge` | while a copy stored when the entry was learned would still be fresh | the bytes never change within max-age (the promise `max-age` already makes) |
/// | `For(d)` | for `d` after the entry was learned | you accept `d` of staleness for revalidations |
/// | `UntilInvalidated` | until the handle, or an unsafe request through the layer, invalidates it | every write goes through this service or calls the handle |
/// | `Never` | never: the inner service always runs, the layer still turns a matching answer into a 304 | content changes behind the service's back |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// Trusted while a copy stored at learning time would still be fresh:
    /// the smaller of `max-age` and `s-maxage` of the `Cache-Control` sent.
    /// The default for policies with a `max-age`.
    MaxAge,
    /// Trusted for a fixed time after learning.
    For(Duration),
    /// Trusted until invalidated.
    UntilInvalidated,
    /// Never trusted. The default for `no-cache` and `no-store` policies.
    Never,
}

impl Trust {
    /// Until when an entry learned `now` may answer alone under this mode,
    /// given the reuse lifetime of the `Cache-Control` actually sent (the
    /// smaller of `max-age` and `s-maxage`; `None` for `no-cache`/`no-store`).
    /// Saturates: a lifetime of any size never overflows.
    pub(crate) fn until(self, reuse_lifetime: Option<u64>, now: SystemTime) -> TrustedUntil {
        match self {
            Trust::MaxAge => match reuse_lifetime {
                Some(secs) if secs > 0 => {
                    TrustedUntil::At(add_saturating(now, Duration::from_secs(secs)))
                }
                _ => TrustedUntil::Never,
            },
            Trust::For(window) => TrustedUntil::At(add_saturating(now, window)),
            Trust::UntilInvalidated => TrustedUntil::Invalidated,
            Trust::Never => TrustedUntil::Never,
        }
    }
}

/// Until when an entry may answer without the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrustedUntil {
    Never,
    At(SystemTime),
    Invalidated,
}

impl TrustedUntil {
    /// Whether the trust still holds at `now`.
    pub(crate) fn holds_at(self, now: SystemTime) -> bool {
        match self {
            TrustedUntil::Never => false,
            TrustedUntil::At(until) => now < until,
            TrustedUntil::Invalidated => true,
        }
    }

    /// Whole seconds the trust has left at `now`, when it ends at a time
    /// (the `ttl` of `Cache-Status`).
    pub(crate) fn seconds_left(self, now: SystemTime) -> Option<u64> {
        match self {
            TrustedUntil::At(until) => {
                Some(until.duration_since(now).map_or(0, |left| left.as_secs()))
            }
            TrustedUntil::Never | TrustedUntil::Invalidated => None,
        }
    }
}

/// A boxed future returned by a [`Probe`].
pub type ProbeFuture = Pin<Box<dyn Future<Output = Option<Validators>> + Send + 'static>>;

/// Returns the current validators of the resource a request targets,
/// without producing the body: file metadata, a row version, an
/// object-store `HEAD`. `None` means "unknown": the inner service is called.
///
/// Implemented for closures `Fn(&http::request::Parts) -> impl Future<Output
/// = Option<Validators>>`.
pub trait Probe: Send + Sync + 'static {
    /// Starts the probe for one request.
    fn probe(&self, request: &Parts) -> ProbeFuture;
}

impl<F, Fut> Probe for F
where
    F: Fn(&Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<Validators>> + Send + 'static,
{
    fn probe(&self, request: &Parts) -> ProbeFuture {
        Box::pin(self(request))
    }
}

impl CachePolicy {
    fn new(freshness: Freshness) -> Self {
        let mut policy = Self {
            freshness,
            visibility: Visibility::Unspecified,
            s_maxage: None,
            must_revalidate: false,
            proxy_revalidate: false,
            no_transform: false,
            immutable: false,
            stale_while_revalidate: None,
            stale_if_error: None,
            expires: false,
            override_existing: false,
            trust: None,
            probe: None,
            synthesize_last_modified: false,
            tags: Tags::default(),
            rendered: HeaderValue::from_static(""),
            targeted: None,
            surrogate_control: false,
        };
        policy.render();
        policy
    }

    /// `max-age=N`: caches may reuse the response for `age` (whole seconds)
    /// without asking again.
    pub fn max_age(age: Duration) -> Self {
        Self::new(Freshness::MaxAge(age.as_secs()))
    }

    /// `no-cache`: caches may store the response but must revalidate it on
    /// every use; the layer answers those revalidations with 304.
    pub fn no_cache() -> Self {
        Self::new(Freshness::NoCache)
    }

    /// `no-store`: nothing may be stored. The layer adds no content ETag and
    /// learns nothing.
    pub fn no_store() -> Self {
        Self::new(Freshness::NoStore)
    }

    /// `public`: shared caches may store it even for requests with
    /// `Authorization`. Also lets the layer answer such requests from its
    /// store. Clears `private`.
    pub fn public(mut self) -> Self {
        self.visibility = Visibility::Public;
        self.rendered()
    }

    /// `private`: only the client's own cache may store it. The layer learns
    /// nothing from such answers. Clears `public`.
    pub fn private(mut self) -> Self {
        self.visibility = Visibility::Private;
        self.rendered()
    }

    /// `s-maxage=N`: the freshness lifetime for shared caches.
    pub fn s_maxage(mut self, age: Duration) -> Self {
        self.s_maxage = Some(age.as_secs());
        self.rendered()
    }

    /// `must-revalidate`: once stale, a cache must not serve the response
    /// without revalidating.
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self.rendered()
    }

    /// `proxy-revalidate`: `must-revalidate` for shared caches only.
    pub fn proxy_revalidate(mut self) -> Self {
        self.proxy_revalidate = true;
        self.rendered()
    }

    /// `no-transform`: intermediaries must not transform the content
    /// (re-encode images, for instance).
    pub fn no_transform(mut self) -> Self {
        self.no_transform = true;
        self.rendered()
    }

    /// `immutable` (RFC 8246): the content will never change at this URL,
    /// so clients skip revalidation even on reload. Use with fingerprinted
    /// URLs only.
    pub fn immutable(mut self) -> Self {
        self.immutable = true;
        self.rendered()
    }

    /// `stale-while-revalidate=N` (RFC 5861 §3).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window.as_secs());
        self.rendered()
    }

    /// `stale-if-error=N` (RFC 5861 §4).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window.as_secs());
        self.rendered()
    }

    /// Also send `Expires` (now + max-age; the epoch for `no-cache` and
    /// `no-store`, which means "already expired") for HTTP/1.0 caches that do
    /// not read `Cache-Control`.
    pub fn with_expires(mut self) -> Self {
        self.expires = true;
        self
    }

    /// Replace a `Cache-Control` the inner service already set. By default
    /// the service's own value is kept. The targeted fields follow: with
    /// this, the policy's `CDN-Cache-Control` and `Surrogate-Control`
    /// replace the service's, and a policy without a [`cdn`](Self::cdn)
    /// policy removes them.
    pub fn override_existing(mut self) -> Self {
        self.override_existing = true;
        self
    }

    /// Sets when learned validators may answer without the inner service.
    /// See [`Trust`]. A probe, when set, is asked instead.
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Asks `probe` for the current validators of a conditional request and
    /// answers 304 / 412 from them without calling the inner service;
    /// Django's `condition(etag_func=…)` pattern.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_media_cache::{CachePolicy, EntityTag, Validators};
    ///
    /// let policy = CachePolicy::no_cache().probe(|request: &http::request::Parts| {
    ///     let path = request.uri.path().to_owned();
    ///     async move {
    ///         // e.g. read a version column for `path`
    ///         let version = path.len();
    ///         Some(Validators::new().with_etag(EntityTag::strong(&format!("v{version}")).ok()?))
    ///     }
    /// });
    /// # let _ = policy;
    /// ```
    pub fn probe<P: Probe>(mut self, probe: P) -> Self {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// When the inner service sends no `Last-Modified`, send the time the
    /// layer first saw the current ETag for the URL. It never goes backwards,
    /// even when content is rolled back to an earlier version; it differs
    /// between replicas (the ETag, identical everywhere, wins over it).
    pub fn synthesize_last_modified(mut self) -> Self {
        self.synthesize_last_modified = true;
        self
    }

    /// Cache tags every response under this policy carries, besides the
    /// response's own [`CacheTags`](crate::CacheTags): rendered in the
    /// [tag headers](crate::MediaCacheLayer::tag_header) and indexed, for
    /// [`CacheHandle::invalidate_tag`](crate::CacheHandle::invalidate_tag).
    /// Adds to the tags set before; empty tags and duplicates are dropped.
    /// See [`tags`](crate::tags) for their syntax.
    /// ```
    /// use std::time::Duration;
    /// use tower_media_cache::CachePolicy;
    ///
    /// let avatars = CachePolicy::max_age(Duration::from_secs(86_400)).tags(["avatars", "user-media"]);
    /// # let _ = avatars;
    /// ```
    pub fn tags<I>(mut self, tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        self.tags = self.tags.merged(&Tags::new(tags));
        self
    }

    pub(crate) fn tag_set(&self) -> &Tags {
        &self.tags
    }

    /// Tells CDNs something else than browsers (RFC 9213 Targeted HTTP
    /// Cache Control): `cdn`'s directives go out as `CDN-Cache-Control`
    /// beside this policy's `Cache-Control`. CDNs that implement RFC 9213
    /// (Cloudflare, Akamai, Fastly) obey `CDN-Cache-Control` and ignore
    /// `Cache-Control`; browsers and other caches never see a difference.
    ///
    /// Only `cdn`'s directives are used: its trust mode, probe, `Expires`,
    /// `override_existing` and CDN policy of its own are ignored. What the
    /// layer itself does — when its store answers without the service
    /// ([`Trust::MaxAge`] reads `max-age` and `s-maxage` of the
    /// `Cache-Control` sent), whether it learns (`no-store`, `private`) — is
    /// governed by this policy, never by the CDN's: a CDN is typically told
    /// to keep copies for days because it is purged on change, which says
    /// nothing about how long the service's bytes stay the same. Set
    /// [`trust`](Self::trust) to let the layer answer for longer.
    ///
    /// A `CDN-Cache-Control` (or `Surrogate-Control`) the service already
    /// set is kept, unless the policy [overrides
    /// existing](Self::override_existing) fields; when the service set its
    /// own `Cache-Control` and the policy does not override it, no targeted
    /// field is added either, so a `private` answer never reaches a CDN with
    /// a lifetime the service did not choose.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_media_cache::CachePolicy;
    ///
    /// // Browsers revalidate every time; the CDN keeps copies for 3 days.
    /// let policy = CachePolicy::no_cache()
    ///     .cdn(CachePolicy::max_age(Duration::from_secs(259_200)).public());
    /// assert_eq!(policy.header_value(), "no-cache");
    /// assert_eq!(policy.cdn_header_value().unwrap(), "public, max-age=259200");
    /// ```
    pub fn cdn(mut self, cdn: CachePolicy) -> Self {
        self.targeted = Some(Box::new(Targeted {
            surrogate: cdn.render_surrogate_control(),
            cdn: cdn.rendered,
        }));
        self
    }

    /// Also sends the [`cdn`](Self::cdn) policy as `Surrogate-Control`, the
    /// older field of the Edge Architecture specification that Fastly,
    /// Varnish setups and some CDNs without RFC 9213 read (and remove before
    /// the response leaves them). It carries only what that field can say:
    /// `max-age` (`max-age=0` for `no-cache`), `no-store`, and Fastly's
    /// `stale-while-revalidate` and `stale-if-error`. Without a CDN policy,
    /// nothing is sent.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_media_cache::CachePolicy;
    ///
    /// let policy = CachePolicy::no_cache()
    ///     .cdn(CachePolicy::max_age(Duration::from_secs(259_200)).public())
    ///     .with_surrogate_control();
    /// assert_eq!(policy.surrogate_header_value().unwrap(), "max-age=259200");
    /// ```
    pub fn with_surrogate_control(mut self) -> Self {
        self.surrogate_control = true;
        self
    }

    /// The rendered `Cache-Control` value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.rendered
    }

    /// The rendered `CDN-Cache-Control` value, when the policy has a
    /// [`cdn`](Self::cdn) policy.
    pub fn cdn_header_value(&self) -> Option<&HeaderValue> {
        self.targeted.as_ref().map(|t| &t.cdn)
    }

    /// The rendered `Surrogate-Control` value, when the policy has a
    /// [`cdn`](Self::cdn) policy and [sends
    /// it](Self::with_surrogate_control).
    pub fn surrogate_header_value(&self) -> Option<&HeaderValue> {
        let targeted = self.targeted.as_ref().filter(|_| self.surrogate_control)?;
        Some(&targeted.surrogate)
    }

    pub(crate) fn overrides_existing(&self) -> bool {
        self.override_existing
    }

    pub(crate) fn is_public(&self) -> bool {
        self.visibility == Visibility::Public
    }

    pub(crate) fn probe_ref(&self) -> Option<&Arc<dyn Probe>> {
        self.probe.as_ref()
    }

    pub(crate) fn synthesizes_last_modified(&self) -> bool {
        self.synthesize_last_modified
    }

    /// The trust mode in force: the explicit one, or the default for the
    /// policy's freshness.
    pub(crate) fn effective_trust(&self) -> Trust {
        self.trust.unwrap_or(match self.freshness {
            Freshness::MaxAge(_) => Trust::MaxAge,
            Freshness::NoCache | Freshness::NoStore => Trust::Never,
        })
    }

    /// The `Expires` value for a response generated at `now`, when enabled.
    pub(crate) fn expires_at(&self, now: SystemTime) -> Option<SystemTime> {
        if !self.expires {
            return None;
        }
        Some(match self.freshness {
            Freshness::MaxAge(secs) => add_saturating(now, Duration::from_secs(secs)),
            Freshness::NoCache | Freshness::NoStore => SystemTime::UNIX_EPOCH,
        })
    }

    /// How long after a response's `Date` its policy-made `Expires` lies,
    /// for re-rendering it on later 304s; `None` when the policy sends no
    /// `Expires` or a fixed one.
    pub(crate) fn expires_after(&self) -> Option<Duration> {
        match (self.expires, self.freshness) {
            (true, Freshness::MaxAge(secs)) => Some(Duration::from_secs(secs)),
            _ => None,
        }
    }

    fn rendered(mut self) -> Self {
        self.render();
        self
    }

    /// Renders the `Cache-Control` directives (RFC 9111 §5.2.2) in a fixed
    /// order: visibility, freshness, then the modifiers.
    fn render(&mut self) {
        let mut directives: Vec<String> = Vec::new();
        match self.visibility {
            Visibility::Public => directives.push("public".into()),
            Visibility::Private => directives.push("private".into()),
            Visibility::Unspecified => {}
        }
        match self.freshness {
            Freshness::MaxAge(secs) => directives.push(format!("max-age={secs}")),
            Freshness::NoCache => directives.push("no-cache".into()),
            Freshness::NoStore => directives.push("no-store".into()),
        }
        if let Some(secs) = self.s_maxage {
            directives.push(format!("s-maxage={secs}"));
        }
        for (on, name) in [
            (self.must_revalidate, "must-revalidate"),
            (self.proxy_revalidate, "proxy-revalidate"),
            (self.no_transform, "no-transform"),
            (self.immutable, "immutable"),
        ] {
            if on {
                directives.push(name.into());
            }
        }
        if let Some(secs) = self.stale_while_revalidate {
            directives.push(format!("stale-while-revalidate={secs}"));
        }
        if let Some(secs) = self.stale_if_error {
            directives.push(format!("stale-if-error={secs}"));
        }
        self.rendered = HeaderValue::try_from(directives.join(", "))
            .expect("directive names and digits are a valid header value");
    }
}

impl CachePolicy {
    /// Renders the directives of the Edge Architecture Specification's
    /// `Surrogate-Control` (W3C Note, 2001, §3) this policy can say:
    /// `max-age` (`max-age=0` stands for `no-cache`: stale at once, so
    /// revalidated on every use), `no-store`, and the `stale-while-revalidate`
    /// and `stale-if-error` extensions Fastly reads there.
    fn render_surrogate_control(&self) -> HeaderValue {
        let mut directives = vec![match self.freshness {
            Freshness::MaxAge(secs) => format!("max-age={secs}"),
            Freshness::NoCache => "max-age=0".to_owned(),
            Freshness::NoStore => "no-store".to_owned(),
        }];
        if self.freshness != Freshness::NoStore {
            if let Some(secs) = self.stale_while_revalidate {
                directives.push(format!("stale-while-revalidate={secs}"));
            }
            if let Some(secs) = self.stale_if_error {
                directives.push(format!("stale-if-error={secs}"));
            }
        }
        HeaderValue::try_from(directives.join(", "))
            .expect("directive names and digits are a valid header value")
    }
}

impl fmt::Debug for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachePolicy")
            .field("cache_control", &self.rendered)
            .field("cdn_cache_control", &self.cdn_header_value())
            .field("surrogate_control", &self.surrogate_header_value())
            .field("expires", &self.expires)
            .field("override_existing", &self.override_existing)
            .field("trust", &self.effective_trust())
            .field("probe", &self.probe.is_some())
            .field("synthesize_last_modified", &self.synthesize_last_modified)
            .field("tags", &self.tags)
            .finish()
    }
}

impl Default for CachePolicy {
    /// `no-cache`: caches keep a copy and revalidate every time, which is
    /// always correct; the layer answers the revalidations with 304.
    fn default() -> Self {
        Self::no_cache()
    }
}

/// The directives of a `Cache-Control` value that the layer acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

/// A `delta-seconds` argument, RFC 9111 §1.2.2: digits only; a value too
/// large to represent counts as 2^31 seconds (as the RFC says); anything that
/// is not digits counts as 0 (stale).
fn delta_seconds(arg: &[u8]) -> u64 {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    arg.iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .unwrap_or(1 << 31)
}

impl Directives {
    /// Reads the directives of all `Cache-Control` lines (RFC 9111 §5.2).
    /// Names are case-insensitive; an argument that is not a number, or a
    /// directive that appears twice with different values, makes that
    /// freshness directive count as 0 (RFC 9111 §4.2.1: treat as stale).
    pub(crate) fn parse(headers: &http::HeaderMap) -> Self {
        let mut out = Self::default();
        for item in crate::headers::list_members(headers.get_all(http::header::CACHE_CONTROL)) {
            let (name, arg) = match item.iter().position(|&b| b == b'=') {
                Some(i) => (&item[..i], Some(&item[i + 1..])),
                None => (item, None),
            };
            let name = crate::headers::trim_ows(name);
            let seconds = || {
                let arg = arg.map(crate::headers::trim_ows).unwrap_or_default();
                let arg = arg
                    .strip_prefix(b"\"")
                    .and_then(|a| a.strip_suffix(b"\""))
                    .unwrap_or(arg);
                delta_seconds(arg)
            };
            let merge = |slot: &mut Option<u64>, value: u64| {
                *slot = Some(match *slot {
                    Some(prev) if prev != value => 0,
                    _ => value,
                });
            };
            if name.eq_ignore_ascii_case(b"no-store") {
                out.no_store = true;
            } else if name.eq_ignore_ascii_case(b"no-cache") {
                out.no_cache = true;
            } else if name.eq_ignore_ascii_case(b"private") {
                out.private = true;
            } else if name.eq_ignore_ascii_case(b"max-age") {
                merge(&mut out.max_age, seconds());
            } else if name.eq_ignore_ascii_case(b"s-maxage") {
                merge(&mut out.s_maxage, seconds());
            }
        }
        out
    }

    /// How long a shared or private cache may reuse a copy stored now: the
    /// smaller of `max-age` and `s-maxage`, or `None` when the response may
    /// not be reused without revalidation.
    pub(crate) fn reuse_lifetime(&self) -> Option<u64> {
        if self.no_store || self.no_cache {
            return None;
        }
        match (self.max_age, self.s_maxage) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn every_directive_renders_once_in_a_fixed_order() {
        let policy = CachePolicy::max_age(Duration::from_secs(60))
            .private()
            .s_maxage(Duration::from_secs(30))
            .must_revalidate()
            .proxy_revalidate()
            .no_transform()
            .immutable()
            .stale_while_revalidate(Duration::from_secs(5))
            .stale_if_error(Duration::from_secs(86_400));
        assert_eq!(
            policy.header_value(),
            "private, max-age=60, s-maxage=30, must-revalidate, proxy-revalidate, \
             no-transform, immutable, stale-while-revalidate=5, stale-if-error=86400"
        );
    }

    #[test]
    fn public_and_private_exclude_each_other() {
        let policy = CachePolicy::no_cache().private().public();
        assert_eq!(policy.header_value(), "public, no-cache");
    }

    #[test]
    fn no_store_renders_alone() {
        assert_eq!(CachePolicy::no_store().header_value(), "no-store");
    }

    #[test]
    fn sub_second_durations_are_truncated() {
        let policy = CachePolicy::max_age(Duration::from_millis(1999));
        assert_eq!(policy.header_value(), "max-age=1");
    }

    #[test]
    fn default_trust_follows_freshness() {
        assert_eq!(
            CachePolicy::max_age(Duration::from_secs(1)).effective_trust(),
            Trust::MaxAge
        );
        assert_eq!(CachePolicy::no_cache().effective_trust(), Trust::Never);
        assert_eq!(
            CachePolicy::no_cache()
                .trust(Trust::UntilInvalidated)
                .effective_trust(),
            Trust::UntilInvalidated
        );
    }

    #[test]
    fn expires_is_max_age_from_now_or_the_epoch() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let policy = CachePolicy::max_age(Duration::from_secs(60)).with_expires();
        assert_eq!(
            policy.expires_at(now),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1060))
        );
        assert_eq!(
            CachePolicy::no_cache().with_expires().expires_at(now),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(CachePolicy::no_cache().expires_at(now), None);
    }

    #[test]
    fn cache_control_directives_are_case_insensitive_and_span_lines() {
        let mut headers = HeaderMap::new();
        headers.append(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("Public, MAX-AGE=\"120\""),
        );
        headers.append(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("s-maxage=60"),
        );
        let d = Directives::parse(&headers);
        assert_eq!(d.reuse_lifetime(), Some(60));
        headers.append(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=5"),
        );
        assert_eq!(Directives::parse(&headers).max_age, Some(0));
    }

    #[test]
    fn no_cache_and_no_store_are_never_reusable() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60, no-cache"),
        );
        assert_eq!(Directives::parse(&headers).reuse_lifetime(), None);
    }
}
