//! Replicas of a media service sharing invalidations, and what they
//! learned, over Redis.
//!
//! Each replica is an axum app behind its own `MediaCacheLayer` (its own
//! validator store), and all serve the same content. What replica A learns
//! is written to Redis (the shared store), so replica B answers a
//! revalidation of a file it never served with a `304`, without its
//! handler — and so does replica C, started later as after a deploy. An
//! invalidation on A — a `PUT` through it, or its handle — reaches B, which
//! then asks its handler again instead of answering `304`, and removes the
//! file from Redis.
//!
//! ```text
//! redis-server --port 6379 --save '' --appendonly no &
//! cargo run --example replicas --features redis
//! REDIS_URL=redis://127.0.0.1:6380/ cargo run --example replicas --features redis
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{Request, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tower::ServiceExt;
use tower_media_cache::bus::redis::{RedisBus, SharedStore};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer, Trust};

/// What both replicas serve (in real life: a database or an object store).
type Media = Arc<Mutex<HashMap<String, Bytes>>>;

struct Replica {
    name: &'static str,
    app: Router,
    handle: CacheHandle,
    handler_calls: Arc<AtomicUsize>,
}

impl Replica {
    fn new(name: &'static str, media: &Media, bus: RedisBus) -> Self {
        let handler_calls = Arc::new(AtomicUsize::new(0));
        let layer = MediaCacheLayer::new(
            CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
        )
        .invalidation_bus(bus);
        let handle = layer.handle();
        let calls = handler_calls.clone();
        let app = Router::new()
            .route(
                "/media/{name}",
                get(
                    |State(media): State<Media>, Path(name): Path<String>| async move {
                        match media.lock().unwrap().get(&name) {
                            Some(bytes) => ([(header::CONTENT_TYPE, "image/jpeg")], bytes.clone())
                                .into_response(),
                            None => StatusCode::NOT_FOUND.into_response(),
                        }
                    },
                )
                .put(
                    |State(media): State<Media>, Path(name): Path<String>, body: Bytes| async move {
                        media.lock().unwrap().insert(name, body);
                        StatusCode::NO_CONTENT
                    },
                ),
            )
            .with_state(media.clone())
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    next.run(request)
                },
            ))
            .layer(layer);
        Self {
            name,
            app,
            handle,
            handler_calls,
        }
    }

    async fn request(&self, request: Request<Body>) -> (StatusCode, Option<String>) {
        let before = self.handler_calls.load(Ordering::SeqCst);
        let revalidation = if request.headers().contains_key(header::IF_NONE_MATCH) {
            " If-None-Match"
        } else {
            ""
        };
        let line = format!("{} {}{revalidation}", request.method(), request.uri());
        let response = self.app.clone().oneshot(request).await.unwrap();
        let called = self.handler_calls.load(Ordering::SeqCst) > before;
        let etag = response
            .headers()
            .get(header::ETAG)
            .map(|v| v.to_str().unwrap().to_owned());
        println!(
            "  replica {}: {line:<42} -> {} {}",
            self.name,
            response.status(),
            if called {
                "(handler called)"
            } else {
                "(from the validator store)"
            }
        );
        (response.status(), etag)
    }

    async fn get(&self, path: &str) -> String {
        let request = Request::get(path).body(Body::empty()).unwrap();
        self.request(request).await.1.expect("an ETag")
    }

    async fn revalidate(&self, path: &str, etag: &str) -> StatusCode {
        let request = Request::get(path)
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .unwrap();
        self.request(request).await.0
    }

    async fn put(&self, path: &str, bytes: &'static [u8]) {
        let request = Request::put(path).body(Body::from(bytes)).unwrap();
        self.request(request).await;
    }

    /// Waits (at most 5 s) until `n` invalidations from the other replica
    /// arrived.
    async fn wait_received(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.handle.stats().bus_received < n {
            assert!(Instant::now() < deadline, "invalidation not received");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (at most 5 s) until this replica wrote `n` entries to Redis
    /// (in the background, after the response).
    async fn wait_shared(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.handle.stats().shared_writes < n {
            assert!(Instant::now() < deadline, "entry not written to Redis");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A replica's bus: invalidations on `CHANNEL`, and the shared store.
fn bus(url: &str) -> Result<RedisBus, Box<dyn std::error::Error>> {
    Ok(RedisBus::builder(url)
        .channel(CHANNEL)
        .shared_store(SharedStore::new().prefix("tower-media-cache-example:validators:"))
        .start()?)
}

const CHANNEL: &str = "tower-media-cache-example:invalidations";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let media: Media = Arc::default();
    media
        .lock()
        .unwrap()
        .insert("cat.jpg".into(), Bytes::from_static(b"a cat, version 1"));

    // One bus per replica: in production, one per process.
    let a = Replica::new("A", &media, bus(&url)?);
    let b = Replica::new("B", &media, bus(&url)?);

    let deadline = Instant::now() + Duration::from_secs(5);
    while !(a.handle.bus_connected() && b.handle.bus_connected()) {
        if Instant::now() > deadline {
            eprintln!(
                "cannot reach Redis at {url}; start one with\n  \
                 redis-server --port 6379 --save '' --appendonly no\n\
                 or set REDIS_URL"
            );
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("both replicas connected to {url}, channel {CHANNEL}\n");

    println!(
        "1. Replica A learns /media/cat.jpg and shares it; B, which never served it, answers too:"
    );
    let v1 = a.get("/media/cat.jpg").await;
    a.wait_shared(1).await;
    a.revalidate("/media/cat.jpg", &v1).await;
    let status = b.revalidate("/media/cat.jpg", &v1).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    println!("\n2. A PUT through replica A changes the cat; A publishes the invalidation:");
    a.put("/media/cat.jpg", b"a cat, version 2").await;
    b.wait_received(1).await;
    println!("   replica B received it; B asks its handler again, which has the new cat:");
    let status = b.revalidate("/media/cat.jpg", &v1).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "B must not answer 304 for the old cat"
    );

    println!(
        "\n3. Replica A's handle invalidates a whole prefix, for example after a bulk import:"
    );
    let v2 = b.get("/media/cat.jpg").await;
    b.revalidate("/media/cat.jpg", &v2).await;
    let written = b.handle.stats().shared_writes;
    a.handle.invalidate_prefix("/media/");
    b.wait_received(2).await;
    // B asks its handler, relearns the cat and shares it again.
    b.revalidate("/media/cat.jpg", &v2).await;

    println!(
        "\n4. Replica C starts, as after a deploy: its first revalidation is answered from Redis:"
    );
    b.wait_shared(written + 1).await;
    let c = Replica::new("C", &media, bus(&url)?);
    while !c.handle.bus_connected() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = c.revalidate("/media/cat.jpg", &v2).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    println!();
    for replica in [&a, &b, &c] {
        let stats = replica.handle.stats();
        println!(
            "replica {}: {} invalidations received, {} answers from its store ({} found in Redis), \
             {} entries written to Redis, {} fallbacks while disconnected",
            replica.name,
            stats.bus_received,
            stats.short_circuit_not_modified,
            stats.shared_hits,
            stats.shared_writes,
            stats.bus_disconnected_fallbacks
        );
    }
    println!(
        "\n(stop Redis while a replica runs and it answers every request from its handler until Redis is back)"
    );
    Ok(())
}
