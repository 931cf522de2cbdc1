//! The store's tag index lives within the store's byte capacity.
//!
//! Responses carrying many tags — a unique one each, shared ones, long
//! ones — fill the store many times over, and the same paths are learned
//! again with other tags (the index must drop the old ones). The process's
//! resident memory may grow by the store's capacity plus a small constant
//! (allocator slack, the runtime), no more, and the index ends up holding
//! exactly the tags of the entries still stored.
//!
//! One test in its own binary, so no other test's allocations are counted.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt, service_fn};
use tower_media_cache::{CachePolicy, CacheTags, MediaCacheLayer, TagHeader, Trust};

/// The store's capacity in this test.
const CAPACITY: u64 = 8 * 1024 * 1024;
/// What the process may grow by besides the store.
const SLACK: u64 = 24 * 1024 * 1024;

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[tokio::test(flavor = "current_thread")]
async fn tagged_entries_grow_the_process_by_at_most_the_store_capacity() {
    let layer = MediaCacheLayer::new(
        CachePolicy::max_age(Duration::from_secs(3600))
            .trust(Trust::UntilInvalidated)
            .tags(["media"]),
    )
    .tag_header(TagHeader::surrogate_key())
    .store_capacity_bytes(CAPACITY);
    let handle = layer.handle();
    // The same URLs are requested in every round; their tags name the
    // round, so each round's answer replaces the last with other tags.
    let rounds = Arc::new(AtomicUsize::new(99));
    let round_now = rounds.clone();
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(move |request: Request<()>| {
            let round = round_now.load(Ordering::SeqCst);
            async move {
                let path = request.uri().path().to_owned();
                let i = path.rsplit('/').next().unwrap().to_owned();
                let mut response = Response::new(Full::new(Bytes::from_static(b"media bytes")));
                response.extensions_mut().insert(CacheTags::new([
                    format!("media:{i}:{round}"),
                    format!("owner:{}", i.len() % 7),
                    format!("album:{i}:{round}:{}", "a".repeat(200)),
                    format!("round:{round}"),
                ]));
                Ok::<_, Infallible>(response)
            }
        }));
    let mut send = async |path: String| {
        let request = Request::get(path).body(()).unwrap();
        let response = service.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    };

    for i in 0..200 {
        send(format!("/warm/{i}")).await;
    }
    let Some(before) = rss_bytes() else {
        eprintln!("skipped: no /proc/self/statm on this platform");
        return;
    };

    // 20 000 URLs, each learned in 5 rounds with other tags: 100 000
    // tagged entries of ~1.5 KiB, about 18 times the capacity.
    for round in 0..5 {
        rounds.store(round, Ordering::SeqCst);
        for i in 0..20_000 {
            send(format!("/media/{i}")).await;
        }
    }

    let after = rss_bytes().unwrap();
    let stats = handle.stats();
    let grown = after.saturating_sub(before);
    eprintln!(
        "RSS {} MiB -> {} MiB (grew {:.1} MiB); store {:.1} MiB in {} entries; \
         {} evicted; capacity {} MiB + slack {} MiB",
        before >> 20,
        after >> 20,
        grown as f64 / (1 << 20) as f64,
        stats.store_bytes as f64 / (1 << 20) as f64,
        stats.entries,
        stats.evicted,
        CAPACITY >> 20,
        SLACK >> 20,
    );
    assert!(stats.store_bytes <= CAPACITY, "{stats:?}");
    assert!(stats.evicted > 50_000, "the store overflowed: {stats:?}");
    assert!(
        grown <= CAPACITY + SLACK,
        "the process grew by {grown} bytes, more than the store's capacity ({CAPACITY}) + {SLACK}"
    );

    // The index holds the stored entries' tags and nothing else: every
    // round but the last was replaced or evicted, so its tag finds nothing.
    handle.invalidate_tag("round:99");
    for round in 0..4 {
        assert_eq!(
            handle.invalidate_tag(&format!("round:{round}")),
            0,
            "{round}"
        );
    }
    let stored = handle.stats().entries as usize;
    assert_eq!(handle.invalidate_tag("round:4"), stored);
    assert_eq!(handle.invalidate_tag("media"), 0);
    assert_eq!(handle.stats().entries, 0);
}
