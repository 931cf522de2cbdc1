//! The hash memo: a service that hands out the same `Bytes` again is not
//! read again, and the memo never serves a stale hash — it keeps every
//! buffer it remembers alive, so no other content can take its address.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_media_cache::{CachePolicy, MediaCacheLayer, content_etag};

/// A service answering every request with a clone of the `Bytes` in `slot`.
fn serving(
    slot: Arc<Mutex<Bytes>>,
) -> impl Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone {
    service_fn(move |_: Request<()>| {
        let body = slot.lock().unwrap().clone();
        async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
    })
}

fn three_minutes() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(60)))
}

async fn etag_of<S>(service: &mut S, path: &str) -> String
where
    S: Service<Request<()>, Response = Response<tower_media_cache::ResponseBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let (etag, body) = fetch(service, path).await;
    let etag = etag.expect("an ETag").to_str().unwrap().to_owned();
    assert_eq!(
        etag,
        content_etag(&body).to_string(),
        "the ETag is the hash of the bytes sent"
    );
    etag
}

async fn body_of<S>(service: &mut S, path: &str) -> Bytes
where
    S: Service<Request<()>, Response = Response<tower_media_cache::ResponseBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    fetch(service, path).await.1
}

/// A `GET` of `path`: the answer's `ETag`, if any, and its whole body.
async fn fetch<S>(service: &mut S, path: &str) -> (Option<http::HeaderValue>, Bytes)
where
    S: Service<Request<()>, Response = Response<tower_media_cache::ResponseBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::get(path).body(()).unwrap())
        .await
        .unwrap();
    let etag = response.headers().get("etag").cloned();
    (
        etag,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn pattern(seed: u8, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn the_same_bytes_handed_out_again_is_not_hashed_again() {
    let slot = Arc::new(Mutex::new(pattern(1, 200 * 1024)));
    let layer = three_minutes();
    let mut service = layer.layer(serving(slot.clone()));
    let first = etag_of(&mut service, "/a").await;
    let second = etag_of(&mut service, "/b").await;
    assert_eq!(first, second);
    let stats = layer.handle().stats();
    assert_eq!((stats.hashed, stats.hash_memo_hits), (2, 1), "{stats:?}");
}

/// A buffer larger than the per-response limit (a video held in memory)
/// streams; the memo knows it the second time too, so it is not hashed
/// again, and the learned tag the second answer carries is verified from
/// the memo.
#[tokio::test]
async fn a_large_buffer_handed_out_again_is_not_hashed_again() {
    let video = pattern(9, 40 * 1024 * 1024);
    let slot = Arc::new(Mutex::new(video.clone()));
    let layer = three_minutes().max_buffer_bytes(1024 * 1024);
    let mut service = layer.layer(serving(slot));
    for path in ["/v", "/v", "/w"] {
        assert!(body_of(&mut service, path).await == video);
    }
    let stats = layer.handle().stats();
    assert_eq!(
        (stats.hashed_streaming, stats.hash_memo_hits),
        (3, 2),
        "{stats:?}"
    );
}

/// The memo holds a clone of every buffer it remembers: the buffer stays
/// alive, so a new allocation can never reuse its address for other bytes
/// and be taken for it.
#[tokio::test]
async fn a_remembered_buffer_is_kept_alive_and_new_content_gets_its_own_hash() {
    let original = pattern(7, 64 * 1024);
    let address = original.as_ptr() as usize;
    let slot = Arc::new(Mutex::new(original.clone()));
    let layer = three_minutes();
    let mut service = layer.layer(serving(slot.clone()));
    etag_of(&mut service, "/a").await;
    *slot.lock().unwrap() = Bytes::new();
    assert!(!original.is_unique(), "the memo keeps a clone");
    drop(original);
    // Buffers of the same size with other bytes, allocated while the
    // remembered one is alive, never take its address, and each gets the
    // hash of its own bytes (checked in `etag_of`).
    for seed in 0..64u8 {
        let other = pattern(seed.wrapping_add(100), 64 * 1024);
        assert_ne!(other.as_ptr() as usize, address);
        *slot.lock().unwrap() = other;
        etag_of(&mut service, "/a").await;
    }
    assert_eq!(layer.handle().stats().hash_memo_hits, 0);
}

#[tokio::test]
async fn the_memo_is_bounded_and_can_be_turned_off() {
    // Off: nothing is kept.
    let bytes = pattern(3, 8 * 1024);
    let slot = Arc::new(Mutex::new(bytes.clone()));
    let layer = three_minutes().hash_memo_bytes(0);
    let mut service = layer.layer(serving(slot.clone()));
    etag_of(&mut service, "/a").await;
    etag_of(&mut service, "/a").await;
    *slot.lock().unwrap() = Bytes::new();
    assert!(bytes.is_unique(), "no memo: no clone kept");
    assert_eq!(layer.handle().stats().hash_memo_hits, 0);

    // Bounded: buffers past the limit push others out, which releases them.
    let first = pattern(4, 8 * 1024);
    let slot = Arc::new(Mutex::new(first.clone()));
    let layer = three_minutes().hash_memo_bytes(32 * 1024);
    let mut service = layer.layer(serving(slot.clone()));
    etag_of(&mut service, "/a").await;
    assert!(!first.is_unique());
    let mut kept = Vec::new();
    for seed in 0..32u8 {
        let other = pattern(seed.wrapping_add(50), 8 * 1024);
        kept.push(other.clone());
        *slot.lock().unwrap() = other;
        etag_of(&mut service, "/a").await;
    }
    *slot.lock().unwrap() = Bytes::new();
    kept.push(first);
    // Whichever it keeps (quick_cache's eviction is not plain LRU), it
    // keeps no more than the limit alive, and released the rest.
    let pinned = kept.iter().filter(|b| !b.is_unique()).count();
    assert!(
        pinned >= 1 && pinned * 8 * 1024 <= 32 * 1024,
        "{pinned} buffers of 8 KiB kept alive"
    );
}

#[tokio::test]
async fn small_and_multi_frame_bodies_are_hashed_every_time() {
    let slot = Arc::new(Mutex::new(pattern(9, 512)));
    let layer = three_minutes();
    let mut service = layer.layer(serving(slot.clone()));
    etag_of(&mut service, "/a").await;
    etag_of(&mut service, "/a").await;
    assert_eq!(layer.handle().stats().hash_memo_hits, 0, "under 1 KiB");
    // Two frames of the same buffers: hashed, not memoised.
    let parts = [pattern(1, 4096), pattern(2, 4096)];
    let service = layer.layer(service_fn(move |_: Request<()>| {
        let frames = parts
            .clone()
            .map(|b| Ok::<_, Infallible>(http_body::Frame::data(b)));
        async move {
            Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(
                futures_util::stream::iter(frames),
            )))
        }
    }));
    for _ in 0..2 {
        let response = service
            .clone()
            .oneshot(Request::get("/b").body(()).unwrap())
            .await
            .unwrap();
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(etag, content_etag(&body).to_string());
    }
    assert_eq!(layer.handle().stats().hash_memo_hits, 0);
}
