//! Purging the front tier (a CDN, Varnish) when the layer invalidates.
//!
//! A [`Purger`], set with [`MediaCacheLayer::purger`], is handed every
//! invalidation made on this replica — [`CacheHandle::invalidate`] (and the
//! invalidation after a write through the layer), [`invalidate_prefix`],
//! [`invalidate_tag`], [`clear`] — as an [`Invalidation`]. Invalidations
//! received from other replicas over the [bus](crate::bus) are not purged
//! again: the replica that made them did.
//!
//! Purging is fire-and-forget: the invalidating call queues the purge (at
//! most [`PurgeSettings::queue`] waiting; past that it is dropped and
//! counted) and returns; a task on the Tokio runtime runs the purger, at
//! most [`PurgeSettings::concurrency`] purges at once, each attempt within
//! [`PurgeSettings::timeout`], failed attempts tried again after a doubling
//! backoff up to [`PurgeSettings::attempts`] in all. Nothing on the request
//! path waits for it. [`Stats::purged`], [`Stats::purge_retries`] and
//! [`Stats::purge_failures`] count the outcomes; a purge given up is logged
//! at `warn`. The runtime needs its time driver (`#[tokio::main]` and
//! `Runtime::new` enable it) for the timeouts and the backoff; an
//! invalidation made outside any runtime is counted as a failed purge.
//!
//! # Varnish
//!
//! [`VarnishPurger`] (feature `varnish`) speaks to Varnish with
//! `vmod_xkey` (Debian's `varnish-modules`) and the VCL in
//! `docs/varnish-purge.vcl` (tested by the crate's tests):
//!
//! | invalidation | request | effect in Varnish |
//! |---|---|---|
//! | URL `/media/a.jpg` | `PURGE /media/a.jpg` for each [host] | the object of that exact URL (every `Vary` variant) |
//! | tag `album:7` | `PURGE /` with `xkey: album:7` | every object whose `xkey` header named the tag |
//! | prefix `/media/` | `BAN /` with `x-ban-url: ^/media(/\|[?]\|$)` | a lurker-friendly ban on the URL the VCL stored |
//! | clear | `BAN /` with `x-ban-url: ^` | every object |
//!
//! Varnish's objects are told apart by the URL as the client sent it, query
//! included, while the layer's store groups every spelling and query of a
//! path: a URL purge removes the spelling given to
//! [`CacheHandle::invalidate`], without a query. To drop every query and
//! spelling of a resource in Varnish, tag its responses (for example with
//! the media id) and invalidate the tag, or invalidate a prefix (a ban,
//! which Varnish evaluates lazily, and which costs more than a purge while
//! it lives).
//!
//! # CDNs
//!
//! A CDN's purge API is an HTTPS request with an API token, best made with
//! the HTTP client the application already has (reqwest, hyper with rustls);
//! the crate does not pick one for you. Write the adapter on [`Purger`]:
//!
//! ```
//! use tower_media_cache::Invalidation;
//! use tower_media_cache::purge::{PurgeFuture, Purger};
//!
//! /// Fastly: `POST https://api.fastly.com/service/{id}/purge/{key}` with
//! /// `Fastly-Key: <token>` purges a surrogate key; `PURGE <url>` a URL.
//! #[derive(Debug)]
//! struct Fastly {
//!     service_id: String,
//!     // client: reqwest::Client, token: String, ...
//! }
//!
//! impl Purger for Fastly {
//!     fn purge(&self, invalidation: &Invalidation) -> PurgeFuture {
//!         let request = match invalidation {
//!             Invalidation::Tag(key) => format!("POST /service/{}/purge/{key}", self.service_id),
//!             Invalidation::Key(path) => format!("PURGE https://media.example.com{path}"),
//!             // No prefix purge at Fastly: tag by directory instead, or purge all.
//!             _ => format!("POST /service/{}/purge_all", self.service_id),
//!         };
//!         Box::pin(async move {
//!             // self.client.request(...).send().await?.error_for_status()?;
//!             let _ = request;
//!             Ok(())
//!         })
//!     }
//! }
//! ```
//!
//! The requests each CDN documents, for the tags rendered in its header
//! ([`TagHeader`](crate::TagHeader)):
//!
//! * **Fastly** (`Surrogate-Key`): `POST /service/{service_id}/purge/{key}`
//!   (or up to 256 keys in `Surrogate-Key` on `POST /service/{id}/purge`),
//!   header `Fastly-Key: <API token>`, optionally `Fastly-Soft-Purge: 1`;
//!   a URL with `PURGE https://host/path`; everything with
//!   `POST /service/{id}/purge_all`.
//! * **Cloudflare** (`Cache-Tag`): `POST /client/v4/zones/{zone_id}/purge_cache`,
//!   `Authorization: Bearer <token>`, body `{"tags": ["album:7"]}`, `{"files":
//!   ["https://host/path"]}`, `{"prefixes": ["host/media/"]}` or
//!   `{"purge_everything": true}`.
//! * **Akamai** (`Edge-Cache-Tag`, comma-separated: use
//!   [`TagHeader::comma_separated`](crate::TagHeader::comma_separated)): Fast
//!   Purge, `POST /ccu/v3/invalidate/tag/{network}` with `{"objects":
//!   ["album:7"]}` or `/ccu/v3/invalidate/url/{network}` with full URLs,
//!   signed with EdgeGrid.
//!
//! Return an error from the future for anything but a success (a 429 or 5xx
//! included) and the layer tries again, as configured.
//!
//! [`MediaCacheLayer::purger`]: crate::MediaCacheLayer::purger
//! [`CacheHandle::invalidate`]: crate::CacheHandle::invalidate
//! [`invalidate_prefix`]: crate::CacheHandle::invalidate_prefix
//! [`invalidate_tag`]: crate::CacheHandle::invalidate_tag
//! [`clear`]: crate::CacheHandle::clear
//! [`Stats::purged`]: crate::Stats::purged
//! [`Stats::purge_retries`]: crate::Stats::purge_retries
//! [`Stats::purge_failures`]: crate::Stats::purge_failures
#![cfg_attr(feature = "varnish", doc = "[host]: VarnishPurger::host")]
#![cfg_attr(
    not(feature = "varnish"),
    doc = "[`VarnishPurger`]: https://docs.rs/tower-media-cache/latest/tower_media_cache/purge/struct.VarnishPurger.html\n\
           [host]: https://docs.rs/tower-media-cache/latest/tower_media_cache/purge/struct.VarnishPurger.html#method.host"
)]

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use crate::bus::Invalidation;
use crate::handle::{Counter, Counters};

/// A boxed future returned by a [`Purger`]: `Ok` once the front tier
/// confirmed the purge.
pub type PurgeFuture =
    Pin<Box<dyn Future<Output = Result<(), Box<dyn Error + Send + Sync>>> + Send + 'static>>;

/// Purges the front tier: called with every invalidation made on this
/// replica. See the [module documentation](self) for when, how often, and
/// adapters for CDNs.
pub trait Purger: fmt::Debug + Send + Sync + 'static {
    /// Starts purging what `invalidation` covers. Called on the layer's
    /// purge task, never on the request path; the future is polled there,
    /// within [`PurgeSettings::timeout`], and started again when it fails.
    fn purge(&self, invalidation: &Invalidation) -> PurgeFuture;
}

impl<P: Purger + ?Sized> Purger for Arc<P> {
    fn purge(&self, invalidation: &Invalidation) -> PurgeFuture {
        (**self).purge(invalidation)
    }
}

/// How the layer runs a [`Purger`]: set with
/// [`MediaCacheLayer::purger_with`](crate::MediaCacheLayer::purger_with).
///
/// ```
/// use std::time::Duration;
/// use tower_media_cache::purge::PurgeSettings;
///
/// let settings = PurgeSettings::default()
///     .attempts(5)
///     .backoff(Duration::from_millis(500))
///     .timeout(Duration::from_secs(2));
/// # let _ = settings;
/// ```
#[derive(Debug, Clone)]
pub struct PurgeSettings {
    attempts: u32,
    backoff: Duration,
    timeout: Duration,
    queue: usize,
    concurrency: usize,
}

impl Default for PurgeSettings {
    /// 3 attempts, 200 ms backoff (doubling), 5 s per attempt, 1024 purges
    /// queued, 4 at once.
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            queue: 1024,
            concurrency: 4,
        }
    }
}

impl PurgeSettings {
    /// Attempts per purge, the first included (at least 1; default 3).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The wait after the first failed attempt, doubled after each further
    /// one (default 200 ms).
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long one attempt may take before it counts as failed (default
    /// 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many purges may wait for their turn (at least 1; default 1024).
    /// An invalidation made while the queue is full is not purged
    /// ([`Stats::purge_failures`](crate::Stats::purge_failures), a `warn`).
    pub fn queue(mut self, purges: usize) -> Self {
        self.queue = purges.max(1);
        self
    }

    /// How many purges run at once (at least 1; default 4).
    pub fn concurrency(mut self, purges: usize) -> Self {
        self.concurrency = purges.max(1);
        self
    }
}

/// A store's purger and its queue: the task that drains it starts on the
/// Tokio runtime of the first invalidation (again on the current one if
/// that runtime is gone).
pub(crate) struct Purging {
    purger: Arc<dyn Purger>,
    settings: PurgeSettings,
    queue: Mutex<Option<mpsc::Sender<Invalidation>>>,
}

impl fmt::Debug for Purging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Purging")
            .field("purger", &self.purger)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Purging {
    pub(crate) fn new(purger: Arc<dyn Purger>, settings: PurgeSettings) -> Self {
        Self {
            purger,
            settings,
            queue: Mutex::new(None),
        }
    }

    /// Queues a purge of `invalidation`; never waits.
    pub(crate) fn send(&self, invalidation: &Invalidation, counters: &Arc<Counters>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        // At most twice: the task may have ended with its runtime.
        for _ in 0..2 {
            if queue.as_ref().is_none_or(mpsc::Sender::is_closed) {
                *queue = self.start(counters);
            }
            let Some(sender) = queue.as_ref() else {
                counters.bump(Counter::PurgeFailures);
                tracing::warn!(
                    ?invalidation,
                    "front tier not purged: invalidated outside a Tokio runtime"
                );
                return;
            };
            match sender.try_send(invalidation.clone()) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    counters.bump(Counter::PurgeFailures);
                    tracing::warn!(
                        ?invalidation,
                        queued = self.settings.queue,
                        "front tier not purged: the purge queue is full"
                    );
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => *queue = None,
            }
        }
    }

    /// Starts the purge task on the current runtime, if any.
    fn start(&self, counters: &Arc<Counters>) -> Option<mpsc::Sender<Invalidation>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (sender, receiver) = mpsc::channel(self.settings.queue);
        runtime.spawn(drain(
            receiver,
            self.purger.clone(),
            self.settings.clone(),
            counters.clone(),
        ));
        Some(sender)
    }
}

/// The purge task: runs each queued purge, at most `concurrency` at once.
async fn drain(
    mut receiver: mpsc::Receiver<Invalidation>,
    purger: Arc<dyn Purger>,
    settings: PurgeSettings,
    counters: Arc<Counters>,
) {
    let running = Arc::new(Semaphore::new(settings.concurrency));
    while let Some(invalidation) = receiver.recv().await {
        let Ok(turn) = running.clone().acquire_owned().await else {
            return;
        };
        let (purger, settings, counters) = (purger.clone(), settings.clone(), counters.clone());
        tokio::spawn(async move {
            attempt(&*purger, &settings, &counters, &invalidation).await;
            drop(turn);
        });
    }
}

/// One purge, tried up to `settings.attempts` times.
async fn attempt(
    purger: &dyn Purger,
    settings: &PurgeSettings,
    counters: &Counters,
    invalidation: &Invalidation,
) {
    let mut backoff = settings.backoff;
    for attempt in 1..=settings.attempts {
        let reason = match tokio::time::timeout(settings.timeout, purger.purge(invalidation)).await
        {
            Ok(Ok(())) => {
                counters.bump(Counter::Purged);
                tracing::debug!(?invalidation, attempt, "front tier purged");
                return;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {:?}", settings.timeout),
        };
        if attempt == settings.attempts {
            counters.bump(Counter::PurgeFailures);
            tracing::warn!(?invalidation, attempt, %reason, "front tier not purged: giving up");
            return;
        }
        counters.bump(Counter::PurgeRetries);
        tracing::debug!(?invalidation, attempt, %reason, "purge failed: trying again");
        tokio::time::sleep(backoff).await;
        backoff = backoff.saturating_mul(2);
    }
}

#[cfg(feature = "varnish")]
pub use varnish::VarnishPurger;

#[cfg(feature = "varnish")]
mod varnish {
    use std::error::Error;
    use std::fmt::Write as _;
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::{PurgeFuture, Purger};
    use crate::bus::Invalidation;

    /// A [`Purger`] for Varnish with `vmod_xkey` (feature `varnish`): see
    /// the [module documentation](super#varnish) for the requests and the
    /// VCL they need.
    ///
    /// It speaks plain HTTP/1.1 over a new TCP connection per request
    /// (`Connection: close`) to Varnish's client port, as purges are rare and
    /// Varnish does not speak TLS itself; a `2xx` answer is a success,
    /// anything else an error the layer tries again.
    ///
    /// ```
    /// use tower_media_cache::{CachePolicy, MediaCacheLayer, TagHeader};
    /// use tower_media_cache::purge::VarnishPurger;
    ///
    /// let layer = MediaCacheLayer::new(CachePolicy::no_cache())
    ///     .tag_header(TagHeader::xkey())
    ///     .purger(VarnishPurger::new("127.0.0.1:6081").host("media.example.com"));
    /// # let _ = layer;
    /// ```
    #[derive(Debug, Clone)]
    pub struct VarnishPurger {
        address: Arc<str>,
        hosts: Vec<Arc<str>>,
    }

    impl VarnishPurger {
        /// Purges through the Varnish listening at `address` (`host:port`).
        pub fn new(address: impl Into<String>) -> Self {
            Self {
                address: address.into().into(),
                hosts: Vec::new(),
            }
        }

        /// A `Host` the cached URLs are requested with: URL purges are sent
        /// once per host (Varnish's objects are per host). Without any, the
        /// `Host` is the Varnish address itself. Characters not allowed in a
        /// host name are dropped.
        pub fn host(mut self, host: impl AsRef<str>) -> Self {
            let host: String = host
                .as_ref()
                .chars()
                .filter(|c| c.is_ascii_graphic() && !"\"<>\\^`{|}".contains(*c))
                .collect();
            if !host.is_empty() && !self.hosts.iter().any(|h| **h == *host) {
                self.hosts.push(host.into());
            }
            self
        }

        fn hosts(&self) -> Vec<Arc<str>> {
            if self.hosts.is_empty() {
                vec![self.address.clone()]
            } else {
                self.hosts.clone()
            }
        }

        /// The requests an invalidation takes, in the order sent.
        pub(crate) fn requests(&self, invalidation: &Invalidation) -> Vec<String> {
            let request = |method: &str, target: &str, host: &str, extra: &str| {
                format!(
                    "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\
                     Content-Length: 0\r\nConnection: close\r\n\r\n"
                )
            };
            let first = self.hosts()[0].clone();
            match invalidation {
                Invalidation::Key(path) => {
                    let target = request_target(path);
                    self.hosts()
                        .iter()
                        .map(|host| request("PURGE", &target, host, ""))
                        .collect()
                }
                Invalidation::Tag(tag) => {
                    // Rendered tags are visible ASCII without separators;
                    // encoded again all the same, so no byte can break out.
                    let tag = request_target(tag);
                    let tag = tag.trim_start_matches('/');
                    vec![request("PURGE", "/", &first, &format!("xkey: {tag}\r\n"))]
                }
                Invalidation::Prefix(prefix) => {
                    let regex = prefix_regex(prefix);
                    vec![request(
                        "BAN",
                        "/",
                        &first,
                        &format!("x-ban-url: {regex}\r\n"),
                    )]
                }
                Invalidation::Clear => vec![request("BAN", "/", &first, "x-ban-url: ^\r\n")],
            }
        }
    }

    impl Purger for VarnishPurger {
        fn purge(&self, invalidation: &Invalidation) -> PurgeFuture {
            let requests = self.requests(invalidation);
            let address = self.address.clone();
            Box::pin(async move {
                for request in requests {
                    send(&address, &request).await?;
                }
                Ok(())
            })
        }
    }

    /// Sends one request and reads the status line of the answer.
    async fn send(address: &str, request: &str) -> Result<(), Box<dyn Error + Send + Sync>> {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut buf = [0u8; 256];
        let line_end = loop {
            if let Some(end) = head.windows(2).position(|w| w == b"\r\n") {
                break end;
            }
            if head.len() > 4096 {
                return Err("Varnish answered with an over-long status line".into());
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err("Varnish closed the connection without an answer".into());
            }
            head.extend_from_slice(&buf[..n]);
        };
        let line = String::from_utf8_lossy(&head[..line_end]);
        let status = line
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.get(2..5))
            .and_then(|code| code.parse::<u16>().ok());
        match status {
            Some(200..=299) => Ok(()),
            Some(_) => Err(format!("Varnish answered {line}").into()),
            None => Err(format!("not an HTTP answer: {line}").into()),
        }
    }

    /// A path as a request target: starts with `/`; every byte that is not
    /// visible ASCII, and `"`, `\`, `^`, `` ` ``, `{`, `|`, `}`, `<`, `>`, `[`,
    /// `]` (not allowed raw in a URI), percent-encoded.
    fn request_target(path: &str) -> String {
        let mut out = String::with_capacity(path.len() + 1);
        if !path.starts_with('/') {
            out.push('/');
        }
        for &byte in path.as_bytes() {
            if byte.is_ascii_graphic() && !b"\"\\^`{|}<>[]".contains(&byte) {
                out.push(char::from(byte));
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
        }
        out
    }

    /// The ban regex for a prefix, anchored at the start of the URL, every
    /// character taken literally without a backslash (Varnish's ban syntax
    /// reads backslashes itself): metacharacters as one-character classes,
    /// the rest encoded as in a request target. A prefix ending in `/` also
    /// covers the directory itself, as in the store.
    fn prefix_regex(prefix: &str) -> String {
        let target = if prefix.is_empty() {
            String::new()
        } else {
            request_target(prefix)
        };
        let (literal, directory) = match target.strip_suffix('/') {
            Some(dir) if !dir.is_empty() => (dir, true),
            _ => (target.as_str(), false),
        };
        let mut regex = String::from("^");
        for c in literal.chars() {
            if ".*+?()$".contains(c) {
                regex.push('[');
                regex.push(c);
                regex.push(']');
            } else {
                regex.push(c);
            }
        }
        if directory {
            regex.push_str("(/|[?]|$)");
        }
        regex
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn urls_are_purged_per_host_with_safe_targets() {
            let purger = VarnishPurger::new("10.0.0.1:6081")
                .host("a.example")
                .host("b.example\r\nX-Evil: 1")
                .host("a.example");
            let requests = purger.requests(&Invalidation::Key("/media/a b\r\n.jpg".into()));
            assert_eq!(requests.len(), 2);
            assert!(
                requests[0]
                    .starts_with("PURGE /media/a%20b%0D%0A.jpg HTTP/1.1\r\nHost: a.example\r\n"),
                "{}",
                requests[0]
            );
            assert!(requests[1].contains("\r\nHost: b.exampleX-Evil:1\r\n"));
            for request in &requests {
                assert_eq!(request.matches("\r\n\r\n").count(), 1);
                assert!(request.ends_with("Connection: close\r\n\r\n"));
            }
            let alone = VarnishPurger::new("10.0.0.1:6081");
            assert!(
                alone.requests(&Invalidation::Key("x".into()))[0]
                    .starts_with("PURGE /x HTTP/1.1\r\nHost: 10.0.0.1:6081\r\n")
            );
        }

        #[test]
        fn tags_are_purged_with_xkey_once() {
            let purger = VarnishPurger::new("v:80").host("a").host("b");
            let requests = purger.requests(&Invalidation::Tag("album:7".into()));
            assert_eq!(requests.len(), 1);
            assert!(requests[0].starts_with("PURGE / HTTP/1.1\r\nHost: a\r\nxkey: album:7\r\n"));
            let odd = purger.requests(&Invalidation::Tag("a b\r\nx".into()));
            assert!(odd[0].contains("\r\nxkey: a%20b%0D%0Ax\r\n"), "{}", odd[0]);
        }

        #[test]
        fn prefixes_and_clears_are_bans_without_backslashes() {
            assert_eq!(prefix_regex("/media/"), "^/media(/|[?]|$)");
            assert_eq!(prefix_regex("/media"), "^/media");
            assert_eq!(prefix_regex("/a.b(c)+$?*"), "^/a[.]b[(]c[)][+][$][?][*]");
            assert_eq!(prefix_regex("/x^[y]\\"), "^/x%5E%5By%5D%5C");
            assert_eq!(prefix_regex(""), "^");
            assert_eq!(prefix_regex("/"), "^/");
            assert_eq!(prefix_regex("m"), "^/m");
            let purger = VarnishPurger::new("v:80");
            let ban = &purger.requests(&Invalidation::Prefix("/media/".into()))[0];
            assert!(
                ban.starts_with("BAN / HTTP/1.1\r\nHost: v:80\r\nx-ban-url: ^/media(/|[?]|$)\r\n")
            );
            let clear = &purger.requests(&Invalidation::Clear)[0];
            assert!(clear.contains("\r\nx-ban-url: ^\r\n"));
        }
    }
}
