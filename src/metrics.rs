//! The layer's counters and store gauges through the [`metrics`] facade
//! (feature `metrics`), so that whatever exporter the application installs
//! — Prometheus, StatsD, OpenTelemetry's bridge, a test recorder — sees them.
//!
//! # What is exported
//!
//! Every field of [`Stats`](crate::Stats) is a metric named
//! `tower_media_cache_<field>`: counters end in `_total`
//! (`tower_media_cache_short_circuit_not_modified_total`,
//! `tower_media_cache_hashed_total`, …), the two gauges do not
//! (`tower_media_cache_entries`, `tower_media_cache_store_bytes`).
//!
//! | metric | labels |
//! |---|---|
//! | counters of what the layer did for a request (short circuits, 304s and 412s made from the service's answers, hashing, probes, validator fetches, learned, not learned) | `route`: the [route pattern](crate::MediaCacheLayer::route) the request matched (`/media/{*path}`), or `(unmatched)` when no route rule did |
//! | counters of the store as a whole (`evicted`, `invalidated`, `bus_received`, `bus_disconnected_fallbacks`) | none |
//! | gauges `entries`, `store_bytes` | none |
//!
//! A raw path is never a label: one series per route rule, however many
//! URLs the service has. Requests on [excluded](crate::MediaCacheLayer::exclude)
//! routes are not counted. Each metric counts exactly what the `Stats`
//! field of the same name counts (summed over its `route` labels).
//!
//! The counters are incremented as things happen. The gauges are set at
//! every invalidation through a [`CacheHandle`](crate::CacheHandle), every
//! [`CacheHandle::stats`](crate::CacheHandle::stats), and after learning at
//! most once a second (the byte total is a sum over the store's shards);
//! evictions and invalidations received over the bus show in them at the
//! next of those.
//!
//! Several layers in one process add to the same series (the counters sum;
//! each sets the gauges to its own store's figures): give them distinct
//! route patterns, or read each one's [`Stats`](crate::Stats).
//!
//! # Why the `metrics` facade
//!
//! A library should not choose the application's monitoring system. The
//! `metrics` crate is a facade in the way `log` and `tracing` are: the crate
//! only names and increments its metrics (a no-op until a recorder is
//! installed, and nothing at all without the feature), and the application
//! installs one exporter for all its libraries. `prometheus-client` would tie
//! every user to Prometheus and to registering the crate's metrics in the
//! application's registry by hand; the OpenTelemetry SDK is a far heavier
//! dependency tree with its own pipeline to configure, and the facade already
//! reaches it through a recorder bridge. The facade costs one small crate.
//!
//! # Example
//!
//! With `metrics-exporter-prometheus` (as `examples/media_server.rs` serves
//! it at `/metrics`):
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use metrics_exporter_prometheus::PrometheusBuilder;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_media_cache::{CachePolicy, MediaCacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let recorder = PrometheusBuilder::new().build_recorder();
//! let prometheus = recorder.handle();
//! metrics::set_global_recorder(recorder).unwrap();
//! tower_media_cache::metrics::describe();
//!
//! let service = ServiceBuilder::new()
//!     .layer(
//!         MediaCacheLayer::new(CachePolicy::no_cache())
//!             .route("/media/{*path}", CachePolicy::max_age(Duration::from_secs(60))),
//!     )
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("jpeg bytes")))
//!     }));
//! service.oneshot(Request::get("/media/a.jpg").body(()).unwrap()).await.unwrap();
//!
//! let scrape = prometheus.render();
//! assert!(scrape.contains(r#"tower_media_cache_hashed_total{route="/media/{*path}"} 1"#));
//! assert!(scrape.contains("tower_media_cache_entries 1"));
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use metrics::SharedString;

use crate::handle::Counter;
use crate::store::Store;

/// The `route` label of requests no route rule matched.
const UNMATCHED: &str = "(unmatched)";

/// The variants gauge's name.
const ENTRIES: &str = "tower_media_cache_entries";
/// The store bytes gauge's name.
const STORE_BYTES: &str = "tower_media_cache_store_bytes";

/// Describes every metric of the crate (help text and unit) to the
/// recorder installed now. Optional: exporters show the metrics without it,
/// Prometheus' without `# HELP` lines. Call it once the recorder is
/// installed; calling it again does no harm.
pub fn describe() {
    for counter in Counter::ALL {
        let help = counter
            .description()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        metrics::describe_counter!(counter.metric_name(), metrics::Unit::Count, help);
    }
    metrics::describe_gauge!(
        ENTRIES,
        metrics::Unit::Count,
        "Variants in the validator store now."
    );
    metrics::describe_gauge!(
        STORE_BYTES,
        metrics::Unit::Bytes,
        "Bytes the validator store's entries hold now."
    );
}

/// One more of a per-request `counter`, labelled with the request's route
/// pattern.
pub(crate) fn count(counter: Counter, pattern: Option<&Arc<str>>) {
    let route = match pattern {
        Some(pattern) => SharedString::from(Arc::clone(pattern)),
        None => SharedString::const_str(UNMATCHED),
    };
    metrics::counter!(counter.metric_name(), "route" => route).increment(1);
}

/// `n` more of a counter of the store as a whole.
pub(crate) fn count_store_wide(counter: Counter, n: u64) {
    metrics::counter!(counter.metric_name()).increment(n);
}

/// After a learn at `now`: sets the store's gauges at most once per second
/// (the store's byte total is a sum over its shards; the first learn in each
/// second pays for it, the others do not).
pub(crate) fn store_gauges_after_learn(store: &Store, now: SystemTime) {
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
        .saturating_add(1);
    if store.counters.gauges_set_at.swap(second, Ordering::Relaxed) != second {
        store_gauges(store);
    }
}

/// Sets the store's gauges to what it holds now.
pub(crate) fn store_gauges(store: &Store) {
    metrics::gauge!(ENTRIES).set(store.len() as f64);
    metrics::gauge!(STORE_BYTES).set(store.bytes() as f64);
}
