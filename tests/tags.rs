//! Cache tags through the layer: the headers they are written in, their
//! syntax and bounds, `invalidate_tag`, and the purger each invalidation is
//! handed to (a recording one here; the real Varnish one in
//! `tests/purge.rs`).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Content, Origin, get, req, send};
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::ServiceExt;
use tower_media_cache::purge::{PurgeFuture, PurgeSettings, Purger};
use tower_media_cache::tags::MAX_TAG_HEADER_BYTES;
use tower_media_cache::{CachePolicy, CacheTags, Invalidation, MediaCacheLayer, TagHeader, Trust};

fn trusted() -> CachePolicy {
    CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated)
}

/// An inner service answering `body` with the given per-response tags.
fn tagging(
    tags: &'static [&'static str],
    body: Arc<Mutex<&'static [u8]>>,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    Request<()>,
    Response = Response<Full<Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Future + Send,
> + Clone {
    tower::service_fn(move |_request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from_static(*body.lock().unwrap())));
        if !tags.is_empty() {
            response.extensions_mut().insert(CacheTags::new(tags));
        }
        async move { Ok::<_, std::convert::Infallible>(response) }
    })
}

#[tokio::test]
async fn tags_are_written_in_each_configured_header_in_its_syntax() {
    let layer = MediaCacheLayer::new(trusted().tags(["media", "owner:1"]))
        .route("/live/{*rest}", CachePolicy::no_cache().tags(["live"]))
        .tag_header(TagHeader::surrogate_key())
        .tag_header(TagHeader::cache_tag())
        .tag_header(TagHeader::xkey())
        .tag_header(TagHeader::xkey());
    let body = Arc::new(Mutex::new(&b"bytes"[..]));
    let service = tower::Layer::layer(
        &layer,
        tagging(&["album 7", "owner:1", ""], body, Arc::default()),
    );
    let answer = send(&service, req(get("/media/a.jpg"))).await;
    assert_eq!(
        answer.header("surrogate-key"),
        Some("media owner:1 album%207")
    );
    assert_eq!(answer.header("cache-tag"), Some("media,owner:1,album%207"));
    assert_eq!(answer.header("xkey"), Some("media owner:1 album%207"));
    assert_eq!(answer.headers.get_all("xkey").iter().count(), 1);

    let live = send(&service, req(get("/live/cam.jpg"))).await;
    assert_eq!(live.header("surrogate-key"), Some("live album%207 owner:1"));
}

#[tokio::test]
async fn without_a_tag_header_tags_stay_inside_and_the_extension_is_removed() {
    let layer = MediaCacheLayer::new(trusted().tags(["media"]));
    let handle = layer.handle();
    let body = Arc::new(Mutex::new(&b"bytes"[..]));
    let service = tower::Layer::layer(&layer, tagging(&["owner:1"], body, Arc::default()));
    let response = service.oneshot(req(get("/a"))).await.unwrap();
    for name in ["surrogate-key", "cache-tag", "xkey"] {
        assert!(!response.headers().contains_key(name), "{name}");
    }
    assert!(response.extensions().get::<CacheTags>().is_none());
    // Indexed all the same.
    assert_eq!(handle.invalidate_tag("owner:1"), 1);
}

#[tokio::test]
async fn odd_tags_are_encoded_huge_ones_hashed_and_the_header_bounded() {
    let huge = "h".repeat(5000);
    let many: Vec<String> = (0..40)
        .map(|i| format!("{i:02}{}", "m".repeat(998)))
        .collect();
    let layer = MediaCacheLayer::new(trusted().tags([
        "with space",
        "comma,inside",
        "ünïcödé",
        "quote\"and%",
        "line\r\nbreak",
        huge.as_str(),
    ]))
    .route("/many", trusted().tags(&many))
    .tag_header(TagHeader::surrogate_key());
    let handle = layer.handle();
    let origin = Origin::new(Content::ok(b"bytes"));
    let service = origin.wrap(&layer);

    let answer = send(&service, req(get("/odd"))).await;
    let value = answer.header("surrogate-key").unwrap();
    let tokens: Vec<&str> = value.split(' ').collect();
    assert_eq!(
        tokens[..5],
        [
            "with%20space",
            "comma%2Cinside",
            "%C3%BCn%C3%AFc%C3%B6d%C3%A9",
            "quote%22and%25",
            "line%0D%0Abreak"
        ]
    );
    assert!(
        tokens[5].starts_with("xxh3-") && tokens[5].len() == 37,
        "{}",
        tokens[5]
    );
    assert_eq!(tokens.len(), 6);
    assert_eq!(handle.invalidate_tag(&huge), 1, "the hash is found again");

    let answer = send(&service, req(get("/many"))).await;
    let value = answer.header("surrogate-key").unwrap();
    assert!(value.len() <= MAX_TAG_HEADER_BYTES, "{}", value.len());
    let sent = value.split(' ').count();
    assert_eq!(sent, 16);
    assert_eq!(handle.stats().tags_not_sent, 40 - 16);
    // Tags left out of the header are still indexed.
    assert_eq!(handle.invalidate_tag(&many[39]), 1);
}

#[tokio::test]
async fn a_response_with_a_hundred_thousand_tags_is_served_bounded_and_not_learned() {
    let layer = MediaCacheLayer::new(trusted()).tag_header(TagHeader::cache_tag());
    let handle = layer.handle();
    let service = tower::Layer::layer(
        &layer,
        tower::service_fn(|_request: Request<()>| async {
            let mut response = Response::new(Full::new(Bytes::from_static(b"bytes")));
            response
                .extensions_mut()
                .insert((0..100_000).map(|i| format!("t{i}")).collect::<CacheTags>());
            Ok::<_, std::convert::Infallible>(response)
        }),
    );
    let answer = send(&service, req(get("/a"))).await;
    assert_eq!(answer.status, 200);
    let value = answer.header("cache-tag").unwrap();
    assert!(value.len() <= MAX_TAG_HEADER_BYTES);
    let sent = value.split(',').count() as u64;
    assert_eq!(handle.stats().tags_not_sent, 100_000 - sent);
    // Its tags alone weigh more than an entry may: not learned, so the
    // store never answers for it (and has nothing to invalidate).
    assert_eq!(handle.stats().not_learned_too_large, 1);
    assert_eq!(handle.stats().entries, 0);
    assert_eq!(handle.invalidate_tag("t0"), 0);
}

#[tokio::test]
async fn the_services_own_tag_header_is_kept_and_extended() {
    let layer =
        MediaCacheLayer::new(trusted().tags(["layer"])).tag_header(TagHeader::surrogate_key());
    let origin = Origin::new(
        Content::ok(b"bytes")
            .header("surrogate-key", "own1 own2")
            .header("surrogate-key", "own3"),
    );
    let answer = send(&origin.wrap(&layer), req(get("/a"))).await;
    assert_eq!(
        answer
            .headers
            .get_all("surrogate-key")
            .iter()
            .collect::<Vec<_>>(),
        ["own1 own2 own3 layer"]
    );
}

#[tokio::test]
async fn the_stores_304s_repeat_the_tags() {
    let layer = MediaCacheLayer::new(trusted().tags(["album:7"])).tag_header(TagHeader::xkey());
    let origin = Origin::new(Content::ok(b"bytes"));
    let service = origin.wrap(&layer);
    let first = send(&service, req(get("/a"))).await;
    let etag = first.header("etag").unwrap().to_owned();
    let revalidated = send(&service, req(get("/a").header("if-none-match", &etag))).await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(origin.calls(), 1, "answered from the store");
    assert_eq!(revalidated.header("xkey"), Some("album:7"));
}

#[tokio::test]
async fn invalidate_tag_sends_the_next_revalidation_to_the_service() {
    let layer = MediaCacheLayer::new(trusted().tags(["media"])).tag_header(TagHeader::xkey());
    let handle = layer.handle();
    let body = Arc::new(Mutex::new(&b"version one"[..]));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = tower::Layer::layer(&layer, tagging(&["album 7"], body.clone(), calls.clone()));
    let other = tower::Layer::layer(&layer, tagging(&["album 8"], body.clone(), calls.clone()));

    let first = send(&service, req(get("/album7/a.jpg"))).await;
    let etag = first.header("etag").unwrap().to_owned();
    let second = send(&other, req(get("/album8/b.jpg"))).await;
    let etag8 = second.header("etag").unwrap().to_owned();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let revalidate = |path: &str, etag: &str| req(get(path).header("if-none-match", etag));
    assert_eq!(
        send(&service, revalidate("/album7/a.jpg", &etag))
            .await
            .status,
        304
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "answered from the store");

    *body.lock().unwrap() = b"version two";
    assert_eq!(handle.invalidate_tag("album 7"), 1);
    assert_eq!(handle.stats().invalidated, 1);
    let after = send(&service, revalidate("/album7/a.jpg", &etag)).await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, "version two");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "the service was asked");
    // Album 8 was not tagged "album 7": still answered by the store.
    assert_eq!(
        send(&other, revalidate("/album8/b.jpg", &etag8))
            .await
            .status,
        304
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

// ---------------------------------------------------------------------------
// Purgers

/// Records what it is asked to purge; fails the first `failures` attempts.
#[derive(Debug, Default)]
struct Recording {
    purged: Mutex<Vec<Invalidation>>,
    failures: AtomicUsize,
    attempts: AtomicUsize,
}

impl Purger for Recording {
    fn purge(&self, invalidation: &Invalidation) -> PurgeFuture {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !fail {
            self.purged.lock().unwrap().push(invalidation.clone());
        }
        Box::pin(async move {
            if fail {
                Err("front tier said 503".into())
            } else {
                Ok(())
            }
        })
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn quick() -> PurgeSettings {
    PurgeSettings::default()
        .backoff(Duration::from_millis(1))
        .timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn every_local_invalidation_is_purged() {
    let recording = Arc::new(Recording::default());
    let layer = MediaCacheLayer::new(trusted()).purger_with(recording.clone(), quick());
    let handle = layer.handle();
    let origin = Origin::new(Content::ok(b"bytes").status(204));
    let service = origin.wrap(&layer);

    handle.invalidate("https://media.example/media/a.jpg?size=small");
    handle.invalidate_prefix("/media/");
    handle.invalidate_tag("album 7");
    handle.invalidate_tag("");
    handle.clear();
    // A write through the layer invalidates, hence purges, its target.
    let put = send(&service, req(get("/media/b.jpg").method(Method::PUT))).await;
    assert_eq!(put.status, 204);

    eventually("five purges", || handle.stats().purged == 5).await;
    let mut purged = recording.purged.lock().unwrap().clone();
    purged.sort_by_key(|i| format!("{i:?}"));
    let mut expected = vec![
        Invalidation::Key("/media/a.jpg".into()),
        Invalidation::Prefix("/media/".into()),
        Invalidation::Tag("album%207".into()),
        Invalidation::Clear,
        Invalidation::Key("/media/b.jpg".into()),
    ];
    expected.sort_by_key(|i| format!("{i:?}"));
    // The purges run concurrently: compared in a fixed order.
    assert_eq!(purged, expected);
    let stats = handle.stats();
    assert_eq!((stats.purge_retries, stats.purge_failures), (0, 0));
}

#[tokio::test]
async fn failed_purges_are_retried_a_bounded_number_of_times_and_counted() {
    let recording = Arc::new(Recording::default());
    recording.failures.store(2, Ordering::SeqCst);
    let layer = MediaCacheLayer::new(trusted()).purger_with(recording.clone(), quick().attempts(3));
    let handle = layer.handle();
    handle.invalidate("/a");
    eventually("purged on the third attempt", || handle.stats().purged == 1).await;
    assert_eq!(handle.stats().purge_retries, 2);
    assert_eq!(handle.stats().purge_failures, 0);

    recording.failures.store(10, Ordering::SeqCst);
    handle.invalidate("/b");
    eventually("given up", || handle.stats().purge_failures == 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        recording.attempts.load(Ordering::SeqCst),
        3 + 3,
        "no fourth attempt"
    );
    assert_eq!(handle.stats().purge_retries, 2 + 2);
    assert_eq!(handle.stats().purged, 1);
}

/// Never answers.
#[derive(Debug, Default)]
struct Hanging(AtomicUsize);

impl Purger for Hanging {
    fn purge(&self, _invalidation: &Invalidation) -> PurgeFuture {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::pending::<
            Result<(), Box<dyn std::error::Error + Send + Sync>>,
        >()) as Pin<Box<_>>
    }
}

#[tokio::test]
async fn a_hanging_purger_never_holds_up_invalidations_or_requests() {
    let hanging = Arc::new(Hanging::default());
    let layer = MediaCacheLayer::new(trusted()).purger_with(
        hanging.clone(),
        quick()
            .attempts(2)
            .timeout(Duration::from_millis(100))
            .concurrency(1)
            .queue(2),
    );
    let handle = layer.handle();
    let origin = Origin::new(Content::ok(b"bytes"));
    let service = origin.wrap(&layer);
    let started = Instant::now();
    for i in 0..50 {
        handle.invalidate(&format!("/{i}"));
        assert_eq!(send(&service, req(get("/x"))).await.status, 200);
    }
    // Nothing above waited for the purger (50 purges of 2 × 100 ms each, one
    // at a time, would take 10 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // One running, two queued at most (and one taken off the queue while
    // waiting for its turn): the rest were dropped and counted.
    let dropped = handle.stats().purge_failures;
    assert!(dropped >= 46, "{dropped}");
    // The ones that ran time out twice each and are given up, counted too.
    eventually("the queued purges given up", || {
        handle.stats().purge_failures == 50
    })
    .await;
    assert_eq!(handle.stats().purged, 0);
    assert!(hanging.0.load(Ordering::SeqCst) <= 8);
}

#[test]
fn an_invalidation_outside_a_runtime_is_not_purged_but_counted() {
    let recording = Arc::new(Recording::default());
    let layer = MediaCacheLayer::new(trusted()).purger(recording.clone());
    let handle = layer.handle();
    handle.invalidate("/a");
    assert_eq!(handle.stats().purge_failures, 1);
    // Inside a runtime it works, without anything else to do.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            handle.invalidate("/b");
            eventually("purged", || handle.stats().purged == 1).await;
        });
    // The runtime is gone with its purge task: the next runtime starts one.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            handle.invalidate("/c");
            eventually("purged again", || handle.stats().purged == 2).await;
        });
    assert_eq!(
        *recording.purged.lock().unwrap(),
        [
            Invalidation::Key("/b".into()),
            Invalidation::Key("/c".into())
        ]
    );
}

#[test]
#[should_panic(expected = "already has a purger")]
fn one_purger_per_store() {
    let recording = Arc::new(Recording::default());
    let layer = MediaCacheLayer::new(trusted()).purger(recording.clone());
    let _ = layer.clone().purger(recording);
}
