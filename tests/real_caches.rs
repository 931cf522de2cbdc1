//! Real caches in front of the layer: Varnish and Squid, started by the
//! test on 127.0.0.1 (free ports, configuration in a temporary directory),
//! in front of an axum app behind `MediaCacheLayer` that the test also
//! starts on 127.0.0.1. Every process is stopped when its guard drops.
//!
//! A test is skipped (with a message) only when the cache's binary is not
//! installed; `.ci/run` installs both (`varnish`, `squid`).

#[path = "common/temp_dir.rs"]
mod temp_dir;
#[path = "common/varnishd.rs"]
mod varnishd;
use temp_dir::TempDir;
use varnishd::spawn_varnishd;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request as AxumRequest, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer, Trust, content_etag};

// ---------------------------------------------------------------------------
// The origin: an axum app behind the layer.

#[derive(Default)]
struct Content {
    bodies: Mutex<HashMap<String, Bytes>>,
    /// Requests that reached the handlers (past the layer).
    calls: AtomicUsize,
    /// Of those, the ones carrying `If-None-Match` or `If-Modified-Since`.
    conditional: AtomicUsize,
}

impl Content {
    fn set(&self, path: &str, body: &'static [u8]) {
        self.bodies
            .lock()
            .unwrap()
            .insert(path.to_owned(), Bytes::from_static(body));
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn conditional(&self) -> usize {
        self.conditional.load(Ordering::SeqCst)
    }
}

async fn read(State(content): State<Arc<Content>>, request: AxumRequest) -> (StatusCode, Bytes) {
    content.calls.fetch_add(1, Ordering::SeqCst);
    let headers = request.headers();
    if headers.contains_key("if-none-match") || headers.contains_key("if-modified-since") {
        content.conditional.fetch_add(1, Ordering::SeqCst);
    }
    match content.bodies.lock().unwrap().get(request.uri().path()) {
        Some(body) => (StatusCode::OK, body.clone()),
        None => (StatusCode::NOT_FOUND, Bytes::new()),
    }
}

async fn write(State(content): State<Arc<Content>>, request: AxumRequest) -> StatusCode {
    content.calls.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path().to_owned();
    let body = request.into_body().collect().await.unwrap().to_bytes();
    content.bodies.lock().unwrap().insert(path, body);
    StatusCode::NO_CONTENT
}

/// The app on 127.0.0.1:<ephemeral>, stopped on drop.
struct App {
    addr: SocketAddr,
    content: Arc<Content>,
    handle: CacheHandle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `/media/*`: `max-age=2` so that the caches' copies expire quickly, and
/// the layer trusts what it learned for 60 s so that it answers the
/// caches' revalidations itself. `/live/*`: `no-cache`, the inner service
/// runs on every request. `/health` is not touched by the layer.
async fn start_app() -> App {
    let layer = MediaCacheLayer::new(
        CachePolicy::max_age(Duration::from_secs(2))
            .public()
            .trust(Trust::For(Duration::from_secs(60))),
    )
    .route("/live/{*path}", CachePolicy::no_cache().public())
    .exclude("/health");
    let handle = layer.handle();
    let content = Arc::new(Content::default());
    let app = axum::Router::new()
        .route("/media/{name}", get(read).put(write))
        .route("/live/{name}", get(read).put(write))
        .layer(layer)
        .route("/health", get(|| async { "ok" }))
        .with_state(content.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    App {
        addr,
        content,
        handle,
        task,
    }
}

// ---------------------------------------------------------------------------
// The caches.

/// A cache process in the foreground: stopped with SIGTERM (so that it
/// stops its own children), then SIGKILL if it lingers.
struct Cache {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
    name: &'static str,
}

impl Cache {
    /// Everything the process and its logs said, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "log")
                    && let Ok(text) = std::fs::read_to_string(&path)
                {
                    out.push_str(&format!("--- {}\n{text}\n", path.display()));
                }
            }
        }
        out
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until the cache answers `/health` from the app.
async fn wait_ready(cache: &mut Cache) {
    for _ in 0..300 {
        if let Ok(Some(status)) = cache.child.try_wait() {
            panic!("{} exited with {status}\n{}", cache.name, cache.logs());
        }
        if let Ok(answer) = try_fetch(cache.addr, Method::GET, "/health", None).await
            && answer.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{} never became ready\n{}", cache.name, cache.logs());
}

/// Varnish in front of `backend`: the VCL keeps expired objects for a
/// minute so that Varnish revalidates them with `If-None-Match`, and gives
/// them no grace so that the revalidation happens in the client's request.
async fn varnish(backend: SocketAddr) -> Option<Cache> {
    let Some(binary) = find_binary("varnishd") else {
        eprintln!("SKIPPED: varnishd not found (apt-get install varnish; .ci/run installs it)");
        return None;
    };
    let dir = TempDir::new("varnish");
    let vcl = dir.path().join("test.vcl");
    std::fs::write(
        &vcl,
        format!(
            "vcl 4.1;\n\
             backend app {{ .host = \"127.0.0.1\"; .port = \"{}\"; }}\n\
             sub vcl_backend_response {{\n\
             \x20   set beresp.keep = 1m;\n\
             \x20   set beresp.grace = 0s;\n\
             }}\n",
            backend.port()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = spawn_varnishd(binary.as_ref(), dir.path(), vcl.as_ref(), port);
    let mut cache = Cache {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
        name: "varnishd",
    };
    wait_ready(&mut cache).await;
    Some(cache)
}

/// Squid as a reverse proxy (accelerator) for `backend`, memory cache only.
async fn squid(backend: SocketAddr) -> Option<Cache> {
    let Some(binary) = find_binary("squid") else {
        eprintln!("SKIPPED: squid not found (apt-get install squid; .ci/run installs it)");
        return None;
    };
    let dir = TempDir::new("squid");
    let port = free_port();
    let d = dir.path().display();
    let config = dir.path().join("squid.conf");
    std::fs::write(
        &config,
        format!(
            "http_port 127.0.0.1:{port} accel defaultsite=127.0.0.1 no-vhost\n\
             cache_peer 127.0.0.1 parent {backend_port} 0 no-query originserver name=app\n\
             cache_peer_access app allow all\n\
             http_access allow all\n\
             cache_mem 8 MB\n\
             maximum_object_size_in_memory 1 MB\n\
             pid_filename {d}/squid.pid\n\
             access_log stdio:{d}/access.log\n\
             cache_log {d}/cache.log\n\
             cache_store_log none\n\
             coredump_dir {d}\n\
             visible_hostname localhost\n\
             cache_effective_user proxy\n\
             pinger_enable off\n\
             shutdown_lifetime 0 seconds\n",
            backend_port = backend.port()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("squid.log")).unwrap();
    let child = Command::new(binary)
        .arg("-N")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start squid");
    let mut cache = Cache {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
        name: "squid",
    };
    wait_ready(&mut cache).await;
    Some(cache)
}

// ---------------------------------------------------------------------------
// The client.

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn try_fetch(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<&'static [u8]>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::from_static(body.unwrap_or_default())))?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

async fn fetch(cache: &Cache, method: Method, path: &str, body: Option<&'static [u8]>) -> Answer {
    match try_fetch(cache.addr, method.clone(), path, body).await {
        Ok(answer) => answer,
        Err(error) => panic!(
            "{method} {path} via {}: {error}\n{}",
            cache.name,
            cache.logs()
        ),
    }
}

async fn get_via(cache: &Cache, path: &str) -> Answer {
    fetch(cache, Method::GET, path, None).await
}

/// Long enough for `max-age=2` to run out in the caches.
async fn let_the_copy_expire() {
    tokio::time::sleep(Duration::from_millis(3200)).await;
}

const IMAGE_V1: &[u8] = b"\x89PNG version one of the image";
const IMAGE_V2: &[u8] = b"\x89PNG version two, different bytes";

fn etag(body: &[u8]) -> String {
    content_etag(body).to_string()
}

// ---------------------------------------------------------------------------
// Varnish.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varnish_serves_hits_then_revalidates_against_the_layers_store() {
    let app = start_app().await;
    let Some(varnish) = varnish(app.addr).await else {
        return;
    };
    app.content.set("/media/a.png", IMAGE_V1);

    // Miss: the inner service runs once, the layer learns the content ETag.
    let first = get_via(&varnish, "/media/a.png").await;
    assert_eq!(first.status, 200, "{}", varnish.logs());
    assert_eq!(first.body, IMAGE_V1);
    assert_eq!(first.header("etag"), Some(etag(IMAGE_V1).as_str()));
    assert_eq!(first.header("cache-control"), Some("public, max-age=2"));
    assert_eq!(app.content.calls(), 1);
    assert_eq!(app.handle.stats().learned, 1);

    // Hit: Varnish answers, the app is not asked.
    let hit = get_via(&varnish, "/media/a.png").await;
    assert_eq!(hit.status, 200);
    assert_eq!(hit.body, IMAGE_V1);
    assert!(hit.header("age").is_some(), "Age on a hit");
    let ids = hit.header("x-varnish").unwrap_or_default();
    assert_eq!(
        ids.split_whitespace().count(),
        2,
        "X-Varnish of a hit: {ids}"
    );
    assert_eq!(app.content.calls(), 1);

    // Expired: Varnish revalidates with If-None-Match; the layer answers
    // 304 from its store without the inner service; the client still gets
    // the whole, identical body.
    let_the_copy_expire().await;
    let before = app.handle.stats().short_circuit_not_modified;
    let revalidated = get_via(&varnish, "/media/a.png").await;
    assert_eq!(revalidated.status, 200);
    assert_eq!(revalidated.body, IMAGE_V1);
    assert_eq!(revalidated.header("etag"), Some(etag(IMAGE_V1).as_str()));
    assert_eq!(app.content.calls(), 1, "the inner service was not called");
    assert_eq!(
        app.handle.stats().short_circuit_not_modified,
        before + 1,
        "the revalidation was answered from the store\n{}",
        varnish.logs()
    );

    // The refreshed copy is fresh again: a hit.
    let hit = get_via(&varnish, "/media/a.png").await;
    assert_eq!(hit.body, IMAGE_V1);
    assert_eq!(app.content.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varnish_delivers_new_bytes_after_an_invalidation() {
    let app = start_app().await;
    let Some(varnish) = varnish(app.addr).await else {
        return;
    };
    app.content.set("/media/b.png", IMAGE_V1);
    assert_eq!(get_via(&varnish, "/media/b.png").await.body, IMAGE_V1);

    // The content changes behind the service; the handle is told.
    app.content.set("/media/b.png", IMAGE_V2);
    assert!(app.handle.invalidate("/media/b.png"));

    // Varnish's revalidation now reaches the inner service, whose new bytes
    // no longer match: Varnish gets and delivers them.
    let_the_copy_expire().await;
    let calls = app.content.calls();
    let after = get_via(&varnish, "/media/b.png").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, IMAGE_V2);
    assert_eq!(after.header("etag"), Some(etag(IMAGE_V2).as_str()));
    assert_eq!(app.content.calls(), calls + 1);
    assert_eq!(
        app.content.conditional(),
        1,
        "the revalidation reached the app"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn varnish_delivers_new_bytes_after_a_put_through_it() {
    let app = start_app().await;
    let Some(varnish) = varnish(app.addr).await else {
        return;
    };
    app.content.set("/media/c.png", IMAGE_V1);
    assert_eq!(get_via(&varnish, "/media/c.png").await.body, IMAGE_V1);

    // Varnish passes the PUT to the app; its 204 invalidates the layer's
    // entry for the URI.
    let invalidated = app.handle.stats().invalidated;
    let put = fetch(&varnish, Method::PUT, "/media/c.png", Some(IMAGE_V2)).await;
    assert_eq!(put.status, 204);
    assert_eq!(app.handle.stats().invalidated, invalidated + 1);

    let_the_copy_expire().await;
    let after = get_via(&varnish, "/media/c.png").await;
    assert_eq!(after.status, 200);
    assert_eq!(after.body, IMAGE_V2);
    assert_eq!(after.header("etag"), Some(etag(IMAGE_V2).as_str()));
}

// ---------------------------------------------------------------------------
// Squid.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squid_revalidates_every_no_cache_request_and_the_layer_answers_304() {
    let app = start_app().await;
    let Some(squid) = squid(app.addr).await else {
        return;
    };
    app.content.set("/live/cam.jpg", IMAGE_V1);

    let first = get_via(&squid, "/live/cam.jpg").await;
    assert_eq!(first.status, 200, "{}", squid.logs());
    assert_eq!(first.body, IMAGE_V1);
    assert_eq!(first.header("cache-control"), Some("public, no-cache"));
    for round in 1..=3 {
        let again = get_via(&squid, "/live/cam.jpg").await;
        assert_eq!(again.status, 200);
        assert_eq!(again.body, IMAGE_V1, "round {round}: identical bytes");
        assert_eq!(again.header("etag"), Some(etag(IMAGE_V1).as_str()));
        assert_eq!(
            app.content.conditional(),
            round,
            "round {round}: Squid revalidated with a conditional request\n{}",
            squid.logs()
        );
        assert_eq!(
            app.handle.stats().not_modified_from_inner,
            round as u64,
            "round {round}: the layer answered it with 304"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn squid_delivers_new_bytes_after_an_update() {
    let app = start_app().await;
    let Some(squid) = squid(app.addr).await else {
        return;
    };
    app.content.set("/live/d.jpg", IMAGE_V1);
    assert_eq!(get_via(&squid, "/live/d.jpg").await.body, IMAGE_V1);
    assert_eq!(get_via(&squid, "/live/d.jpg").await.body, IMAGE_V1);

    // A change behind the service plus an invalidation.
    app.content.set("/live/d.jpg", IMAGE_V2);
    app.handle.invalidate("/live/d.jpg");
    let after = get_via(&squid, "/live/d.jpg").await;
    assert_eq!(after.body, IMAGE_V2);
    assert_eq!(after.header("etag"), Some(etag(IMAGE_V2).as_str()));

    // A PUT through Squid.
    let put = fetch(&squid, Method::PUT, "/live/d.jpg", Some(IMAGE_V1)).await;
    assert_eq!(put.status, 204);
    let after = get_via(&squid, "/live/d.jpg").await;
    assert_eq!(after.body, IMAGE_V1);
    assert_eq!(after.header("etag"), Some(etag(IMAGE_V1).as_str()));
    let again = get_via(&squid, "/live/d.jpg").await;
    assert_eq!(again.body, IMAGE_V1);
}
