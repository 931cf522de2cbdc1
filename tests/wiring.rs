//! The layer in every wiring users choose (issue: data loss under
//! `Router::layer`), checked against the same app without it.
//!
//! - Regression tests for the three reproductions: a conditional `PUT` or
//!   `DELETE` behind axum's `Router::layer` must never run for a request the
//!   client did not send, and a `HEAD` handler's empty body is never a tag.
//! - The wiring matrix: random sequences of `GET`, `HEAD`, `PUT`, `DELETE`
//!   and `POST`, conditional and not (current, stale, weak, `*` and garbage
//!   tags; dates), over query, `Host`, case and percent-encoded spellings,
//!   sent to the app wired each way (`tests/wiring_app`) and to its bare
//!   twin. Every answer must have the bare twin's status (and body, for a
//!   `GET`), the data must be the twin's after every step, a 304 or 412 must
//!   leave the data alone, a `HEAD` or `GET` may carry no other tag than the
//!   current content tag, and no handler may run for another method.
//!
//! `TMC_WIRING_SEEDS` (default 12) and `TMC_WIRING_STEPS` (default 60) make
//! the matrix longer.

mod wiring_app;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use tower_media_cache::{CachePolicy, MediaCacheLayer, content_etag};
use wiring_app::{Answer, App, Choose, Data, Handler, Rng, Wiring, run, send, wired};

fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder().method(method).uri(uri)
}

fn put(uri: &str, body: &'static str) -> http::request::Builder {
    request(Method::PUT, uri)
        .header("content-type", "image/jpeg")
        .header("content-length", body.len())
}

async fn send_put(app: &App, builder: http::request::Builder, body: &'static str) -> Answer {
    send(app, builder.body(Body::from(body)).unwrap()).await
}

async fn send_empty(app: &App, builder: http::request::Builder) -> Answer {
    send(app, builder.body(Body::empty()).unwrap()).await
}

fn one_hour() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(3600)))
}

/// Reproduction 1 of the issue: behind `Router::layer`, a conditional `PUT`
/// on a file the store does not know must not run the `PUT` handler as the
/// layer's internal `GET` (which wrote an empty file). A stale `If-Match`
/// gets 412 and the file keeps its bytes; the current tag writes; `If-None-Match: *`
/// on an existing file gets 412; `If-Match: *` on a missing file creates
/// nothing.
#[tokio::test]
async fn a_conditional_put_behind_router_layer_never_empties_the_file() {
    let data = Data::new();
    let app = wired(Wiring::RouterLayer, &one_hour(), &data);

    let created = send_put(&app, put("/media/x", "one"), "one").await;
    assert_eq!(created.status, StatusCode::CREATED);
    let stale = send_put(
        &app,
        put("/media/x", "two").header("if-match", "\"stale\""),
        "two",
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let read = send_empty(&app, request(Method::GET, "/media/x")).await;
    assert_eq!(
        (read.status, &read.body[..]),
        (StatusCode::OK, &b"one"[..]),
        "the 412 left the file alone"
    );

    // The current tag, on a target the store does not know yet (another
    // spelling): the write runs, once.
    let current = content_etag(b"one");
    let tag = current.header_value().to_str().unwrap();
    let written = send_put(
        &app,
        put("/media/x?v=2", "two").header("if-match", tag),
        "two",
    )
    .await;
    assert_eq!(written.status, StatusCode::NO_CONTENT);
    assert_eq!(data.doc("x").unwrap().bytes, "two");

    let exists = send_put(
        &app,
        put("/media/x", "three").header("if-none-match", "*"),
        "three",
    )
    .await;
    assert_eq!(exists.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        data.doc("x").unwrap().bytes,
        "two",
        "If-None-Match: * on an existing file wrote nothing"
    );

    let missing = send_put(&app, put("/media/y", "new").header("if-match", "*"), "new").await;
    assert_eq!(missing.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        data.doc("y"),
        None,
        "If-Match: * on a missing file created nothing"
    );
    assert_eq!(data.violations(), Vec::<String>::new());
    assert_eq!(
        data.calls_of(Handler::Get),
        1,
        "only the client's GET reached the GET handler"
    );
}

/// Reproduction 2: a `DELETE` with a stale `If-Match` behind `Router::layer`
/// gets 412 and the resource is still there.
#[tokio::test]
async fn a_stale_if_match_delete_behind_router_layer_keeps_the_resource() {
    let data = Data::new();
    data.write("x", Bytes::from_static(b"keep me"));
    let app = wired(Wiring::RouterLayer, &one_hour(), &data);

    let refused = send_empty(
        &app,
        request(Method::DELETE, "/media/x").header("if-match", "\"stale\""),
    )
    .await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(data.doc("x").unwrap().bytes, "keep me");
    let read = send_empty(&app, request(Method::GET, "/media/x")).await;
    assert_eq!(
        (read.status, &read.body[..]),
        (StatusCode::OK, &b"keep me"[..])
    );
    assert_eq!(data.violations(), Vec::<String>::new());
}

/// Reproduction 3: a route with a `HEAD` handler of its own (headers, no
/// body) behind `Router::layer`. The `HEAD` never carries the tag of the
/// empty body (`"99aa06d3014798d86001c324468d497f"`), the store never learns
/// it, and a `GET` with that tag gets the file. Once a `GET` taught the
/// store the content tag, a `HEAD` carries that one, and only that one.
#[tokio::test]
async fn a_head_handlers_empty_body_never_becomes_an_etag() {
    let empty = content_etag(b"");
    assert_eq!(empty.header_value(), "\"99aa06d3014798d86001c324468d497f\"");
    for layer in [one_hour(), MediaCacheLayer::new(CachePolicy::no_cache())] {
        let data = Data::new();
        data.write("x", Bytes::from(vec![b'j'; 170]));
        let current = data.doc("x").unwrap().tag();
        let app = wired(Wiring::RouterLayer, &layer, &data);

        let head = send_empty(&app, request(Method::HEAD, "/media/x")).await;
        assert_eq!(head.status, StatusCode::OK);
        assert_ne!(head.etag(), Some("\"99aa06d3014798d86001c324468d497f\""));
        assert!(
            head.etag().is_none_or(|tag| tag == current.header_value()),
            "{:?}",
            head.etag()
        );

        let fooled = send_empty(
            &app,
            request(Method::GET, "/media/x").header("if-none-match", empty.header_value()),
        )
        .await;
        assert_eq!(
            fooled.status,
            StatusCode::OK,
            "the empty body's tag is not the file's"
        );
        assert_eq!(fooled.body.len(), 170);
        assert_eq!(fooled.etag(), current.header_value().to_str().ok());

        let head = send_empty(&app, request(Method::HEAD, "/media/x")).await;
        assert_eq!(
            head.etag(),
            current.header_value().to_str().ok(),
            "HEAD carries GET's tag"
        );
        let revalidated = send_empty(
            &app,
            request(Method::HEAD, "/media/x").header("if-none-match", current.header_value()),
        )
        .await;
        assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
        assert_eq!(data.violations(), Vec::<String>::new());
    }
}

/// `Layer::layer` never lets the layer send a request of its own;
/// `wrap_router` does. The README's two forms, side by side.
#[tokio::test]
async fn only_wrap_router_sends_requests_of_its_own() {
    let layer = one_hour();
    let routes: Router = Router::new().route("/", get(|| async { "" }));
    assert!(!tower::Layer::layer(&layer, routes.clone()).sends_own_requests());
    assert!(layer.wrap_router(routes).sends_own_requests());

    // Whole router: a stale write on a file the store does not know is
    // refused before the handler, by the layer's GET (to the GET handler).
    let data = Data::new();
    data.write("x", Bytes::from_static(b"one"));
    let app = wired(Wiring::WholeRouter, &layer, &data);
    let stale = send_put(
        &app,
        put("/media/x", "two").header("if-match", "\"stale\""),
        "two",
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(data.calls_of(Handler::Put), 0, "the layer judged it");
    assert_eq!(data.calls_of(Handler::Get), 1, "with one GET of its own");
    assert_eq!(data.violations(), Vec::<String>::new());

    // Per method: the same write goes to its handler, which judges it.
    let data = Data::new();
    data.write("x", Bytes::from_static(b"one"));
    let app = wired(Wiring::RouterLayer, &layer, &data);
    let stale = send_put(
        &app,
        put("/media/x", "two").header("if-match", "\"stale\""),
        "two",
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        (data.calls_of(Handler::Put), data.calls_of(Handler::Get)),
        (1, 0)
    );
    // Once a GET taught the store (the PUT instance shares it), the layer
    // judges the next stale write itself.
    send_empty(&app, request(Method::GET, "/media/x")).await;
    let stale = send_put(
        &app,
        put("/media/x", "two").header("if-match", "\"stale\""),
        "two",
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(data.calls_of(Handler::Put), 1, "refused before the handler");
    assert_eq!(data.doc("x").unwrap().bytes, "one");
}

// ---------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The matrix: every wiring, under a store that trusts until invalidated,
/// `max-age` trust and `no-cache` (the layer never answers alone).
/// `MethodRouter::layer` on `GET` alone runs only under `no-cache`: writes
/// do not pass the layer there, so nothing may be trusted (README, Wiring).
#[tokio::test]
async fn every_wiring_answers_as_the_bare_app_and_keeps_its_data() {
    let (seeds, steps) = (
        env_or("TMC_WIRING_SEEDS", 12) as u64,
        env_or("TMC_WIRING_STEPS", 60),
    );
    let mut failures = Vec::new();
    for wiring in Wiring::ALL {
        for (policy_name, policy) in wiring_app::policies() {
            if !wiring.writes_pass_the_layer() && policy_name != "no-cache" {
                continue;
            }
            for seed in 0..seeds {
                let mut rng = Rng(seed);
                if let Err(failure) =
                    run(wiring, policy_name, policy.clone(), &mut rng, steps).await
                {
                    failures.push(format!("seed {seed}: {failure}"));
                    break;
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Each handler of a route with all five methods is called only with its
/// own method in every wiring, and the whole-router wirings are the only
/// ones whose `GET` handler runs more often than clients sent `GET`s.
#[tokio::test]
async fn handlers_run_only_for_their_own_method_and_only_whole_wirings_fetch() {
    for wiring in Wiring::ALL {
        let (model, data) = (Data::new(), wiring.data());
        model.write("a.jpg", Bytes::from_static(b"seed"));
        data.write("a.jpg", Bytes::from_static(b"seed"));
        let layer = MediaCacheLayer::new(CachePolicy::no_cache());
        let app = wired(wiring, &layer, &data);
        let mut headers = HeaderMap::new();
        headers.insert("if-match", "\"stale\"".parse().unwrap());
        for method in [Method::PUT, Method::DELETE, Method::HEAD] {
            let mut builder = request(method.clone(), "/media/a.jpg");
            for (name, value) in &headers {
                builder = builder.header(name, value);
            }
            let answer = send(&app, builder.body(Body::from("x")).unwrap()).await;
            // `ServeDir` behind `Router::layer`: a HEAD's tags unjudged
            // until a GET taught the tag (README, Wiring).
            let expected = if wiring == Wiring::ServeDirLayer && method == Method::HEAD {
                StatusCode::OK
            } else {
                StatusCode::PRECONDITION_FAILED
            };
            assert_eq!(answer.status, expected, "{wiring:?} {method}");
        }
        assert_eq!(data.violations(), Vec::<String>::new(), "{wiring:?}");
        assert_eq!(data.docs(), model.docs(), "{wiring:?}");
        let internal_gets = data.calls_of(Handler::Get);
        if wiring.is_whole() {
            assert!(
                internal_gets >= 2,
                "{wiring:?}: the layer judged the writes with GETs of its own"
            );
        } else {
            let head_to_get = matches!(
                wiring,
                Wiring::RouterLayerGetServesHead | Wiring::ServiceFnLayer | Wiring::ServeDirLayer
            ) as usize;
            assert_eq!(
                internal_gets, head_to_get,
                "{wiring:?}: no GET of the layer's own"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// tonic
// ---------------------------------------------------------------------------

/// A gRPC `Check` request for `service`, framed (no compression).
fn health_check(service: &str, headers: &[(&'static str, String)]) -> Request<Body> {
    let mut message = vec![0x0a, service.len() as u8];
    message.extend_from_slice(service.as_bytes());
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    let mut builder = request(Method::POST, "/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(Body::from(frame)).unwrap()
}

/// An answer with its trailers, read whole.
async fn send_grpc<S>(service: &S, request: Request<Body>) -> (StatusCode, Bytes, Option<HeaderMap>)
where
    S: tower::Service<Request<Body>, Error = std::convert::Infallible> + Clone,
    S::Response: axum::response::IntoResponse,
{
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let response = service
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let (head, body) = response.into_response().into_parts();
    let collected = body.collect().await.expect("a body");
    let trailers = collected.trailers().cloned();
    (head.status, collected.to_bytes(), trailers)
}

/// tonic's `Server::builder().layer(..)` wiring (`examples/tonic.rs`): gRPC
/// health checks, conditional or not, whose answers change as the reporter
/// changes the service's status, mixed with other methods to the same path, through the layer and through the bare routes. Every
/// answer — status, bytes, `grpc-status` trailer — is the bare one's.
#[tokio::test]
async fn tonic_routes_behind_the_layer_answer_as_the_bare_routes() {
    use tonic_health::ServingStatus;
    const NAMES: [&str; 2] = ["media.v1.Media", "other.v1.Other"];
    let (bare_reporter, bare_health) = tonic_health::server::health_reporter();
    let (reporter, health) = tonic_health::server::health_reporter();
    let twin = tonic::service::Routes::new(bare_health);
    let layer = MediaCacheLayer::new(CachePolicy::no_cache());
    let layered = tower::Layer::layer(&layer, tonic::service::Routes::new(health));
    let mut rng = Rng(7);
    let mut seen_tags: Vec<String> = vec!["\"x\"".into()];
    for i in 0..200 {
        if rng.chance(15) {
            let (name, status) = (
                *rng.pick(&NAMES),
                *rng.pick(&[ServingStatus::Serving, ServingStatus::NotServing]),
            );
            bare_reporter.set_service_status(name, status).await;
            reporter.set_service_status(name, status).await;
        }
        let name = *rng.pick(&NAMES);
        let method = rng
            .pick(&[
                Method::POST,
                Method::POST,
                Method::GET,
                Method::HEAD,
                Method::PUT,
            ])
            .clone();
        // Conditional gRPC calls, which tonic ignores and the layer leaves to
        // it (no trusted entry under `no-cache`). A conditional GET to a gRPC
        // path would be judged by the layer, as for any service; exclude
        // gRPC paths to keep them untouched (README, Usage).
        let mut headers = Vec::new();
        if method == Method::POST && rng.chance(40) {
            let field = *rng.pick(&["if-none-match", "if-match", "if-modified-since"]);
            let value = match field {
                "if-modified-since" => "Sun, 13 Sep 2020 12:26:40 GMT".to_owned(),
                _ => rng.pick(&seen_tags).clone(),
            };
            headers.push((field, value));
        }
        let make = || {
            let mut request = health_check(name, &headers);
            *request.method_mut() = method.clone();
            request
        };
        let (ours, theirs) = (
            send_grpc(&layered, make()).await,
            send_grpc(&twin, make()).await,
        );
        assert_eq!(ours.0, theirs.0, "step {i}: {method} {headers:?}");
        assert_eq!(ours.1, theirs.1, "step {i}: {method} {headers:?}");
        let grpc_status =
            |t: &Option<HeaderMap>| t.as_ref().and_then(|t| t.get("grpc-status").cloned());
        assert_eq!(
            grpc_status(&ours.2),
            grpc_status(&theirs.2),
            "step {i}: {method} {headers:?}"
        );
        if let Some(tag) = ours.2.as_ref().and_then(|t| t.get("etag")) {
            seen_tags.push(tag.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        layer.handle().stats().validator_fetches,
        0,
        "no request of the layer's own"
    );
}
