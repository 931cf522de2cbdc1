//! The validator store is bounded in bytes, whatever requests carry.
//!
//! Before the store weighed its entries, 10 000 requests with 32 KB query
//! strings grew a process by 317 MiB and 5 000 requests with a 380 KB
//! `Accept-Language` on a `Vary` route by 1.8 GiB, never freed: entries
//! were counted, not weighed, and each kept its whole URL and `Vary`
//! values. This test sends that traffic, plus requests that the store does
//! learn (7 KB queries, enough to fill it many times over), and measures
//! the process's resident memory: it may grow by the store's capacity plus
//! a small constant (allocator slack, the runtime), no more.
//!
//! One test in its own binary, so no other test's allocations are counted.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_media_cache::{CachePolicy, MediaCacheLayer, Trust};

/// The store's capacity in this test.
const CAPACITY: u64 = 8 * 1024 * 1024;
/// What the process may grow by besides the store: allocator slack and
/// fragmentation from megabytes of short-lived request buffers.
const SLACK: u64 = 24 * 1024 * 1024;

/// Resident set size of this process, from `/proc/self/statm` (Linux).
fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_requests_grow_the_process_by_at_most_the_store_capacity() {
    let layer = MediaCacheLayer::new(
        CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
    )
    .store_capacity_bytes(CAPACITY);
    let handle = layer.handle();
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|request: Request<()>| async move {
            let mut response = Response::new(Full::new(Bytes::from_static(b"media bytes")));
            if request.uri().path().starts_with("/vary/") {
                response
                    .headers_mut()
                    .insert("vary", "accept-language".parse().unwrap());
            }
            Ok::<_, Infallible>(response)
        }));
    let mut send = async |request: Request<()>| {
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    };

    // Warm up the runtime, the allocator and the store's tables.
    for i in 0..200 {
        send(Request::get(format!("/warm/{i}")).body(()).unwrap()).await;
    }
    let Some(before) = rss_bytes() else {
        eprintln!("skipped: no /proc/self/statm on this platform");
        return;
    };

    // Learnable: 4 000 entries of ~7 KB, four times the capacity.
    let query = "q".repeat(7 * 1024);
    for i in 0..4_000 {
        send(
            Request::get(format!("/media/{i}?{query}"))
                .body(())
                .unwrap(),
        )
        .await;
    }
    // Refused: 10 000 requests with 32 KB query strings.
    let query = "q".repeat(32 * 1024);
    for i in 0..10_000 {
        send(
            Request::get(format!("/media/{i}?{query}"))
                .body(())
                .unwrap(),
        )
        .await;
    }
    // Refused: 5 000 requests with a 380 KB `Accept-Language` on a Vary route.
    let language = "fr-CH, ".repeat(380 * 1024 / 7);
    for i in 0..5_000 {
        let request = Request::get(format!("/vary/{i}"))
            .header("accept-language", &language)
            .body(())
            .unwrap();
        send(request).await;
    }

    let after = rss_bytes().unwrap();
    let stats = handle.stats();
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {} MiB -> {} MiB (grew {:.1} MiB); store {:.1} MiB in {} entries; \
         {} not learned as too large; capacity {} MiB + slack {} MiB",
        before >> 20,
        after >> 20,
        grown as f64 / (1 << 20) as f64,
        stats.store_bytes as f64 / (1 << 20) as f64,
        stats.entries,
        stats.not_learned_too_large,
        CAPACITY >> 20,
        SLACK >> 20,
    );
    assert!(stats.store_bytes <= CAPACITY, "{stats:?}");
    assert!(
        stats.evicted > 0,
        "the learnable traffic overflowed the store: {stats:?}"
    );
    assert_eq!(stats.not_learned_too_large, 15_000, "{stats:?}");
    assert!(
        grown <= CAPACITY + SLACK,
        "the process grew by {grown} bytes, more than the store's capacity ({CAPACITY}) + {SLACK}"
    );
}
