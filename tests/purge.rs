//! A real Varnish with `vmod_xkey` in front of the layer, purged by
//! [`VarnishPurger`] with the VCL the crate ships (`docs/varnish-purge.vcl`),
//! and — with the `redis` feature — two replicas sharing a real Redis bus;
//! and the purger's HTTP against a one-shot server (2xx, 403, 500, garbage,
//! nothing).
//!
//! Everything runs on 127.0.0.1, on free ports, started by the test and
//! stopped when its guard drops. A test is skipped (with a message) only
//! when `varnishd`, `vmod_xkey` (`varnish-modules`) or `redis-server` is not
//! installed; `.ci/run` installs them.
#![cfg(feature = "varnish")]

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
use std::time::{Duration, Instant};

use axum::extract::{Request as AxumRequest, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use tower_media_cache::purge::{PurgeSettings, VarnishPurger};
use tower_media_cache::{CacheHandle, CachePolicy, CacheTags, MediaCacheLayer, TagHeader, Trust};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// The origin: an axum app behind the layer. Every media is tagged with its
// album (`album N` for `/media/N/...`), per response.

#[derive(Default)]
struct Content {
    bodies: Mutex<HashMap<String, Bytes>>,
    calls: AtomicUsize,
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
}

async fn read(
    State(content): State<Arc<Content>>,
    request: AxumRequest,
) -> axum::response::Response {
    content.calls.fetch_add(1, Ordering::SeqCst);
    let path = request.uri().path();
    let album = path.split('/').nth(2).unwrap_or_default().to_owned();
    let body = content.bodies.lock().unwrap().get(path).cloned();
    let mut response = match body {
        Some(body) => axum::response::IntoResponse::into_response(body),
        None => axum::response::IntoResponse::into_response(StatusCode::NOT_FOUND),
    };
    response
        .extensions_mut()
        .insert(CacheTags::new([format!("album {album}")]));
    response
}

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

/// The layer's policy: Varnish may keep a copy for an hour, so only a purge
/// makes it ask again; the layer trusts what it learned until invalidated.
fn layer(content: &Arc<Content>) -> (MediaCacheLayer, Arc<Content>) {
    let layer = MediaCacheLayer::new(
        CachePolicy::max_age(Duration::from_secs(3600))
            .public()
            .trust(Trust::UntilInvalidated)
            .tags(["media"]),
    )
    .exclude("/health")
    .tag_header(TagHeader::xkey());
    (layer, content.clone())
}

async fn serve(layer: MediaCacheLayer, content: Arc<Content>) -> App {
    let handle = layer.handle();
    let app = axum::Router::new()
        .route("/media/{album}/{name}", get(read))
        .route("/other/{name}", get(read))
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

fn purger(varnish_port: u16) -> VarnishPurger {
    VarnishPurger::new(format!("127.0.0.1:{varnish_port}")).host("127.0.0.1")
}

fn quick() -> PurgeSettings {
    PurgeSettings::default().backoff(Duration::from_millis(50))
}

// ---------------------------------------------------------------------------
// Varnish

struct Varnish {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Varnish {
    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("varnishd.log")).unwrap_or_default()
    }
}

impl Drop for Varnish {
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
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(paths: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    paths.into_iter().find(|p| p.is_file())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Varnish on `port` in front of `backend`, with the shipped VCL; `None`
/// (with a message) when varnishd or vmod_xkey is not installed.
async fn varnish(port: u16, backend: SocketAddr) -> Option<Varnish> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let Some(binary) = find(
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin")])
            .map(|dir| dir.join("varnishd")),
    ) else {
        eprintln!("SKIPPED: varnishd not found (apt-get install varnish; .ci/run installs it)");
        return None;
    };
    let vmod_dirs = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("varnish/vmods"))
        .chain(["/usr/lib/varnish/vmods", "/usr/local/lib/varnish/vmods"].map(PathBuf::from));
    if find(vmod_dirs.map(|d| d.join("libvmod_xkey.so"))).is_none() {
        eprintln!(
            "SKIPPED: vmod_xkey not found (apt-get install varnish-modules; .ci/run installs it)"
        );
        return None;
    }
    let dir = TempDir::new("varnish-purge");
    let shipped = include_str!("../docs/varnish-purge.vcl");
    assert!(shipped.contains(".port = \"8080\";"));
    let vcl = dir.path().join("purge.vcl");
    std::fs::write(
        &vcl,
        shipped.replace(
            ".port = \"8080\";",
            &format!(".port = \"{}\";", backend.port()),
        ),
    )
    .unwrap();
    let child = spawn_varnishd(binary.as_ref(), dir.path(), vcl.as_ref(), port);
    let mut varnish = Varnish {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        dir,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = varnish.child.try_wait() {
            panic!("varnishd exited with {status}\n{}", varnish.logs());
        }
        if let Ok(answer) = try_get(varnish.addr, "/health").await
            && answer.status == 200
        {
            return Some(varnish);
        }
        assert!(
            Instant::now() < deadline,
            "varnishd never became ready\n{}",
            varnish.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// The client.

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

async fn try_get(
    addr: SocketAddr,
    path: &str,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path)
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await?.to_bytes(),
    })
}

async fn get_via(varnish: &Varnish, path: &str) -> Answer {
    match try_get(varnish.addr, path).await {
        Ok(answer) => answer,
        Err(error) => panic!("GET {path} via varnish: {error}\n{}", varnish.logs()),
    }
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const V1: &[u8] = b"\x89PNG version one";
const V2: &[u8] = b"\x89PNG version two, other bytes";

/// Fetches `path` through Varnish twice: the first reaches the app, the
/// second is a hit.
async fn cached(varnish: &Varnish, app: &App, path: &str, body: &[u8]) {
    let calls = app.content.calls();
    let first = get_via(varnish, path).await;
    assert_eq!(first.status, 200, "{}", varnish.logs());
    assert_eq!(first.body, body);
    assert_eq!(app.content.calls(), calls + 1);
    let hit = get_via(varnish, path).await;
    assert_eq!(hit.body, body);
    assert_eq!(app.content.calls(), calls + 1, "{path}: a hit in Varnish");
    assert!(
        !hit.headers.contains_key("xkey") && !hit.headers.contains_key("x-url"),
        "the VCL keeps tags inside: {:?}",
        hit.headers
    );
}

// ---------------------------------------------------------------------------
// Varnish alone.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tag_purges_varnish_and_the_next_request_gets_new_bytes() {
    let port = free_port();
    let (layer, content) = layer(&Arc::default());
    let app = serve(layer.purger_with(purger(port), quick()), content).await;
    let Some(varnish) = varnish(port, app.addr).await else {
        return;
    };
    app.content.set("/media/7/a.png", V1);
    app.content.set("/media/7/b.png", V1);
    app.content.set("/media/8/c.png", V1);
    cached(&varnish, &app, "/media/7/a.png", V1).await;
    cached(&varnish, &app, "/media/7/b.png", V1).await;
    cached(&varnish, &app, "/media/8/c.png", V1).await;

    app.content.set("/media/7/a.png", V2);
    app.content.set("/media/7/b.png", V2);
    assert_eq!(app.handle.invalidate_tag("album 7"), 2);
    eventually("Varnish purged", || app.handle.stats().purged == 1).await;

    let calls = app.content.calls();
    for path in ["/media/7/a.png", "/media/7/b.png"] {
        let after = get_via(&varnish, path).await;
        assert_eq!(after.status, 200);
        assert_eq!(after.body, V2, "{path}");
    }
    assert_eq!(app.content.calls(), calls + 2, "both reached the app");
    // Album 8 was not tagged: still a hit.
    assert_eq!(get_via(&varnish, "/media/8/c.png").await.body, V1);
    assert_eq!(app.content.calls(), calls + 2);
    let stats = app.handle.stats();
    assert_eq!((stats.purge_retries, stats.purge_failures), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_and_prefix_invalidations_purge_and_ban_in_varnish() {
    let port = free_port();
    let (layer, content) = layer(&Arc::default());
    let app = serve(layer.purger_with(purger(port), quick()), content).await;
    let Some(varnish) = varnish(port, app.addr).await else {
        return;
    };
    for path in ["/media/1/a.png", "/media/2/b.png", "/other/c.png"] {
        app.content.set(path, V1);
        cached(&varnish, &app, path, V1).await;
    }
    cached(&varnish, &app, "/media/2/b.png?size=small", V1).await;

    // A URL: PURGE of that URL only.
    app.content.set("/media/1/a.png", V2);
    assert!(app.handle.invalidate("/media/1/a.png"));
    eventually("URL purged", || app.handle.stats().purged == 1).await;
    let calls = app.content.calls();
    assert_eq!(get_via(&varnish, "/media/1/a.png").await.body, V2);
    assert_eq!(app.content.calls(), calls + 1);

    // A prefix: a ban covering every URL under it, queries included.
    app.content.set("/media/2/b.png", V2);
    app.handle.invalidate_prefix("/media/");
    eventually("prefix banned", || app.handle.stats().purged == 2).await;
    let calls = app.content.calls();
    assert_eq!(get_via(&varnish, "/media/2/b.png").await.body, V2);
    assert_eq!(
        get_via(&varnish, "/media/2/b.png?size=small").await.body,
        V2
    );
    assert_eq!(app.content.calls(), calls + 2);
    // Outside the prefix: still a hit.
    assert_eq!(get_via(&varnish, "/other/c.png").await.body, V1);
    assert_eq!(app.content.calls(), calls + 2);

    // Clear: everything.
    app.content.set("/other/c.png", V2);
    app.handle.clear();
    eventually("everything banned", || app.handle.stats().purged == 3).await;
    assert_eq!(get_via(&varnish, "/other/c.png").await.body, V2);
    assert_eq!(app.handle.stats().purge_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_purge_is_retried_then_counted_as_failed() {
    // Varnish refuses a purge from outside its ACL (403); here, a port with
    // nothing listening refuses the connection: both are failures.
    let nothing = free_port();
    let (layer, content) = layer(&Arc::default());
    let app = serve(
        layer.purger_with(purger(nothing), quick().attempts(2)),
        content,
    )
    .await;
    app.handle.invalidate_tag("album 1");
    eventually("given up", || app.handle.stats().purge_failures == 1).await;
    assert_eq!(app.handle.stats().purge_retries, 1);
    assert_eq!(app.handle.stats().purged, 0);
}

// ---------------------------------------------------------------------------
// Two replicas over a real Redis bus, Varnish in front of one of them.

#[cfg(feature = "redis")]
mod replicas {
    use super::*;
    use tower_media_cache::bus::redis::RedisBus;

    struct Redis {
        child: Child,
        port: u16,
        _dir: TempDir,
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn redis() -> Option<Redis> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let Some(binary) = find(
            std::env::split_paths(&path)
                .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
                .map(|dir| dir.join("redis-server")),
        ) else {
            eprintln!("SKIPPED: redis-server not found (apt-get install redis-server)");
            return None;
        };
        let dir = TempDir::new("redis-purge");
        let port = free_port();
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        Some(Redis {
            child,
            port,
            _dir: dir,
        })
    }

    fn bus(redis: &Redis) -> RedisBus {
        RedisBus::builder(format!("redis://127.0.0.1:{}/", redis.port))
            .channel("tags-test")
            .ping_interval(Duration::from_millis(200))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .start()
            .expect("start the Redis bus")
    }

    /// A conditional GET straight to a replica, bypassing Varnish.
    async fn revalidate(app: &App, path: &str, etag: &str) -> (u16, Bytes) {
        let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = Request::get(path)
            .header("host", "127.0.0.1")
            .header("if-none-match", etag)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidate_tag_on_one_replica_freshens_the_other_and_varnish() {
        let Some(redis) = redis() else {
            return;
        };
        let port = free_port();
        // One database; replica A purges Varnish, which fronts replica B.
        let db: Arc<Content> = Arc::default();
        let (layer_a, content) = layer(&db);
        let a = serve(
            layer_a
                .invalidation_bus(bus(&redis))
                .purger_with(purger(port), quick()),
            content,
        )
        .await;
        let (layer_b, content) = layer(&db);
        let b = serve(layer_b.invalidation_bus(bus(&redis)), content).await;
        eventually("both buses connected", || {
            a.handle.bus_connected() && b.handle.bus_connected()
        })
        .await;
        let Some(varnish) = varnish(port, b.addr).await else {
            return;
        };

        db.set("/media/7/a.png", V1);
        cached(&varnish, &b, "/media/7/a.png", V1).await;
        let etag = tower_media_cache::content_etag(V1).to_string();
        // B answers a revalidation from its store, without the handler.
        let calls = db.calls();
        assert_eq!(revalidate(&b, "/media/7/a.png", &etag).await.0, 304);
        assert_eq!(db.calls(), calls);

        db.set("/media/7/a.png", V2);
        a.handle.invalidate_tag("album 7");
        eventually("B heard A", || b.handle.stats().bus_received >= 1).await;
        eventually("Varnish purged by A", || a.handle.stats().purged == 1).await;
        assert_eq!(b.handle.stats().purged, 0, "B does not purge again");

        // B's store no longer answers: its handler serves the new bytes.
        let (status, body) = revalidate(&b, "/media/7/a.png", &etag).await;
        assert_eq!((status, body.as_ref()), (200, V2));
        // Varnish no longer has the old copy: B serves the new bytes.
        let calls = db.calls();
        let after = get_via(&varnish, "/media/7/a.png").await;
        assert_eq!(after.status, 200);
        assert_eq!(after.body, V2);
        assert_eq!(db.calls(), calls + 1, "Varnish reached B");
    }
}

// ---------------------------------------------------------------------------
// The purger's HTTP, against a one-shot server that answers as told.

/// Accepts one connection, reads the request head, answers `answer`, and
/// returns the request it read.
async fn one_shot(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        // In pieces, as a server may send it.
        for piece in answer.chunks(5) {
            stream.write_all(piece).await.unwrap();
            stream.flush().await.unwrap();
        }
        String::from_utf8(request).unwrap()
    });
    (port, task)
}

#[tokio::test]
async fn the_varnish_purger_succeeds_on_2xx_only() {
    use tower_media_cache::Invalidation;
    use tower_media_cache::purge::Purger;

    let (port, server) =
        one_shot(b"HTTP/1.1 200 Invalidated 3 objects\r\nContent-Length: 0\r\n\r\n").await;
    let purger = VarnishPurger::new(format!("127.0.0.1:{port}"));
    purger
        .purge(&Invalidation::Tag("album:7".into()))
        .await
        .unwrap();
    let request = server.await.unwrap();
    assert!(request.starts_with("PURGE / HTTP/1.1\r\n"), "{request}");
    assert!(request.contains("\r\nxkey: album:7\r\n"), "{request}");

    for (answer, expected) in [
        (&b"HTTP/1.1 403 Forbidden\r\n\r\n"[..], "403"),
        (b"HTTP/1.0 500 Oops\r\n\r\n", "500"),
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP answer"),
        (b"", "without an answer"),
    ] {
        let (port, server) = one_shot(answer).await;
        let purger = VarnishPurger::new(format!("127.0.0.1:{port}"));
        let error = purger
            .purge(&Invalidation::Key("/a".into()))
            .await
            .expect_err("not a 2xx");
        assert!(error.to_string().contains(expected), "{error}");
        server.await.unwrap();
    }
}
