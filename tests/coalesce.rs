//! Request coalescing over a real server on 127.0.0.1: a slow handler that
//! counts its calls, bursts of concurrent requests from hyper's client.
//! A burst of identical GETs costs one call; requests a shared cache could
//! not share (credentials, other `Vary`'d values, a 5xx) do not share.

mod net;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::join_all;
use http::header::{CONTENT_RANGE, ETAG, VARY};
use net::{Answer, Running, client, etag_of, get, pseudo_random};
use tower::{Service, ServiceExt};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer};

const LATENCY: Duration = Duration::from_millis(500);

/// What the handler does, and how often it ran.
#[derive(Clone)]
struct Handler {
    calls: Arc<AtomicUsize>,
    body: Bytes,
    /// The first `failures` calls answer 500.
    failures: usize,
}

impl Handler {
    fn new(body: Bytes) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            body,
            failures: 0,
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    async fn answer(self, headers: HeaderMap) -> Response {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(LATENCY).await;
        if call < self.failures {
            return (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response();
        }
        // Varies by language: the body says which.
        let language = headers
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let mut body = self.body.to_vec();
        body.extend_from_slice(language.as_bytes());
        let mut response = Bytes::from(body).into_response();
        response
            .headers_mut()
            .insert(VARY, HeaderValue::from_static("accept-language"));
        response
    }
}

fn app(handler: Handler, layer: MediaCacheLayer) -> Router {
    Router::new()
        .route(
            "/media/{name}",
            axum::routing::get(move |request: Request| {
                handler.clone().answer(request.headers().clone())
            }),
        )
        .layer(layer)
}

fn layer() -> (MediaCacheLayer, CacheHandle) {
    let layer = MediaCacheLayer::new(CachePolicy::no_cache());
    let handle = layer.handle();
    (layer, handle)
}

/// `n` concurrent GETs of `path`, the i-th with `headers(i)`.
async fn burst<F>(server: &Running, path: &str, n: usize, headers: F) -> Vec<Answer>
where
    F: Fn(usize) -> Vec<(&'static str, String)>,
{
    let client = client();
    let url = server.url(path);
    join_all((0..n).map(|i| {
        let (client, url, headers) = (client.clone(), url.clone(), headers(i));
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get(&client, &url, &headers).await
        }
    }))
    .await
}

#[tokio::test]
async fn a_burst_of_100_identical_gets_costs_one_handler_call() {
    let body = pseudo_random(256 * 1024, 13);
    let handler = Handler::new(body.clone());
    let (layer, handle) = layer();
    let server = Running::axum(app(handler.clone(), layer)).await;

    let started = Instant::now();
    let answers = burst(&server, "/media/a.jpg", 100, |_| Vec::new()).await;
    let elapsed = started.elapsed();

    let mut expected = body.to_vec();
    expected.extend_from_slice(b"none");
    let tag = etag_of(&expected);
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header(ETAG), tag);
        assert!(answer.body == expected[..], "body differs");
    }
    assert_eq!(handler.calls(), 1);
    assert_eq!(handle.stats().coalesced, 99);
    println!("100 GETs with a {LATENCY:?} handler answered in {elapsed:?}");
    server.stop().await;
}

#[tokio::test]
async fn requests_with_credentials_are_not_coalesced_unless_the_policy_is_public() {
    let handler = Handler::new(Bytes::from_static(b"private "));
    let (layer, handle) = layer();
    let server = Running::axum(app(handler.clone(), layer)).await;
    let answers = burst(&server, "/media/a.jpg", 10, |i| {
        vec![("authorization", format!("Bearer user-{i}"))]
    })
    .await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(handler.calls(), 10);
    assert_eq!(handle.stats().coalesced, 0);
    server.stop().await;

    // Under a public policy, credentials do not change the answer.
    let handler = Handler::new(Bytes::from_static(b"public "));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache().public());
    let server = Running::axum(app(handler.clone(), layer)).await;
    burst(&server, "/media/a.jpg", 10, |i| {
        vec![("authorization", format!("Bearer user-{i}"))]
    })
    .await;
    assert_eq!(handler.calls(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_varyd_route_costs_one_call_per_value() {
    let handler = Handler::new(Bytes::from_static(b"hello in "));
    let (layer, _handle) = layer();
    let server = Running::axum(app(handler.clone(), layer)).await;
    let languages = ["en", "fr", "de"];
    let answers = burst(&server, "/media/a.jpg", 30, |i| {
        vec![("accept-language", languages[i % 3].to_owned())]
    })
    .await;
    for (i, answer) in answers.iter().enumerate() {
        let expected = format!("hello in {}", languages[i % 3]);
        assert_eq!(answer.body, expected.as_bytes(), "request {i}");
    }
    assert_eq!(handler.calls(), 3);
    server.stop().await;
}

#[tokio::test]
async fn a_5xx_from_the_leader_is_not_handed_to_the_waiters() {
    let mut handler = Handler::new(Bytes::from_static(b"media "));
    handler.failures = 1;
    let (layer, _handle) = layer();
    let server = Running::axum(app(handler.clone(), layer)).await;
    let answers = burst(&server, "/media/a.jpg", 20, |_| Vec::new()).await;
    let failed = answers
        .iter()
        .filter(|a| a.status == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    // The leader's own client gets its 500; the waiters are handed over:
    // one of them leads a second flight, which the others join.
    assert_eq!(failed, 1);
    assert!(
        answers
            .iter()
            .filter(|a| a.status == StatusCode::OK)
            .all(|a| a.body == b"media none"[..])
    );
    assert_eq!(handler.calls(), 2);
    server.stop().await;
}

#[tokio::test]
async fn each_waiter_gets_its_own_304_206_or_412() {
    let body = pseudo_random(64 * 1024, 21);
    let handler = Handler::new(body.clone());
    let (layer, _handle) = layer();
    let server = Running::axum(app(handler.clone(), layer)).await;
    let mut expected = body.to_vec();
    expected.extend_from_slice(b"none");
    let tag = etag_of(&expected);

    // The leader goes first (only an unconditional GET may lead); the
    // others join it while its handler sleeps.
    let client = client();
    let url = server.url("/media/mixed.jpg");
    let leader = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move { get(&client, &url, &[]).await })
    };
    tokio::time::sleep(LATENCY / 3).await;
    let kinds: Vec<Vec<(&str, String)>> = vec![
        vec![("if-none-match", tag.clone())],
        vec![("range", "bytes=100-199".into())],
        vec![("if-match", "\"other\"".into())],
        vec![("range", "bytes=0-9".into()), ("if-range", tag.clone())],
        vec![
            ("range", "bytes=0-9".into()),
            ("if-range", "\"stale\"".into()),
        ],
    ];
    let waiters = join_all(kinds.iter().map(|headers| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get(&client, &url, &headers).await
        }
    }))
    .await;
    let leader = leader.await.unwrap();
    assert_eq!(leader.status, StatusCode::OK);
    assert_eq!(waiters[0].status, StatusCode::NOT_MODIFIED);
    assert!(waiters[0].body.is_empty());
    assert_eq!(waiters[1].status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&waiters[1].body[..], &expected[100..200]);
    assert_eq!(
        waiters[1].header(CONTENT_RANGE),
        format!("bytes 100-199/{}", expected.len())
    );
    assert_eq!(waiters[2].status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(waiters[3].status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&waiters[3].body[..], &expected[..10]);
    assert_eq!(waiters[4].status, StatusCode::OK);
    assert!(waiters[4].body == expected[..]);
    assert_eq!(handler.calls(), 1);
    server.stop().await;
}

/// The leader's request is dropped while its handler runs (its client
/// went away): the waiters are handed over, and one call later all of
/// them are answered.
#[tokio::test]
async fn a_cancelled_leader_hands_its_waiters_over() {
    let handler = Handler::new(Bytes::from_static(b"media "));
    let (layer, handle) = layer();
    let service = app(handler.clone(), layer);
    let call = |service: &Router| {
        let request = http::Request::get("/media/a.jpg")
            .body(axum::body::Body::empty())
            .unwrap();
        let mut service = service.clone();
        async move {
            ServiceExt::<http::Request<axum::body::Body>>::ready(&mut service)
                .await?
                .call(request)
                .await
        }
    };
    let leader = tokio::spawn(call(&service));
    tokio::time::sleep(LATENCY / 3).await;
    let waiters: Vec<_> = (0..5).map(|_| tokio::spawn(call(&service))).collect();
    tokio::time::sleep(LATENCY / 3).await;
    leader.abort();
    for waiter in waiters {
        let response = waiter
            .await
            .unwrap()
            .unwrap_or_else(|e: Infallible| match e {});
        assert_eq!(response.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "media none");
    }
    // The cancelled leader's call, and the one a waiter made for the rest.
    assert_eq!(handler.calls(), 2);
    assert_eq!(handle.stats().coalesced, 4);
}

#[tokio::test]
async fn a_request_asking_for_a_fresh_answer_goes_alone_and_coalescing_can_be_turned_off() {
    let handler = Handler::new(Bytes::from_static(b"media "));
    let (layer, _handle) = layer();
    let server = Running::axum(app(handler.clone(), layer)).await;
    burst(&server, "/media/a.jpg", 6, |i| match i % 3 {
        0 => vec![("cache-control", "no-cache".into())],
        1 => vec![("pragma", "no-cache".into())],
        _ => vec![("cache-control", "max-age=0, No-Store".into())],
    })
    .await;
    assert_eq!(handler.calls(), 6);
    server.stop().await;

    let handler = Handler::new(Bytes::from_static(b"media "));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).coalesce(false);
    let server = Running::axum(app(handler.clone(), layer)).await;
    burst(&server, "/media/a.jpg", 5, |_| Vec::new()).await;
    assert_eq!(handler.calls(), 5);
    server.stop().await;
}

#[tokio::test]
async fn a_waiter_that_waited_too_long_calls_the_handler_itself() {
    let handler = Handler::new(Bytes::from_static(b"media "));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).coalesce_timeout(LATENCY / 10);
    let server = Running::axum(app(handler.clone(), layer)).await;
    let answers = burst(&server, "/media/a.jpg", 4, |_| Vec::new()).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK));
    assert_eq!(handler.calls(), 4);
    server.stop().await;
}

#[tokio::test]
async fn cache_status_marks_the_waiters_collapsed() {
    let handler = Handler::new(Bytes::from_static(b"media "));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("layer");
    let server = Running::axum(app(handler.clone(), layer)).await;
    let answers = burst(&server, "/media/a.jpg", 5, |_| Vec::new()).await;
    let collapsed = answers
        .iter()
        .filter(|a| a.header("cache-status") == "layer; fwd=miss; fwd-status=200; collapsed")
        .count();
    assert_eq!(handler.calls(), 1);
    assert_eq!(
        collapsed,
        4,
        "{:?}",
        answers
            .iter()
            .map(|a| a.header("cache-status"))
            .collect::<Vec<_>>()
    );
    server.stop().await;
}
