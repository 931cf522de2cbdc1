//! Media larger than the buffer, over a real server on 127.0.0.1: a 48 MiB
//! body streamed chunked by an axum handler that ignores `Range`. The layer
//! hashes it as it passes, puts the learned tag on later answers and
//! verifies it, answers revalidations from the store, cuts ranges from the
//! stream, and never lets a response complete under the tag of other bytes.

mod net;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG};
use http::{Method, StatusCode};
use net::{Running, client, etag_of, get, pseudo_random, send, try_send};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer};

use net::media::{LEN, MIB, Media, app};

fn three_days() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(259_200)))
}

async fn serve(media: &Arc<Media>, layer: MediaCacheLayer) -> (Running, CacheHandle) {
    let handle = layer.handle();
    (Running::axum(app(media.clone(), layer)).await, handle)
}

/// `Range: bytes=1000-1099` with `If-Range: tag`: a 206 of exactly those
/// bytes of the `LEN`-byte representation `bytes`.
async fn range_1000_1099(
    client: &net::HttpClient,
    url: &str,
    tag: &str,
    bytes: &Bytes,
) -> net::Answer {
    let range = get(
        client,
        url,
        &[("range", "bytes=1000-1099"), ("if-range", tag)],
    )
    .await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.body, bytes.slice(1000..1100));
    assert_eq!(
        range.header(CONTENT_RANGE),
        format!("bytes 1000-1099/{LEN}")
    );
    range
}

#[tokio::test]
async fn a_48_mib_chunked_body_gets_its_tag_304s_from_the_store_and_ranges() {
    let bytes = pseudo_random(LEN, 48);
    let tag = etag_of(&bytes);
    let media = Media::new(bytes.clone());
    let (server, handle) = serve(&media, three_days()).await;
    let client = client();
    let url = server.url("/video");

    // The first answer goes out as it streams: no tag yet, no length.
    let first = get(&client, &url, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.body == bytes, "first body differs");
    assert!(!first.headers.contains_key(ETAG), "{:?}", first.headers);
    assert!(!first.headers.contains_key(CONTENT_LENGTH));
    assert_eq!(first.header(ACCEPT_RANGES), "bytes");

    // The second carries the XXH3-128 tag of the bytes, verified as they pass.
    let second = get(&client, &url, &[]).await;
    assert_eq!(second.header(ETAG), tag);
    assert!(second.body == bytes, "second body differs");
    assert_eq!(media.calls(), 2);

    // A revalidation is answered from the store, without the handler.
    let revalidated = get(&client, &url, &[("if-none-match", &tag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.header(ETAG), tag);
    assert!(revalidated.body.is_empty());
    assert_eq!(media.calls(), 2);

    // A range with a matching If-Range: exactly those bytes, from the stream.
    let range = range_1000_1099(&client, &url, &tag, &bytes).await;
    assert_eq!(range.header(CONTENT_LENGTH), "100");
    assert_eq!(range.header(ETAG), tag);

    // An If-Range of other bytes gets the whole representation.
    let stale = get(
        &client,
        &url,
        &[
            ("range", "bytes=1000-1099"),
            ("if-range", "\"00000000000000000000000000000000\""),
        ],
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert!(stale.body == bytes, "full body differs");

    let stats = handle.stats();
    assert_eq!(stats.short_circuit_not_modified, 1);
    assert_eq!(stats.ranges_cut_from_stream, 1);
    assert_eq!((stats.content_changed, stats.hashed), (0, 0));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn content_changed_behind_the_layers_back_never_completes_under_the_old_tag() {
    content_changed(Media::new, "chunked").await;
    content_changed(Media::sized, "with Content-Length").await;
}

async fn content_changed(media: fn(Bytes) -> Arc<Media>, framing: &str) {
    let old = pseudo_random(LEN, 1);
    let new = pseudo_random(LEN, 2);
    let media = media(old.clone());
    // `no-cache`: every request reaches the handler.
    let (server, handle) = serve(&media, MediaCacheLayer::new(CachePolicy::no_cache())).await;
    let client = client();
    let url = server.url("/video");
    get(&client, &url, &[]).await;

    // Same length, no Last-Modified: nothing the service says changed.
    media.set(new.clone());
    let (cut, error) = try_send(&client, Method::GET, &url, &[])
        .await
        .expect_err("a body of other bytes under the old tag must not complete");
    // The connection is closed before the end: after the head and some of
    // the bytes, or (a body of one frame, held back) before the head.
    if let Some(cut) = cut {
        assert_eq!(cut.header(ETAG), etag_of(&old));
        assert!(
            cut.body.len() < LEN,
            "{framing}: {} bytes arrived",
            cut.body.len()
        );
    }
    assert!(!error.is_empty());
    assert_eq!(handle.stats().content_changed, 1);

    // The next answer carries the new bytes' tag.
    let next = get(&client, &url, &[]).await;
    assert_eq!(next.header(ETAG), etag_of(&new));
    assert!(next.body == new, "new body differs");

    // And a revalidation with the old tag gets the new bytes, not a 304:
    // without a Last-Modified to vouch for it, the tag is proven by the
    // body it comes with.
    let revalidated = get(&client, &url, &[("if-none-match", &etag_of(&old))]).await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert!(revalidated.body == new);
    let unvouched = get(&client, &url, &[("if-none-match", &etag_of(&new))]).await;
    assert_eq!(unvouched.status, StatusCode::OK);
    assert_eq!(unvouched.header(ETAG), etag_of(&new));
    assert_eq!(handle.stats().content_changed, 1);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn with_last_modified_a_range_stops_reading_and_a_revalidation_gets_304() {
    let bytes = pseudo_random(LEN, 3);
    let tag = etag_of(&bytes);
    let media = Media::with_last_modified(bytes.clone());
    let (server, handle) = serve(&media, MediaCacheLayer::new(CachePolicy::no_cache())).await;
    let client = client();
    let url = server.url("/video");
    get(&client, &url, &[]).await;

    // Last-Modified unchanged vouches for the learned tag: the range is cut
    // and the handler's stream is not read to its end.
    let before = media.produced();
    range_1000_1099(&client, &url, &tag, &bytes).await;
    let read = media.produced() - before;
    assert!(
        read < 4 * MIB as u64,
        "{read} bytes read for a 100-byte range"
    );

    // The handler runs (no-cache), and the layer answers 304 from its head.
    let revalidated = get(&client, &url, &[("if-none-match", &tag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.header(ETAG), tag);
    assert_eq!(media.calls(), 3);
    assert_eq!(handle.stats().not_modified_from_inner, 1);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_range_of_a_stream_of_unknown_length_is_cut_with_a_star() {
    let bytes = pseudo_random(LEN, 4);
    let media = Media::new(bytes.clone());
    let (server, _handle) = serve(&media, three_days()).await;
    let client = client();
    let url = server.url("/video");

    // Nothing learned yet and no Content-Length: only a closed range can
    // be cut, and its complete length is `*` (RFC 9110 §14.4).
    let before = media.produced();
    let range = get(&client, &url, &[("range", "bytes=1000-1099")]).await;
    assert_eq!(range.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(range.body, bytes.slice(1000..1100));
    assert_eq!(range.header(CONTENT_RANGE), "bytes 1000-1099/*");
    // Read up to the buffer limit to find out it is large, and no further.
    let read = media.produced() - before;
    assert!(
        read <= 17 * MIB as u64,
        "{read} bytes read for a 100-byte range"
    );

    // A suffix needs the length: the whole representation goes.
    let suffix = get(&client, &url, &[("range", "bytes=-100")]).await;
    assert_eq!(suffix.status, StatusCode::OK);
    assert!(suffix.body == bytes);

    // That whole answer taught the tag and the length: a range past the
    // end is now known to be unsatisfiable.
    let past = get(
        &client,
        &url,
        &[("range", &format!("bytes={}-{}", LEN + 10, LEN + 20))],
    )
    .await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.header(CONTENT_RANGE), format!("bytes */{LEN}"));
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_body_of_known_length_is_cut_416d_and_suffixed() {
    let bytes = pseudo_random(20 * MIB, 5);
    let media = Media::sized(bytes.clone());
    let (server, _handle) = serve(&media, three_days()).await;
    let client = client();
    let url = server.url("/video");

    let suffix = get(&client, &url, &[("range", "bytes=-100")]).await;
    assert_eq!(suffix.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(suffix.body, bytes.slice(bytes.len() - 100..));
    assert_eq!(
        suffix.header(CONTENT_RANGE),
        format!(
            "bytes {}-{}/{}",
            bytes.len() - 100,
            bytes.len() - 1,
            bytes.len()
        )
    );
    let open = get(&client, &url, &[("range", "bytes=20971000-")]).await;
    assert_eq!(open.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(open.body, bytes.slice(20_971_000..));

    let beyond = get(&client, &url, &[("range", "bytes=99999999-")]).await;
    assert_eq!(beyond.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        beyond.header(CONTENT_RANGE),
        format!("bytes */{}", bytes.len())
    );

    // Several ranges from one pass of a stream: the whole representation.
    let several = get(&client, &url, &[("range", "bytes=0-1,100-101")]).await;
    assert_eq!(several.status, StatusCode::OK);
    assert!(several.body == bytes);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn head_after_a_streamed_get_carries_the_learned_tag() {
    let bytes = pseudo_random(LEN, 6);
    let media = Media::new(bytes.clone());
    let (server, _handle) = serve(&media, three_days()).await;
    let client = client();
    let url = server.url("/video");
    get(&client, &url, &[]).await;

    let head = send(&client, Method::HEAD, &url, &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header(ETAG), etag_of(&bytes));
    assert!(head.body.is_empty());
    let revalidated = send(
        &client,
        Method::HEAD,
        &url,
        &[("if-none-match", &etag_of(&bytes))],
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    drop(client);
    server.stop().await;
}
