//! Hostile inputs: malformed, duplicated, huge, out-of-range and non-ASCII
//! conditional fields; inner services whose body fails, whose call fails,
//! whose body is slow; clients that go away mid-body. Each test is one row
//! of docs/hostile-inputs.md.

use std::convert::Infallible;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{
    ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    RANGE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};
use tower_media_cache::{CachePolicy, EntityTag, MediaCacheLayer, content_etag};

const BODY: &[u8] = b"\xff\xd8\xff\xe0 pretend jpeg bytes";
const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";

fn layer() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(3600)).public())
}

/// An origin serving `BODY` with the given extra response headers, counting
/// its calls.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    headers: Arc<Vec<(HeaderName, HeaderValue)>>,
}

impl Origin {
    fn new(headers: &[(HeaderName, &[u8])]) -> Self {
        Self {
            calls: Arc::default(),
            headers: Arc::new(
                headers
                    .iter()
                    .map(|(n, v)| (n.clone(), HeaderValue::from_bytes(v).unwrap()))
                    .collect(),
            ),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
        for (name, value) in self.headers.iter() {
            response.headers_mut().append(name.clone(), value.clone());
        }
        std::future::ready(Ok(response))
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

async fn send<S, B>(service: &mut S, request: Request<()>) -> Answer
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn get(fields: &[(HeaderName, &[u8])]) -> Request<()> {
    let mut request = Request::get("/media/a.jpg").body(()).unwrap();
    for (name, value) in fields {
        request
            .headers_mut()
            .append(name.clone(), HeaderValue::from_bytes(value).unwrap());
    }
    request
}

fn with_method(method: Method, fields: &[(HeaderName, &[u8])]) -> Request<()> {
    let mut request = get(fields);
    *request.method_mut() = method;
    request
}

fn etag_of(body: &[u8]) -> String {
    content_etag(body).to_string()
}

// ---------------------------------------------------------------------------
// Malformed entity-tag lists.

#[tokio::test]
async fn malformed_if_none_match_is_ignored_and_the_full_body_is_sent() {
    let origin = Origin::new(&[]);
    let mut service = layer().layer(origin.clone());
    let tag = etag_of(BODY);
    let unquoted = tag.trim_matches('"').to_owned();
    for bad in [
        unquoted.as_bytes(),          // the right tag without quotes
        b"\"unterminated".as_slice(), // no closing quote
        b"W/ \"x\"",                  // space after W/
        b"w/\"x\"",                   // lowercase weak prefix
        b",,,,",                      // only separators
        b"\"a\"\"b\"",                // two tags, no comma
        b"*, *",                      // star inside a list
        b"\"a\" garbage \"b\"",       // stray token
    ] {
        let answer = send(&mut service, get(&[(IF_NONE_MATCH, bad)])).await;
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(bad));
        assert_eq!(answer.body, BODY);
    }
    // A garbage member before the right tag does not hide it.
    let list = format!("garbage, {tag}");
    let answer = send(&mut service, get(&[(IF_NONE_MATCH, list.as_bytes())])).await;
    assert_eq!(answer.status, 304);
    assert!(answer.body.is_empty());
}

#[tokio::test]
async fn malformed_if_match_fails_with_412() {
    let origin = Origin::new(&[]);
    let mut service = layer().layer(origin.clone());
    send(&mut service, get(&[])).await; // learn the validator
    let tag = etag_of(BODY);
    let unquoted = tag.trim_matches('"').to_owned();
    for bad in [
        unquoted.as_bytes(),
        b"\"unterminated".as_slice(),
        b"*, *",
        b"W/",
        b"W/\"",
    ] {
        for method in [Method::GET, Method::PUT] {
            let answer = send(
                &mut service,
                with_method(method.clone(), &[(IF_MATCH, bad)]),
            )
            .await;
            assert_eq!(
                answer.status,
                412,
                "{method} If-Match: {}",
                String::from_utf8_lossy(bad)
            );
            assert!(answer.body.is_empty());
        }
    }
    // The same tag, well formed, holds.
    let answer = send(&mut service, get(&[(IF_MATCH, tag.as_bytes())])).await;
    assert_eq!(answer.status, 200);
}

// ---------------------------------------------------------------------------
// Duplicated validators.

#[tokio::test]
async fn several_etag_lines_from_the_inner_service_are_replaced_by_the_content_etag() {
    let origin = Origin::new(&[(ETAG, b"\"one\""), (ETAG, b"\"two\"")]);
    let mut service = layer().layer(origin.clone());
    let answer = send(&mut service, get(&[])).await;
    assert_eq!(answer.status, 200);
    let tags: Vec<_> = answer.headers.get_all(ETAG).iter().collect();
    assert_eq!(
        tags,
        [etag_of(BODY).as_str()],
        "exactly one ETag, the content's"
    );
    // Neither of the inner service's ambiguous tags validates anything...
    for stale in [&b"\"one\""[..], b"\"two\""] {
        let answer = send(&mut service, get(&[(IF_NONE_MATCH, stale)])).await;
        assert_eq!(answer.status, 200);
    }
    // ...the content ETag does.
    let tag = etag_of(BODY);
    let answer = send(&mut service, get(&[(IF_NONE_MATCH, tag.as_bytes())])).await;
    assert_eq!(answer.status, 304);
}

#[tokio::test]
async fn several_last_modified_lines_from_the_inner_service_count_as_none() {
    let origin = Origin::new(&[
        (LAST_MODIFIED, LM.as_bytes()),
        (LAST_MODIFIED, b"Wed, 15 Nov 2023 22:13:20 GMT"),
    ]);
    let mut service = layer().layer(origin.clone());
    let answer = send(&mut service, get(&[(IF_MODIFIED_SINCE, LM.as_bytes())])).await;
    assert_eq!(
        answer.status, 200,
        "no single Last-Modified: no 304 by date"
    );
}

#[tokio::test]
async fn several_if_modified_since_lines_are_ignored() {
    let origin = Origin::new(&[(LAST_MODIFIED, LM.as_bytes())]);
    let mut service = layer().layer(origin.clone());
    let future = b"Fri, 31 Dec 9999 23:59:59 GMT";
    let one = send(&mut service, get(&[(IF_MODIFIED_SINCE, future)])).await;
    assert_eq!(one.status, 304);
    let two = send(
        &mut service,
        get(&[(IF_MODIFIED_SINCE, future), (IF_MODIFIED_SINCE, future)]),
    )
    .await;
    assert_eq!(two.status, 200);
    assert_eq!(two.body, BODY);
    // Same for If-Unmodified-Since: two lines, even if both would fail, are
    // ignored.
    let past = b"Thu, 01 Jan 1970 00:00:00 GMT";
    let two = send(
        &mut service,
        get(&[(IF_UNMODIFIED_SINCE, past), (IF_UNMODIFIED_SINCE, past)]),
    )
    .await;
    assert_eq!(two.status, 200);
}

// ---------------------------------------------------------------------------
// Huge lists.

fn huge_list(bytes: usize, last: &str) -> Vec<u8> {
    let mut list = Vec::with_capacity(bytes + 64);
    let mut i = 0u64;
    while list.len() < bytes {
        list.extend_from_slice(format!("\"{i:032x}\", ").as_bytes());
        i += 1;
    }
    list.extend_from_slice(last.as_bytes());
    list
}

async fn huge_if_none_match(bytes: usize) {
    let origin = Origin::new(&[]);
    let mut service = layer().layer(origin.clone());
    let tag = etag_of(BODY);
    // The current tag last in a list of `bytes` of other tags.
    let hit = huge_list(bytes, &tag);
    assert!(hit.len() >= bytes);
    let answer = send(&mut service, get(&[(IF_NONE_MATCH, &hit)])).await;
    assert_eq!(answer.status, 304);
    // Now learned: the store answers the same huge field itself.
    let calls = origin.calls();
    let answer = send(&mut service, get(&[(IF_NONE_MATCH, &hit)])).await;
    assert_eq!(answer.status, 304);
    assert_eq!(origin.calls(), calls);
    // No member matches: the full body.
    let miss = huge_list(bytes, "\"nope\"");
    let answer = send(&mut service, get(&[(IF_NONE_MATCH, &miss)])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, BODY);
    // The same list as If-Match fails.
    let answer = send(&mut service, get(&[(IF_MATCH, &miss)])).await;
    assert_eq!(answer.status, 412);
}

#[tokio::test]
async fn a_64_kib_if_none_match_list_is_evaluated_in_full() {
    huge_if_none_match(64 * 1024).await;
}

#[tokio::test]
async fn a_1_mib_if_none_match_list_is_evaluated_in_full() {
    huge_if_none_match(1024 * 1024).await;
}

// ---------------------------------------------------------------------------
// Dates.

#[tokio::test]
async fn invalid_dates_are_ignored() {
    let origin = Origin::new(&[(LAST_MODIFIED, LM.as_bytes())]);
    let mut service = layer().layer(origin.clone());
    for bad in [
        &b"yesterday"[..],
        b"",
        b"1700000000",
        b"Tue, 14 Nov 2023 22:13:20 GMT trailing",
        b"Tue, 32 Nov 2023 22:13:20 GMT",
        b"Tue, 14 Nov 2023 24:00:61 GMT",
        b"Tue, 14 Foo 2023 22:13:20 GMT",
        b"Tue, 14 Nov 2023 22:13:20 PST",
        b"Tue, 14 Nov 2023 22:13:20 GMT, Tue, 14 Nov 2023 22:13:20 GMT",
    ] {
        let text = String::from_utf8_lossy(bad);
        let ims = send(&mut service, get(&[(IF_MODIFIED_SINCE, bad)])).await;
        assert_eq!(ims.status, 200, "If-Modified-Since: {text}");
        assert_eq!(ims.body, BODY);
        let ius = send(&mut service, get(&[(IF_UNMODIFIED_SINCE, bad)])).await;
        assert_eq!(ius.status, 200, "If-Unmodified-Since: {text}");
        let range = send(&mut service, get(&[(RANGE, b"bytes=0-1"), (IF_RANGE, bad)])).await;
        assert_eq!(range.status, 200, "If-Range: {text} → whole body");
        assert_eq!(range.body, BODY);
    }
}

#[tokio::test]
async fn dates_in_1970_and_9999_compare_without_overflow() {
    let origin = Origin::new(&[(LAST_MODIFIED, LM.as_bytes())]);
    let mut service = layer().layer(origin.clone());
    let epoch = b"Thu, 01 Jan 1970 00:00:00 GMT";
    let end = b"Fri, 31 Dec 9999 23:59:59 GMT";
    let status = |a: &Answer| a.status.as_u16();
    assert_eq!(
        status(&send(&mut service, get(&[(IF_MODIFIED_SINCE, epoch)])).await),
        200
    );
    assert_eq!(
        status(&send(&mut service, get(&[(IF_MODIFIED_SINCE, end)])).await),
        304
    );
    assert_eq!(
        status(&send(&mut service, get(&[(IF_UNMODIFIED_SINCE, epoch)])).await),
        412
    );
    assert_eq!(
        status(&send(&mut service, get(&[(IF_UNMODIFIED_SINCE, end)])).await),
        200
    );
    // The obsolete forms of 1970 too (two-digit year 70 → 1970).
    let rfc850 = b"Thursday, 01-Jan-70 00:00:00 GMT";
    assert_eq!(
        status(&send(&mut service, get(&[(IF_MODIFIED_SINCE, rfc850)])).await),
        200
    );
    let asctime = b"Thu Jan  1 00:00:00 1970";
    assert_eq!(
        status(&send(&mut service, get(&[(IF_UNMODIFIED_SINCE, asctime)])).await),
        412
    );
}

#[tokio::test]
async fn dates_past_9999_are_invalid_and_ignored() {
    let origin = Origin::new(&[(LAST_MODIFIED, LM.as_bytes())]);
    let mut service = layer().layer(origin.clone());
    for beyond in [
        &b"Sat, 01 Jan 10000 00:00:00 GMT"[..],
        b"Sat, 01 Jan 99999999999 00:00:00 GMT",
        b"Sat, 01 Jan 18446744073709551616 00:00:00 GMT",
        b"Sat Jan  1 00:00:00 10000",
    ] {
        let text = String::from_utf8_lossy(beyond);
        let ims = send(&mut service, get(&[(IF_MODIFIED_SINCE, beyond)])).await;
        assert_eq!(ims.status, 200, "{text}");
        let ius = send(&mut service, get(&[(IF_UNMODIFIED_SINCE, beyond)])).await;
        assert_eq!(ius.status, 200, "{text}");
    }
}

#[tokio::test]
async fn a_last_modified_in_9999_or_1970_from_the_inner_service_is_usable() {
    for (last_modified, since, expected) in [
        (
            &b"Fri, 31 Dec 9999 23:59:59 GMT"[..],
            &b"Fri, 31 Dec 9999 23:59:59 GMT"[..],
            304,
        ),
        (
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            200,
        ),
        (
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            304,
        ),
        (
            b"Sat, 01 Jan 10000 00:00:00 GMT",
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            200,
        ),
    ] {
        let origin = Origin::new(&[(LAST_MODIFIED, last_modified)]);
        let mut service = layer().layer(origin);
        let answer = send(&mut service, get(&[(IF_MODIFIED_SINCE, since)])).await;
        assert_eq!(
            answer.status,
            expected,
            "Last-Modified {} / If-Modified-Since {}",
            String::from_utf8_lossy(last_modified),
            String::from_utf8_lossy(since)
        );
    }
}

// ---------------------------------------------------------------------------
// Non-ASCII bytes.

#[tokio::test]
async fn non_ascii_bytes_in_conditional_fields_never_panic_and_match_only_byte_for_byte() {
    // An obs-text entity tag from the inner service is a valid tag.
    let origin = Origin::new(&[(ETAG, b"\"caf\xc3\xa9\"")]);
    let mut service = layer().layer(origin.clone());
    let same = send(&mut service, get(&[(IF_NONE_MATCH, b"\"caf\xc3\xa9\"")])).await;
    assert_eq!(same.status, 304);
    let other = send(&mut service, get(&[(IF_NONE_MATCH, b"\"caf\xc3\xa8\"")])).await;
    assert_eq!(other.status, 200);
    let latin1 = send(&mut service, get(&[(IF_NONE_MATCH, b"\"caf\xe9\"")])).await;
    assert_eq!(latin1.status, 200, "no charset folding");
    let strong = send(&mut service, get(&[(IF_MATCH, b"\"caf\xc3\xa9\"")])).await;
    assert_eq!(strong.status, 200);

    for hostile in [
        &b"\xff\xfe\xfd"[..],
        b"\"\xff\"\xff, \xff",
        b"W/\"\x80\"",
        b"Tue, 14 Nov 2023 22:13:20 \xc7MT",
        b"\xe2\x80\x8b*",
    ] {
        for name in [
            IF_NONE_MATCH,
            IF_MATCH,
            IF_MODIFIED_SINCE,
            IF_UNMODIFIED_SINCE,
            IF_RANGE,
        ] {
            let answer = send(
                &mut service,
                get(&[(name.clone(), hostile), (RANGE, b"bytes=0-3")]),
            )
            .await;
            let expected: &[u16] = if name == IF_MATCH {
                &[412]
            } else {
                &[200, 206]
            };
            assert!(
                expected.contains(&answer.status.as_u16()),
                "{name}: {} → {}",
                String::from_utf8_lossy(hostile),
                answer.status
            );
        }
    }
    // `W/"\x80"` is a valid weak tag; it is not the current one.
    let weak = EntityTag::from_header(&HeaderValue::from_bytes(b"W/\"\x80\"").unwrap()).unwrap();
    assert!(weak.is_weak());
}

// ---------------------------------------------------------------------------
// Inner services that fail.

type Chunks = Vec<Result<Frame<Bytes>, std::io::Error>>;
type Failing = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>>,
>;

/// A body that yields `chunks`, then fails.
fn failing_body(chunks: &[&'static [u8]]) -> Failing {
    let mut frames: Chunks = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c))))
        .collect();
    frames.push(Err(std::io::Error::other("disk read failed")));
    StreamBody::new(futures_util::stream::iter(frames))
}

#[tokio::test]
async fn a_body_that_errors_mid_stream_reaches_the_client_as_an_error_and_nothing_is_learned() {
    let layer = layer();
    let handle = layer.handle();
    let service = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(failing_body(&[b"first half ", b"second"])))
    });
    let mut service = layer.layer(service);
    let response = service.ready().await.unwrap().call(get(&[])).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get(ETAG).is_none(),
        "no content ETag for bytes that never completed"
    );
    let mut body = response.into_body();
    let mut data = Vec::new();
    let error = loop {
        match body.frame().await {
            Some(Ok(frame)) => data.extend_from_slice(frame.data_ref().unwrap()),
            Some(Err(error)) => break error,
            None => panic!("the body ended without its error"),
        }
    };
    assert_eq!(error.to_string(), "disk read failed");
    assert_eq!(
        data, b"first half second",
        "the bytes before the error are sent"
    );
    let stats = handle.stats();
    assert_eq!(stats.learned, 0);
    assert_eq!(stats.hashed, 0);
    assert_eq!(stats.entries, 0);

    // And a conditional request afterwards is not answered from the store.
    let tag = etag_of(b"first half second");
    let response = service
        .ready()
        .await
        .unwrap()
        .call(get(&[(IF_NONE_MATCH, tag.as_bytes())]))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_inner_service_error_is_propagated_and_nothing_is_learned() {
    let layer = layer();
    let handle = layer.handle();
    let service = service_fn(|_req: Request<()>| async {
        Err::<Response<Full<Bytes>>, BoxError>("backend unavailable".into())
    });
    let mut service = layer.layer(service);
    for request in [
        get(&[]),
        get(&[(IF_NONE_MATCH, b"\"x\"")]),
        get(&[(RANGE, b"bytes=0-1")]),
        with_method(Method::PUT, &[(IF_MATCH, b"*")]),
    ] {
        let error = service
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .expect_err("the inner error reaches the caller");
        assert_eq!(error.to_string(), "backend unavailable");
    }
    assert_eq!(handle.stats().learned, 0);
    assert_eq!(handle.stats().entries, 0);
}

// ---------------------------------------------------------------------------
// A slow body.

/// A body that yields `chunks`, sleeping `delay` before each one.
struct Slow {
    chunks: std::collections::VecDeque<Bytes>,
    delay: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
}

impl Slow {
    fn new(chunks: Vec<Bytes>, delay: Duration) -> Self {
        Self {
            chunks: chunks.into(),
            delay,
            sleep: None,
            produced: Arc::default(),
            dropped: Arc::default(),
        }
    }
}

impl Drop for Slow {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

impl Stream for Slow {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.chunks.is_empty() {
            return Poll::Ready(None);
        }
        let delay = self.delay;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        self.produced.fetch_add(1, Ordering::SeqCst);
        let chunk = self.chunks.pop_front().unwrap();
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

fn chunks(n: usize, size: usize) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![b'a' + (i % 26) as u8; size]))
        .collect()
}

#[tokio::test]
async fn a_slow_body_still_gets_the_right_etag_and_is_learned() {
    let layer = layer();
    let handle = layer.handle();
    let parts = chunks(8, 1000);
    let whole: Vec<u8> = parts.iter().flat_map(|c| c.iter().copied()).collect();
    let service = service_fn(move |_req: Request<()>| {
        let parts = parts.clone();
        async move {
            Ok::<_, Infallible>(Response::new(StreamBody::new(Slow::new(
                parts,
                Duration::from_millis(15),
            ))))
        }
    });
    let mut service = layer.layer(service);
    let answer = send(&mut service, get(&[])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, whole);
    assert_eq!(answer.headers[ETAG], etag_of(&whole));
    assert_eq!(handle.stats().learned, 1);
    let tag = etag_of(&whole);
    let again = send(&mut service, get(&[(IF_NONE_MATCH, tag.as_bytes())])).await;
    assert_eq!(again.status, 304);
    assert_eq!(handle.stats().short_circuit_not_modified, 1);
}

// ---------------------------------------------------------------------------
// Real server on 127.0.0.1: errors mid-body and clients that go away.

/// An axum app behind the layer on 127.0.0.1:<ephemeral>, stopped on drop.
struct Server {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Default)]
struct Probes {
    produced: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

async fn start(layer: MediaCacheLayer, probes: Probes) -> Server {
    use axum::routing::get as route_get;
    let slow = probes.clone();
    let app = axum::Router::new()
        .route(
            "/small",
            route_get(|| async { axum::body::Body::from(BODY) }),
        )
        .route(
            "/broken",
            route_get(|| async {
                axum::body::Body::new(failing_body(&[b"some bytes, ", b"then"]))
            }),
        )
        .route(
            "/slow",
            route_get(move || {
                let probes = slow.clone();
                async move {
                    probes.calls.fetch_add(1, Ordering::SeqCst);
                    let mut body = Slow::new(chunks(200, 4096), Duration::from_millis(20));
                    body.produced = probes.produced.clone();
                    body.dropped = probes.dropped.clone();
                    axum::body::Body::new(StreamBody::new(body))
                }
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server { addr, task }
}

/// One HTTP/1.1 GET with hyper's client; the status and the body.
async fn fetch(
    addr: std::net::SocketAddr,
    path: &str,
) -> (StatusCode, Result<Bytes, hyper::Error>) {
    try_fetch(addr, path).await.expect("a response head")
}

/// One HTTP/1.1 GET; `Err` when not even the head arrived.
async fn try_fetch(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<(StatusCode, Result<Bytes, hyper::Error>), hyper::Error> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await.map(|c| c.to_bytes());
    Ok((status, body))
}

/// Waits (bounded) until `condition` holds.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Regression test: the buffered bytes used to be framed with a
/// `Content-Length`, so the client saw a complete, truncated 200.
#[tokio::test]
async fn over_a_real_server_a_body_error_aborts_the_connection_and_nothing_is_learned() {
    let layer = layer();
    let handle = layer.handle();
    let server = start(layer, Probes::default()).await;
    // The client gets no response at all, or a 200 whose body fails:
    // never a complete message.
    match try_fetch(server.addr, "/broken").await {
        Err(error) => assert!(error.is_incomplete_message(), "{error:?}"),
        Ok((status, body)) => {
            assert_eq!(status, 200);
            let error = body.expect_err("the client sees the body fail, not a short 200");
            assert!(error.is_incomplete_message(), "{error:?}");
        }
    }
    let raw = raw_get(server.addr, "/broken").await;
    assert!(
        !raw.to_ascii_lowercase().contains("content-length"),
        "a failed body must not be framed as complete: {raw}"
    );
    assert_eq!(handle.stats().learned, 0);
    // The server keeps serving.
    let (status, body) = fetch(server.addr, "/small").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), BODY);
    assert_eq!(handle.stats().learned, 1);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_leaves_nothing_learned_and_the_server_serving() {
    // A body too large to hash (over max_buffer_bytes) streams to the
    // client as it is produced; the client reads a little and goes away.
    let layer = layer().max_buffer_bytes(16 * 1024);
    let handle = layer.handle();
    let probes = Probes::default();
    let server = start(layer, probes.clone()).await;

    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 8192];
    let mut read = 0;
    while read < 32 * 1024 {
        let n = stream.read(&mut head).await.unwrap();
        assert!(n > 0, "server closed early");
        if read == 0 {
            assert!(
                head.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&head[..n])
            );
        }
        read += n;
    }
    drop(stream);

    // The server notices, drops the body (no panic), and stops producing.
    eventually("the slow body to be dropped", || {
        probes.dropped.load(Ordering::SeqCst)
    })
    .await;
    assert!(
        probes.produced.load(Ordering::SeqCst) < 200,
        "the body was abandoned"
    );
    let stats = handle.stats();
    assert_eq!(stats.learned, 0);
    assert_eq!(stats.entries, 0);

    // Still serving, correctly.
    let (status, body) = fetch(server.addr, "/small").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), BODY);
}

#[tokio::test]
async fn a_client_that_disconnects_while_the_layer_buffers_leaves_nothing_learned() {
    // Small enough to hash: the layer reads the body before sending the
    // head. The client gives up before the body is complete.
    let layer = layer().max_buffer_bytes(64 * 1024 * 1024);
    let handle = layer.handle();
    let probes = Probes::default();
    let server = start(layer, probes.clone()).await;

    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let produced = probes.produced.clone();
    eventually("a few chunks to be buffered", || {
        produced.load(Ordering::SeqCst) >= 3
    })
    .await;
    drop(stream);

    eventually("the in-flight response to be dropped", || {
        probes.dropped.load(Ordering::SeqCst)
    })
    .await;
    assert!(probes.produced.load(Ordering::SeqCst) < 200);
    assert_eq!(handle.stats().learned, 0);
    assert_eq!(handle.stats().hashed, 0);

    let (status, body) = fetch(server.addr, "/small").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), BODY);
}

/// What a raw HTTP/1.1 client receives for `GET path` (the connection is
/// closed by the server or aborted; either way everything read is returned).
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn over_a_real_server_a_streamed_body_error_aborts_the_connection() {
    // Over max_buffer_bytes: the layer streams instead of buffering, and the
    // failure reaches the client as an aborted chunked message.
    let layer = layer().max_buffer_bytes(4);
    let handle = layer.handle();
    let server = start(layer, Probes::default()).await;
    // Depending on how much hyper had flushed, the client sees no response
    // at all or a 200 whose body fails: never a complete message.
    match try_fetch(server.addr, "/broken").await {
        Err(error) => assert!(error.is_incomplete_message(), "{error:?}"),
        Ok((status, body)) => {
            assert_eq!(status, 200);
            body.expect_err("the client sees the body fail");
        }
    }
    let raw = raw_get(server.addr, "/broken").await;
    assert!(
        !raw.to_ascii_lowercase().contains("content-length"),
        "{raw}"
    );
    assert!(!raw.ends_with("0\r\n\r\n"), "no final chunk: {raw:?}");
    assert_eq!(handle.stats().learned, 0);
    let (status, body) = fetch(server.addr, "/small").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), BODY);
}

/// Regression test for the cause of the above: the size hint was exact
/// while an error was pending.
#[tokio::test]
async fn the_size_hint_of_a_buffered_body_that_failed_is_not_exact() {
    let service = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(failing_body(&[b"first half ", b"second"])))
    });
    let mut service = layer().layer(service);
    let response = service.ready().await.unwrap().call(get(&[])).await.unwrap();
    let hint = http_body::Body::size_hint(response.body());
    assert_eq!(
        hint.exact(),
        None,
        "17 bytes are buffered but the body ends in an error, not after them"
    );
}

/// Sends `head` (a whole HTTP/1.1 request head) and reads until the server
/// closes the connection.
async fn raw_request(addr: std::net::SocketAddr, head: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading all of a huge head.
    let _ = stream.write_all(head).await;
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn over_a_real_server_huge_if_none_match_fields_are_served_or_refused_by_hyper() {
    let layer = layer();
    let handle = layer.handle();
    let server = start(layer, Probes::default()).await;
    let (status, _) = fetch(server.addr, "/small").await;
    assert_eq!(status, 200);
    let tag = etag_of(BODY);
    for (size, expected) in [(64 * 1024, "HTTP/1.1 304"), (1024 * 1024, "HTTP/1.1 431")] {
        let list = huge_list(size, &tag);
        // The same authority as `fetch` sends, so that the same store
        // variant is selected.
        let mut head = format!(
            "GET /small HTTP/1.1\r\nhost: {}\r\nconnection: close\r\nif-none-match: ",
            server.addr
        )
        .into_bytes();
        head.extend_from_slice(&list);
        head.extend_from_slice(b"\r\n\r\n");
        let answer = raw_request(server.addr, &head).await;
        assert!(
            answer.starts_with(expected),
            "{size} bytes: {}",
            answer.lines().next().unwrap_or_default()
        );
    }
    // The 64 KiB one was answered from the store; the 1 MiB one never
    // reached the layer.
    assert_eq!(handle.stats().learned, 1);
    assert_eq!(handle.stats().short_circuit_not_modified, 1);
    // Still serving.
    let (status, body) = fetch(server.addr, "/small").await;
    assert_eq!(status, 200);
    assert_eq!(body.unwrap(), BODY);
}
