//! The server that `bench/load.sh` drives: one media file over HTTP (any
//! size; the script writes 200 KiB by default, and 1 KiB to 5 MiB with
//! `BODY_SIZES`), in six modes, so the layer can be compared with no layer,
//! with a bare `304` handler and with tower-http's `ServeDir` under the same
//! load.
//!
//! ```sh
//! cargo build --release --example bench_server
//! target/release/examples/bench_server plain    127.0.0.1:8081 /tmp/media/media.jpg
//! target/release/examples/bench_server layer    127.0.0.1:8082 /tmp/media/media.jpg
//! target/release/examples/bench_server layer-etag 127.0.0.1:8084 /tmp/media/media.jpg
//! target/release/examples/bench_server layer-nomemo 127.0.0.1:8086 /tmp/media/media.jpg
//! target/release/examples/bench_server servedir 127.0.0.1:8083 /tmp/media/media.jpg
//! target/release/examples/bench_server handler-304 127.0.0.1:8085 /tmp/media/media.jpg
//! ```
//!
//! * `plain`: axum serves the file's bytes from memory at `/media.jpg`.
//! * `layer`: the same router behind `MediaCacheLayer` with a `max-age`
//!   policy (content ETag, `Cache-Control`, short-circuited 304s).
//! * `layer-nomemo`: as `layer`, with the hash memo off
//!   (`hash_memo_bytes(0)`), so the body is hashed on every `200` again, as
//!   it is for bodies made or read per request (with the memo, `layer`
//!   hashes its one in-memory buffer once).
//! * `layer-etag`: as `layer`, but the handler sends the content ETag it
//!   computed once at startup, so the layer has nothing to hash (what the
//!   layer costs apart from hashing; the advice for bytes served from
//!   memory).
//! * `handler-304`: no layer; the handler answers every request `304` with
//!   the headers the layer's short-circuit sends (the floor of the
//!   axum/hyper/Tokio stack for a 304, to compare the layer's 304s with).
//! * `servedir`: tower-http's `ServeDir` on the file's folder (reads the
//!   file on every request; its own `ETag` and `Last-Modified`).
//! * `slow-plain`, `slow-layer`, `slow-layer-nocoalesce`: for
//!   `bench/burst.sh`, a handler that takes `SLOW_MS` milliseconds (default
//!   50) before it answers with the file's bytes from memory, without the
//!   layer, with it (request coalescing on, the default) and with
//!   `.coalesce(false)`. `GET /calls` (outside the layer) tells how many
//!   times the slow handler ran.
//!
//! `BENCH_WORKERS` sets the number of Tokio worker threads (default 1, so
//! that on a small machine the load generator keeps a core of its own, and
//! so that the server's CPU time per request compares with nginx running
//! one worker process). The process also has its main thread (which accepts
//! connections) and, for `servedir`, Tokio's blocking-pool threads (file
//! reads); `bench/load.sh` counts the CPU time of all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::get;
use bytes::Bytes;
use tower_http::services::ServeDir;
use tower_media_cache::{CachePolicy, MediaCacheLayer, content_etag};

fn usage() -> ! {
    eprintln!(
        "usage: [BENCH_WORKERS=N] [SLOW_MS=N] bench_server plain|layer|layer-nomemo|layer-etag|handler-304|servedir|slow-plain|slow-layer|slow-layer-nocoalesce ADDR FILE"
    );
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, file] = args.as_slice() else {
        usage();
    };
    let workers = match std::env::var("BENCH_WORKERS") {
        Err(_) => 1,
        Ok(w) => match w.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("BENCH_WORKERS must be a number of threads above 0, not {w:?}");
                usage();
            }
        },
    };
    let file = std::path::PathBuf::from(file);

    let layer = MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(86_400)));
    let app = match mode.as_str() {
        "plain" => in_memory(&file, false),
        "layer" => in_memory(&file, false).layer(layer),
        "layer-nomemo" => in_memory(&file, false).layer(layer.hash_memo_bytes(0)),
        "layer-etag" => in_memory(&file, true).layer(layer),
        "handler-304" => not_modified(&file),
        "slow-plain" => slow(&file, None),
        "slow-layer" => slow(&file, Some(layer)),
        "slow-layer-nocoalesce" => slow(&file, Some(layer.coalesce(false))),
        "servedir" => {
            let dir = file.parent().expect("FILE has a parent folder").to_owned();
            Router::new().fallback_service(ServeDir::new(dir))
        }
        _ => usage(),
    };

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr.as_str())
                .await
                .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            eprintln!("bench_server {mode} listening on http://{addr}/ ({workers} worker(s))");
            axum::serve(listener, app).await.expect("server");
        });
}

/// `/{file name}` answered from a copy of the file kept in memory, with its
/// content ETag when `etag` is set.
fn in_memory(file: &std::path::Path, etag: bool) -> Router {
    let bytes = Bytes::from(std::fs::read(file).expect("read FILE"));
    let etag = etag.then(|| content_etag(&bytes).header_value().clone());
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("FILE has a UTF-8 name");
    Router::new().route(
        &format!("/{name}"),
        get(move || {
            let bytes = bytes.clone();
            let etag = etag.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
                if let Some(etag) = etag {
                    headers.insert(ETAG, etag);
                }
                (headers, bytes)
            }
        }),
    )
}

/// `/{file name}` answered after `SLOW_MS` milliseconds (behind `layer`, if
/// any), and `/calls`: how many times that handler ran.
fn slow(file: &std::path::Path, layer: Option<MediaCacheLayer>) -> Router {
    let delay = std::env::var("SLOW_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_millis(50), Duration::from_millis);
    let bytes = Bytes::from(std::fs::read(file).expect("read FILE"));
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("FILE has a UTF-8 name");
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let media = Router::new().route(
        &format!("/{name}"),
        get(move || {
            let (bytes, calls) = (bytes.clone(), counted.clone());
            async move {
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                (
                    [(CONTENT_TYPE, HeaderValue::from_static("image/jpeg"))],
                    bytes,
                )
            }
        }),
    );
    let media = match layer {
        Some(layer) => media.layer(layer),
        None => media,
    };
    Router::new()
        .route(
            "/calls",
            get(move || {
                let calls = calls.clone();
                async move { calls.load(Ordering::Relaxed).to_string() }
            }),
        )
        .merge(media)
}

/// `/{file name}` always answered `304` with the file's content ETag and the
/// `Cache-Control` the `layer` mode sends.
fn not_modified(file: &std::path::Path) -> Router {
    let bytes = std::fs::read(file).expect("read FILE");
    let etag = content_etag(&bytes).header_value().clone();
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .expect("FILE has a UTF-8 name");
    Router::new().route(
        &format!("/{name}"),
        get(move || {
            let etag = etag.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert(ETAG, etag);
                headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=86400"));
                (StatusCode::NOT_MODIFIED, headers)
            }
        }),
    )
}
