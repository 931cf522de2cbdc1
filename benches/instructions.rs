//! One request path, repeated, for counting instructions and allocations per
//! request (`bench/instructions.sh` runs it under callgrind at two request
//! counts and divides the difference, so start-up cancels out).
//!
//! `cargo bench --bench instructions -- CONTENDER N` sends N requests of the
//! contender's kind (after a warm-up that fills the store) through an axum
//! `Router` driven with `oneshot` on a current-thread runtime, bodies
//! drained, and prints `CONTENDER N allocations=A` — the allocations made
//! by the N requests, from a counting global allocator. `list` prints the
//! contenders.
//!
//! Not a timing benchmark: run it under callgrind (or `perf stat -e
//! instructions`), never read its wall-clock time.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_media_cache::preconditions::{Precondition, evaluate};
use tower_media_cache::{CachePolicy, MediaCacheLayer, Trust, Validators, content_etag};

/// Counts allocations (not bytes): what a request costs the allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call forwards to the system allocator unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's layout contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The document the handlers serve and write.
#[derive(Clone)]
struct Doc(Arc<Mutex<Bytes>>);

impl Doc {
    fn validators(&self) -> Validators {
        Validators::new().with_etag(content_etag(&self.0.lock().unwrap()))
    }
}

async fn get_doc(State(doc): State<Doc>) -> Bytes {
    doc.0.lock().unwrap().clone()
}

/// A `PUT` handler that judges its own preconditions, as a careful one does.
async fn put_doc(
    State(doc): State<Doc>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if evaluate(&method, &headers, &doc.validators()) != Precondition::Proceed {
        return StatusCode::PRECONDITION_FAILED.into_response();
    }
    *doc.0.lock().unwrap() = body;
    StatusCode::NO_CONTENT.into_response()
}

fn routes(doc: &Doc) -> Router {
    Router::new()
        .route("/media/x.jpg", get(get_doc).put(put_doc))
        .with_state(doc.clone())
}

/// What a contender sends, and how the app is wired.
struct Contender {
    name: &'static str,
    what: &'static str,
    app: fn(&Doc) -> Router,
    request: fn() -> Request<Body>,
    /// Requests sent before counting (to teach the store).
    warm_up: fn() -> Request<Body>,
}

fn no_cache() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::no_cache())
}

fn trusting() -> MediaCacheLayer {
    MediaCacheLayer::new(
        CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
    )
}

fn stale_put() -> Request<Body> {
    Request::put("/media/x.jpg")
        .header("if-match", "\"stale\"")
        .body(Body::from("new bytes"))
        .unwrap()
}

fn plain_put() -> Request<Body> {
    Request::put("/media/x.jpg")
        .body(Body::from("bytes of the image"))
        .unwrap()
}

fn plain_get() -> Request<Body> {
    Request::get("/media/x.jpg").body(Body::empty()).unwrap()
}

const CONTENDERS: &[Contender] = &[
    Contender {
        name: "put_412_bare",
        what: "a stale conditional PUT, the bare handler judges it (412)",
        app: routes,
        request: stale_put,
        warm_up: plain_get,
    },
    Contender {
        name: "put_412_per_method",
        what: "the same behind Router::layer, store without a trusted entry: the handler judges it",
        app: |doc| routes(doc).layer(no_cache()),
        request: stale_put,
        warm_up: plain_get,
    },
    Contender {
        name: "put_412_per_method_trusted",
        what: "the same behind Router::layer with a trusted entry: the layer's 412, no handler",
        app: |doc| routes(doc).layer(trusting()),
        request: stale_put,
        warm_up: plain_get,
    },
    Contender {
        name: "put_412_whole",
        what: "the same with wrap_router, no trusted entry: the layer's GET, then its 412",
        app: |doc| Router::new().fallback_service(no_cache().wrap_router(routes(doc))),
        request: stale_put,
        warm_up: plain_get,
    },
    Contender {
        name: "put_204_bare",
        what: "an unconditional PUT, bare handler (204)",
        app: routes,
        request: plain_put,
        warm_up: plain_get,
    },
    Contender {
        name: "put_204_per_method",
        what: "the same behind Router::layer (204, invalidation)",
        app: |doc| routes(doc).layer(trusting()),
        request: plain_put,
        warm_up: plain_get,
    },
];

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let name = args.next().unwrap_or_else(|| "list".into());
    if name == "list" {
        for contender in CONTENDERS {
            println!("{:28} {}", contender.name, contender.what);
        }
        return;
    }
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(1000);
    let contender = CONTENDERS
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no contender {name}: try `list`"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let doc = Doc(Arc::new(Mutex::new(Bytes::from_static(
        b"bytes of the image",
    ))));
    let app = (contender.app)(&doc);
    let send = |request: Request<Body>| {
        let app = app.clone();
        runtime.block_on(async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await.unwrap();
            status
        })
    };
    for _ in 0..3 {
        send((contender.warm_up)());
    }
    let status = send((contender.request)());
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..n {
        std::hint::black_box(send((contender.request)()));
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    println!(
        "{name} {n} allocations={allocations} status={}",
        status.as_u16()
    );
}
