//! The layer in front of real servers on 127.0.0.1: the `media_server`
//! example (axum + tower-http `ServeDir`), the `hyper` example (a bare
//! `service_fn`), the `tonic` example (gRPC health) and large bodies
//! streamed by an axum handler. Requests go over TCP through hyper-util's
//! client (tonic's channel for gRPC), so everything a real fetcher sees —
//! framing, `Content-Length`, trailers — is what is tested.

#[path = "../examples/media_server.rs"]
#[allow(dead_code)]
mod media_server;

#[path = "../examples/hyper.rs"]
#[allow(dead_code)]
mod hyper_server;

#[path = "../examples/tonic.rs"]
#[allow(dead_code)]
mod tonic_server;

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED,
};
use http::{Method, StatusCode};
use tower_media_cache::{CachePolicy, DEFAULT_MAX_BUFFER, MediaCacheLayer};

mod net;
use net::{Running, client, etag_of, get, pseudo_random, send};

fn media_bytes(name: &str) -> Vec<u8> {
    std::fs::read(media_server::media_dir().join(name)).unwrap()
}

// ---------------------------------------------------------------------------
// axum: the media_server example
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_examples_large_video_seeks_from_the_stream_and_gets_its_tag() {
    media_server::ensure_large_video().unwrap();
    let video = media_server::large_video();
    assert!(
        video.len() as u64 > DEFAULT_MAX_BUFFER,
        "larger than the buffer"
    );
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let url = server.url(&format!("/videos/{}", media_server::LARGE_VIDEO));

    // A player's seek before anything is known: cut from the stream.
    let seek = get(&client, &url, &[("range", "bytes=1000000-1000099")]).await;
    assert_eq!(seek.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&seek.body[..], &video[1_000_000..1_000_100]);
    assert_eq!(
        seek.header(CONTENT_RANGE),
        format!("bytes 1000000-1000099/{}", video.len())
    );

    // The whole file streams; the next answer and HEAD carry its tag.
    let whole = get(&client, &url, &[]).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert!(whole.body == video, "video differs");
    let tag = etag_of(&video);
    let again = get(&client, &url, &[]).await;
    assert_eq!(again.header(ETAG), tag);
    let head = send(&client, Method::HEAD, &url, &[]).await;
    assert_eq!(head.header(ETAG), tag);

    // Seeking with If-Range, as a player resuming does.
    let resume = get(
        &client,
        &url,
        &[("range", "bytes=20000000-"), ("if-range", &tag)],
    )
    .await;
    assert_eq!(resume.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&resume.body[..], &video[20_000_000..]);
    let revalidated = get(&client, &url, &[("if-none-match", &tag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn media_file_on_axum_gets_content_etag_and_public_max_age() {
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let file = media_bytes("gradient.png");

    let answer = get(&client, &server.url("/media/gradient.png"), &[]).await;

    assert_eq!(answer.status, StatusCode::OK);
    let etag = answer.header(ETAG);
    assert_eq!(etag.len(), 34, "quoted 32 hex digits: {etag}");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(etag, etag_of(&file), "the content ETag, not ServeDir's");
    assert_eq!(answer.header(CACHE_CONTROL), "public, max-age=259200");
    assert_eq!(answer.header(CONTENT_TYPE), "image/png");
    assert_eq!(answer.header(CONTENT_LENGTH), file.len().to_string());
    assert_eq!(answer.body, file);

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn if_none_match_on_axum_gets_304_without_body() {
    let layer = media_server::cache_layer();
    let handle = layer.handle();
    let server = Running::axum(media_server::app_with(layer)).await;
    let client = client();
    let url = server.url("/media/tone.wav");
    let etag = etag_of(&media_bytes("tone.wav"));

    // Before the layer has seen the file: ServeDir serves it, the layer
    // hashes it and turns the 200 into a 304.
    let first = get(&client, &url, &[("if-none-match", &etag)]).await;
    // Now the layer knows the validator and answers alone.
    let second = get(&client, &url, &[("if-none-match", &etag)]).await;

    for answer in [&first, &second] {
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
        assert!(answer.body.is_empty());
        assert_eq!(answer.header(ETAG), etag);
        assert_eq!(answer.header(CACHE_CONTROL), "public, max-age=259200");
        assert!(!answer.headers.contains_key(CONTENT_TYPE));
        assert!(answer.headers.contains_key(LAST_MODIFIED));
    }
    let stats = handle.stats();
    assert_eq!(stats.not_modified_from_inner, 1);
    assert_eq!(stats.short_circuit_not_modified, 1);

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn if_modified_since_with_serve_dir_last_modified_gets_304() {
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let url = server.url("/media/sweep.y4m");

    let full = get(&client, &url, &[]).await;
    assert_eq!(full.status, StatusCode::OK);
    let last_modified = full.header(LAST_MODIFIED).to_owned();

    let same = get(&client, &url, &[("if-modified-since", &last_modified)]).await;
    assert_eq!(same.status, StatusCode::NOT_MODIFIED);
    assert!(same.body.is_empty());
    assert_eq!(same.header(ETAG), full.header(ETAG));

    let older = get(
        &client,
        &url,
        &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(older.status, StatusCode::OK);
    assert_eq!(older.body, full.body);

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn if_match_on_axum_passes_with_content_etag_and_fails_with_412_otherwise() {
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let url = server.url("/media/gradient.png");
    let file = media_bytes("gradient.png");
    let etag = etag_of(&file);

    // ServeDir would compare this with its own (size, mtime) tag and fail
    // it; the example hides If-Match from it so the layer decides.
    let matching = get(&client, &url, &[("if-match", &etag)]).await;
    assert_eq!(matching.status, StatusCode::OK);
    assert_eq!(matching.body, file);

    let failing = get(&client, &url, &[("if-match", "\"nope\"")]).await;
    assert_eq!(failing.status, StatusCode::PRECONDITION_FAILED);
    assert!(failing.body.is_empty());
    assert_eq!(failing.header(ETAG), etag, "412 tells the current ETag");

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn live_routes_on_axum_are_no_cache_and_always_reach_the_service() {
    let layer = media_server::cache_layer();
    let handle = layer.handle();
    let server = Running::axum(media_server::app_with(layer)).await;
    let client = client();

    let file = get(&client, &server.url("/live/gradient.png"), &[]).await;
    assert_eq!(file.status, StatusCode::OK);
    assert_eq!(file.header(CACHE_CONTROL), "no-cache");
    assert_eq!(file.header(ETAG), etag_of(&media_bytes("gradient.png")));

    let etag = file.header(ETAG).to_owned();
    let revalidated = get(
        &client,
        &server.url("/live/gradient.png"),
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.header(CACHE_CONTROL), "no-cache");
    // no-cache: the layer never trusts what it learned, it asks the service.
    let stats = handle.stats();
    assert_eq!(stats.short_circuit_not_modified, 0);
    assert_eq!(stats.not_modified_from_inner, 1);

    let snapshot = get(&client, &server.url("/live/snapshot.svg"), &[]).await;
    assert_eq!(snapshot.status, StatusCode::OK);
    assert_eq!(snapshot.header(CACHE_CONTROL), "no-cache");
    assert_eq!(snapshot.header(CONTENT_TYPE), "image/svg+xml");
    assert_eq!(snapshot.header(ETAG), etag_of(&snapshot.body));
    // The snapshot may roll over between the two requests: then the new
    // one comes whole, with its own ETag; else it is a 304.
    let again = get(
        &client,
        &server.url("/live/snapshot.svg"),
        &[("if-none-match", snapshot.header(ETAG))],
    )
    .await;
    match again.status {
        StatusCode::NOT_MODIFIED => {
            assert_eq!(again.header(ETAG), snapshot.header(ETAG));
            // The probe answered: the snapshot was not rendered again.
            assert_eq!(handle.stats().short_circuit_not_modified, 1);
        }
        StatusCode::OK => {
            assert_ne!(again.body, snapshot.body);
            assert_eq!(again.header(ETAG), etag_of(&again.body));
        }
        other => panic!("unexpected {other}"),
    }

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn missing_file_on_axum_gets_404_without_etag_even_with_if_none_match_star() {
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let url = server.url("/media/missing.png");

    let plain = get(&client, &url, &[]).await;
    let starred = get(&client, &url, &[("if-none-match", "*")]).await;

    for answer in [plain, starred] {
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert!(!answer.headers.contains_key(ETAG));
        assert!(!answer.headers.contains_key(CACHE_CONTROL));
    }

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn range_on_axum_media_file_gets_206_from_the_layer() {
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let file = media_bytes("tone.wav");

    let answer = get(
        &client,
        &server.url("/media/tone.wav"),
        &[("range", "bytes=0-11")],
    )
    .await;

    assert_eq!(answer.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        answer.header(CONTENT_RANGE),
        format!("bytes 0-11/{}", file.len())
    );
    assert_eq!(answer.body, file[..12]);
    assert_eq!(&answer.body[..4], b"RIFF");
    assert_eq!(answer.header(ETAG), etag_of(&file));
    assert_eq!(answer.header(ACCEPT_RANGES), "bytes");

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn index_page_on_axum_links_every_media_file_and_is_no_cache() {
    let server = Running::axum(media_server::app()).await;
    let client = client();

    let answer = get(&client, &server.url("/"), &[]).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header(CACHE_CONTROL), "no-cache");
    assert!(answer.header(CONTENT_TYPE).starts_with("text/html"));
    let html = std::str::from_utf8(&answer.body).unwrap();
    let files = media_server::media_files();
    assert_eq!(files, ["gradient.png", "sweep.y4m", "tone.wav"]);
    for name in &files {
        let href = format!("href=\"{}\"", media_server::media_url(name));
        assert!(html.contains(&href), "{href} in {html}");
        // And every link works.
        let linked = get(&client, &server.url(&media_server::media_url(name)), &[]).await;
        assert_eq!(linked.status, StatusCode::OK, "{name}");
        assert_eq!(linked.body, media_bytes(name));
        assert_eq!(
            linked.header(CACHE_CONTROL),
            "public, max-age=31536000, immutable",
            "{name} is linked by its fingerprinted URL"
        );
    }
    assert!(html.contains("href=\"/live/snapshot.svg\""));

    drop(client);
    server.stop().await;
}

/// RFC 9110 §9.3.2: a HEAD answer should carry the header fields the GET
/// answer would. The layer writes the learned validators on a HEAD answer
/// only when the service sent no validator at all (`Validators::is_empty`
/// in `Ctx::plan`), so a service that sends `Last-Modified` — ServeDir,
/// most file servers — gets HEAD answers without the content `ETag` that
/// the GET answers carry, even while the entry is trusted.
#[tokio::test]
async fn head_after_get_on_axum_carries_the_content_etag() {
    let server = Running::axum(media_server::app()).await;
    let client = client();
    let url = server.url("/media/gradient.png");

    let full = get(&client, &url, &[]).await;
    assert_eq!(full.status, StatusCode::OK);
    let head = send(&client, Method::HEAD, &url, &[]).await;

    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.header(LAST_MODIFIED), full.header(LAST_MODIFIED));
    assert_eq!(head.headers.get(ETAG), full.headers.get(ETAG));

    drop(client);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// hyper: the hyper example
// ---------------------------------------------------------------------------

#[tokio::test]
async fn if_none_match_on_plain_hyper_gets_304_after_200() {
    let server = Running::start(|listener, stopped| async move {
        hyper_server::serve(listener, async {
            stopped.await.ok();
        })
        .await;
    })
    .await;
    let client = client();
    let url = server.url("/noise.bin");
    let noise = hyper_server::noise();

    let full = get(&client, &url, &[]).await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.body, noise);
    assert_eq!(full.header(ETAG), etag_of(&noise));
    assert_eq!(full.header(CACHE_CONTROL), "public, max-age=3600");
    assert_eq!(full.header(CONTENT_TYPE), "application/octet-stream");

    let revalidated = get(&client, &url, &[("if-none-match", full.header(ETAG))]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.header(ETAG), full.header(ETAG));
    assert_eq!(revalidated.header(CACHE_CONTROL), "public, max-age=3600");
    assert!(!revalidated.headers.contains_key(CONTENT_TYPE));

    let missing = get(&client, &server.url("/nothing"), &[("if-none-match", "*")]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(!missing.headers.contains_key(ETAG));

    drop(client);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// tonic: the tonic example
// ---------------------------------------------------------------------------

#[tokio::test]
async fn grpc_health_check_through_the_layer_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let server = Running::start(|listener, stopped| async move {
        tonic_server::serve(listener, async {
            stopped.await.ok();
        })
        .await
        .unwrap();
    })
    .await;
    let channel = tonic::transport::Endpoint::from_shared(server.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);

    // A 200 whose grpc-status trailer went missing is an error in tonic's
    // client, so a SERVING answer means the trailers came through.
    let serving = health
        .check(HealthCheckRequest {
            service: tonic_server::SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status, ServingStatus::Serving as i32);

    // An error status (NOT_FOUND for an unknown service) comes through too.
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    drop(health);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Large bodies streamed by a handler
// ---------------------------------------------------------------------------

/// An axum app whose `/big` streams `bytes` in 64 KiB chunks (no length
/// known in advance), behind `layer`.
fn streaming_app(bytes: Bytes, layer: MediaCacheLayer) -> Router {
    Router::new()
        .route(
            "/big",
            axum::routing::get(move || {
                let bytes = bytes.clone();
                async move {
                    let chunks: Vec<Result<Bytes, Infallible>> = (0..bytes.len())
                        .step_by(64 * 1024)
                        .map(|start| Ok(bytes.slice(start..bytes.len().min(start + 64 * 1024))))
                        .collect();
                    Body::from_stream(futures_util::stream::iter(chunks))
                }
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn five_megabyte_streamed_body_arrives_intact_with_its_content_etag() {
    let bytes = pseudo_random(5 * 1024 * 1024, 5);
    let layer = MediaCacheLayer::new(CachePolicy::no_cache());
    let handle = layer.handle();
    let server = Running::axum(streaming_app(bytes.clone(), layer)).await;
    let client = client();

    let answer = get(&client, &server.url("/big"), &[]).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), bytes.len());
    assert!(answer.body == bytes, "body differs");
    assert_eq!(answer.header(ETAG), etag_of(&bytes));
    assert_eq!(answer.header(CACHE_CONTROL), "no-cache");
    // The layer read it all, so it knows and sends the length.
    assert_eq!(answer.header(CONTENT_LENGTH), bytes.len().to_string());
    assert_eq!(handle.stats().hashed, 1);

    // And the whole round trip: the 5 MB are not sent again.
    let revalidated = get(
        &client,
        &server.url("/big"),
        &[("if-none-match", answer.header(ETAG))],
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());

    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn twenty_megabyte_streamed_body_arrives_intact_and_the_next_carries_its_tag() {
    let bytes = pseudo_random(20 * 1024 * 1024, 20);
    assert_eq!(DEFAULT_MAX_BUFFER, 16 * 1024 * 1024);
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).max_buffer_bytes(16 * 1024 * 1024);
    let handle = layer.handle();
    let server = Running::axum(streaming_app(bytes.clone(), layer)).await;
    let client = client();

    // Too large to read before the head: it streams, hashed as it passes.
    let answer = get(&client, &server.url("/big"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body.len(), bytes.len());
    assert!(answer.body == bytes, "body differs");
    assert!(!answer.headers.contains_key(ETAG), "{:?}", answer.headers);
    assert_eq!(answer.header(CACHE_CONTROL), "no-cache");

    // The next answer carries the tag learned from it, verified as it streams.
    let again = get(&client, &server.url("/big"), &[]).await;
    assert!(again.body == bytes, "body differs");
    assert_eq!(again.header(ETAG), etag_of(&bytes));
    let stats = handle.stats();
    assert_eq!(stats.hashed, 0);
    assert_eq!(stats.hashed_streaming, 2);
    assert_eq!((stats.streamed_unhashed, stats.content_changed), (0, 0));
    assert_eq!(stats.buffer_budget_exhausted, 0);

    drop(client);
    server.stop().await;
}

// ---------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------

/// `Stats::evicted` is documented as "variants evicted to respect the
/// capacity". Learning the same URL again (a second plain GET) replaces
/// its entry; in an almost empty store of 100 000 variants nothing has to
/// be evicted, yet the counter goes up (and `validator store evicted` is
/// logged at debug level) on every re-learn.
#[tokio::test]
async fn relearning_the_same_file_evicts_nothing() {
    let layer = media_server::cache_layer();
    let handle = layer.handle();
    let server = Running::axum(media_server::app_with(layer)).await;
    let client = client();
    let url = server.url("/media/gradient.png");

    for _ in 0..3 {
        assert_eq!(get(&client, &url, &[]).await.status, StatusCode::OK);
    }

    let stats = handle.stats();
    assert_eq!(stats.learned, 3);
    assert_eq!(stats.entries, 1);
    assert_eq!(stats.evicted, 0, "{stats:?}");

    drop(client);
    server.stop().await;
}

/// Every `2xx` to an unsafe request bumps one store-wide invalidation
/// epoch (`Store::invalidate_here`), and a response whose request started
/// before the bump is not learned (`Store::learn`: "invalidated while in
/// flight") — whatever URL the write was for. On a server that also takes
/// POSTs (a JSON API, or gRPC: every call is a POST), any GET in flight
/// while some unrelated POST completes is not learned, so its next
/// revalidation reaches the service instead of being answered from the
/// store. Deterministic here: the GET's handler waits until the POST has
/// been answered.
#[tokio::test]
async fn unrelated_post_while_a_get_is_in_flight_does_not_stop_learning() {
    use std::sync::Arc;
    use tokio::sync::{Notify, mpsc};

    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let waiting = release.clone();
    let layer = MediaCacheLayer::new(CachePolicy::max_age(std::time::Duration::from_secs(3600)));
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/media/slow.bin",
            axum::routing::get(move || {
                let entered = entered_tx.clone();
                let release = waiting.clone();
                async move {
                    entered.send(()).unwrap();
                    release.notified().await;
                    "the slow bytes"
                }
            }),
        )
        .route("/api/comments", axum::routing::post(|| async { "created" }))
        .layer(layer);
    let server = Running::axum(app).await;
    let client = client();

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = server.url("/media/slow.bin");
        async move { get(&client, &url, &[]).await }
    });
    entered.recv().await.unwrap();
    let posted = send(&client, Method::POST, &server.url("/api/comments"), &[]).await;
    assert_eq!(posted.status, StatusCode::OK);
    // A permit if the handler is not waiting yet, a wake-up if it is.
    release.notify_one();
    let first = in_flight.await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header(ETAG), etag_of(b"the slow bytes"));

    let stats = handle.stats();
    assert_eq!(stats.invalidated, 0, "the POST's URL had no entry");
    assert_eq!(stats.learned, 1, "{stats:?}");

    drop(client);
    server.stop().await;
}
