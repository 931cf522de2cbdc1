//! Validators, policy headers and RFC 9110 preconditions on the response path.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Content, Origin, get, req, send};
use http::Request;
use tower_media_cache::{CachePolicy, MediaCacheLayer, content_etag};

const IMAGE: &[u8] = b"\x89PNG pretend image bytes";
const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

fn three_days() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(259_200)).public())
}

#[tokio::test]
async fn get_200_gets_a_content_etag_and_the_policy() {
    let origin = Origin::new(Content::ok(IMAGE).header("content-type", "image/png"));
    let service = origin.wrap(&three_days());
    let answer = send(&service, req(get("/media/a.png"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, IMAGE);
    assert_eq!(
        answer.header("etag").unwrap(),
        content_etag(IMAGE).to_string()
    );
    assert_eq!(
        answer.header("cache-control"),
        Some("public, max-age=259200")
    );
    assert_eq!(answer.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn the_content_etag_is_the_same_on_every_replica() {
    let a = Origin::new(Content::ok(IMAGE)).wrap(&three_days());
    let b = Origin::new(Content::ok(IMAGE)).wrap(&three_days());
    let tag_a = send(&a, req(get("/x"))).await.headers["etag"].clone();
    let tag_b = send(&b, req(get("/x"))).await.headers["etag"].clone();
    assert_eq!(tag_a, tag_b);
}

#[tokio::test]
async fn an_etag_set_by_the_service_is_kept_and_never_doubled() {
    let origin = Origin::new(
        Content::ok(IMAGE)
            .header("etag", "W/\"v7\"")
            .header("last-modified", LM),
    );
    let answer = send(&origin.wrap(&three_days()), req(get("/a"))).await;
    let tags: Vec<_> = answer.headers.get_all("etag").iter().collect();
    assert_eq!(tags, ["W/\"v7\""]);
    assert_eq!(answer.header("last-modified"), Some(LM));
}

#[tokio::test]
async fn an_unquoted_etag_from_the_service_is_quoted() {
    let origin = Origin::new(Content::ok(IMAGE).header("etag", "abc123"));
    let service = origin.wrap(&three_days());
    let answer = send(&service, req(get("/a"))).await;
    assert_eq!(answer.header("etag"), Some("\"abc123\""));
    let again = send(
        &service,
        req(get("/a").header("if-none-match", "\"abc123\"")),
    )
    .await;
    assert_eq!(again.status, 304);
}

#[tokio::test]
async fn if_none_match_gives_304_with_the_200s_cache_headers_and_no_body() {
    let origin = Origin::new(
        Content::ok(IMAGE)
            .header("content-type", "image/png")
            .header("content-encoding", "identity")
            .header("content-location", "/media/a.png")
            .header("vary", "accept-encoding")
            .header("last-modified", LM),
    );
    let layer = MediaCacheLayer::new(
        CachePolicy::max_age(Duration::from_secs(60))
            .with_expires()
            .trust(tower_media_cache::Trust::Never),
    );
    let service = origin.wrap(&layer);
    let tag = content_etag(IMAGE).to_string();
    let answer = send(
        &service,
        req(get("/media/a.png").header("if-none-match", &tag)),
    )
    .await;
    assert_eq!(answer.status, 304);
    assert!(answer.body.is_empty());
    assert_eq!(answer.header("etag"), Some(tag.as_str()));
    assert_eq!(answer.header("cache-control"), Some("max-age=60"));
    assert_eq!(answer.header("last-modified"), Some(LM));
    assert_eq!(answer.header("content-location"), Some("/media/a.png"));
    assert_eq!(answer.header("vary"), Some("accept-encoding"));
    assert!(answer.header("expires").is_some());
    assert!(answer.header("date").is_some());
    for dropped in ["content-type", "content-encoding", "content-length"] {
        assert_eq!(answer.header(dropped), None, "{dropped}");
    }
}

#[tokio::test]
async fn if_none_match_lists_and_weak_tags_match() {
    let service = Origin::new(Content::ok(IMAGE)).wrap(&three_days());
    let tag = content_etag(IMAGE).to_string();
    let list = format!("\"old\",\tW/{tag} ");
    let answer = send(&service, req(get("/a").header("if-none-match", list))).await;
    assert_eq!(answer.status, 304);
}

#[tokio::test]
async fn if_modified_since_gives_304_when_not_modified() {
    let origin = Origin::new(Content::ok(IMAGE).header("last-modified", LM));
    let service = origin.wrap(&three_days());
    let answer = send(&service, req(get("/a").header("if-modified-since", LM))).await;
    assert_eq!(answer.status, 304);
    let older = "Sat, 05 Nov 1994 08:49:37 GMT";
    let answer = send(&service, req(get("/a").header("if-modified-since", older))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, IMAGE);
}

#[tokio::test]
async fn if_match_that_fails_gives_412_with_an_empty_body() {
    let service = Origin::new(Content::ok(IMAGE)).wrap(&three_days());
    let answer = send(&service, req(get("/a").header("if-match", "\"nope\""))).await;
    assert_eq!(answer.status, 412);
    assert!(answer.body.is_empty());
    assert_eq!(answer.header("cache-control"), None);
    let tag = content_etag(IMAGE).to_string();
    let answer = send(&service, req(get("/a").header("if-match", tag))).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn if_unmodified_since_that_fails_gives_412() {
    let origin = Origin::new(Content::ok(IMAGE).header("last-modified", LM));
    let service = origin.wrap(&three_days());
    let before = "Sat, 05 Nov 1994 08:49:37 GMT";
    let answer = send(
        &service,
        req(get("/a").header("if-unmodified-since", before)),
    )
    .await;
    assert_eq!(answer.status, 412);
}

#[tokio::test]
async fn errors_and_redirects_are_never_turned_into_304_or_412() {
    for status in [301u16, 404, 500] {
        let origin = Origin::new(Content::ok(b"nope").status(status).header("etag", "\"x\""));
        let service = origin.wrap(&three_days());
        let answer = send(&service, req(get("/a").header("if-none-match", "*"))).await;
        assert_eq!(answer.status, status);
        let answer = send(&service, req(get("/a").header("if-match", "\"other\""))).await;
        assert_eq!(answer.status, status);
        assert_eq!(
            answer.header("cache-control"),
            None,
            "no policy on {status}"
        );
    }
}

#[tokio::test]
async fn a_206_from_the_service_passes_untouched_with_policy_headers() {
    let origin = Origin::new(
        Content::ok(b"ab")
            .status(206)
            .header("content-range", "bytes 0-1/10"),
    );
    let service = origin.wrap(&three_days());
    let answer = send(&service, req(get("/a").header("range", "bytes=0-1"))).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, "ab");
    assert_eq!(answer.header("etag"), None);
    assert_eq!(answer.header("content-range"), Some("bytes 0-1/10"));
    assert_eq!(
        answer.header("cache-control"),
        Some("public, max-age=259200")
    );
}

#[tokio::test]
async fn answers_to_other_methods_are_not_hashed() {
    let service = Origin::new(Content::ok(IMAGE)).wrap(&three_days());
    let answer = send(&service, req(Request::post("/a"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("etag"), None);
    assert_eq!(answer.body, IMAGE);
}

/// RFC 9110 §9.3.2: a `HEAD` the service answers without a body (and
/// without an `ETag`) gets the `ETag` the `GET` carries — learned with an
/// internal `GET`, never made up — or, with `learn_head_validators(false)`,
/// no `ETag` at all.
#[tokio::test]
async fn head_without_a_known_validator_gets_the_get_etag_never_a_made_up_one() {
    let origin = Origin::new(Content::ok(IMAGE));
    let layer = three_days();
    let service = origin.wrap(&layer);
    let answer = send(&service, req(Request::head("/a"))).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    assert_eq!(
        answer.header("etag"),
        Some(content_etag(IMAGE).to_string().as_str())
    );
    assert_eq!(
        answer.header("cache-control"),
        Some("public, max-age=259200")
    );
    assert_eq!(layer.handle().stats().validator_fetches, 1);
    assert_eq!(origin.calls(), 2, "the HEAD and one internal GET");
    // Learned: the next HEAD is answered with it without another GET.
    send(&service, req(Request::head("/a"))).await;
    assert_eq!(layer.handle().stats().validator_fetches, 1);

    let service = Origin::new(Content::ok(IMAGE)).wrap(&three_days().learn_head_validators(false));
    let answer = send(&service, req(Request::head("/a"))).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    assert_eq!(answer.header("etag"), None);
    assert_eq!(
        answer.header("cache-control"),
        Some("public, max-age=259200")
    );
}

#[tokio::test]
async fn no_store_policy_adds_no_etag() {
    let layer = MediaCacheLayer::new(CachePolicy::no_store());
    let answer = send(
        &Origin::new(Content::ok(IMAGE)).wrap(&layer),
        req(get("/a")),
    )
    .await;
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert_eq!(answer.header("etag"), None);
}

#[tokio::test]
async fn cache_control_from_the_service_is_kept_unless_overridden() {
    let origin = Origin::new(Content::ok(IMAGE).header("cache-control", "private, max-age=5"));
    let kept = send(&origin.wrap(&three_days()), req(get("/a"))).await;
    assert_eq!(kept.header("cache-control"), Some("private, max-age=5"));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache().override_existing());
    let overridden = send(&origin.wrap(&layer), req(get("/a"))).await;
    assert_eq!(overridden.header("cache-control"), Some("no-cache"));
}

#[tokio::test]
async fn expires_is_sent_for_http_1_0_caches_when_asked() {
    let now = std::time::UNIX_EPOCH + Duration::from_secs(784_111_777);
    let layer = MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(60)).with_expires())
        .clock(move || now);
    let answer = send(
        &Origin::new(Content::ok(IMAGE)).wrap(&layer),
        req(get("/a")),
    )
    .await;
    assert_eq!(
        answer.header("expires"),
        Some("Sun, 06 Nov 1994 08:50:37 GMT")
    );
}

#[tokio::test]
async fn a_body_over_the_limit_streams_hashed_and_its_tag_comes_with_the_next_answer() {
    let big: Bytes = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let origin = Origin::new(Content {
        status: http::StatusCode::OK,
        body: big.clone(),
        headers: Default::default(),
    });
    let layer = three_days().max_buffer_bytes(64 * 1024);
    let service = origin.wrap(&layer);
    // The head goes before the body is read: no tag yet, the bytes as sent.
    let first = send(&service, req(get("/big"))).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("etag"), None);
    assert_eq!(first.body, big);
    let etag = content_etag(&big).to_string();
    let second = send(&service, req(get("/big"))).await;
    assert_eq!(second.header("etag"), Some(etag.as_str()));
    assert_eq!(second.body, big);
    let stats = layer.handle().stats();
    assert_eq!((stats.hashed_streaming, stats.streamed_unhashed), (2, 0));
}

#[tokio::test]
async fn with_large_body_hashing_off_a_body_over_the_limit_streams_untouched() {
    let big: Bytes = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let origin = Origin::new(Content {
        status: http::StatusCode::OK,
        body: big.clone(),
        headers: Default::default(),
    });
    let layer = three_days()
        .max_buffer_bytes(64 * 1024)
        .hash_large_bodies(false);
    let service = origin.wrap(&layer);
    for _ in 0..2 {
        let answer = send(&service, req(get("/big"))).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("etag"), None);
        assert_eq!(answer.body, big);
    }
    let stats = layer.handle().stats();
    assert_eq!((stats.hashed_streaming, stats.streamed_unhashed), (0, 2));
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_replays_its_prefix_and_keeps_trailers() {
    use futures_util::stream;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    let chunk = Bytes::from(vec![7u8; 10_000]);
    let service = tower::service_fn(move |_req: Request<()>| {
        let chunk = chunk.clone();
        async move {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", "42".parse().unwrap());
            let frames = (0..10)
                .map(move |_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())))
                .chain(std::iter::once(Ok(Frame::trailers(trailers))));
            // A stream has no size hint: the layer must find out by reading.
            Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(stream::iter(
                frames,
            ))))
        }
    });
    let layer = three_days().max_buffer_bytes(25_000);
    let service = tower::Layer::layer(&layer, service);
    let response = service.oneshot(req(get("/stream"))).await.unwrap();
    assert!(response.headers().get("etag").is_none());
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["x-checksum"], "42");
    let bytes = collected.to_bytes();
    assert_eq!(bytes.len(), 100_000);
    assert!(bytes.iter().all(|&b| b == 7));
}

#[tokio::test]
async fn trailers_of_a_hashed_body_are_kept() {
    use futures_util::stream;
    use http_body::Frame;
    use http_body_util::{BodyExt, StreamBody};
    use tower::ServiceExt;

    let service = tower::service_fn(|_req: Request<()>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hello "))),
            Ok(Frame::data(Bytes::from_static(b"world"))),
            Ok(Frame::trailers(trailers)),
        ];
        Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(stream::iter(
            frames,
        ))))
    });
    let service = tower::Layer::layer(&three_days(), service);
    let response = service.oneshot(req(get("/t"))).await.unwrap();
    assert_eq!(
        response.headers()["etag"],
        content_etag(b"hello world").to_string()
    );
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), "hello world");
}

#[tokio::test]
async fn excluded_routes_pass_untouched() {
    let layer = three_days().exclude("/admin/{*rest}");
    let service = Origin::new(Content::ok(IMAGE)).wrap(&layer);
    let answer = send(&service, req(get("/admin/x").header("if-none-match", "*"))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("etag"), None);
    assert_eq!(answer.header("cache-control"), None);
    assert_eq!(layer.handle().stats().learned, 0);
}

#[tokio::test]
async fn a_body_of_known_length_takes_its_whole_budget_share_or_streams_unhashed() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let body: &'static [u8] = &[42u8; 80];
    let layer = three_days().buffer_budget(100);
    let service = Origin::new(Content::ok(body)).wrap(&layer);
    // The first answer holds 80 bytes of the budget until its body is read.
    let first = service.clone().oneshot(req(get("/a"))).await.unwrap();
    assert!(first.headers().contains_key("etag"));
    // 20 bytes are left: the second body does not start buffering at all.
    let second = service.clone().oneshot(req(get("/b"))).await.unwrap();
    assert!(!second.headers().contains_key("etag"));
    assert_eq!(second.into_body().collect().await.unwrap().to_bytes(), body);
    let stats = layer.handle().stats();
    assert_eq!((stats.hashed, stats.buffer_budget_exhausted), (1, 1));
    // Reading the first body gives its share back.
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), body);
    let third = send(&service, req(get("/c"))).await;
    assert!(third.header("etag").is_some());
}
