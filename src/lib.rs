//! Tower middleware that makes any HTTP service cache-friendly for media
//! fetchers: caching proxies (Twilio's media fetcher), CDNs and browsers.
//!
//! On the way out it adds a strong content `ETag` (XXH3-128 of the bytes,
//! identical on every replica) and the `Cache-Control` policy of the route.
//! On the way in it answers conditional requests (`If-None-Match`,
//! `If-Modified-Since`, `If-Match`, `If-Unmodified-Since`, `If-Range`)
//! exactly as RFC 9110 §13 says — and, when it already knows the current
//! validator, without calling the inner service at all.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, header};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_media_cache::{CachePolicy, MediaCacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(259_200))))
//!     .service(service_fn(|_req: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"jpeg bytes"))))
//!     }));
//!
//! let response = service.clone().oneshot(Request::get("/media/AAAA.jpg").body(()).unwrap()).await.unwrap();
//! assert_eq!(response.headers()[header::CACHE_CONTROL], "max-age=259200");
//! let etag = response.headers()[header::ETAG].clone();
//!
//! let revalidation = Request::get("/media/AAAA.jpg")
//!     .header(header::IF_NONE_MATCH, etag)
//!     .body(())
//!     .unwrap();
//! let response = service.oneshot(revalidation).await.unwrap();
//! assert_eq!(response.status(), 304);
//! # }
//! ```
//!
//! See the README for the policies, trust modes, ranges and invalidation.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod body;
pub mod bus;
pub mod cache_status;
mod classify;
mod coalesce;
mod config;
mod exchange;
pub mod fingerprint;
mod future;
mod handle;
mod headers;
mod inner;
mod key;
mod layer;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod policy;
pub mod preconditions;
pub mod purge;
mod range;
mod response;
mod rules;
mod service;
mod store;
mod stream;
pub mod tags;
mod validators;
mod write;

pub use body::ResponseBody;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use bus::redis::{RedisBus, SharedStore};
pub use bus::{BusLink, Invalidation, InvalidationBus, NoopBus};
pub use fingerprint::{fingerprint_with, fingerprinted_path};
pub use future::ResponseFuture;
pub use handle::{CacheHandle, Stats};
pub use headers::{EntityTag, InvalidEntityTag};
pub use layer::{
    DEFAULT_BUFFER_BUDGET, DEFAULT_COALESCE_TIMEOUT, DEFAULT_HASH_MEMO_BYTES, DEFAULT_MAX_BUFFER,
    DEFAULT_STORE_CAPACITY_BYTES, MediaCacheLayer,
};
pub use policy::{CachePolicy, Probe, ProbeFuture, Trust};
pub use range::MAX_RANGES;
pub use service::MediaCache;
pub use stream::{BoxError, ContentChanged};
pub use tags::{CacheTags, TagHeader};
pub use validators::{Validators, content_etag};

/// Every `rust` block of the README is compiled and run as a doc test, so
/// the README cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
