//! Per-route and per-content-type policy, per-response override, excluded
//! routes, and fingerprinted URLs.

mod common;

use std::time::Duration;

use common::{Content, Origin, get, req, send};
use tower_media_cache::{
    CachePolicy, MediaCacheLayer, content_etag, fingerprint_with, fingerprinted_path,
};

const IMAGE: &[u8] = b"image bytes";

fn secs(n: u64) -> CachePolicy {
    CachePolicy::max_age(Duration::from_secs(n))
}

#[tokio::test]
async fn the_most_specific_route_wins_whatever_the_order() {
    let layer = MediaCacheLayer::new(CachePolicy::no_cache())
        .route("/media/{*path}", secs(259_200))
        .route("/media/live.jpg", CachePolicy::no_cache().private())
        .route("/avatars/{id}", secs(604_800));
    let service = Origin::new(Content::ok(IMAGE)).wrap(&layer);
    let cc = |answer: common::Answer| answer.header("cache-control").unwrap().to_owned();
    assert_eq!(
        cc(send(&service, req(get("/media/a/b.jpg"))).await),
        "max-age=259200"
    );
    assert_eq!(
        cc(send(&service, req(get("/media/live.jpg"))).await),
        "private, no-cache"
    );
    assert_eq!(
        cc(send(&service, req(get("/avatars/42"))).await),
        "max-age=604800"
    );
    assert_eq!(
        cc(send(&service, req(get("/avatars/42/big"))).await),
        "no-cache"
    );
    assert_eq!(cc(send(&service, req(get("/"))).await), "no-cache");
}

#[tokio::test]
async fn content_type_rules_apply_when_no_route_decides() {
    let layer = MediaCacheLayer::new(CachePolicy::no_cache())
        .route("/live/{*path}", CachePolicy::no_store())
        .content_type("image/*", secs(259_200))
        .content_type("video/mp4", secs(3600));
    let origin = Origin::new(Content::ok(IMAGE).header("content-type", "image/jpeg"));
    let service = origin.wrap(&layer);
    let answer = send(&service, req(get("/x.jpg"))).await;
    assert_eq!(answer.header("cache-control"), Some("max-age=259200"));
    let answer = send(&service, req(get("/live/x.jpg"))).await;
    assert_eq!(
        answer.header("cache-control"),
        Some("no-store"),
        "route beats content type"
    );
    origin.set(Content::ok(IMAGE).header("content-type", "video/mp4; codecs=avc1"));
    let answer = send(&service, req(get("/x.mp4"))).await;
    assert_eq!(answer.header("cache-control"), Some("max-age=3600"));
    origin.set(Content::ok(IMAGE).header("content-type", "text/html"));
    let answer = send(&service, req(get("/index.html"))).await;
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
}

#[tokio::test]
async fn a_policy_in_the_response_extensions_overrides_the_rules() {
    use axum::{Router, body::Body, response::IntoResponse, routing::get as route_get};
    use tower::ServiceExt;

    let router: Router = Router::new()
        .route(
            "/special",
            route_get(|| async {
                let mut response = "special".into_response();
                response
                    .extensions_mut()
                    .insert(CachePolicy::max_age(Duration::from_secs(5)).private());
                response
            }),
        )
        .route("/plain", route_get(|| async { "plain" }));
    let app = tower::Layer::layer(&MediaCacheLayer::new(CachePolicy::no_cache()), router);
    let call = |path: &'static str| {
        app.clone()
            .oneshot(http::Request::get(path).body(Body::empty()).unwrap())
    };
    let special = call("/special").await.unwrap();
    assert_eq!(special.headers()["cache-control"], "private, max-age=5");
    let plain = call("/plain").await.unwrap();
    assert_eq!(plain.headers()["cache-control"], "no-cache");
    assert_eq!(plain.headers()["etag"], content_etag(b"plain").to_string());
}

#[tokio::test]
async fn excluded_routes_are_untouched_and_learn_nothing() {
    let layer = MediaCacheLayer::new(secs(60)).exclude("/api/{*rest}");
    let origin = Origin::new(Content::ok(IMAGE));
    let service = origin.wrap(&layer);
    send(&service, req(get("/api/thing"))).await;
    let answer = send(
        &service,
        req(get("/api/thing").header("if-none-match", content_etag(IMAGE).to_string())),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("cache-control"), None);
    assert_eq!(answer.header("etag"), None);
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.handle().stats().learned, 0);
}

#[test]
fn fingerprinted_urls_carry_the_content_hash() {
    let url = fingerprinted_path("/media/AAAA.jpg", IMAGE);
    let hex = &content_etag(IMAGE).to_string()[1..17];
    assert_eq!(url, format!("/media/AAAA.{hex}.jpg"));
    assert_eq!(
        fingerprint_with("/media/AAAA.jpg", &content_etag(IMAGE)).unwrap(),
        url
    );
    assert_ne!(fingerprinted_path("/media/AAAA.jpg", b"new bytes"), url);
}

#[tokio::test]
async fn a_current_fingerprint_is_served_immutable_from_the_plain_path() {
    let layer = MediaCacheLayer::new(secs(259_200)).fingerprinted_urls();
    let origin = Origin::new(Content::ok(IMAGE).header("etag", "\"service-tag\""));
    let service = origin.wrap(&layer);
    let url = fingerprinted_path("/media/AAAA.jpg", IMAGE);
    let answer = send(&service, req(get(&format!("{url}?w=100")))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, IMAGE);
    assert_eq!(
        answer.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        answer.header("etag"),
        Some("\"service-tag\""),
        "the service's tag is kept"
    );
    assert_eq!(origin.last_request().uri, "/media/AAAA.jpg?w=100");
    // Revalidation of the immutable URL is answered from the store.
    let calls = origin.calls();
    let again = send(
        &service,
        req(get(&format!("{url}?w=100")).header("if-none-match", "\"service-tag\"")),
    )
    .await;
    assert_eq!(again.status, 304);
    assert_eq!(origin.calls(), calls);
}

#[tokio::test]
async fn a_stale_fingerprint_gets_the_current_bytes_without_immutable() {
    let layer = MediaCacheLayer::new(secs(259_200)).fingerprinted_urls();
    let origin = Origin::new(Content::ok(b"new bytes"));
    let service = origin.wrap(&layer);
    let stale = fingerprinted_path("/media/AAAA.jpg", IMAGE);
    let answer = send(&service, req(get(&stale))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, "new bytes");
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
    // Nothing trusted was learned under the stale URL.
    let calls = origin.calls();
    send(
        &service,
        req(get(&stale).header("if-none-match", content_etag(b"new bytes").to_string())),
    )
    .await;
    assert_eq!(origin.calls(), calls + 1);
}

#[tokio::test]
async fn plain_urls_keep_the_route_policy_when_fingerprints_are_on() {
    let layer = MediaCacheLayer::new(secs(259_200)).fingerprinted_urls();
    let service = Origin::new(Content::ok(IMAGE)).wrap(&layer);
    let answer = send(&service, req(get("/media/AAAA.jpg"))).await;
    assert_eq!(answer.header("cache-control"), Some("max-age=259200"));
}
