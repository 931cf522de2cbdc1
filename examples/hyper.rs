//! A plain hyper 1 server (no framework) behind `MediaCacheLayer`.
//!
//! ```sh
//! PORT=3001 cargo run --example hyper
//! curl -i http://127.0.0.1:3001/noise.bin -o /dev/null -D -
//! curl -i -H 'If-None-Match: <the etag it printed>' http://127.0.0.1:3001/noise.bin
//! ```
//!
//! The handler is a `service_fn` that knows nothing about caching; the
//! layer adds the content `ETag` and `Cache-Control` and answers the
//! revalidations. `tower::ServiceBuilder` stacks the layer,
//! `hyper_util::service::TowerToHyperService` hands the tower service to
//! hyper's HTTP/1 connection.
//!
//! The layer needs a request body type with an empty value (`Default`), to
//! send the service an internal `GET` before a conditional write: hyper's
//! `Incoming` has none, so the request body is boxed first
//! (`BoxBody::new`), one line in the stack.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, service_fn};
use tower_media_cache::{CachePolicy, MediaCacheLayer};

/// 64 KiB of deterministic pseudo-random bytes (xorshift), like a small
/// encoded media file.
pub fn noise() -> Bytes {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut bytes = Vec::with_capacity(64 * 1024);
    while bytes.len() < 64 * 1024 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(bytes)
}

/// The application: no caching logic at all.
async fn handle(
    request: Request<BoxBody<Bytes, hyper::Error>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match request.uri().path() {
        "/" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"try /noise.bin and /hello.txt\n"),
        ),
        "/hello.txt" => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"hello from hyper\n"),
        ),
        "/noise.bin" => (StatusCode::OK, "application/octet-stream", noise()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found\n"),
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.parse().expect("a valid type"));
    Ok(response)
}

/// Serves connections from `listener` until `shutdown` completes, then
/// waits for the open connections to finish.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    // `handle` answers every method itself, so the layer wraps it as a
    // whole (`wrap_router`): it may send it a `GET` of its own to judge a
    // conditional write or learn a `HEAD`'s validators. `.layer(..)` in the
    // stack would work too, without those `GET`s (README, Wiring).
    let cache = MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(3600)).public());
    let service = ServiceBuilder::new()
        .map_request(|request: Request<Incoming>| request.map(BoxBody::new))
        .service(cache.wrap_router(service_fn(handle)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let connection = http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service.clone()),
                );
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(%peer, %error, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    graceful.shutdown().await;
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_media_cache=debug".into()),
        )
        .init();
    let port = match std::env::var("PORT") {
        Ok(port) => port.parse().expect("PORT is a port number"),
        Err(_) => 3000,
    };
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .expect("bind the listen address");
    let addr = listener.local_addr().expect("local address");
    let etag = tower_media_cache::content_etag(&noise());
    let etag = etag.header_value().to_str().expect("an ETag is ASCII");
    println!("Listening on http://{addr}/");
    println!("  curl -i http://{addr}/noise.bin -o /dev/null -D -");
    println!("  curl -i -H 'If-None-Match: {etag}' http://{addr}/noise.bin");
    serve(listener, async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await;
}
