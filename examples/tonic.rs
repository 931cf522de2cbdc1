//! A tonic gRPC server behind `MediaCacheLayer`: gRPC calls work unchanged.
//!
//! ```sh
//! PORT=50051 cargo run --example tonic
//! ```
//!
//! gRPC requests are `POST`s: the layer adds nothing to them, evaluates no
//! precondition, buffers nothing, and streams the response body through
//! with its trailers (`grpc-status`, `grpc-message`) untouched. The layer
//! fits `Server::builder().layer(...)` directly: no adapter is needed.
//!
//! Its one effect on a `2xx` answer to a `POST` is to invalidate what it
//! had learned for that URI, as RFC 9111 §4.4 asks of caches — for gRPC,
//! on every call. On a server that mixes gRPC with cacheable `GET`s (say
//! through `tonic::service::Routes::into_axum_router`), keep the gRPC
//! services out of the layer's way with `.exclude`:
//!
//! ```ignore
//! MediaCacheLayer::new(policy).exclude("/grpc.health.v1.Health/{*method}")
//! ```

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower_media_cache::{CachePolicy, MediaCacheLayer};

/// The service name the health service reports as `SERVING`.
pub const SERVICE: &str = "media.v1.Media";

/// Serves gRPC health checks from `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    Server::builder()
        .layer(MediaCacheLayer::new(CachePolicy::no_cache()))
        .add_service(health)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

#[tokio::main]
async fn main() -> Result<(), tonic::transport::Error> {
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
    println!("gRPC health service on http://{addr} (service {SERVICE:?} is SERVING)");
    serve(listener, async {
        tokio::signal::ctrl_c().await.ok();
    })
    .await
}
