//! In front of CDNs and in production: targeted `CDN-Cache-Control` (RFC
//! 9213), `Cache-Status` (RFC 9211) and the metrics of the `metrics`
//! feature, down to `/metrics` of the `media_server` example served on
//! 127.0.0.1.

mod common;

#[cfg(feature = "metrics")]
#[path = "../examples/media_server.rs"]
#[allow(dead_code)]
mod media_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use common::{Content, Origin, get, req, send};
use http::header::{CACHE_CONTROL, ETAG, IF_MATCH, IF_NONE_MATCH};
use http::{Request, StatusCode};
use tower_media_cache::{CachePolicy, EntityTag, MediaCacheLayer, Trust, Validators};

const CDN: &str = "cdn-cache-control";
const SURROGATE: &str = "surrogate-control";
const STATUS: &str = "cache-status";

fn three_days() -> Duration {
    Duration::from_secs(259_200)
}

/// A clock the test moves.
fn clock() -> (
    Arc<AtomicU64>,
    impl Fn() -> SystemTime + Send + Sync + 'static,
) {
    let secs = Arc::new(AtomicU64::new(1_700_000_000));
    let read = secs.clone();
    (secs, move || {
        SystemTime::UNIX_EPOCH + Duration::from_secs(read.load(Ordering::SeqCst))
    })
}

// ---------------------------------------------------------------------------
// CDN-Cache-Control
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cdn_cache_control_is_rendered_apart_from_cache_control() {
    let policy = CachePolicy::no_cache().cdn(CachePolicy::max_age(three_days()).public());
    let layer = MediaCacheLayer::new(policy).cache_status("layer");
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&layer);

    let full = send(&service, req(get("/a.jpg"))).await;
    assert_eq!(full.header("cache-control"), Some("no-cache"));
    assert_eq!(full.header(CDN), Some("public, max-age=259200"));
    assert_eq!(full.headers.get_all(CACHE_CONTROL).iter().count(), 1);
    assert_eq!(full.headers.get_all(CDN).iter().count(), 1);
    assert_eq!(full.header(SURROGATE), None, "only when asked for");

    // The layer's 304 carries both, unchanged, for caches to update theirs.
    let etag = full.header("etag").unwrap().to_owned();
    let revalidated = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert_eq!(revalidated.header("cache-control"), Some("no-cache"));
    assert_eq!(revalidated.header(CDN), Some("public, max-age=259200"));
}

#[tokio::test]
async fn the_layer_trusts_by_the_browser_policy_not_the_cdn_one() {
    // Browsers `no-cache` (trust `Never`): the CDN's three days do not let
    // the store answer alone.
    let policy = CachePolicy::no_cache().cdn(CachePolicy::max_age(three_days()));
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&MediaCacheLayer::new(policy.clone()));
    let etag = send(&service, req(get("/a.jpg"))).await.headers[ETAG].clone();
    let again = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 2, "the service was asked");

    // An explicit trust mode is the way to let it answer.
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&MediaCacheLayer::new(policy.trust(Trust::UntilInvalidated)));
    let etag = send(&service, req(get("/a.jpg"))).await.headers[ETAG].clone();
    let again = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(again.header(CDN), Some("max-age=259200"));
    assert_eq!(origin.calls(), 1, "answered from the store");
}

#[tokio::test]
async fn a_cdn_cache_control_the_service_set_is_kept_unless_overridden() {
    let cdn = CachePolicy::max_age(three_days());
    let origin = Origin::new(Content::ok(b"x").header("cdn-cache-control", "max-age=60"));
    let kept = send(
        &origin.wrap(&MediaCacheLayer::new(
            CachePolicy::no_cache().cdn(cdn.clone()),
        )),
        req(get("/a.jpg")),
    )
    .await;
    assert_eq!(kept.header(CDN), Some("max-age=60"));
    assert_eq!(kept.header("cache-control"), Some("no-cache"));

    let replaced = send(
        &origin.wrap(&MediaCacheLayer::new(
            CachePolicy::no_cache().cdn(cdn).override_existing(),
        )),
        req(get("/a.jpg")),
    )
    .await;
    assert_eq!(replaced.header(CDN), Some("max-age=259200"));
    assert_eq!(replaced.headers.get_all(CDN).iter().count(), 1);

    // A policy that overrides and says nothing to CDNs removes the
    // service's field: its Cache-Control is what every cache obeys.
    let removed = send(
        &origin.wrap(&MediaCacheLayer::new(
            CachePolicy::no_cache().override_existing(),
        )),
        req(get("/a.jpg")),
    )
    .await;
    assert_eq!(removed.header(CDN), None);
}

#[tokio::test]
async fn a_service_cache_control_keeps_the_cdn_fields_out() {
    // The service said `private`: a CDN must not be handed a lifetime for it.
    let origin = Origin::new(Content::ok(b"per-user").header("cache-control", "private"));
    let policy = CachePolicy::no_cache()
        .cdn(CachePolicy::max_age(three_days()).public())
        .with_surrogate_control();
    let answer = send(
        &origin.wrap(&MediaCacheLayer::new(policy)),
        req(get("/me.jpg")),
    )
    .await;
    assert_eq!(answer.header("cache-control"), Some("private"));
    assert_eq!(answer.header(CDN), None);
    assert_eq!(answer.header(SURROGATE), None);
}

#[tokio::test]
async fn surrogate_control_says_what_it_can_of_the_cdn_policy() {
    let cases = [
        (
            CachePolicy::max_age(three_days())
                .public()
                .immutable()
                .stale_while_revalidate(Duration::from_secs(30))
                .stale_if_error(Duration::from_secs(600)),
            "max-age=259200, stale-while-revalidate=30, stale-if-error=600",
        ),
        (CachePolicy::no_cache(), "max-age=0"),
        (
            CachePolicy::no_store().stale_if_error(Duration::from_secs(1)),
            "no-store",
        ),
    ];
    for (cdn, expected) in cases {
        // In either order of the two calls.
        let after = CachePolicy::no_cache()
            .cdn(cdn.clone())
            .with_surrogate_control();
        let before = CachePolicy::no_cache().with_surrogate_control().cdn(cdn);
        for policy in [after, before] {
            let origin = Origin::new(Content::ok(b"x"));
            let answer = send(&origin.wrap(&MediaCacheLayer::new(policy)), req(get("/a"))).await;
            assert_eq!(answer.header(SURROGATE), Some(expected));
        }
    }
    // Without a CDN policy there is nothing to say.
    let policy = CachePolicy::no_cache().with_surrogate_control();
    assert_eq!(policy.surrogate_header_value(), None);
    let origin = Origin::new(Content::ok(b"x"));
    let answer = send(&origin.wrap(&MediaCacheLayer::new(policy)), req(get("/a"))).await;
    assert_eq!(answer.header(SURROGATE), None);
    assert_eq!(answer.header(CDN), None);
}

#[tokio::test]
async fn a_fingerprint_that_does_not_match_is_not_kept_at_the_cdn() {
    let bytes: &'static [u8] = b"the current bytes";
    let policy = CachePolicy::no_cache().cdn(CachePolicy::max_age(three_days()));
    let layer = MediaCacheLayer::new(policy).fingerprinted_urls();
    let origin = Origin::new(Content::ok(bytes));
    let service = origin.wrap(&layer);

    let right = tower_media_cache::fingerprinted_path("/media/a.jpg", bytes);
    let verified = send(&service, req(get(&right))).await;
    assert_eq!(
        verified.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(verified.header(CDN), None, "the CDN follows Cache-Control");

    let wrong = tower_media_cache::fingerprinted_path("/media/a.jpg", b"older bytes");
    let mismatch = send(&service, req(get(&wrong))).await;
    assert_eq!(mismatch.header("cache-control"), Some("no-cache"));
    assert_eq!(
        mismatch.header(CDN),
        None,
        "no three days for the wrong bytes"
    );
}

// ---------------------------------------------------------------------------
// Cache-Status
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cache_status_is_off_unless_configured() {
    let origin = Origin::new(Content::ok(b"x").header("cache-status", "objstore; hit"));
    let answer = send(
        &origin.wrap(&MediaCacheLayer::new(CachePolicy::no_cache())),
        req(get("/a")),
    )
    .await;
    let lines: Vec<_> = answer.headers.get_all(STATUS).iter().collect();
    assert_eq!(lines, ["objstore; hit"], "the service's field, untouched");
}

#[tokio::test]
async fn cache_status_says_miss_and_stored_then_hit_with_the_trust_left() {
    let (now, clock) = clock();
    let layer = MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(60)))
        .clock(clock)
        .cache_status("media-cache");
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&layer);

    let first = send(&service, req(get("/a.jpg"))).await;
    assert_eq!(
        first.header(STATUS),
        Some("media-cache; fwd=miss; fwd-status=200; stored")
    );
    let etag = first.header("etag").unwrap().to_owned();

    now.fetch_add(20, Ordering::SeqCst);
    let hit = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hit.header(STATUS), Some("media-cache; hit; ttl=40"));
    assert_eq!(origin.calls(), 1);

    // Past the trust window the entry is stale: the service is asked.
    now.fetch_add(41, Ordering::SeqCst);
    let stale = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(stale.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        stale.header(STATUS),
        Some("media-cache; fwd=stale; fwd-status=200; stored")
    );
    assert_eq!(origin.calls(), 2);

    // An unconditional request wants a body, which the layer never stores.
    let full = send(&service, req(get("/a.jpg"))).await;
    assert_eq!(
        full.header(STATUS),
        Some("media-cache; fwd=miss; fwd-status=200; stored")
    );
}

#[tokio::test]
async fn cache_status_says_stale_for_entries_trust_never_lets_answer() {
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("layer");
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&layer);
    let etag = send(&service, req(get("/a.jpg"))).await.headers[ETAG].clone();
    let again = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        again.header(STATUS),
        Some("layer; fwd=stale; fwd-status=200; stored")
    );
}

#[tokio::test]
async fn a_request_no_cache_goes_to_the_service_and_says_fwd_request() {
    let layer = MediaCacheLayer::new(CachePolicy::max_age(three_days()))
        .clock(clock().1)
        .cache_status("layer");
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&layer);
    let etag = send(&service, req(get("/a.jpg"))).await.headers[ETAG].clone();
    let revalidate = |extra: &[(&'static str, &'static str)]| {
        let mut builder = get("/a.jpg").header(IF_NONE_MATCH, &etag);
        for (name, value) in extra {
            builder = builder.header(*name, *value);
        }
        req(builder)
    };

    for asks_origin in [
        &[("cache-control", "no-cache")][..],
        &[("cache-control", "max-age=0, No-Cache")],
        &[
            ("cache-control", "no-store"),
            ("cache-control", " NO-CACHE "),
        ],
        &[("pragma", "no-cache")],
    ] {
        let calls = origin.calls();
        let answer = send(&service, revalidate(asks_origin)).await;
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{asks_origin:?}");
        assert_eq!(origin.calls(), calls + 1, "{asks_origin:?}");
        assert_eq!(
            answer.header(STATUS),
            Some("layer; fwd=request; fwd-status=200; stored"),
            "{asks_origin:?}"
        );
    }
    for store_answers in [
        &[][..],
        &[("cache-control", "max-age=0")],
        // Pragma counts only without Cache-Control (RFC 9111 §5.4).
        &[("cache-control", "max-age=0"), ("pragma", "no-cache")],
        &[("cache-control", "no-cachex")],
    ] {
        let calls = origin.calls();
        let answer = send(&service, revalidate(store_answers)).await;
        assert_eq!(answer.status, StatusCode::NOT_MODIFIED, "{store_answers:?}");
        assert_eq!(origin.calls(), calls, "{store_answers:?}");
        assert_eq!(
            answer.header(STATUS),
            Some("layer; hit; ttl=259200"),
            "{store_answers:?}"
        );
    }
}

#[tokio::test]
async fn a_request_no_cache_is_not_answered_by_the_probe_either() {
    let probed = Arc::new(AtomicU64::new(0));
    let counted = probed.clone();
    let policy = CachePolicy::no_cache().probe(move |_: &http::request::Parts| {
        counted.fetch_add(1, Ordering::SeqCst);
        async { Some(Validators::new().with_etag(EntityTag::strong("v1").unwrap())) }
    });
    let layer = MediaCacheLayer::new(policy).cache_status("layer");
    let origin = Origin::new(Content::ok(b"x").header("etag", "\"v1\""));
    let service = origin.wrap(&layer);

    let hit = send(&service, req(get("/a").header(IF_NONE_MATCH, "\"v1\""))).await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hit.header(STATUS), Some("layer; hit"));
    assert_eq!((origin.calls(), probed.load(Ordering::SeqCst)), (0, 1));

    let asked = send(
        &service,
        req(get("/a")
            .header(IF_NONE_MATCH, "\"v1\"")
            .header(CACHE_CONTROL, "no-cache")),
    )
    .await;
    assert_eq!(asked.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        asked.header(STATUS),
        Some("layer; fwd=request; fwd-status=200; stored")
    );
    assert_eq!((origin.calls(), probed.load(Ordering::SeqCst)), (1, 1));

    // A resumed download (`Range` + `If-Range`) is not checked by the probe
    // either.
    let resumed = send(
        &service,
        req(get("/a")
            .header("range", "bytes=0-0")
            .header("if-range", "\"v1\"")
            .header(CACHE_CONTROL, "no-cache")),
    )
    .await;
    assert_eq!(resumed.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resumed.header(STATUS),
        Some("layer; fwd=request; fwd-status=200; stored")
    );
    assert_eq!((origin.calls(), probed.load(Ordering::SeqCst)), (2, 1));
}

#[tokio::test]
async fn cache_status_is_appended_after_an_upstream_list() {
    let layer = MediaCacheLayer::new(CachePolicy::max_age(three_days()))
        .clock(clock().1)
        .cache_status("layer");
    let origin = Origin::new(
        Content::ok(b"jpeg bytes")
            .header("cache-status", "origin-proxy; fwd=uri-miss")
            .header("cache-status", "objstore; hit; ttl=10"),
    );
    let service = origin.wrap(&layer);
    let first = send(&service, req(get("/a.jpg"))).await;
    let lines: Vec<_> = first.headers.get_all(STATUS).iter().collect();
    assert_eq!(
        lines,
        [
            "origin-proxy; fwd=uri-miss, objstore; hit; ttl=10, layer; fwd=miss; fwd-status=200; stored"
        ]
    );

    // The store's 304s do not replay the upstream members of that 200: the
    // caches upstream took no part in them.
    let etag = first.header("etag").unwrap().to_owned();
    let hit = send(&service, req(get("/a.jpg").header(IF_NONE_MATCH, &etag))).await;
    assert_eq!(hit.status, StatusCode::NOT_MODIFIED);
    assert_eq!(hit.header(STATUS), Some("layer; hit; ttl=259200"));

    // A 304 the layer makes from the service's answer keeps them.
    let asked = send(
        &service,
        req(get("/a.jpg")
            .header(IF_NONE_MATCH, &etag)
            .header(CACHE_CONTROL, "no-cache")),
    )
    .await;
    assert_eq!(asked.status, StatusCode::NOT_MODIFIED);
    assert_eq!(
        asked.header(STATUS),
        Some(
            "origin-proxy; fwd=uri-miss, objstore; hit; ttl=10, \
             layer; fwd=request; fwd-status=200; stored"
        )
    );
}

#[tokio::test]
async fn cache_status_for_writes_errors_and_excluded_routes() {
    let layer = MediaCacheLayer::new(CachePolicy::max_age(three_days()))
        .exclude("/admin/{*rest}")
        .clock(clock().1)
        .cache_status("layer");
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&layer);

    let put = send(&service, req(Request::put("/a.jpg").header("host", "h"))).await;
    assert_eq!(
        put.header(STATUS),
        Some("layer; fwd=method; fwd-status=200")
    );

    // A guarded write refused from a trusted entry is the layer's answer.
    send(&service, req(get("/b.jpg"))).await;
    let refused = send(
        &service,
        req(Request::put("/b.jpg")
            .header("host", "media.example")
            .header(IF_MATCH, "\"older\"")),
    )
    .await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(refused.header(STATUS), Some("layer; hit; ttl=259200"));

    // Without a trusted entry the layer asked the service (an internal GET)
    // before refusing: not a hit, and no status of the write's own.
    let fetched = send(
        &service,
        req(Request::put("/c.jpg")
            .header("host", "media.example")
            .header(IF_MATCH, "\"older\"")),
    )
    .await;
    assert_eq!(fetched.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(fetched.header(STATUS), Some("layer; fwd=method"));

    origin.set(Content::ok(b"").status(404));
    let missing = send(&service, req(get("/gone.jpg"))).await;
    assert_eq!(
        missing.header(STATUS),
        Some("layer; fwd=miss; fwd-status=404")
    );

    let excluded = send(&service, req(get("/admin/x"))).await;
    assert_eq!(excluded.header(STATUS), None);
}

#[tokio::test]
async fn cache_status_details_why_a_body_was_not_hashed_or_stored() {
    let origin = Origin::new(Content::ok(b"more than four bytes"));
    // Over the limit, a body streams hashed: its head goes before its tag
    // is known, so nothing is stored yet and nothing is missing.
    let over_limit = MediaCacheLayer::new(CachePolicy::no_cache())
        .max_buffer_bytes(4)
        .cache_status("layer");
    let answer = send(&origin.wrap(&over_limit), req(get("/a"))).await;
    assert_eq!(answer.header("etag"), None);
    assert_eq!(
        answer.header(STATUS),
        Some("layer; fwd=miss; fwd-status=200")
    );
    // With large-body hashing off, it streams without a tag.
    let unhashed = MediaCacheLayer::new(CachePolicy::no_cache())
        .max_buffer_bytes(4)
        .hash_large_bodies(false)
        .cache_status("layer");
    let answer = send(&origin.wrap(&unhashed), req(get("/a"))).await;
    assert_eq!(answer.header("etag"), None);
    assert_eq!(
        answer.header(STATUS),
        Some("layer; fwd=miss; fwd-status=200; detail=body-too-large")
    );

    let over_budget = MediaCacheLayer::new(CachePolicy::no_cache())
        .buffer_budget(4)
        .cache_status("layer");
    let answer = send(&origin.wrap(&over_budget), req(get("/a"))).await;
    assert_eq!(
        answer.header(STATUS),
        Some("layer; fwd=miss; fwd-status=200; detail=buffer-budget")
    );

    // A selector over the store's 8 KiB limit is not learned.
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("layer");
    let long = format!("/a?{}", "q".repeat(9 * 1024));
    let answer = send(&origin.wrap(&layer), req(get(&long))).await;
    assert!(answer.header("etag").is_some());
    assert_eq!(
        answer.header(STATUS),
        Some("layer; fwd=miss; fwd-status=200; detail=entry-too-large")
    );
}

#[tokio::test]
async fn a_name_that_is_not_a_token_is_sent_as_a_string() {
    let layer = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("Media \"Cache\" 1");
    let origin = Origin::new(Content::ok(b"x"));
    let answer = send(&origin.wrap(&layer), req(get("/a"))).await;
    assert_eq!(
        answer.header(STATUS),
        Some(r#""Media \"Cache\" 1"; fwd=miss; fwd-status=200; stored"#)
    );
}

#[test]
#[should_panic(expected = "invalid Cache-Status name \"\": the name is empty")]
fn an_empty_cache_status_name_is_refused_at_configuration() {
    let _ = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("");
}

#[test]
#[should_panic(expected = "neither an sf-token nor an sf-string")]
fn a_non_ascii_cache_status_name_is_refused_at_configuration() {
    let _ = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("caché");
}

#[test]
#[should_panic(expected = "neither an sf-token nor an sf-string")]
fn a_cache_status_name_with_a_line_break_is_refused_at_configuration() {
    let _ = MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("layer\r\nx: y");
}

// ---------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------

/// The samples of a Prometheus text exposition: `(name{labels}, value)`.
#[cfg(feature = "metrics")]
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of one series, 0 when absent.
#[cfg(feature = "metrics")]
fn sample(text: &str, series: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(name, _)| name == series)
        .map_or(0.0, |(_, value)| value)
}

/// Every counter of `Stats` equals the sum of its metric's series, and no
/// series is labelled with a raw path.
#[cfg(feature = "metrics")]
#[test]
fn every_stats_counter_is_exported_with_route_labels_only() {
    use metrics_exporter_prometheus::PrometheusBuilder;

    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    let layer = MediaCacheLayer::new(CachePolicy::max_age(three_days()))
        .route("/media/{*path}", CachePolicy::max_age(three_days()))
        .route(
            "/probed/{id}",
            CachePolicy::no_cache().probe(|_: &http::request::Parts| async {
                Some(Validators::new().with_etag(EntityTag::strong("p").unwrap()))
            }),
        )
        .exclude("/admin/{*rest}")
        .max_buffer_bytes(64)
        .store_capacity_bytes(4096);
    let handle = layer.handle();
    let origin = Origin::new(Content::ok(b"jpeg bytes"));
    let service = origin.wrap(&layer);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            for i in 0..40 {
                let path = format!("/media/{i}.jpg");
                let etag = send(&service, req(get(&path))).await.headers[ETAG].clone();
                send(&service, req(get(&path).header(IF_NONE_MATCH, &etag))).await;
                send(&service, req(get(&path).header(IF_MATCH, "\"other\""))).await;
            }
            send(&service, req(get("/other.jpg"))).await;
            send(
                &service,
                req(get("/probed/1").header(IF_NONE_MATCH, "\"p\"")),
            )
            .await;
            send(&service, req(get("/admin/x"))).await;
            send(
                &service,
                req(Request::put("/media/new.jpg")
                    .header("host", "media.example")
                    .header(IF_MATCH, "\"x\"")),
            )
            .await;
            send(
                &service,
                req(get(&format!("/media/a?{}", "q".repeat(9000)))),
            )
            .await;
            origin.set(Content::ok(&[7; 100]));
            send(&service, req(get("/media/big.jpg"))).await;
            handle.invalidate_prefix("/media/");
        });
    });
    let stats = handle.stats();
    let scrape = prometheus.render();
    let series = samples(&scrape);
    let debug = format!("{stats:#?}");
    let mut checked = 0;
    for line in debug.lines() {
        let Some((field, value)) = line.trim().trim_end_matches(',').split_once(": ") else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let exported: f64 = if field == "entries" || field == "store_bytes" {
            sample(&scrape, &format!("tower_media_cache_{field}"))
        } else {
            let name = format!("tower_media_cache_{field}_total");
            series
                .iter()
                .filter(|(s, _)| *s == name || s.starts_with(&format!("{name}{{")))
                .map(|(_, v)| v)
                .sum()
        };
        assert_eq!(exported, value, "{field}\n{scrape}");
        checked += 1;
    }
    assert!(checked >= 18, "every field was compared: {debug}");
    // The scenario moved most counters, so the comparison says something.
    assert!(stats.short_circuit_not_modified >= 40 && stats.evicted > 0 && stats.invalidated > 0);
    assert!(stats.hashed_streaming == 1 && stats.not_learned_too_large == 1);
    assert!(stats.validator_fetches == 1 && stats.probes == 1);
    for (name, _) in &series {
        if let Some((_, labels)) = name.split_once('{') {
            assert!(
                labels == "route=\"/media/{*path}\"}"
                    || labels == "route=\"/probed/{id}\"}"
                    || labels == "route=\"(unmatched)\"}",
                "{name}"
            );
        }
    }
    assert!(scrape.contains(
        r#"tower_media_cache_short_circuit_not_modified_total{route="/media/{*path}"} 40"#
    ));
    assert!(scrape.contains(r#"tower_media_cache_hashed_total{route="(unmatched)"} 1"#));
    assert!(!scrape.contains("/admin"));
}

/// A running `media_server` example on 127.0.0.1: its `/metrics` shows the
/// counters move after a `200` and a `304`.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn the_example_metrics_endpoint_shows_the_counters_moving() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, media_server::app())
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .await
            .unwrap();
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let fetch = |path: &str, header: Option<(&'static str, String)>| {
        let mut request = Request::get(format!("http://{addr}{path}"));
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let request = request.body(Empty::new()).unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let route = "{route=\"/media/{*path}\"}";
    let counter =
        |text: &str, name: &str| sample(text, &format!("tower_media_cache_{name}_total{route}"));

    let (head, before) = fetch("/metrics", None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(
        head.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        head.headers.get("cache-status"),
        None,
        "/metrics is excluded"
    );

    let (ok, _) = fetch("/media/tone.wav", None).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.headers["cdn-cache-control"], "public, max-age=2592000");
    assert_eq!(
        ok.headers["cache-status"],
        "tower-media-cache; fwd=miss; fwd-status=200; stored"
    );
    let etag = ok.headers[ETAG].to_str().unwrap().to_owned();
    let (_, after_200) = fetch("/metrics", None).await;
    assert_eq!(
        counter(&after_200, "hashed") - counter(&before, "hashed"),
        1.0
    );
    assert_eq!(
        counter(&after_200, "learned") - counter(&before, "learned"),
        1.0
    );
    assert!(sample(&after_200, "tower_media_cache_entries") >= 1.0);
    assert!(sample(&after_200, "tower_media_cache_store_bytes") > 0.0);

    let (not_modified, _) = fetch("/media/tone.wav", Some(("if-none-match", etag))).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(
        not_modified.headers["cache-status"]
            .to_str()
            .unwrap()
            .starts_with("tower-media-cache; hit; ttl=")
    );
    let (_, after_304) = fetch("/metrics", None).await;
    assert_eq!(
        counter(&after_304, "short_circuit_not_modified")
            - counter(&after_200, "short_circuit_not_modified"),
        1.0
    );
    assert_eq!(counter(&after_304, "hashed"), counter(&after_200, "hashed"));
    assert!(after_304.contains("# HELP tower_media_cache_short_circuit_not_modified_total"));
    assert!(!after_304.contains("tone.wav"), "never a raw path");

    stop.send(()).unwrap();
    server.await.unwrap();
}
