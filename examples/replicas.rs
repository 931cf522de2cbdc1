//! Two replicas of a media service sharing invalidations over Redis.
//!
//! Each replica is an axum app behind its own `MediaCacheLayer` (its own
//! validator store), and both serve the same content. An invalidation on
//! replica A — a `PUT` through it, or its handle — reaches replica B, which
//! then asks its handler again instead of answering `304` from its store.
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
use tower_media_cache::bus::redis::RedisBus;
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
    let media: Media = Arc::default();
    media
        .lock()
        .unwrap()
        .insert("cat.jpg".into(), Bytes::from_static(b"a cat, version 1"));

    // One bus per replica: in production, one per process.
    let channel = "tower-media-cache-example:invalidations";
    let a = Replica::new(
        "A",
        &media,
        RedisBus::builder(&url).channel(channel).start()?,
    );
    let b = Replica::new(
        "B",
        &media,
        RedisBus::builder(&url).channel(channel).start()?,
    );

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
    println!("both replicas connected to {url}, channel {channel}\n");

    println!("1. Both replicas learn /media/cat.jpg and answer revalidations by themselves:");
    let v1 = a.get("/media/cat.jpg").await;
    b.get("/media/cat.jpg").await;
    a.revalidate("/media/cat.jpg", &v1).await;
    b.revalidate("/media/cat.jpg", &v1).await;

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
    a.handle.invalidate_prefix("/media/");
    b.wait_received(2).await;
    b.revalidate("/media/cat.jpg", &v2).await;

    let stats = b.handle.stats();
    println!(
        "\nreplica B: {} invalidations received, {} answers from its store, {} fallbacks while disconnected",
        stats.bus_received, stats.short_circuit_not_modified, stats.bus_disconnected_fallbacks
    );
    println!(
        "(stop Redis while a replica runs and it answers every request from its handler until Redis is back)"
    );
    Ok(())
}
