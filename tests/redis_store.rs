//! Replicas sharing what they learned through the Redis second level
//! (`SharedStore`), against a real `redis-server` each test starts on
//! 127.0.0.1 (random free port, no persistence) and kills.
//!
//! Each replica is its own layer — its own local store, its own bus — around
//! its own counting handler; the handlers serve one shared "database". A
//! replica made in the middle of a test is a fresh start: an empty local
//! store, as after a deploy.
#![cfg(feature = "redis")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_media_cache::bus::redis::{RedisBus, SharedStore};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCacheLayer, Stats, Trust, content_etag};

#[path = "common/redis_server.rs"]
mod redis_server;
use redis_server::{RedisServer, WAIT};

/// The content every replica serves: path → bytes.
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

/// How a replica is set up.
#[derive(Clone, Copy)]
struct Setup<'a> {
    url: &'a str,
    channel: &'a str,
    prefix: &'a str,
    /// `None`: a bus without a shared store (the replica of before).
    lookup_timeout: Option<Duration>,
}

impl<'a> Setup<'a> {
    /// A shared store on `url`, channel and prefix `name`, lookups given a
    /// generous second (the tests are about what is answered, not when).
    fn shared(url: &'a str, name: &'a str) -> Self {
        Self {
            url,
            channel: name,
            prefix: name,
            lookup_timeout: Some(Duration::from_secs(1)),
        }
    }
}

struct Replica {
    name: &'static str,
    service: tower_media_cache::MediaCache<Inner>,
    handle: CacheHandle,
    calls: Arc<AtomicUsize>,
    db: Database,
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    body: Bytes,
}

impl Replica {
    fn new(name: &'static str, db: &Database, setup: &Setup<'_>) -> Self {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = {
            let (db, calls) = (db.clone(), calls.clone());
            tower::service_fn(move |request: Request<Bytes>| {
                calls.fetch_add(1, Ordering::SeqCst);
                let response = match db.0.lock().unwrap().get(request.uri().path()) {
                    Some(bytes) => Response::new(Full::new(bytes.clone())),
                    None => Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::default())
                        .unwrap(),
                };
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let mut bus = RedisBus::builder(setup.url)
            .channel(setup.channel)
            .ping_interval(Duration::from_millis(200))
            .ping_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
        if let Some(timeout) = setup.lookup_timeout {
            bus = bus.shared_store(
                SharedStore::new()
                    .prefix(setup.prefix)
                    .lookup_timeout(timeout),
            );
        }
        let layer = MediaCacheLayer::new(
            CachePolicy::max_age(Duration::from_secs(3600)).trust(Trust::UntilInvalidated),
        )
        .invalidation_bus(bus.start().expect("start the Redis bus"));
        let handle = layer.handle();
        Self {
            name,
            service: tower::Layer::layer(&layer, Inner::new(inner)),
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
        // Whatever happens to Redis: never a 304 for content that changed.
        if status == StatusCode::NOT_MODIFIED {
            assert_eq!(
                if_none_match.as_deref(),
                Some(self.db.etag(&path).as_str()),
                "{}: 304 for {path} although its content changed",
                self.name
            );
        }
        Answer { status, etag, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Request::get(path).body(Bytes::new()).unwrap())
            .await
    }

    async fn revalidate(&self, path: &str, etag: &str) -> Answer {
        let request = Request::get(path).header("if-none-match", etag);
        self.send(request.body(Bytes::new()).unwrap()).await
    }

    /// A revalidation answered `304` without the handler.
    async fn assert_short_circuits(&self, path: &str, etag: &str) {
        let calls = self.calls();
        let answer = self.revalidate(path, etag).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_MODIFIED,
            "{}: {answer:?}",
            self.name
        );
        assert_eq!(self.calls(), calls, "{}: handler called", self.name);
    }

    /// A revalidation the handler answered.
    async fn assert_calls_handler(&self, path: &str, etag: &str) -> Answer {
        let calls = self.calls();
        let answer = self.revalidate(path, etag).await;
        assert_eq!(
            self.calls(),
            calls + 1,
            "{}: handler not called ({answer:?})",
            self.name
        );
        answer
    }

    /// The header fields of a `304` answered without the handler, but
    /// `Date`.
    async fn not_modified_headers(&self, path: &str, etag: &str) -> Vec<(String, String)> {
        let calls = self.calls();
        let request = Request::get(path).header("if-none-match", etag);
        let response = self
            .service
            .clone()
            .oneshot(request.body(Bytes::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{}", self.name);
        assert_eq!(self.calls(), calls, "{}: handler called", self.name);
        let mut fields: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter(|(name, _)| *name != "date")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        fields.sort();
        assert!(
            fields.iter().any(|(n, _)| n == "cache-control"),
            "{fields:?}"
        );
        fields
    }

    /// A `GET` that learns `path`; waits until its record is in Redis.
    async fn learn(&self, path: &str) -> String {
        let writes = self.stats().shared_writes;
        let answer = self.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "{}: {answer:?}", self.name);
        self.wait_until("writing to the shared store", |r| {
            r.stats().shared_writes > writes
        })
        .await;
        answer.etag.expect("a content ETag")
    }

    async fn wait_until(&self, what: &str, condition: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "{}: {what} did not happen within {WAIT:?}; stats {:?}",
                self.name,
                self.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn wait_connected(&self) {
        self.wait_until("connecting", |r| r.handle.bus_connected())
            .await;
    }

    async fn wait_disconnected(&self) {
        self.wait_until("noticing Redis is gone", |r| !r.handle.bus_connected())
            .await;
    }

    /// A replica that just started: connected, nothing local.
    async fn fresh(name: &'static str, db: &Database, setup: &Setup<'_>) -> Self {
        let replica = Self::new(name, db, setup);
        replica.wait_connected().await;
        assert_eq!(replica.stats().entries, 0);
        replica
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

fn name(test: &str) -> String {
    init_tracing();
    format!("tower-media-cache-test:{test}:{}:", std::process::id())
}

/// Every key of the shared store under `prefix`, read with a client of the
/// test's own.
async fn redis_keys(url: &str, prefix: &str) -> (redis::aio::MultiplexedConnection, Vec<String>) {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection)
        .await
        .unwrap();
    (connection, keys)
}

/// The record keys (not the generation counters).
fn record_keys(keys: Vec<String>, prefix: &str) -> Vec<String> {
    keys.into_iter()
        .filter(|k| k[prefix.len()..].contains(':'))
        .collect()
}

// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_replica_answers_revalidations_from_what_another_learned() {
    let Some(redis) = RedisServer::start("a_fresh_replica_answers_revalidations") else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    db.set("/media/b.jpg", b"b, version 1");
    let name = name("fresh");
    let url = redis.url();
    let setup = Setup::shared(&url, &name);
    let a = Replica::fresh("A", &db, &setup).await;
    let v1 = a.learn("/media/a.jpg").await;
    a.assert_short_circuits("/media/a.jpg", &v1).await;
    // An entry already shared is not written again.
    a.get("/media/a.jpg").await;
    assert_eq!(a.stats().shared_writes, 1);
    let from_a = a.not_modified_headers("/media/a.jpg", &v1).await;

    // B starts after A learned: its first request is answered from Redis,
    // with the 304 A sends.
    let b = Replica::fresh("B", &db, &setup).await;
    assert_eq!(b.not_modified_headers("/media/a.jpg", &v1).await, from_a);
    assert_eq!(b.calls(), 0);
    b.assert_short_circuits("/media/a.jpg", &v1).await;
    assert_eq!(b.stats().shared_hits, 1);
    assert_eq!(b.calls(), 0);
    // Installed locally: the next ones do not ask Redis.
    b.assert_short_circuits("/media/a.jpg", &v1).await;
    assert_eq!(b.stats().shared_hits, 1);
    assert_eq!(b.stats().entries, 1);
    // B does not write back what it read.
    assert_eq!(b.stats().shared_writes, 0);

    // The same trust rules as a local entry: a tag that is not the current
    // one gets the handler's 200.
    let c = Replica::fresh("C", &db, &setup).await;
    let answer = c.assert_calls_handler("/media/a.jpg", "\"old\"").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.etag.as_deref(), Some(v1.as_str()));
    assert_eq!(c.stats().shared_hits, 1, "found, installed, not matching");

    // Variants are exact: another Host is another variant, a miss.
    let d = Replica::fresh("D", &db, &setup).await;
    let other_host = Request::get("/media/a.jpg")
        .header("host", "other.example")
        .header("if-none-match", &v1);
    let calls = d.calls();
    let answer = d.send(other_host.body(Bytes::new()).unwrap()).await;
    assert_eq!(d.calls(), calls + 1);
    assert_eq!(
        answer.status,
        StatusCode::NOT_MODIFIED,
        "the layer's own 304 from the 200"
    );
    assert_eq!(d.stats().shared_misses, 1);

    // A failed If-Match is answered 412 from Redis, a conditional HEAD 304.
    let f = Replica::fresh("F", &db, &setup).await;
    let if_match = Request::get("/media/a.jpg").header("if-match", "\"other\"");
    let answer = f.send(if_match.body(Bytes::new()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(answer.etag.as_deref(), Some(v1.as_str()));
    let head = Request::head("/media/b.jpg").header("if-none-match", &v1);
    let g = Replica::fresh("G", &db, &setup).await;
    let head_a = Request::head("/media/a.jpg").header("if-none-match", &v1);
    assert_eq!(
        g.send(head_a.body(Bytes::new()).unwrap()).await.status,
        StatusCode::NOT_MODIFIED
    );
    assert_eq!((f.calls(), g.calls()), (0, 0), "no handler");
    assert_eq!(f.stats().short_circuit_precondition_failed, 1);
    // Nothing shared for b.jpg yet: the HEAD goes to the handler.
    g.send(head.body(Bytes::new()).unwrap()).await;
    assert_eq!(g.calls(), 1);

    // Requests that need no entry never wait on Redis: a plain GET.
    let e = Replica::fresh("E", &db, &setup).await;
    let answer = e.get("/media/b.jpg").await;
    assert_eq!(answer.status, StatusCode::OK);
    let looked = |s: Stats| s.shared_hits + s.shared_misses + s.shared_unavailable;
    assert_eq!(looked(e.stats()), 0);
    // A HEAD is one that does (it takes the GET's validators from it).
    let head = Request::head("/media/a.jpg").body(Bytes::new()).unwrap();
    e.send(head).await;
    assert_eq!(e.stats().shared_hits, 1);
    assert_eq!(body_len(&e.get("/media/a.jpg").await), 12);
}

fn body_len(answer: &Answer) -> usize {
    answer.body.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_on_one_replica_stops_the_others_and_redis_from_answering() {
    let Some(redis) = RedisServer::start("an_invalidation_stops_the_others_and_redis") else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    db.set("/media/b.jpg", b"b, version 1");
    db.set("/live/c.jpg", b"c, version 1");
    let name = name("invalidation");
    let url = redis.url();
    let setup = Setup::shared(&url, &name);
    let a = Replica::fresh("A", &db, &setup).await;
    let v1 = a.learn("/media/a.jpg").await;
    let b = Replica::fresh("B", &db, &setup).await;
    b.assert_short_circuits("/media/a.jpg", &v1).await;

    // The content changes; B invalidates.
    db.set("/media/a.jpg", b"a, version 2");
    b.handle.invalidate("/media/a.jpg");
    a.wait_until("hearing B's invalidation", |r| r.stats().bus_received >= 1)
        .await;
    // Redis no longer has it: a fresh replica asks its handler.
    let c = Replica::fresh("C", &db, &setup).await;
    let answer = c.assert_calls_handler("/media/a.jpg", &v1).await;
    assert_eq!(&answer.body[..], b"a, version 2");
    assert_eq!(c.stats().shared_misses, 1);
    // C learned version 2 from its handler and shares it (in the
    // background: waited for here, so that A's lookup below cannot race it).
    c.wait_until("sharing version 2", |r| r.stats().shared_writes >= 1)
        .await;
    // A no longer answers version 1 either: it finds version 2 in Redis (a
    // tag that does not match: the handler answers), and does not write it
    // again.
    let answer = a.assert_calls_handler("/media/a.jpg", &v1).await;
    assert_eq!(answer.status, StatusCode::OK);
    let v2 = answer.etag.unwrap();
    assert_eq!(a.stats().shared_hits, 1);
    assert_eq!(a.stats().shared_writes, 1, "only version 1");
    let d = Replica::fresh("D", &db, &setup).await;
    d.assert_short_circuits("/media/a.jpg", &v2).await;

    // A prefix invalidation and a clear reach Redis too.
    let vb = a.learn("/media/b.jpg").await;
    let vc = a.learn("/live/c.jpg").await;
    d.handle.invalidate_prefix("/media/");
    a.wait_until("hearing the prefix", |r| r.stats().bus_received >= 2)
        .await;
    // A's local entry is gone (what E relearned and shared may answer it,
    // which is as good: it is current).
    assert_eq!(a.stats().entries, 1, "only /live/c.jpg");
    let e = Replica::fresh("E", &db, &setup).await;
    e.assert_calls_handler("/media/b.jpg", &vb).await;
    d.handle.clear();
    a.wait_until("hearing the clear", |r| r.stats().bus_received >= 3)
        .await;
    assert_eq!(a.stats().entries, 0);
    let f = Replica::fresh("F", &db, &setup).await;
    f.assert_calls_handler("/live/c.jpg", &vc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_learned_before_an_invalidation_is_never_written_back() {
    let Some(redis) = RedisServer::start("a_response_learned_before_an_invalidation") else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    let name = name("resurrection");
    let url = redis.url();
    let setup = Setup::shared(&url, &name);
    // A hears nothing from the others (another channel, the same records),
    // and its handler answers from a snapshot taken before the change: the
    // worst case of a replica whose learn is on its way when an
    // invalidation runs — it has not heard of it, its local epochs did not
    // move, and its answer predates the change.
    let snapshot = Database::default();
    snapshot.set("/media/a.jpg", b"a, version 1");
    let deaf_channel = format!("{name}deaf");
    let deaf = Setup {
        channel: &deaf_channel,
        ..setup
    };
    let a = Replica::fresh("A", &snapshot, &deaf).await;
    let b = Replica::fresh("B", &db, &setup).await;
    let stale = db.etag("/media/a.jpg");

    db.set("/media/a.jpg", b"a, version 2");
    b.handle.invalidate("/media/a.jpg");
    // Wait for the invalidation script to have run: it creates the
    // generation hash.
    let deadline = Instant::now() + WAIT;
    while !redis_keys(setup.url, setup.prefix)
        .await
        .1
        .iter()
        .any(|k| k.ends_with("gens"))
    {
        assert!(Instant::now() < deadline, "the invalidation never ran");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = a.get("/media/a.jpg").await;
    assert_eq!(answer.etag.as_deref(), Some(stale.as_str()));
    assert_eq!(a.stats().learned, 1, "A learned it locally");
    a.wait_until("its write refused", |r| {
        r.stats().shared_writes_refused >= 1
    })
    .await;
    assert_eq!(a.stats().shared_writes, 0);
    // Nothing in Redis answers the stale tag.
    let (_, keys) = redis_keys(setup.url, setup.prefix).await;
    assert_eq!(record_keys(keys, setup.prefix), Vec::<String>::new());
    let c = Replica::fresh("C", &db, &setup).await;
    let answer = c.assert_calls_handler("/media/a.jpg", &stale).await;
    assert_eq!(&answer.body[..], b"a, version 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_both_replicas_fall_back_and_recover_after_a_restart() {
    let Some(mut redis) = RedisServer::start("without_redis_both_replicas_fall_back") else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    let name = name("outage");
    let url = redis.url();
    let setup = Setup {
        url: &url,
        channel: &name,
        prefix: &name,
        lookup_timeout: Some(Duration::from_secs(1)),
    };
    let a = Replica::fresh("A", &db, &setup).await;
    let v1 = a.learn("/media/a.jpg").await;
    let b = Replica::fresh("B", &db, &setup).await;
    b.assert_short_circuits("/media/a.jpg", &v1).await;

    redis.kill();
    a.wait_disconnected().await;
    b.wait_disconnected().await;
    // The content changes and nobody can tell the others: no stale 304
    // (checked by `send`), every revalidation reaches a handler.
    db.set("/media/a.jpg", b"a, version 2");
    for replica in [&a, &b] {
        let answer = replica.assert_calls_handler("/media/a.jpg", &v1).await;
        assert_eq!(&answer.body[..], b"a, version 2");
    }
    let v2 = db.etag("/media/a.jpg");
    let c = Replica::new("C", &db, &setup);
    for _ in 0..3 {
        c.assert_calls_handler("/media/a.jpg", &v2).await;
    }
    let looked = |s: Stats| s.shared_hits + s.shared_misses + s.shared_unavailable;
    assert_eq!(looked(c.stats()), 0, "no lookup while disconnected");

    // Redis is back, empty: everyone reconnects, relearns and shares again.
    redis.restart();
    for replica in [&a, &b, &c] {
        replica.wait_connected().await;
    }
    let learned = a.learn("/media/a.jpg").await;
    assert_eq!(learned, v2);
    let d = Replica::fresh("D", &db, &setup).await;
    d.assert_short_circuits("/media/a.jpg", &v2).await;
    b.assert_short_circuits("/media/a.jpg", &v2).await;
    assert!(b.stats().shared_hits >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_in_redis_are_misses() {
    let Some(redis) = RedisServer::start("corrupt_records_in_redis_are_misses") else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    db.set("/media/b.jpg", b"b, version 1");
    let name = name("corrupt");
    let url = redis.url();
    let setup = Setup::shared(&url, &name);
    let a = Replica::fresh("A", &db, &setup).await;
    let va = a.learn("/media/a.jpg").await;
    let (mut redis_connection, keys) = redis_keys(setup.url, setup.prefix).await;
    let records = record_keys(keys, setup.prefix);
    assert_eq!(records.len(), 1, "{records:?}");
    // Every field of the group's hash overwritten with junk, plus junk
    // fields, one with another version's magic.
    let fields: Vec<Vec<u8>> = redis::cmd("HKEYS")
        .arg(&records[0])
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    for field in &fields {
        let _: () = redis::cmd("HSET")
            .arg(&records[0])
            .arg(field)
            .arg(&b"tmc\x01\xff\xff garbage"[..])
            .query_async(&mut redis_connection)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("HSET")
        .arg(&records[0])
        .arg("x")
        .arg(&b"tmc\x09"[..])
        .arg("y")
        .arg("")
        .query_async(&mut redis_connection)
        .await
        .unwrap();
    let b = Replica::fresh("B", &db, &setup).await;
    let answer = b.assert_calls_handler("/media/a.jpg", &va).await;
    assert_eq!(
        answer.status,
        StatusCode::NOT_MODIFIED,
        "the layer's own, from the 200"
    );
    assert_eq!(b.stats().shared_undecodable, 3);
    assert_eq!(b.stats().shared_hits, 0);

    // A key of the wrong type: an error, a miss.
    let vb = a.learn("/media/b.jpg").await;
    let (mut redis_connection, keys) = redis_keys(setup.url, setup.prefix).await;
    for key in record_keys(keys, setup.prefix) {
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("not a hash")
            .query_async(&mut redis_connection)
            .await
            .unwrap();
    }
    let c = Replica::fresh("C", &db, &setup).await;
    c.assert_calls_handler("/media/b.jpg", &vb).await;
    assert_eq!(c.stats().shared_unavailable, 1);
    assert_eq!(c.stats().shared_hits, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_delays_no_request_beyond_the_lookup_timeout() {
    let Some(redis) = RedisServer::start("a_frozen_redis_delays_no_request") else {
        return;
    };
    let db = Database::default();
    for i in 0..20 {
        db.set(&format!("/media/{i}.jpg"), b"some bytes");
    }
    let name = name("frozen");
    let setup = Setup {
        url: &redis.url(),
        channel: &name,
        prefix: &name,
        // The default.
        lookup_timeout: Some(Duration::from_millis(2)),
    };
    let a = Replica::fresh("A", &db, &setup).await;
    let mut tags = Vec::new();
    for i in 0..20 {
        tags.push(a.learn(&format!("/media/{i}.jpg")).await);
    }
    let b = Replica::fresh("B", &db, &setup).await;

    // Frozen: connections open, nothing answers. Until the bus notices (up
    // to ping_interval + ping_timeout, 2.2 s here), B's lookups wait for
    // nothing longer than their timeout, then its handler answers.
    redis.signal("STOP");
    let frozen_at = Instant::now();
    let mut slowest = Duration::ZERO;
    for (i, tag) in tags.iter().enumerate() {
        let started = Instant::now();
        let answer = b.revalidate(&format!("/media/{i}.jpg"), tag).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            answer.status,
            StatusCode::NOT_MODIFIED,
            "from the handler's 200"
        );
    }
    let all_in = frozen_at.elapsed();
    redis.signal("CONT");
    assert_eq!(b.calls(), 20, "every one went to the handler");
    let stats = b.stats();
    if all_in < Duration::from_secs(2) {
        // The bus had not noticed yet: every request looked up, and timed out.
        assert_eq!(stats.shared_unavailable, 20, "{stats:?}");
    }
    assert!(stats.shared_unavailable >= 1, "{stats:?}");
    assert_eq!(stats.shared_hits, 0);
    // A bound far below what waiting on the frozen server would take (the
    // 2 s the bus needs to notice), generous for a busy debug build.
    assert!(slowest < Duration::from_millis(500), "slowest {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_have_a_ttl_and_at_most_32_variants_per_path() {
    let Some(redis) = RedisServer::start("records_have_a_ttl_and_at_most_32_variants") else {
        return;
    };
    let db = Database::default();
    db.set("/media/a.jpg", b"a, version 1");
    let name = name("bounded");
    let url = redis.url();
    let setup = Setup::shared(&url, &name);
    let a = Replica::fresh("A", &db, &setup).await;
    // 40 variants of one path: 40 queries.
    for i in 0..40 {
        a.learn(&format!("/media/a.jpg?v={i}")).await;
    }
    let (mut connection, keys) = redis_keys(setup.url, setup.prefix).await;
    let records = record_keys(keys, setup.prefix);
    assert_eq!(records.len(), 1, "one hash per path group: {records:?}");
    let fields: u64 = redis::cmd("HLEN")
        .arg(&records[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((1..=32).contains(&fields), "{fields} variants kept");
    // Trusted until invalidated: the default TTL, a day.
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&records[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(ttl > 86_000_000 && ttl <= 86_400_000, "TTL {ttl} ms");
    // The latest variant is among those kept.
    let b = Replica::fresh("B", &db, &setup).await;
    let tag = db.etag("/media/a.jpg");
    b.assert_short_circuits("/media/a.jpg?v=39", &tag).await;
}
