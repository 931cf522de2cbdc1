//! Whole-request costs through the public service, with a trivial inner
//! service that answers at once (so what is measured is the layer).
//!
//! `cargo bench --bench service`
//!
//! * `short_circuit_304/N`: the store holds N learned paths; each iteration
//!   is a conditional GET (`If-None-Match` = the learned ETag) on a random
//!   one of them, answered 304 from the store without the inner service.
//! * `short_circuit_304_hot_1000/N`: the same, over 1000 of the N paths.
//! * `policy_selection/R`: an unconditional GET whose path matches one of R
//!   route rules (`/r{i}/{*rest}`; R = 0 means the default policy only),
//!   through the inner service, buffered, hashed and learned.
//! * `inner_only`: the same GET straight to the inner service, no layer.
//! * `stats/N`: `CacheHandle::stats()` with N entries in the store.
//! * `tags_200/T`, `tags_304/T`: an unconditional GET (learned again) and a
//!   revalidation (304 from the store) under a policy with T cache tags
//!   written in `xkey`; T = 0 is the baseline. `own_tags_200/T`: the same
//!   GET with T tags the inner service sets per response (`CacheTags`).
//!
//! Requests are built outside the timed section; futures are polled once
//! with `now_or_never` (every one of them is ready at once), so no runtime
//! is in the measurement.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use divan::Bencher;
use futures_util::FutureExt;
use http::header::IF_NONE_MATCH;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer, content_etag};

fn main() {
    divan::main();
}

static INNER_CALLS: AtomicU64 = AtomicU64::new(0);

/// The inner service: 200 with the request path as body, so every path has
/// its own content ETag.
fn inner(request: Request<()>) -> Ready<Result<Response<Full<Bytes>>, Infallible>> {
    INNER_CALLS.fetch_add(1, Ordering::Relaxed);
    let body = Bytes::copy_from_slice(request.uri().path().as_bytes());
    ready(Ok(Response::new(Full::new(body))))
}

fn policy() -> CachePolicy {
    CachePolicy::max_age(Duration::from_secs(3600))
}

/// xorshift64*: enough to spread lookups over the store.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as usize % n
    }
}

fn call<S>(service: &mut S, request: Request<()>) -> S::Response
where
    S: Service<Request<()>>,
    S::Error: std::fmt::Debug,
{
    service
        .call(request)
        .now_or_never()
        .expect("every future here is ready at once")
        .unwrap()
}

fn media_path(i: usize) -> String {
    format!("/media/{i:08}.jpg")
}

/// A service whose store holds `entries` learned paths, checked to answer a
/// conditional GET with 304 without calling the inner service.
fn populated(
    entries: usize,
) -> (
    impl Service<Request<()>, Response = Response<impl Sized>, Error = Infallible>,
    CacheHandle,
) {
    // Room to spare: quick_cache splits its capacity over shards, and a
    // shard that fills up evicts even when the whole store has room.
    // An entry of this benchmark weighs under 1 KiB.
    let layer = MediaCacheLayer::new(policy()).store_capacity_bytes(entries as u64 * 2048);
    let handle = layer.handle();
    let mut service = layer.layer(service_fn(inner));
    for i in 0..entries {
        let response = call(&mut service, Request::get(media_path(i)).body(()).unwrap());
        assert_eq!(response.status(), StatusCode::OK);
    }
    let stats = handle.stats();
    assert_eq!(stats.entries, entries as u64, "{stats:?}");
    assert_eq!(stats.evicted, 0, "{stats:?}");

    let before = INNER_CALLS.load(Ordering::Relaxed);
    let response = call(&mut service, conditional(entries / 2));
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(INNER_CALLS.load(Ordering::Relaxed), before);
    assert_eq!(handle.stats().short_circuit_not_modified, 1);
    (service, handle)
}

/// A revalidation of path `i` with the ETag the layer gave it.
fn conditional(i: usize) -> Request<()> {
    let path = media_path(i);
    let etag = content_etag(path.as_bytes());
    Request::get(path)
        .header(IF_NONE_MATCH, etag.header_value().clone())
        .body(())
        .unwrap()
}

/// Uniformly random paths among all `entries`: the worst case for the
/// memory hierarchy, every lookup touches entries no other one did lately.
#[divan::bench(args = [1_000, 100_000, 1_000_000], sample_count = 100, min_time = 1, max_time = 5)]
fn short_circuit_304(bencher: Bencher, entries: usize) {
    let (mut service, _) = populated(entries);
    let before = INNER_CALLS.load(Ordering::Relaxed);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    bencher
        .with_inputs(|| conditional(rng.below(entries)))
        .bench_local_values(|request| call(&mut service, request));
    assert_eq!(INNER_CALLS.load(Ordering::Relaxed), before);
}

/// The same store sizes, but requests go to 1000 of the paths only (a hot
/// set, as real revalidation traffic has): separates the cost of the
/// store's size from the cost of cache misses on a cold entry.
#[divan::bench(args = [1_000, 100_000, 1_000_000], sample_count = 100, min_time = 1, max_time = 5)]
fn short_circuit_304_hot_1000(bencher: Bencher, entries: usize) {
    let (mut service, _) = populated(entries);
    let before = INNER_CALLS.load(Ordering::Relaxed);
    let stride = entries / 1000;
    let mut rng = Rng(0x1234_5678_9abc_def1);
    bencher
        .with_inputs(|| conditional(rng.below(1000) * stride))
        .bench_local_values(|request| call(&mut service, request));
    assert_eq!(INNER_CALLS.load(Ordering::Relaxed), before);
}

/// `CacheHandle::stats()` (what a metrics scrape calls) with N entries.
#[divan::bench(args = [1_000, 100_000, 1_000_000], sample_count = 20, max_time = 3)]
fn stats(bencher: Bencher, entries: usize) {
    let (_service, handle) = populated(entries);
    bencher.bench_local(|| handle.stats());
}

/// Paths spread over the rules: `/r{j % R}/media/{j}.jpg`.
const PATHS: usize = 1000;

#[divan::bench(args = [0, 1, 100, 1000], sample_count = 100, min_time = 0.5, max_time = 3)]
fn policy_selection(bencher: Bencher, rules: usize) {
    let mut layer = MediaCacheLayer::new(CachePolicy::no_cache());
    for i in 0..rules {
        layer = layer.route(&format!("/r{i}/{{*rest}}"), policy().public());
    }
    let mut service = layer.layer(service_fn(inner));
    let paths: Vec<String> = (0..PATHS)
        .map(|j| format!("/r{}/media/{j}.jpg", j % rules.max(1)))
        .collect();
    let expected = if rules == 0 {
        "no-cache"
    } else {
        "public, max-age=3600"
    };
    let response = call(&mut service, Request::get(&paths[0]).body(()).unwrap());
    assert_eq!(response.headers()[http::header::CACHE_CONTROL], expected);

    let mut rng = Rng(0x0fed_cba9_8765_4321);
    bencher
        .with_inputs(|| Request::get(&paths[rng.below(PATHS)]).body(()).unwrap())
        .bench_local_values(|request| call(&mut service, request));
}

/// The same unconditional GET, without the layer.
#[divan::bench(sample_count = 100, min_time = 0.5, max_time = 3)]
fn inner_only(bencher: Bencher) {
    let mut service = service_fn(inner);
    let paths: Vec<String> = (0..PATHS).map(|j| format!("/r0/media/{j}.jpg")).collect();
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    bencher
        .with_inputs(|| Request::get(&paths[rng.below(PATHS)]).body(()).unwrap())
        .bench_local_values(|request| call(&mut service, request));
}

/// A layer whose policy carries `tags` cache tags (written in `xkey`), and
/// a service over it with the `PATHS` paths learned.
fn tagged(
    tags: usize,
) -> impl Service<Request<()>, Response = Response<impl Sized>, Error = Infallible> {
    let layer = MediaCacheLayer::new(
        policy()
            .trust(tower_media_cache::Trust::UntilInvalidated)
            .tags((0..tags).map(|i| format!("album:{i}"))),
    )
    .tag_header(tower_media_cache::TagHeader::xkey());
    let mut service = layer.layer(service_fn(inner));
    for i in 0..PATHS {
        let response = call(&mut service, Request::get(media_path(i)).body(()).unwrap());
        assert_eq!(
            response.headers().contains_key("xkey"),
            tags > 0,
            "tags written"
        );
    }
    service
}

/// An unconditional GET on one of `PATHS` learned paths: through the inner
/// service, hashed, tags written and the entry learned again (replacing
/// the last one, its tags in the index with it). `tags` = 0 is the
/// baseline.
#[divan::bench(args = [0, 4, 16], sample_count = 100, min_time = 0.5, max_time = 3)]
fn tags_200(bencher: Bencher, tags: usize) {
    let mut service = tagged(tags);
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    bencher
        .with_inputs(|| Request::get(media_path(rng.below(PATHS))).body(()).unwrap())
        .bench_local_values(|request| call(&mut service, request));
}

/// A revalidation answered 304 from the store, whose stored header set
/// repeats the tags. `tags` = 0 is the baseline.
#[divan::bench(args = [0, 4, 16], sample_count = 100, min_time = 0.5, max_time = 3)]
fn tags_304(bencher: Bencher, tags: usize) {
    let mut service = tagged(tags);
    let before = INNER_CALLS.load(Ordering::Relaxed);
    let mut rng = Rng(0x1234_5678_9abc_def1);
    bencher
        .with_inputs(|| conditional(rng.below(PATHS)))
        .bench_local_values(|request| call(&mut service, request));
    assert_eq!(INNER_CALLS.load(Ordering::Relaxed), before);
}

/// `tags_200` with the tags set per response by the inner service
/// (`CacheTags` in the response's extensions, rendered on every response):
/// `owner:{n}` and `album:{n}:{i}` style tags derived from the path.
#[divan::bench(args = [0, 4, 16], sample_count = 100, min_time = 0.5, max_time = 3)]
fn own_tags_200(bencher: Bencher, tags: usize) {
    let layer = MediaCacheLayer::new(policy().trust(tower_media_cache::Trust::UntilInvalidated))
        .tag_header(tower_media_cache::TagHeader::xkey());
    let mut service = layer.layer(service_fn(move |request: Request<()>| {
        let path = request.uri().path().to_owned();
        let mut response = Response::new(Full::new(Bytes::copy_from_slice(path.as_bytes())));
        if tags > 0 {
            response
                .extensions_mut()
                .insert(tower_media_cache::CacheTags::new(
                    (0..tags).map(|i| format!("album:{i}:{}", &path[7..15])),
                ));
        }
        ready(Ok::<_, Infallible>(response))
    }));
    for i in 0..PATHS {
        let response = call(&mut service, Request::get(media_path(i)).body(()).unwrap());
        assert_eq!(response.headers().contains_key("xkey"), tags > 0);
    }
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    bencher
        .with_inputs(|| Request::get(media_path(rng.below(PATHS))).body(()).unwrap())
        .bench_local_values(|request| call(&mut service, request));
}

/// What the production features cost per request (issue 17): the layer as
/// in `short_circuit_304` (1000 entries, a revalidation answered from the
/// store) and as in `policy_selection/1` (an unconditional GET learned),
/// with `Cache-Status` on or off and, with `--features metrics`, a
/// Prometheus recorder installed or not.
///
/// `cargo bench --bench service --features metrics -- front`
mod front {
    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Front {
        /// Neither (with the feature compiled in: no recorder installed).
        Off,
        /// `.cache_status("layer")`.
        CacheStatus,
        /// A Prometheus recorder for this thread.
        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        Metrics,
        /// Both.
        #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
        Both,
    }

    #[cfg(feature = "metrics")]
    const FRONTS: &[Front] = &[Front::Off, Front::CacheStatus, Front::Metrics, Front::Both];
    #[cfg(not(feature = "metrics"))]
    const FRONTS: &[Front] = &[Front::Off, Front::CacheStatus];

    const ENTRIES: usize = 1000;

    fn layer(front: Front) -> MediaCacheLayer {
        let layer = MediaCacheLayer::new(CachePolicy::no_cache())
            .route("/media/{*path}", policy())
            .store_capacity_bytes(ENTRIES as u64 * 2048);
        match front {
            Front::CacheStatus | Front::Both => layer.cache_status("layer"),
            Front::Off | Front::Metrics => layer,
        }
    }

    /// Runs `f` with this thread's recorder as `front` says.
    fn recording<T>(front: Front, f: impl FnOnce() -> T) -> T {
        match front {
            Front::Off | Front::CacheStatus => f(),
            #[cfg(feature = "metrics")]
            Front::Metrics | Front::Both => {
                let recorder =
                    metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
                let prometheus = recorder.handle();
                let out = metrics::with_local_recorder(&recorder, f);
                let scrape = prometheus.render();
                assert!(scrape.contains("tower_media_cache_"), "{scrape}");
                out
            }
            #[cfg(not(feature = "metrics"))]
            Front::Metrics | Front::Both => unreachable!(),
        }
    }

    #[divan::bench(args = FRONTS, sample_count = 100, min_time = 1, max_time = 5)]
    fn revalidation_304(bencher: Bencher, front: &Front) {
        let front = *front;
        recording(front, || {
            let mut service = layer(front).layer(service_fn(inner));
            for i in 0..ENTRIES {
                let response = call(&mut service, Request::get(media_path(i)).body(()).unwrap());
                assert_eq!(response.status(), StatusCode::OK);
            }
            let response = call(&mut service, conditional(0));
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
            let marked = response.headers().contains_key("cache-status");
            assert_eq!(marked, matches!(front, Front::CacheStatus | Front::Both));
            let mut rng = Rng(0x1234_5678_9abc_def1);
            bencher
                .with_inputs(|| conditional(rng.below(ENTRIES)))
                .bench_local_values(|request| call(&mut service, request));
        })
    }

    #[divan::bench(args = FRONTS, sample_count = 100, min_time = 1, max_time = 5)]
    fn learned_200(bencher: Bencher, front: &Front) {
        let front = *front;
        recording(front, || {
            let mut service = layer(front).layer(service_fn(inner));
            let paths: Vec<String> = (0..PATHS).map(media_path).collect();
            let mut rng = Rng(0x0fed_cba9_8765_4321);
            bencher
                .with_inputs(|| Request::get(&paths[rng.below(PATHS)]).body(()).unwrap())
                .bench_local_values(|request| call(&mut service, request));
        })
    }
}
