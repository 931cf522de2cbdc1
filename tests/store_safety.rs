//! What the layer must never answer on the service's behalf: a variant the
//! request did not select, a write whose precondition is false, a stale
//! entry left behind by a write through another spelling of the URL, a 304
//! whose `Content-Length` lies, a panic on a huge lifetime, an invalidation
//! by a safe method, a 412 where the service would refuse the method, an
//! entry of another host.
//!
//! The tests are grouped by finding, numbered as in the review. The fake
//! services here make a wrong answer observable: their bodies depend on
//! exactly what the layer might conflate, and they count the writes they run.

mod common;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{Answer, Content, Origin, get, req, send};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Barrier, oneshot};
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_media_cache::{
    CachePolicy, MediaCache, MediaCacheLayer, Trust, Validators, content_etag,
};

const HOST: &str = "media.example";

fn tag(bytes: &[u8]) -> String {
    content_etag(bytes).to_string()
}

// ---------------------------------------------------------------------------
// 1. Vary: variants are selected by the exact request values
// ---------------------------------------------------------------------------

/// An origin whose answer depends on the exact bytes of `Accept-Language`
/// (field lines combined with ", ", RFC 9110 §5.3), and that says so with
/// `Vary: Accept-Language`.
#[derive(Clone, Default)]
struct Negotiator {
    calls: Arc<AtomicUsize>,
}

impl Negotiator {
    /// The body the origin sends for these `Accept-Language` field lines.
    fn body_for(lines: Option<&[&str]>) -> Bytes {
        match lines {
            None => Bytes::from_static(b"no accept-language"),
            Some(lines) => Bytes::from(format!("accept-language=[{}]", lines.join(", "))),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Negotiator {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let lines: Vec<&str> = request
            .headers()
            .get_all("accept-language")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let body = if lines.is_empty() {
            Negotiator::body_for(None)
        } else {
            Negotiator::body_for(Some(&lines))
        };
        let mut response = Response::new(Full::new(body));
        response
            .headers_mut()
            .insert("vary", HeaderValue::from_static("Accept-Language"));
        std::future::ready(Ok(response))
    }
}

fn with_language(mut builder: http::request::Builder, lines: Option<&[&str]>) -> Request<()> {
    for line in lines.unwrap_or_default() {
        builder = builder.header("accept-language", *line);
    }
    req(builder)
}

/// Policies under which the store answers revalidations alone.
fn trusting_policies() -> [(&'static str, CachePolicy); 2] {
    [
        (
            "no-cache, UntilInvalidated",
            CachePolicy::no_cache().trust(Trust::UntilInvalidated),
        ),
        (
            "max-age=60, MaxAge",
            CachePolicy::max_age(Duration::from_secs(60)),
        ),
    ]
}

/// RFC 9111 §4.1: a stored response answers only a request whose selecting
/// header fields match those of the request that produced it, and a field
/// absent from one request matches only its absence in the other. The layer
/// cannot know which spellings a service treats alike — this one answers each
/// byte sequence differently — so a value that differs in case, spaces, empty
/// members, a quoted string or presence must reach the service; the exact
/// value still gets the store's 304.
#[tokio::test]
async fn vary_values_that_differ_in_bytes_are_not_answered_from_the_store() {
    type Lines = Option<&'static [&'static str]>;
    let pairs: [(Lines, Lines); 7] = [
        (Some(&["fr"]), Some(&["FR"])),
        (Some(&["fr-CH"]), Some(&["fr-ch"])),
        (Some(&["fr, de"]), Some(&["fr,de"])),
        (Some(&["fr"]), Some(&["fr,"])),
        (Some(&["fr;q=\"x, y\""]), Some(&["fr;q=\"x,y\""])),
        (None, Some(&[""])),
        (None, Some(&[","])),
    ];
    let mut wrong = Vec::new();
    for (policy_name, policy) in trusting_policies() {
        for (learned, other) in pairs {
            let negotiator = Negotiator::default();
            let service = MediaCacheLayer::new(policy.clone()).layer(negotiator.clone());
            let first = send(&service, with_language(get("/page"), learned)).await;
            assert_eq!(first.status, 200);
            assert_eq!(first.body, Negotiator::body_for(learned));
            let learned_tag = tag(&Negotiator::body_for(learned));
            assert_eq!(first.header("etag"), Some(learned_tag.as_str()));

            // The exact value: the store answers, the service is not called.
            let same = send(
                &service,
                with_language(get("/page").header("if-none-match", &learned_tag), learned),
            )
            .await;
            if (same.status.as_u16(), negotiator.calls()) != (304, 1) {
                wrong.push(format!(
                    "[{policy_name}] {learned:?} again: {} after {} inner calls, want a 304 \
                     from the store",
                    same.status,
                    negotiator.calls()
                ));
            }

            // Other bytes: the service answers, with its own variant.
            let calls = negotiator.calls();
            let answer = send(
                &service,
                with_language(get("/page").header("if-none-match", &learned_tag), other),
            )
            .await;
            let expected = Negotiator::body_for(other);
            let got = (
                answer.status.as_u16(),
                negotiator.calls() - calls,
                answer.body.clone(),
                answer.header("etag").map(str::to_owned),
            );
            let want = (200, 1, expected.clone(), Some(tag(&expected)));
            if got != want {
                wrong.push(format!(
                    "[{policy_name}] learned {learned:?}, asked {other:?}: got (status, inner \
                     calls, body, etag) {got:?}, want {want:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// RFC 9111 §4.1 and RFC 9110 §5.3: `Accept-Language: fr` + `Accept-Language:
/// de` may be combined into `fr, de`. The layer may treat the two forms as
/// one variant or as two; either way a revalidation gets exactly what the
/// service would answer that request (this service combines lines with ", ",
/// so a 304 for the one-line tag is right, and so is a 200 with its bytes).
#[tokio::test]
async fn a_vary_field_sent_as_two_lines_gets_what_the_service_would_answer() {
    let one_line: &[&str] = &["fr, de"];
    let two_lines: &[&str] = &["fr", "de"];
    for (policy_name, policy) in trusting_policies() {
        for (learned, asked) in [(one_line, two_lines), (two_lines, one_line)] {
            let negotiator = Negotiator::default();
            let service = MediaCacheLayer::new(policy.clone()).layer(negotiator.clone());
            let first = send(&service, with_language(get("/page"), Some(learned))).await;
            let learned_tag = first.header("etag").unwrap().to_owned();

            // What the service itself answers to the revalidation.
            let direct = negotiator
                .clone()
                .oneshot(with_language(get("/page"), Some(asked)))
                .await
                .unwrap()
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes();
            let calls = negotiator.calls();

            let answer = send(
                &service,
                with_language(
                    get("/page").header("if-none-match", &learned_tag),
                    Some(asked),
                ),
            )
            .await;
            let context = format!("[{policy_name}] learned {learned:?}, asked {asked:?}");
            match answer.status.as_u16() {
                304 => {
                    assert_eq!(
                        learned_tag,
                        tag(&direct),
                        "{context}: a 304 for another body"
                    );
                    assert_eq!(
                        answer.header("etag"),
                        Some(tag(&direct).as_str()),
                        "{context}"
                    );
                    assert!(answer.body.is_empty(), "{context}");
                }
                200 => {
                    assert_eq!(answer.body, direct, "{context}");
                    assert_eq!(
                        answer.header("etag"),
                        Some(tag(&direct).as_str()),
                        "{context}"
                    );
                    assert_eq!(negotiator.calls(), calls + 1, "{context}");
                }
                status => panic!("{context}: {status}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A tiny key-value application with no precondition logic of its own
// ---------------------------------------------------------------------------

/// Documents keyed by their percent-decoded path (the query is ignored).
/// `GET`/`HEAD` answer the bytes with no `ETag` (the layer hashes them) or
/// 404; `PUT` replaces them (204); `DELETE` removes them (204); `POST`
/// replaces them (204) on the paths in `accepts_post`, elsewhere 405.
#[derive(Clone, Default)]
struct Documents {
    docs: Arc<Mutex<HashMap<String, Bytes>>>,
    /// `PUT`s the handler executed.
    puts: Arc<AtomicUsize>,
    /// `POST`s the handler received, and those it executed.
    posts_seen: Arc<AtomicUsize>,
    posts: Arc<AtomicUsize>,
    accepts_post: Arc<HashSet<&'static str>>,
    /// How long a `PUT` takes between being accepted and answering.
    put_delay: Duration,
}

impl Documents {
    fn with(docs: &[(&str, &'static [u8])]) -> Self {
        let this = Self::default();
        for (path, body) in docs {
            this.docs
                .lock()
                .unwrap()
                .insert((*path).to_owned(), Bytes::from_static(body));
        }
        this
    }

    fn accepting_post(mut self, paths: &[&'static str]) -> Self {
        self.accepts_post = Arc::new(paths.iter().copied().collect());
        self
    }

    fn slow_puts(mut self, delay: Duration) -> Self {
        self.put_delay = delay;
        self
    }

    fn doc(&self, path: &str) -> Option<Bytes> {
        self.docs.lock().unwrap().get(path).cloned()
    }

    fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }

    fn posts_seen(&self) -> usize {
        self.posts_seen.load(Ordering::SeqCst)
    }

    async fn handle(self, request: Request<Bytes>) -> Response<Full<Bytes>> {
        let path = percent_decode(request.uri().path());
        let (parts, body) = request.into_parts();
        let (status, body) = match parts.method {
            Method::GET | Method::HEAD => match self.doc(&path) {
                Some(doc) if parts.method == Method::HEAD => {
                    let mut response = Response::new(Full::new(Bytes::new()));
                    response
                        .headers_mut()
                        .insert("content-length", HeaderValue::from(doc.len()));
                    return response;
                }
                Some(doc) => (StatusCode::OK, doc),
                None => (
                    StatusCode::NOT_FOUND,
                    Bytes::from_static(b"no such document"),
                ),
            },
            Method::PUT => {
                self.puts.fetch_add(1, Ordering::SeqCst);
                if !self.put_delay.is_zero() {
                    tokio::time::sleep(self.put_delay).await;
                }
                self.docs.lock().unwrap().insert(path, body);
                (StatusCode::NO_CONTENT, Bytes::new())
            }
            Method::POST => {
                self.posts_seen.fetch_add(1, Ordering::SeqCst);
                if self.accepts_post.contains(path.as_str()) {
                    self.posts.fetch_add(1, Ordering::SeqCst);
                    self.docs.lock().unwrap().insert(path, body);
                    (StatusCode::NO_CONTENT, Bytes::new())
                } else {
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(b"POST is not supported here")));
                    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                    response
                        .headers_mut()
                        .insert("allow", HeaderValue::from_static("GET, HEAD, PUT, DELETE"));
                    return response;
                }
            }
            Method::DELETE => match self.docs.lock().unwrap().remove(&path) {
                Some(_) => (StatusCode::NO_CONTENT, Bytes::new()),
                None => (StatusCode::NOT_FOUND, Bytes::new()),
            },
            _ => (StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        response
    }
}

impl Service<Request<Bytes>> for Documents {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

/// Decodes `%XX` escapes in a path, as an application router does.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn request(method: Method, uri: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("host", HOST)
}

fn put(uri: &str, body: &'static [u8], conditions: &[(&str, &str)]) -> Request<Bytes> {
    let mut builder = request(Method::PUT, uri);
    for (name, value) in conditions {
        builder = builder.header(*name, *value);
    }
    builder.body(Bytes::from_static(body)).unwrap()
}

fn fetch(uri: &str) -> Request<Bytes> {
    request(Method::GET, uri).body(Bytes::new()).unwrap()
}

fn revalidate(uri: &str, etag: &str) -> Request<Bytes> {
    request(Method::GET, uri)
        .header("if-none-match", etag)
        .body(Bytes::new())
        .unwrap()
}

/// The policies a guarded write must work under: a store that trusts what
/// it learned, and the default that trusts nothing.
fn write_policies() -> [(&'static str, CachePolicy); 2] {
    [
        (
            "UntilInvalidated",
            CachePolicy::no_cache().trust(Trust::UntilInvalidated),
        ),
        ("default no-cache", CachePolicy::no_cache()),
    ]
}

/// The layer around the whole app, which routes by method.
fn documents_behind(layer: MediaCacheLayer, app: &Documents) -> MediaCache<Documents> {
    layer.wrap_router(app.clone())
}

// ---------------------------------------------------------------------------
// 2. Lost updates despite If-Match
// ---------------------------------------------------------------------------

/// RFC 9110 §13.1.1 and §13.2.2: an origin server must not perform a method
/// whose `If-Match` condition is false. After a first `PUT If-Match: E1`
/// replaced the document, a second `PUT If-Match: E1` is based on a copy
/// that is no longer current: 412, and its bytes are never stored — even
/// though the first write emptied the store entry the layer used to judge.
#[tokio::test]
async fn a_second_write_with_a_used_if_match_gets_412_and_is_not_applied() {
    for (policy_name, policy) in write_policies() {
        let app = Documents::with(&[("/doc", b"original")]);
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        let e1 = tag(b"original");
        let first = send(&service, fetch("/doc")).await;
        assert_eq!(first.header("etag"), Some(e1.as_str()), "[{policy_name}]");

        let update = send(&service, put("/doc", b"first", &[("if-match", &e1)])).await;
        assert_eq!(
            update.status, 204,
            "[{policy_name}] the first write is current"
        );

        let lost = send(&service, put("/doc", b"second", &[("if-match", &e1)])).await;
        assert_eq!(
            (lost.status.as_u16(), app.puts()),
            (412, 1),
            "[{policy_name}] (status, PUTs executed) of the second PUT If-Match: E1"
        );
        assert!(lost.body.is_empty(), "[{policy_name}]");
        assert_eq!(
            lost.header("etag"),
            Some(tag(b"first").as_str()),
            "[{policy_name}] a 412 carries the current validator"
        );
        assert_eq!(app.doc("/doc").unwrap(), "first", "[{policy_name}]");
        let now = send(&service, fetch("/doc")).await;
        assert_eq!(now.body, "first", "[{policy_name}]");
    }
}

/// RFC 9110 §13.1.1: `If-Match` is judged against the current
/// representation whether or not the layer happened to learn it first: with
/// an empty store, `PUT If-Match: "stale"` still gets 412 and never runs.
#[tokio::test]
async fn if_match_on_a_write_is_checked_when_the_store_knows_nothing() {
    for (policy_name, policy) in write_policies() {
        let app = Documents::with(&[("/doc", b"original")]);
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        let answer = send(
            &service,
            put("/doc", b"blind", &[("if-match", "\"stale\"")]),
        )
        .await;
        assert_eq!(
            (answer.status.as_u16(), app.puts()),
            (412, 0),
            "[{policy_name}] (status, PUTs executed)"
        );
        assert_eq!(
            answer.header("etag"),
            Some(tag(b"original").as_str()),
            "[{policy_name}]"
        );
        assert_eq!(app.doc("/doc").unwrap(), "original", "[{policy_name}]");
    }
}

/// RFC 9110 §13.1.2: `If-None-Match: *` is false when the resource has a
/// current representation, so a "create only" `PUT` on an existing document
/// gets 412 and does not overwrite it — even when the store never saw it.
#[tokio::test]
async fn if_none_match_star_on_a_write_to_an_existing_resource_gets_412() {
    for (policy_name, policy) in write_policies() {
        let app = Documents::with(&[("/doc", b"original")]);
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        let answer = send(&service, put("/doc", b"clobber", &[("if-none-match", "*")])).await;
        assert_eq!(
            (answer.status.as_u16(), app.puts()),
            (412, 0),
            "[{policy_name}] (status, PUTs executed)"
        );
        assert_eq!(app.doc("/doc").unwrap(), "original", "[{policy_name}]");
    }
}

/// RFC 9110 §13.1.1: `If-Match: *` is false when the resource has no current
/// representation (the service answers 404 to `GET`): an "update only"
/// `PUT` gets 412 and does not create it.
#[tokio::test]
async fn if_match_star_on_a_write_to_a_missing_resource_gets_412() {
    for (policy_name, policy) in write_policies() {
        let app = Documents::default();
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        let answer = send(&service, put("/new", b"created", &[("if-match", "*")])).await;
        assert_eq!(
            (answer.status.as_u16(), app.puts()),
            (412, 0),
            "[{policy_name}] (status, PUTs executed)"
        );
        assert_eq!(
            answer.header("etag"),
            None,
            "[{policy_name}] nothing is current"
        );
        assert_eq!(app.doc("/new"), None, "[{policy_name}]");
        let missing = send(&service, fetch("/new")).await;
        assert_eq!(missing.status, 404, "[{policy_name}]");
    }
}

/// RFC 9110 §13.1.1 and §13.2.2: ten clients that read the same version and
/// each send `PUT If-Match: E1` at once — only one can be based on the
/// current representation. Exactly one write runs (2xx), the nine others
/// get 412, and the document holds the winner's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_with_the_same_if_match_let_exactly_one_through() {
    const WRITERS: usize = 10;
    const BODIES: [&[u8]; WRITERS] = [
        b"put-0", b"put-1", b"put-2", b"put-3", b"put-4", b"put-5", b"put-6", b"put-7", b"put-8",
        b"put-9",
    ];
    for (policy_name, policy) in write_policies() {
        let app = Documents::with(&[("/doc", b"original")]).slow_puts(Duration::from_millis(20));
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        let e1 = tag(b"original");
        let first = send(&service, fetch("/doc")).await;
        assert_eq!(first.header("etag"), Some(e1.as_str()));

        let barrier = Arc::new(Barrier::new(WRITERS));
        let writers: Vec<JoinHandle<u16>> = BODIES
            .iter()
            .map(|body| {
                let (service, barrier, e1) = (service.clone(), barrier.clone(), e1.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let answer = send(&service, put("/doc", body, &[("if-match", &e1)])).await;
                    answer.status.as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::with_capacity(WRITERS);
        for writer in writers {
            statuses.push(writer.await.unwrap());
        }

        let winners: Vec<usize> = (0..WRITERS)
            .filter(|&i| (200..300).contains(&statuses[i]))
            .collect();
        let refused = statuses.iter().filter(|&&s| s == 412).count();
        assert_eq!(
            (winners.len(), refused, app.puts()),
            (1, WRITERS - 1, 1),
            "[{policy_name}] (2xx, 412, PUTs executed); statuses {statuses:?}"
        );
        let winner = BODIES[winners[0]];
        assert_eq!(app.doc("/doc").unwrap(), winner, "[{policy_name}]");
        let now = send(&service, fetch("/doc")).await;
        assert_eq!(now.body, winner, "[{policy_name}]");
    }
}

// ---------------------------------------------------------------------------
// 3. A write through another spelling of the URL
// ---------------------------------------------------------------------------

/// Learns `learn`, writes new bytes through `write` (another spelling of the
/// same resource for the service), and revalidates `learn` with the old tag.
async fn revalidation_after_write_through(learn: &str, write: &str) -> Answer {
    let app = Documents::with(&[("/media/x.jpg", b"old jpeg bytes")]);
    let layer = MediaCacheLayer::new(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
    let service = documents_behind(layer, &app);
    let old = tag(b"old jpeg bytes");
    let first = send(&service, fetch(learn)).await;
    assert_eq!(first.header("etag"), Some(old.as_str()));
    let stored = send(&service, revalidate(learn, &old)).await;
    assert_eq!(stored.status, 304, "learned, trusted");

    let write = send(&service, put(write, b"new jpeg bytes", &[])).await;
    assert_eq!(write.status, 204);
    assert_eq!(app.doc("/media/x.jpg").unwrap(), "new jpeg bytes");
    send(&service, revalidate(learn, &old)).await
}

fn assert_new_bytes(answer: &Answer, context: &str) {
    assert_eq!(
        (answer.status.as_u16(), answer.body.as_ref()),
        (200, &b"new jpeg bytes"[..]),
        "{context}: the old tag must not get a 304 after the write"
    );
    assert_eq!(
        answer.header("etag"),
        Some(tag(b"new jpeg bytes").as_str()),
        "{context}"
    );
}

/// RFC 9111 §4.4: a successful unsafe request invalidates the target URI.
/// The service ignores the query, so `PUT /media/x.jpg?x=1` changed what
/// `GET /media/x.jpg` answers: the stored entry of the plain path must not
/// answer the old tag with 304.
#[tokio::test]
async fn a_write_to_a_query_spelling_invalidates_the_plain_path() {
    let answer = revalidation_after_write_through("/media/x.jpg", "/media/x.jpg?x=1").await;
    assert_new_bytes(&answer, "learned /media/x.jpg, wrote /media/x.jpg?x=1");
}

/// RFC 9111 §4.4: the reverse — a write to the plain path changes what every
/// query spelling of it answers for a service that ignores the query.
#[tokio::test]
async fn a_write_to_the_plain_path_invalidates_its_query_spellings() {
    let answer = revalidation_after_write_through("/media/x.jpg?v=1", "/media/x.jpg").await;
    assert_new_bytes(&answer, "learned /media/x.jpg?v=1, wrote /media/x.jpg");
}

/// RFC 9111 §4.4 with RFC 3986 §6.2.2.2: `/media/%78.jpg` is `/media/x.jpg`
/// (an unreserved character percent-encoded); a write through it invalidates
/// the decoded path's entry.
#[tokio::test]
async fn a_write_through_a_percent_encoded_spelling_invalidates_the_decoded_path() {
    let answer = revalidation_after_write_through("/media/x.jpg", "/media/%78.jpg").await;
    assert_new_bytes(&answer, "learned /media/x.jpg, wrote /media/%78.jpg");
}

/// RFC 9111 §4.4: a successful unsafe request also invalidates the URIs in
/// `Location` and `Content-Location` on the same host — however they are
/// spelled: with the default port written out, scheme-relative, or
/// relative to the request. (The service here answers every write with
/// 201 and the reference, and its `POST` changes the referenced bytes.)
#[tokio::test]
async fn location_and_content_location_invalidate_in_every_spelling() {
    for (field, value) in [
        ("location", "http://media.example:80/media/b.jpg"),
        ("location", "//media.example/media/b.jpg"),
        ("content-location", "b.jpg"),
        ("content-location", "/media/./B.jpg"),
    ] {
        let origin = Origin::new(Content::ok(b"old b"));
        let layer = MediaCacheLayer::new(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
        let service = origin.wrap(&layer);
        send(&service, req(get("/media/b.jpg"))).await;
        let stored = send(
            &service,
            req(get("/media/b.jpg").header("if-none-match", tag(b"old b"))),
        )
        .await;
        assert_eq!(
            (stored.status.as_u16(), origin.calls()),
            (304, 1),
            "{value}"
        );

        origin.set(Content::ok(b"").status(201).header(field, value));
        let post = Request::post("/media/upload").header("host", HOST);
        assert_eq!(send(&service, req(post)).await.status, 201, "{value}");

        origin.set(Content::ok(b"new b"));
        let answer = send(
            &service,
            req(get("/media/b.jpg").header("if-none-match", tag(b"old b"))),
        )
        .await;
        assert_eq!(
            (answer.status.as_u16(), answer.body.as_ref()),
            (200, &b"new b"[..]),
            "{field}: {value} must invalidate /media/b.jpg"
        );
    }
    // Another host's reference is not ours to invalidate (RFC 9111 §4.4).
    let origin = Origin::new(Content::ok(b"old b"));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
    let service = origin.wrap(&layer);
    send(&service, req(get("/media/b.jpg"))).await;
    origin.set(
        Content::ok(b"")
            .status(201)
            .header("location", "https://cdn.example/media/b.jpg"),
    );
    send(
        &service,
        req(Request::post("/media/upload").header("host", HOST)),
    )
    .await;
    let answer = send(
        &service,
        req(get("/media/b.jpg").header("if-none-match", tag(b"old b"))),
    )
    .await;
    assert_eq!((answer.status.as_u16(), origin.calls()), (304, 2));
}

// ---------------------------------------------------------------------------
// 4. A 304 over a real HTTP/1.1 connection keeps the 200's Content-Length
// ---------------------------------------------------------------------------

/// Seventeen bytes: what `/f` answers.
const SEVENTEEN: &[u8] = b"seventeen bytes!!";

/// `/f`: 17 bytes to `GET`, `Content-Length: 17` and no body to `HEAD`.
#[derive(Clone, Default)]
struct File {
    calls: Arc<AtomicUsize>,
}

impl File {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<Bytes>> for File {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body = if request.method() == Method::HEAD {
            Bytes::new()
        } else {
            Bytes::from_static(SEVENTEEN)
        };
        let mut response = Response::new(Full::new(body));
        response
            .headers_mut()
            .insert("content-length", HeaderValue::from(SEVENTEEN.len()));
        response
            .headers_mut()
            .insert("content-type", HeaderValue::from_static("text/plain"));
        std::future::ready(Ok(response))
    }
}

/// How the layered `File` is served over HTTP/1.1.
#[derive(Debug, Clone, Copy)]
enum Stack {
    /// hyper 1's connection with hyper-util's `TowerToHyperService`.
    Hyper,
    /// An axum `Router` with the layer added by `Router::layer`, served by
    /// `axum::serve` (axum's top-level route future adds `Content-Length`
    /// from the body's exact size hint when the response has none).
    Axum,
}

/// A server on 127.0.0.1:0 serving the layered `File` at `/f`.
struct RawServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RawServer {
    async fn start(stack: Stack, layer: MediaCacheLayer, file: File) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = match stack {
            Stack::Hyper => tokio::spawn(serve_hyper(listener, stopped, layer, file)),
            Stack::Axum => {
                let calls = file.calls.clone();
                let app = axum::Router::new()
                    .route(
                        "/f",
                        axum::routing::get(move || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            async { ([("content-type", "text/plain")], SEVENTEEN) }
                        }),
                    )
                    .layer(layer);
                tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            stopped.await.ok();
                        })
                        .await
                        .unwrap();
                })
            }
        };
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Sends one request with `Connection: close` and returns the status and
    /// the header lines of the raw response head, and what followed it.
    async fn raw(&self, method: &str, headers: &[(&str, &str)]) -> RawAnswer {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!("{method} /f HTTP/1.1\r\nhost: {HOST}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("connection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let text = std::str::from_utf8(&raw[..end]).unwrap();
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        RawAnswer {
            status,
            headers,
            rest: raw[end + 4..].to_vec(),
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Serves `layer` around `file` on hyper 1 connections until `stopped`.
async fn serve_hyper(
    listener: TcpListener,
    mut stopped: oneshot::Receiver<()>,
    layer: MediaCacheLayer,
    file: File,
) {
    // The file answers every method: the layer wraps it as a whole.
    let service = ServiceBuilder::new()
        .map_request(|request: Request<Incoming>| request.map(|_| Bytes::new()))
        .service(layer.wrap_router(file));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.unwrap();
                let connection = hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    TowerToHyperService::new(service.clone()),
                );
                tokio::spawn(async move {
                    connection.await.ok();
                });
            }
            _ = &mut stopped => break,
        }
    }
}

#[derive(Debug)]
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    rest: Vec<u8>,
}

impl RawAnswer {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Sends `method` with `If-None-Match` for `/f`: a 304 must carry the ETag,
/// no body, and no `Content-Length` or the 200's (17). With `may_be_200`, a
/// 200 is accepted too, with the 200's `Content-Length` and no other tag.
async fn check_revalidation(
    server: &RawServer,
    method: &str,
    may_be_200: bool,
    source: &str,
    wrong: &mut Vec<String>,
) {
    let etag = tag(SEVENTEEN);
    let answer = server.raw(method, &[("if-none-match", &etag)]).await;
    let lengths = answer.all("content-length");
    let tags = answer.all("etag");
    let ok = match answer.status {
        304 => tags == [etag.as_str()] && (lengths.is_empty() || lengths == ["17"]),
        200 if may_be_200 => lengths == ["17"] && (tags.is_empty() || tags == [etag.as_str()]),
        _ => false,
    };
    if !ok || !answer.rest.is_empty() {
        wrong.push(format!(
            "{method} revalidation answered by {source}: status {}, content-length {lengths:?}, \
             etag {tags:?}, {} bytes after the head",
            answer.status,
            answer.rest.len()
        ));
    }
}

/// RFC 9110 §8.6 and §15.4.5: a 304 (to `GET` or `HEAD`) may only carry the
/// `Content-Length` the 200 would have carried — here 17 — or none; a
/// `Content-Length: 0` tells the client its copy is empty. Checked on the
/// wire (raw bytes over TCP), behind hyper 1 and behind axum, for a 304 from
/// a trusted store entry, from a probe (with and without a learned entry),
/// and made from the inner service's 200 under `Trust::Never`.
#[tokio::test]
async fn a_304_on_the_wire_never_carries_a_false_content_length() {
    let mut wrong = Vec::new();
    for stack in [Stack::Hyper, Stack::Axum] {
        // (a) From the store.
        let file = File::default();
        let layer = MediaCacheLayer::new(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
        let server = RawServer::start(stack, layer, file.clone()).await;
        let full = server.raw("GET", &[]).await;
        assert_eq!(full.status, 200, "{stack:?}");
        assert_eq!(full.all("content-length"), ["17"], "{stack:?}");
        assert_eq!(full.rest, SEVENTEEN, "{stack:?}");
        let head = server.raw("HEAD", &[]).await;
        assert_eq!(head.status, 200, "{stack:?}");
        assert_eq!(head.all("content-length"), ["17"], "{stack:?}");
        for method in ["GET", "HEAD"] {
            let source = format!("{stack:?}, the store");
            check_revalidation(&server, method, false, &source, &mut wrong).await;
        }
        assert_eq!(file.calls(), 2, "{stack:?}: the store answered");
        server.stop().await;

        // (b) From a probe that knows the current tag.
        let file = File::default();
        let current = content_etag(SEVENTEEN);
        let policy = CachePolicy::no_cache().probe(move |_: &http::request::Parts| {
            let current = current.clone();
            async move { Some(Validators::new().with_etag(current)) }
        });
        let server = RawServer::start(stack, MediaCacheLayer::new(policy), file.clone()).await;
        for method in ["GET", "HEAD"] {
            let source = format!("{stack:?}, the probe");
            check_revalidation(&server, method, false, &source, &mut wrong).await;
        }
        assert_eq!(server.raw("GET", &[]).await.status, 200);
        for method in ["GET", "HEAD"] {
            let source = format!("{stack:?}, the probe, entry learned");
            check_revalidation(&server, method, false, &source, &mut wrong).await;
        }
        assert_eq!(file.calls(), 1, "{stack:?}: the probe answered");
        server.stop().await;

        // (c) Made from the inner service's 200. The service sends no ETag
        // and no body to HEAD: under `Trust::Never` the layer learns HEAD's
        // validator with an internal GET (one more call of the service),
        // so the conditional HEAD gets its 304 (a 200 would also be
        // allowed here: what is checked is the Content-Length).
        let file = File::default();
        let layer = MediaCacheLayer::new(CachePolicy::no_cache());
        let server = RawServer::start(stack, layer, file.clone()).await;
        assert_eq!(server.raw("GET", &[]).await.status, 200);
        let source = format!("{stack:?}, the inner service");
        check_revalidation(&server, "GET", false, &source, &mut wrong).await;
        check_revalidation(&server, "HEAD", true, &source, &mut wrong).await;
        // axum's router runs the handler for HEAD with its whole body,
        // which the layer hashes; hyper's service answers HEAD with no body,
        // so the layer sends a GET of its own.
        let internal_get = matches!(stack, Stack::Hyper) as usize;
        assert_eq!(
            file.calls(),
            3 + internal_get,
            "{stack:?}: the inner service answered (GET, GET, HEAD, and the layer's GET for hyper)"
        );
        server.stop().await;
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

// ---------------------------------------------------------------------------
// 6. Huge lifetimes never panic
// ---------------------------------------------------------------------------

/// Runs `GET /a` then `GET /a` with `If-None-Match` through `layer` in front
/// of an origin that sends `cache_control`, on a task of its own: returns
/// what went wrong, a panic included.
async fn learn_and_revalidate(
    layer: MediaCacheLayer,
    cache_control: Option<&'static str>,
) -> Result<(), String> {
    let run = tokio::spawn(async move {
        let body: &[u8] = b"long-lived bytes";
        let mut content = Content::ok(b"long-lived bytes");
        if let Some(value) = cache_control {
            content = content.header("cache-control", value);
        }
        let origin = Origin::new(content);
        let service = origin.wrap(&layer);
        let first = send(&service, req(get("/a"))).await;
        let second = send(&service, req(get("/a").header("if-none-match", tag(body)))).await;
        let summary = |answer: &Answer| {
            (
                answer.status.as_u16(),
                answer.header("etag").map(str::to_owned),
            )
        };
        let expires = [&first, &second].map(|a| a.header("expires").map(str::to_owned));
        (summary(&first), summary(&second), expires)
    });
    let started = SystemTime::now() - Duration::from_secs(1);
    match run.await {
        Err(error) if error.is_panic() => {
            let panic = error.into_panic();
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            Err(format!("panicked: {message}"))
        }
        Err(error) => Err(format!("{error}")),
        Ok((first, second, expires)) => {
            let want = Some(tag(b"long-lived bytes"));
            if first != (200, want.clone()) || second != (304, want) {
                return Err(format!("got {first:?} then {second:?}, want 200 then 304"));
            }
            // An `Expires`, where sent, is a valid HTTP-date in the future.
            for expires in expires.into_iter().flatten() {
                match httpdate::parse_http_date(&expires) {
                    Ok(at) if at >= started => {}
                    _ => return Err(format!("Expires {expires:?} is not a future HTTP-date")),
                }
            }
            Ok(())
        }
    }
}

/// RFC 9111 §1.2.2 (delta-seconds too large are to be taken as the largest
/// value the cache can hold) and §5.2.2.1/§5.2.2.10: a service's huge
/// `max-age` or `s-maxage` — even past `u64` — never panics the layer that
/// keeps the service's `Cache-Control` and trusts it (`Trust::MaxAge`): the
/// answers are 200, then 304.
#[tokio::test]
async fn a_huge_max_age_from_the_service_does_not_panic() {
    let mut wrong = Vec::new();
    for cache_control in [
        "max-age=9300000000000000000",
        "s-maxage=9300000000000000000",
        "max-age=18446744073709551615",
        "max-age=9300000000000000000, s-maxage=9300000000000000001",
        "max-age=99999999999999999999999",
        "s-maxage=99999999999999999999999",
    ] {
        let layer = MediaCacheLayer::new(
            CachePolicy::max_age(Duration::from_secs(60)).trust(Trust::MaxAge),
        );
        if let Err(error) = learn_and_revalidate(layer, Some(cache_control)).await {
            wrong.push(format!("{cache_control}: {error}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// RFC 9111 §5.3 (`Expires` is an HTTP-date; a cache treats a far future as
/// far future) and §1.2.2: a policy with a `max_age` of `u64::MAX` seconds,
/// with and without `.with_expires()`, renders its headers and learns its
/// entry without panicking: 200, then 304.
#[tokio::test]
async fn a_huge_policy_max_age_with_expires_does_not_panic() {
    let mut wrong = Vec::new();
    for (name, policy) in [
        (
            "max_age(u64::MAX).with_expires()",
            CachePolicy::max_age(Duration::from_secs(u64::MAX)).with_expires(),
        ),
        (
            "max_age(u64::MAX)",
            CachePolicy::max_age(Duration::from_secs(u64::MAX)),
        ),
        (
            "max_age(u64::MAX).with_expires().public()",
            CachePolicy::max_age(Duration::from_secs(u64::MAX))
                .with_expires()
                .public(),
        ),
    ] {
        if let Err(error) = learn_and_revalidate(MediaCacheLayer::new(policy), None).await {
            wrong.push(format!("{name}: {error}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The same overflow through the trust window: `Trust::For` with a window
/// too large to add to the clock learns its entry without panicking (found
/// while writing the tests above; not in the review).
#[tokio::test]
async fn a_huge_trust_window_does_not_panic() {
    let policy = CachePolicy::no_cache().trust(Trust::For(Duration::from_secs(u64::MAX)));
    let result = learn_and_revalidate(MediaCacheLayer::new(policy), None).await;
    assert_eq!(result, Ok(()), "Trust::For(u64::MAX seconds)");
}

// ---------------------------------------------------------------------------
// 7. Safe methods do not invalidate
// ---------------------------------------------------------------------------

/// RFC 9110 §9.2.1 (OPTIONS and TRACE are safe) and RFC 9111 §4.4 (only
/// unsafe methods invalidate): after `OPTIONS /a` (204) and `TRACE /a`
/// (200), a revalidation of `/a` is still a 304 from the store, without
/// calling the service.
#[tokio::test]
async fn safe_methods_do_not_invalidate_the_store() {
    let v1: &[u8] = b"version one";
    let origin = Origin::new(Content::ok(b"version one"));
    let layer = MediaCacheLayer::new(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
    let service = origin.wrap(&layer);
    send(&service, req(get("/a"))).await;
    let stored = send(&service, req(get("/a").header("if-none-match", tag(v1)))).await;
    assert_eq!((stored.status.as_u16(), origin.calls()), (304, 1));

    origin.set(
        Content::ok(b"")
            .status(204)
            .header("allow", "GET, HEAD, OPTIONS, TRACE"),
    );
    let options = send(&service, req(Request::options("/a").header("host", HOST))).await;
    assert_eq!(options.status, 204);
    origin.set(Content::ok(b"TRACE /a HTTP/1.1").header("content-type", "message/http"));
    let trace = send(&service, req(Request::trace("/a").header("host", HOST))).await;
    assert_eq!(trace.status, 200);
    assert_eq!(origin.calls(), 3);

    origin.set(Content::ok(b"version one"));
    let answer = send(&service, req(get("/a").header("if-none-match", tag(v1)))).await;
    assert_eq!(
        (answer.status.as_u16(), origin.calls()),
        (304, 3),
        "(status, inner calls): still answered from the store"
    );
    assert_eq!(answer.header("etag"), Some(tag(v1).as_str()));
}

// ---------------------------------------------------------------------------
// 8. 412 only where the service would have said 2xx
// ---------------------------------------------------------------------------

/// RFC 9110 §13.2.1: preconditions are evaluated only when the request would
/// otherwise succeed — the 405 a service gives to a method it does not
/// support comes first. `POST /media/x` with a stale `If-Match`, on a route
/// that has never accepted a `POST`, reaches the service and gets its 405;
/// a `PUT` (a write method the service supports) with the same stale
/// `If-Match` still gets 412 and never runs.
#[tokio::test]
async fn a_conditional_post_to_a_route_without_post_gets_the_services_405() {
    for (policy_name, policy) in write_policies() {
        let app = Documents::with(&[("/media/x", b"x bytes")]);
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        let first = send(&service, fetch("/media/x")).await;
        assert_eq!(first.status, 200);

        let post = request(Method::POST, "/media/x")
            .header("if-match", "\"stale\"")
            .body(Bytes::from_static(b"posted"))
            .unwrap();
        let answer = send(&service, post).await;
        assert_eq!(
            (answer.status.as_u16(), app.posts_seen()),
            (405, 1),
            "[{policy_name}] (status, POSTs the service saw)"
        );
        assert_eq!(answer.header("allow"), Some("GET, HEAD, PUT, DELETE"));

        let answer = send(
            &service,
            put("/media/x", b"put", &[("if-match", "\"stale\"")]),
        )
        .await;
        assert_eq!(
            (answer.status.as_u16(), app.puts()),
            (412, 0),
            "[{policy_name}] (status, PUTs executed)"
        );
        assert_eq!(app.doc("/media/x").unwrap(), "x bytes");
    }
}

/// RFC 9110 §13.2.1 and §13.1.1: once the service has answered a `POST` on a
/// route with 2xx, the route accepts `POST`, so a `POST` with a stale
/// `If-Match` there gets 412 and the handler does not run it.
#[tokio::test]
async fn a_conditional_post_is_guarded_once_the_route_accepted_a_post() {
    for (policy_name, policy) in write_policies() {
        let app = Documents::with(&[("/inbox", b"empty inbox")]).accepting_post(&["/inbox"]);
        let service = documents_behind(MediaCacheLayer::new(policy), &app);
        assert_eq!(send(&service, fetch("/inbox")).await.status, 200);
        let accepted = request(Method::POST, "/inbox")
            .body(Bytes::from_static(b"first message"))
            .unwrap();
        assert_eq!(send(&service, accepted).await.status, 204);

        let stale = request(Method::POST, "/inbox")
            .header("if-match", tag(b"empty inbox"))
            .body(Bytes::from_static(b"second message"))
            .unwrap();
        let answer = send(&service, stale).await;
        assert_eq!(
            (answer.status.as_u16(), app.posts()),
            (412, 1),
            "[{policy_name}] (status, POSTs executed)"
        );
        assert_eq!(app.doc("/inbox").unwrap(), "first message");
    }
}

// ---------------------------------------------------------------------------
// 9. Hosts that are not UTF-8
// ---------------------------------------------------------------------------

/// An origin whose body names the `Host` bytes it was asked for.
#[derive(Clone, Default)]
struct HostEcho {
    calls: Arc<AtomicUsize>,
}

impl HostEcho {
    fn body_for(host: Option<&[u8]>) -> Bytes {
        match host {
            Some(host) => Bytes::from(format!("page of {}", host.escape_ascii())),
            None => Bytes::from_static(b"page of no host"),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for HostEcho {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let host = request.headers().get("host").map(HeaderValue::as_bytes);
        std::future::ready(Ok(Response::new(Full::new(HostEcho::body_for(host)))))
    }
}

fn with_host(host: Option<&[u8]>, etag: Option<&str>) -> Request<()> {
    let mut request = Request::get("/a").body(()).unwrap();
    if let Some(host) = host {
        request
            .headers_mut()
            .insert("host", HeaderValue::from_bytes(host).unwrap());
    }
    if let Some(etag) = etag {
        request
            .headers_mut()
            .insert("if-none-match", HeaderValue::from_str(etag).unwrap());
    }
    request
}

/// RFC 9111 §4 (a stored response is reused only for the same target URI,
/// whose authority is the `Host`) and RFC 9110 §7.2: a `Host` that is not
/// UTF-8 is still compared byte for byte — `y\xff.example` and a request
/// without `Host` are not answered with `x\xff.example`'s entry, while
/// `x\xff.example` itself still gets the store's 304.
#[tokio::test]
async fn a_host_that_is_not_utf8_only_selects_its_own_entries() {
    let x: &[u8] = b"x\xff.example";
    let y: &[u8] = b"y\xff.example";
    let echo = HostEcho::default();
    let layer = MediaCacheLayer::new(CachePolicy::no_cache().trust(Trust::UntilInvalidated));
    let service = layer.layer(echo.clone());
    let first = send(&service, with_host(Some(x), None)).await;
    assert_eq!(first.body, HostEcho::body_for(Some(x)));
    let x_tag = tag(&HostEcho::body_for(Some(x)));

    let mut wrong = Vec::new();
    for (name, host) in [("y\\xff.example", Some(y)), ("no Host", None)] {
        let calls = echo.calls();
        let answer = send(&service, with_host(host, Some(&x_tag))).await;
        let expected = HostEcho::body_for(host);
        let got = (
            answer.status.as_u16(),
            echo.calls() - calls,
            answer.body.clone(),
        );
        if got != (200, 1, expected.clone()) {
            wrong.push(format!(
                "{name} with x\\xff.example's tag: (status, inner calls, body) {got:?}, want \
                 (200, 1, {expected:?})"
            ));
        }
    }

    let calls = echo.calls();
    let same = send(&service, with_host(Some(x), Some(&x_tag))).await;
    if (same.status.as_u16(), echo.calls()) != (304, calls) {
        wrong.push(format!(
            "x\\xff.example again: {} with {} inner calls, want a 304 from the store",
            same.status,
            echo.calls() - calls
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
