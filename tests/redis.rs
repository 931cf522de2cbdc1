//! Two replicas sharing a Redis invalidation bus, against a real
//! `redis-server` this test starts on 127.0.0.1 (random free port, no
//! persistence) and kills.
//!
//! Each replica is its own layer, with its own validator store, around its
//! own counting inner service; both inner services serve the same shared
//! content (the "database").
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_media_cache::bus::redis::RedisBus;
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer, Stats, Trust, content_etag};

#[path = "common/redis_server.rs"]
mod redis_server;
use redis_server::{RedisServer, WAIT};

// ---------------------------------------------------------------------------
// Replicas

/// The content both replicas serve: path → bytes.
#[derive(Clone, Default)]
struct Database(Arc<Mutex<HashMap<String, Bytes>>>);

impl Database {
    fn set(&self, path: &str, bytes: &'static [u8]) {
        self.0
            .lock()
            .unwrap()
            .insert(path.into(), Bytes::from_static(bytes));
    }

    fn etag(&self, path: &str) -> String {
        content_etag(&self.0.lock().unwrap()[path]).to_string()
    }
}

type Inner = tower::util::BoxCloneSyncService<Request<Bytes>, Response<Full<Bytes>>, Infallible>;

/// One replica: a layer with a Redis bus around a counting inner service.
struct Replica {
    name: &'static str,
    service: tower_media_cache::MediaCache<Inner>,
    handle: CacheHandle,
    calls: Arc<AtomicUsize>,
    db: Database,
}

/// An answer, read whole.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

impl Replica {
    fn new(name: &'static str, db: &Database, url: &str, channel: &str) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = {
            let db = db.clone();
            let calls = calls.clone();
            tower::service_fn(move |request: Request<Bytes>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let path = request.uri().path().to_owned();
                let response = if request.method() == Method::PUT {
                    db.0.lock().unwrap().insert(path, request.into_body());
                    Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::default())
                        .unwrap()
                } else {
                    match db.0.lock().unwrap().get(&path) {
                        Some(bytes) => Response::builder()
                            .header("content-type", "image/jpeg")
                            .body(Full::new(bytes.clone()))
                            .unwrap(),
                        None => Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::default())
                            .unwrap(),
                    }
                };
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let bus = RedisBus::builder(url)
            .channel(channel)
            .ping_interval(Duration::from_millis(200))
            .ping_timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
            .start()
            .expect("start the Redis bus");
        let layer = MediaCacheLayer::new(
            CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
        )
        .invalidation_bus(bus);
        let handle = layer.handle();
        let service = tower::Layer::layer(&layer, Inner::new(inner));
        Self {
            name,
            service,
            handle,
            calls,
            db: db.clone(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn stats(&self) -> Stats {
        self.handle.stats()
    }

    async fn send(&self, request: Request<Bytes>) -> Answer {
        let path = request.uri().path().to_owned();
        let if_none_match = request
            .headers()
            .get("if-none-match")
            .map(|v| v.to_str().unwrap().to_owned());
        let response = self.service.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let etag = response
            .headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        // The property of the whole file: never a 304 for content that
        // changed, and a 200's ETag is always the current content's.
        match status {
            StatusCode::NOT_MODIFIED => assert_eq!(
                if_none_match.as_deref(),
                Some(self.db.etag(&path).as_str()),
                "{}: 304 for {path} although its content changed",
                self.name
            ),
            StatusCode::OK => assert_eq!(
                etag.as_deref(),
                Some(self.db.etag(&path).as_str()),
                "{}: 200 for {path} with a stale ETag",
                self.name
            ),
            _ => {}
        }
        Answer { status, etag, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Bytes::new()).unwrap())
            .await
    }

    async fn revalidate(&self, path: &str, etag: &str) -> Answer {
        self.send(
            Request::get(path)
                .header("if-none-match", etag)
                .body(Bytes::new())
                .unwrap(),
        )
        .await
    }

    async fn put(&self, path: &str, bytes: &'static [u8]) -> Answer {
        self.send(Request::put(path).body(Bytes::from_static(bytes)).unwrap())
            .await
    }

    /// Revalidates `etag` and asserts the store answered: a 304 without a
    /// call to the inner service.
    async fn assert_short_circuits(&self, path: &str, etag: &str) {
        let calls = self.calls();
        let answer = self.revalidate(path, etag).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_MODIFIED,
            "{}: {answer:?}",
            self.name
        );
        assert_eq!(self.calls(), calls, "{}: inner service called", self.name);
    }

    /// Revalidates `etag` and asserts the inner service answered.
    async fn assert_calls_inner(&self, path: &str, etag: &str) -> Answer {
        let calls = self.calls();
        let short_circuits = self.stats().short_circuit_not_modified;
        let answer = self.revalidate(path, etag).await;
        assert_eq!(
            self.calls(),
            calls + 1,
            "{}: inner service not called ({answer:?})",
            self.name
        );
        assert_eq!(
            self.stats().short_circuit_not_modified,
            short_circuits,
            "{}: answered from the store",
            self.name
        );
        answer
    }

    /// Learns `path`: a GET, then checks the store answers.
    async fn learn(&self, path: &str) -> String {
        let answer = self.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{}: {answer:?}", self.name);
        let etag = answer.etag.expect("content ETag");
        self.assert_short_circuits(path, &etag).await;
        etag
    }

    async fn wait_until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "{}: {what} did not happen within {WAIT:?}; stats {:?}, bus connected {}",
                self.name,
                self.stats(),
                self.handle.bus_connected()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_connected(&self) {
        self.wait_until("connecting to the bus", |r| r.handle.bus_connected())
            .await;
    }

    async fn wait_disconnected(&self) {
        self.wait_until("noticing the bus is gone", |r| !r.handle.bus_connected())
            .await;
    }

    /// Waits until this replica applied `n` invalidations from the other.
    async fn wait_received(&self, n: u64) {
        self.wait_until(&format!("receiving {n} invalidations"), |r| {
            r.stats().bus_received >= n
        })
        .await;
    }
}

/// Logs to the test's output, filtered by `RUST_LOG` (none by default).
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn channel(test: &str) -> String {
    init_tracing();
    format!("tower-media-cache-test:{test}:{}", std::process::id())
}

// ---------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_replica_stops_short_circuits_on_the_other() {
    let Some(redis) =
        RedisServer::start("an_invalidation_on_one_replica_stops_short_circuits_on_the_other")
    else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    db.set("/media/b.jpg", b"b, version 1");
    db.set("/live/c.jpg", b"c, version 1");
    let channel = channel("invalidation");
    let a = Replica::new("A", &db, &redis.url(), &channel);
    let b = Replica::new("B", &db, &redis.url(), &channel);
    a.wait_connected().await;
    b.wait_connected().await;

    // Both learn; both answer from their stores.
    let v1 = a.learn("/media/a.jpg").await;
    assert_eq!(b.learn("/media/a.jpg").await, v1, "same content, same ETag");

    // The content changes; A's handle invalidates.
    db.set("/media/a.jpg", b"a, version 2");
    assert!(a.handle.invalidate("/media/a.jpg"));
    b.wait_received(1).await;
    let answer = b.assert_calls_inner("/media/a.jpg", &v1).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"a, version 2");
    let v2 = answer.etag.unwrap();
    assert_ne!(v2, v1);
    // B learned version 2 from that answer and answers from its store again.
    b.assert_short_circuits("/media/a.jpg", &v2).await;

    // A PUT through A invalidates on B.
    let put = a.put("/media/a.jpg", b"a, version 3").await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    b.wait_received(2).await;
    let answer = b.assert_calls_inner("/media/a.jpg", &v2).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"a, version 3");
    let v3 = answer.etag.unwrap();
    b.assert_short_circuits("/media/a.jpg", &v3).await;

    // A prefix invalidation on A reaches B, and spares other paths.
    let b1 = b.learn("/media/b.jpg").await;
    let c1 = b.learn("/live/c.jpg").await;
    a.handle.invalidate_prefix("/media/");
    b.wait_received(3).await;
    let answer = b.assert_calls_inner("/media/b.jpg", &b1).await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_MODIFIED,
        "unchanged: the layer's own 304"
    );
    b.assert_short_circuits("/live/c.jpg", &c1).await;

    // So does a clear.
    a.handle.clear();
    b.wait_received(4).await;
    b.assert_calls_inner("/live/c.jpg", &c1).await;

    // And B's writes reach A; neither applies its own messages.
    let a_v3 = a.learn("/media/a.jpg").await;
    assert_eq!(a_v3, v3);
    b.handle.invalidate("/media/a.jpg");
    a.wait_received(1).await;
    a.assert_calls_inner("/media/a.jpg", &v3).await;
    assert_eq!(b.stats().bus_received, 4, "B ignores its own message");
    assert_eq!(a.stats().bus_received, 1, "A ignores its own messages");
    assert_eq!(a.stats().bus_disconnected_fallbacks, 0);
    assert_eq!(b.stats().bus_disconnected_fallbacks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_both_replicas_call_the_inner_service_and_recover_after_a_restart() {
    let Some(mut redis) = RedisServer::start(
        "without_redis_both_replicas_call_the_inner_service_and_recover_after_a_restart",
    ) else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    db.set("/media/b.jpg", b"b, version 1");
    db.set("/media/sync.jpg", b"sync");
    let channel = channel("outage");
    let a = Replica::new("A", &db, &redis.url(), &channel);
    let b = Replica::new("B", &db, &redis.url(), &channel);
    a.wait_connected().await;
    b.wait_connected().await;
    let a1 = a.learn("/media/a.jpg").await;
    let b1 = b.learn("/media/a.jpg").await;
    let bb1 = b.learn("/media/b.jpg").await;

    redis.kill();
    a.wait_disconnected().await;
    b.wait_disconnected().await;

    // Neither answers from its store: every revalidation goes to the inner
    // service (the 304s are the layer's, made from the inner service's 200).
    for replica in [&a, &b] {
        for _ in 0..3 {
            let answer = replica.assert_calls_inner("/media/a.jpg", &a1).await;
            assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
        }
        assert!(
            replica.stats().bus_disconnected_fallbacks >= 3,
            "{}: {:?}",
            replica.name,
            replica.stats()
        );
    }

    // A write on A while the bus is down: B cannot hear of it, but does not
    // answer from its store either.
    db.set("/media/a.jpg", b"a, version 2");
    a.handle.invalidate("/media/a.jpg");
    let answer = b.assert_calls_inner("/media/a.jpg", &b1).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(&answer.body[..], b"a, version 2");
    let v2 = answer.etag.unwrap();
    // Out-of-band change of b.jpg that nobody invalidates: B must not 304 it.
    db.set("/media/b.jpg", b"b, version 2");
    let answer = b.assert_calls_inner("/media/b.jpg", &bb1).await;
    assert_eq!(&answer.body[..], b"b, version 2");

    // Redis comes back on the same port: both reconnect, with empty stores.
    redis.restart();
    a.wait_connected().await;
    b.wait_connected().await;
    assert_eq!(a.stats().entries, 0, "A cleared on reconnection");
    assert_eq!(b.stats().entries, 0, "B cleared on reconnection");
    // A publishes the invalidation it queued while Redis was down once it
    // is back; B gets it if it subscribed again first (harmless either way,
    // B was cleared). Settle that before going on: A publishes in order, so
    // once B got a later invalidation from A, the queued one is behind.
    b.learn("/media/sync.jpg").await;
    a.handle.invalidate("/media/sync.jpg");
    b.wait_until("receiving the invalidation of /media/sync.jpg", |r| {
        r.stats().entries == 0
    })
    .await;

    // After relearning, both answer from their stores again.
    for replica in [&a, &b] {
        replica.assert_calls_inner("/media/a.jpg", &v2).await;
        replica.assert_short_circuits("/media/a.jpg", &v2).await;
        let fallbacks = replica.stats().bus_disconnected_fallbacks;
        replica.assert_short_circuits("/media/a.jpg", &v2).await;
        assert_eq!(replica.stats().bus_disconnected_fallbacks, fallbacks);
    }

    // And invalidations flow again.
    db.set("/media/a.jpg", b"a, version 3");
    let received = b.stats().bus_received;
    a.handle.invalidate("/media/a.jpg");
    b.wait_received(received + 1).await;
    let answer = b.assert_calls_inner("/media/a.jpg", &v2).await;
    assert_eq!(&answer.body[..], b"a, version 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_connected_never_answers_from_its_store() {
    // A port that accepts connections (into the kernel's backlog) but never
    // answers; held for the whole test, so no other test's redis-server can
    // take it. No redis-server needed.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    let a = Replica::new(
        "A",
        &db,
        &format!("redis://127.0.0.1:{port}/"),
        &channel("never"),
    );
    let etag = a.get("/media/a.jpg").await.etag.unwrap();
    for _ in 0..5 {
        a.assert_calls_inner("/media/a.jpg", &etag).await;
    }
    assert!(!a.handle.bus_connected());
    assert_eq!(a.stats().short_circuit_not_modified, 0);
    assert_eq!(a.stats().bus_disconnected_fallbacks, 5);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_is_noticed_by_ping_and_both_replicas_fall_back() {
    let Some(redis) =
        RedisServer::start("a_frozen_redis_is_noticed_by_ping_and_both_replicas_fall_back")
    else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    let channel = channel("frozen");
    let a = Replica::new("A", &db, &redis.url(), &channel);
    let b = Replica::new("B", &db, &redis.url(), &channel);
    a.wait_connected().await;
    b.wait_connected().await;
    let v1 = a.learn("/media/a.jpg").await;
    b.learn("/media/a.jpg").await;

    // The connections stay open, but PINGs go unanswered.
    redis.signal("STOP");
    a.wait_disconnected().await;
    b.wait_disconnected().await;
    // An invalidation B cannot hear of while Redis is frozen.
    db.set("/media/a.jpg", b"a, version 2");
    a.handle.invalidate("/media/a.jpg");
    let answer = b.assert_calls_inner("/media/a.jpg", &v1).await;
    assert_eq!(&answer.body[..], b"a, version 2");
    let v2 = answer.etag.unwrap();
    a.assert_calls_inner("/media/a.jpg", &v2).await;

    redis.signal("CONT");
    a.wait_connected().await;
    b.wait_connected().await;
    // A's queued invalidation may reach B now: settle it (see above) before
    // checking that both answer from their stores again.
    assert_eq!(b.stats().entries, 0, "B cleared on reconnection");
    db.set("/media/sync.jpg", b"sync");
    b.learn("/media/sync.jpg").await;
    a.handle.invalidate("/media/sync.jpg");
    b.wait_until("receiving the invalidation of /media/sync.jpg", |r| {
        r.stats().entries == 0
    })
    .await;
    for replica in [&a, &b] {
        replica.assert_calls_inner("/media/a.jpg", &v2).await;
        replica.assert_short_circuits("/media/a.jpg", &v2).await;
    }
}

#[test]
fn a_store_whose_bus_task_stopped_with_its_runtime_does_not_trust_its_entries() {
    let Some(redis) = RedisServer::start(
        "a_store_whose_bus_task_stopped_with_its_runtime_does_not_trust_its_entries",
    ) else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (a, etag) = runtime.block_on(async {
        let a = Replica::new("A", &db, &redis.url(), &channel("runtime"));
        a.wait_connected().await;
        let etag = a.learn("/media/a.jpg").await;
        (a, etag)
    });
    drop(runtime);
    assert!(
        !a.handle.bus_connected(),
        "the task is gone: nothing hears the other replicas"
    );
    let other = tokio::runtime::Runtime::new().unwrap();
    other.block_on(a.assert_calls_inner("/media/a.jpg", &etag));
}
