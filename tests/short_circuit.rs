//! Answering conditional requests from the validator store or a probe,
//! without calling the inner service.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Content, Origin, get, req, send};
use http::Request;
use tower_media_cache::{CachePolicy, EntityTag, MediaCacheLayer, Trust, Validators, content_etag};

const V1: &[u8] = b"version one";
const V2: &[u8] = b"version two";

fn tag(bytes: &[u8]) -> String {
    content_etag(bytes).to_string()
}

/// A clock the test moves by hand.
#[derive(Clone)]
struct Clock(Arc<Mutex<SystemTime>>);

impl Clock {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )))
    }
    fn advance(&self, by: Duration) {
        *self.0.lock().unwrap() += by;
    }
    fn layer(&self, policy: CachePolicy) -> MediaCacheLayer {
        let clock = self.0.clone();
        MediaCacheLayer::new(policy).clock(move || *clock.lock().unwrap())
    }
}

fn max_age(secs: u64) -> CachePolicy {
    CachePolicy::max_age(Duration::from_secs(secs))
}

#[tokio::test]
async fn trust_max_age_answers_304_without_calling_the_inner_service() {
    let origin = Origin::new(Content::ok(V1));
    let layer = MediaCacheLayer::new(max_age(60));
    let service = origin.wrap(&layer);
    send(&service, req(get("/a"))).await;
    assert_eq!(origin.calls(), 1);
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(answer.status, 304);
    assert_eq!(origin.calls(), 1, "inner service not called");
    assert_eq!(answer.header("etag"), Some(tag(V1).as_str()));
    assert_eq!(answer.header("cache-control"), Some("max-age=60"));
    assert!(answer.header("date").is_some());
    assert_eq!(layer.handle().stats().short_circuit_not_modified, 1);
}

#[tokio::test]
async fn trust_max_age_ends_when_a_stored_copy_would_be_stale() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&clock.layer(max_age(60)));
    send(&service, req(get("/a"))).await;
    clock.advance(Duration::from_secs(59));
    send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(origin.calls(), 1);
    clock.advance(Duration::from_secs(1));
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(
        answer.status, 304,
        "still a 304, made from the inner answer"
    );
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn trust_max_age_uses_the_smaller_of_max_age_and_s_maxage() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&clock.layer(max_age(600).s_maxage(Duration::from_secs(10))));
    send(&service, req(get("/a"))).await;
    clock.advance(Duration::from_secs(11));
    send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn trust_for_a_fixed_window() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let policy = CachePolicy::no_cache().trust(Trust::For(Duration::from_secs(5)));
    let service = origin.wrap(&clock.layer(policy));
    send(&service, req(get("/a"))).await;
    clock.advance(Duration::from_secs(4));
    send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(origin.calls(), 1);
    clock.advance(Duration::from_secs(2));
    send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn trust_until_invalidated_lasts_until_the_handle_invalidates() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let layer = clock.layer(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
    let service = origin.wrap(&layer);
    send(&service, req(get("/a"))).await;
    clock.advance(Duration::from_secs(86_400 * 365));
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!((answer.status.as_u16(), origin.calls()), (304, 1));

    origin.set(Content::ok(V2));
    assert!(layer.handle().invalidate("/a"));
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, V2);
    assert_eq!(origin.calls(), 2);
}

#[tokio::test]
async fn trust_never_calls_the_inner_service_but_still_answers_304() {
    let origin = Origin::new(Content::ok(V1));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache());
    let service = origin.wrap(&layer);
    send(&service, req(get("/a"))).await;
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(answer.status, 304);
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.handle().stats().not_modified_from_inner, 1);
}

#[tokio::test]
async fn a_probe_answers_instead_of_the_inner_service() {
    let origin = Origin::new(Content::ok(V1));
    let version = Arc::new(Mutex::new("v1"));
    let probe_version = version.clone();
    let policy =
        CachePolicy::no_cache().probe(move |request: &http::request::Parts| {
            let current = *probe_version.lock().unwrap();
            let known = request.uri.path() == "/a";
            async move {
                known.then(|| Validators::new().with_etag(EntityTag::strong(current).unwrap()))
            }
        });
    let layer = MediaCacheLayer::new(policy);
    let service = origin.wrap(&layer);
    let answer = send(&service, req(get("/a").header("if-none-match", "\"v1\""))).await;
    assert_eq!(answer.status, 304);
    assert_eq!(answer.header("etag"), Some("\"v1\""));
    assert_eq!(answer.header("cache-control"), Some("no-cache"));
    assert_eq!(origin.calls(), 0);

    let answer = send(&service, req(get("/a").header("if-match", "\"v0\""))).await;
    assert_eq!(answer.status, 412);
    assert_eq!(origin.calls(), 0);

    *version.lock().unwrap() = "v2";
    let answer = send(&service, req(get("/a").header("if-none-match", "\"v1\""))).await;
    assert_eq!(answer.status, 200);
    assert_eq!(origin.calls(), 1);

    // The probe does not know /b: the inner service decides.
    send(&service, req(get("/b").header("if-none-match", "\"v1\""))).await;
    assert_eq!(origin.calls(), 2);
    assert_eq!(layer.handle().stats().probes, 4);
}

#[tokio::test]
async fn if_match_failing_against_a_trusted_entry_gives_412_without_the_inner_service() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    let answer = send(&service, req(get("/a").header("if-match", "\"stale\""))).await;
    assert_eq!(answer.status, 412);
    assert!(answer.body.is_empty());
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn a_write_based_on_a_stale_copy_gets_412_and_never_executes() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    let put = Request::put("/a")
        .header("host", "media.example")
        .header("if-match", "\"stale\"");
    assert_eq!(send(&service, req(put)).await.status, 412);
    let create = Request::put("/a")
        .header("host", "media.example")
        .header("if-none-match", "*");
    assert_eq!(send(&service, req(create)).await.status, 412);
    assert_eq!(origin.calls(), 1, "the write never reached the service");
}

#[tokio::test]
async fn a_successful_write_invalidates_the_uri_and_its_location() {
    let origin = Origin::new(Content::ok(V1));
    let layer = MediaCacheLayer::new(max_age(60));
    let service = origin.wrap(&layer);
    send(&service, req(get("/a"))).await;
    send(&service, req(get("/b"))).await;
    send(&service, req(get("/c"))).await;
    origin.set(
        Content::ok(b"")
            .status(201)
            .header("location", "http://media.example/b")
            .header("content-location", "/c"),
    );
    send(
        &service,
        req(Request::post("/a").header("host", "media.example")),
    )
    .await;
    origin.set(Content::ok(V2));
    let calls = origin.calls();
    for path in ["/a", "/b", "/c"] {
        let answer = send(&service, req(get(path).header("if-none-match", tag(V1)))).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body, V2);
    }
    assert_eq!(origin.calls(), calls + 3);
}

#[tokio::test]
async fn a_location_on_another_host_is_not_invalidated() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/b"))).await;
    origin.set(
        Content::ok(b"")
            .status(201)
            .header("location", "http://elsewhere.example/b"),
    );
    send(
        &service,
        req(Request::post("/a").header("host", "media.example")),
    )
    .await;
    let calls = origin.calls();
    let answer = send(&service, req(get("/b").header("if-none-match", tag(V1)))).await;
    assert_eq!((answer.status.as_u16(), origin.calls()), (304, calls));
}

#[tokio::test]
async fn a_failed_write_invalidates_nothing() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    origin.set(Content::ok(b"").status(409));
    send(
        &service,
        req(Request::delete("/a").header("host", "media.example")),
    )
    .await;
    let calls = origin.calls();
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!((answer.status.as_u16(), origin.calls()), (304, calls));
}

#[tokio::test]
async fn requests_with_credentials_are_not_answered_from_the_store_unless_public() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    for (name, value) in [("authorization", "Bearer x"), ("cookie", "session=1")] {
        let calls = origin.calls();
        send(
            &service,
            req(get("/a")
                .header(name, value)
                .header("if-none-match", tag(V1))),
        )
        .await;
        assert_eq!(
            origin.calls(),
            calls + 1,
            "{name} reaches the inner service"
        );
    }

    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60).public()));
    send(&service, req(get("/a"))).await;
    send(
        &service,
        req(get("/a")
            .header("authorization", "Bearer x")
            .header("if-none-match", tag(V1))),
    )
    .await;
    assert_eq!(origin.calls(), 1, "a public policy may answer them");
}

#[tokio::test]
async fn one_hosts_entries_never_answer_another_hosts_requests() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    let other = Request::get("/a")
        .header("host", "other.example")
        .header("if-none-match", tag(V1));
    send(&service, req(other)).await;
    assert_eq!(origin.calls(), 2);
    let same = Request::get("/a")
        .header("host", "MEDIA.example")
        .header("if-none-match", tag(V1));
    send(&service, req(same)).await;
    assert_eq!(origin.calls(), 2, "host names compare case-insensitively");
}

#[tokio::test]
async fn refused_requests_are_never_turned_into_304_by_the_store() {
    let origin = Origin::new(
        Content::ok(b"login first")
            .status(401)
            .header("etag", "\"secret\""),
    );
    let layer = MediaCacheLayer::new(max_age(60));
    let service = origin.wrap(&layer);
    send(&service, req(get("/private"))).await;
    let answer = send(
        &service,
        req(get("/private").header("if-none-match", "\"secret\"")),
    )
    .await;
    assert_eq!(answer.status, 401);
    assert_eq!(layer.handle().stats().learned, 0);
}

#[tokio::test]
async fn a_404_forgets_what_was_learned() {
    let origin = Origin::new(Content::ok(V1));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache());
    let service = origin.wrap(&layer);
    send(&service, req(get("/a"))).await;
    assert_eq!(layer.handle().stats().entries, 1);
    origin.set(Content::ok(b"gone").status(404));
    send(&service, req(get("/a"))).await;
    assert_eq!(layer.handle().stats().entries, 0);
}

#[tokio::test]
async fn vary_separates_variants() {
    let gzip = Content::ok(b"gzipped")
        .header("vary", "Accept-Encoding")
        .header("content-encoding", "gzip");
    let origin = Origin::new(gzip);
    let layer = MediaCacheLayer::new(max_age(60));
    let service = origin.wrap(&layer);
    send(&service, req(get("/a").header("accept-encoding", "gzip"))).await;
    origin.set(Content::ok(b"plain").header("vary", "Accept-Encoding"));
    send(&service, req(get("/a"))).await;
    assert_eq!(layer.handle().stats().entries, 2);

    let gz = send(
        &service,
        req(get("/a")
            .header("accept-encoding", "gzip")
            .header("if-none-match", tag(b"gzipped"))),
    )
    .await;
    assert_eq!(gz.status, 304);
    let plain = send(
        &service,
        req(get("/a").header("if-none-match", tag(b"plain"))),
    )
    .await;
    assert_eq!(plain.status, 304);
    assert_eq!(origin.calls(), 2);
    // The gzip tag does not answer a request for the identity variant.
    let crossed = send(
        &service,
        req(get("/a").header("if-none-match", tag(b"gzipped"))),
    )
    .await;
    assert_eq!(crossed.status, 200);
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn unshareable_answers_are_never_learned() {
    for content in [
        Content::ok(V1).header("vary", "*"),
        Content::ok(V1).header("set-cookie", "a=b"),
        Content::ok(V1).header("cache-control", "private, max-age=60"),
    ] {
        let layer = MediaCacheLayer::new(max_age(60));
        let service = Origin::new(content).wrap(&layer);
        send(&service, req(get("/a"))).await;
        assert_eq!(layer.handle().stats().learned, 0);
    }
    let layer = MediaCacheLayer::new(CachePolicy::no_store());
    let service = Origin::new(Content::ok(V1).header("etag", "\"x\"")).wrap(&layer);
    send(&service, req(get("/a"))).await;
    assert_eq!(layer.handle().stats().learned, 0);
}

#[tokio::test]
async fn the_store_is_bounded_in_bytes_and_evicts() {
    let capacity = 16 * 1024;
    let layer = MediaCacheLayer::new(max_age(60)).store_capacity_bytes(capacity);
    let service = Origin::new(Content::ok(V1)).wrap(&layer);
    for i in 0..200 {
        send(&service, req(get(&format!("/{i}")))).await;
    }
    let stats = layer.handle().stats();
    assert_eq!(stats.learned, 200);
    assert!(stats.store_bytes <= capacity, "{stats:?}");
    // An entry of this size weighs well over 200 bytes.
    assert!(stats.entries <= capacity / 200, "{stats:?}");
    assert!(stats.evicted >= 200 - capacity / 200, "{stats:?}");
    assert_eq!(stats.entries + stats.evicted, 200, "{stats:?}");
}

#[tokio::test]
async fn a_changed_etag_from_the_inner_service_replaces_the_entry() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&clock.layer(max_age(10)));
    send(&service, req(get("/a"))).await;
    origin.set(Content::ok(V2));
    clock.advance(Duration::from_secs(11));
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(answer.body, V2);
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V2)))).await;
    assert_eq!(answer.status, 304);
    assert_eq!(origin.calls(), 2, "the new entry is trusted");
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn head_uses_the_stored_validators() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    let head = send(
        &service,
        req(Request::head("/a").header("host", "media.example")),
    )
    .await;
    assert_eq!(head.header("etag"), Some(tag(V1).as_str()));
    assert!(head.body.is_empty());
    let head = send(
        &service,
        req(Request::head("/a")
            .header("host", "media.example")
            .header("if-none-match", tag(V1))),
    )
    .await;
    assert_eq!(head.status, 304);
}

#[tokio::test]
async fn synthesized_last_modified_never_goes_backwards() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&clock.layer(CachePolicy::no_cache().synthesize_last_modified()));
    let first = send(&service, req(get("/a")))
        .await
        .header("last-modified")
        .unwrap()
        .to_owned();
    clock.advance(Duration::from_secs(30));
    let same = send(&service, req(get("/a")))
        .await
        .header("last-modified")
        .unwrap()
        .to_owned();
    assert_eq!(first, same, "unchanged content keeps its date");

    origin.set(Content::ok(V2));
    let second = send(&service, req(get("/a")))
        .await
        .header("last-modified")
        .unwrap()
        .to_owned();
    // Roll back to V1 within the same second: the date still moves forward.
    origin.set(Content::ok(V1));
    let rolled_back = send(&service, req(get("/a")))
        .await
        .header("last-modified")
        .unwrap()
        .to_owned();
    let parse = |s: &str| httpdate::parse_http_date(s).unwrap();
    assert!(parse(&second) > parse(&first));
    assert!(parse(&rolled_back) > parse(&second));

    let answer = send(
        &service,
        req(get("/a").header("if-modified-since", &rolled_back)),
    )
    .await;
    assert_eq!(answer.status, 304);
}

#[tokio::test]
async fn expires_on_a_stored_304_is_fresh() {
    let clock = Clock::new();
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&clock.layer(max_age(60).with_expires()));
    let first = send(&service, req(get("/a"))).await;
    clock.advance(Duration::from_secs(30));
    let answer = send(&service, req(get("/a").header("if-none-match", tag(V1)))).await;
    assert_eq!(answer.status, 304);
    assert_eq!(origin.calls(), 1);
    let expires =
        |a: &common::Answer| httpdate::parse_http_date(a.header("expires").unwrap()).unwrap();
    assert_eq!(expires(&answer), expires(&first) + Duration::from_secs(30));
}

#[tokio::test]
async fn preconditions_on_options_are_ignored() {
    let origin = Origin::new(Content::ok(V1));
    let service = origin.wrap(&MediaCacheLayer::new(max_age(60)));
    send(&service, req(get("/a"))).await;
    let options = Request::options("/a")
        .header("host", "media.example")
        .header("if-match", "\"stale\"");
    let answer = send(&service, req(options)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(origin.calls(), 2);
}
