//! The whole middleware with an arbitrary inner answer (status, validator
//! and caching headers, body chunks, a body error) and arbitrary requests
//! (method, conditional and range headers), two requests in a row on one
//! service so that the validator store is exercised too. Runs without an
//! executor: every future here is ready at once.
//!
//! Checks: no panic; a non-2xx inner answer is never turned into a 304 or
//! 412; 304/412 bodies are empty; a 200 whose ETag the layer computed
//! carries exactly `content_etag(body)`.
//!
//! Lifetimes of any size are part of the input: the inner service's
//! `Cache-Control` may carry `max-age`/`s-maxage` values up to and past
//! `u64::MAX`, and the policy may be `max_age(Duration::MAX)` with `Expires`
//! or `Trust::For(Duration::MAX)` (each once made the layer panic).
#![no_main]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use bytes::Bytes;
use futures_util::FutureExt;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use libfuzzer_sys::fuzz_target;
use tower_layer::Layer;
use tower_media_cache::{CachePolicy, MediaCacheLayer, Trust, content_etag};
use tower_service::Service;

type Body = StreamBody<
    futures_util::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, std::io::Error>>>,
>;

#[derive(Arbitrary, Debug, Clone)]
struct Answer {
    status: u8,
    headers: Vec<(u8, Vec<u8>)>,
    huge_lifetime: Option<u8>,
    chunks: Vec<Vec<u8>>,
    error: bool,
}

#[derive(Arbitrary, Debug)]
struct Ask {
    method: u8,
    path: u8,
    headers: Vec<(u8, Vec<u8>)>,
    answer: Answer,
}

#[derive(Arbitrary, Debug)]
struct Input {
    policy: u8,
    trust: u8,
    max_buffer: u8,
    asks: Vec<Ask>,
}

const STATUSES: [u16; 10] = [200, 201, 204, 206, 301, 304, 404, 410, 412, 500];
const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
];
const PATHS: [&str; 4] = ["/a", "/a?x=1", "/live/b", "/skip/c"];
const REQUEST_HEADERS: [HeaderName; 9] = [
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::RANGE,
    header::AUTHORIZATION,
    header::ACCEPT_ENCODING,
    header::HOST,
];
const RESPONSE_HEADERS: [HeaderName; 10] = [
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::VARY,
    header::CONTENT_TYPE,
    header::SET_COOKIE,
    header::LOCATION,
    header::CONTENT_LOCATION,
    header::EXPIRES,
    header::CONTENT_LENGTH,
];

/// `Cache-Control` values the inner service may send besides arbitrary
/// bytes: lifetimes at and past every integer limit.
const HUGE_LIFETIMES: [&str; 6] = [
    "max-age=9300000000000000000",
    "max-age=18446744073709551615",
    "max-age=99999999999999999999999",
    "public, s-maxage=18446744073709551615",
    "max-age=9223372036854775807, s-maxage=9223372036854775808",
    "max-age=2147483648",
];

/// The scripted answer and the methods of the requests that reached the
/// service (the layer may send a `GET` of its own before a conditional
/// write).
#[derive(Clone)]
struct Inner(Arc<Mutex<Option<Answer>>>, Arc<Mutex<Vec<Method>>>);

impl Service<Request<()>> for Inner {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        self.1.lock().unwrap().push(req.method().clone());
        let answer = self
            .0
            .lock()
            .unwrap()
            .clone()
            .expect("an answer per request");
        let mut frames: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> = answer
            .chunks
            .iter()
            .take(8)
            .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        if answer.error {
            frames.push(Err(std::io::Error::other("boom")));
        }
        let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        *response.status_mut() =
            StatusCode::from_u16(STATUSES[answer.status as usize % STATUSES.len()]).unwrap();
        for (name, value) in answer.headers.iter().take(8) {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                response.headers_mut().append(
                    RESPONSE_HEADERS[*name as usize % RESPONSE_HEADERS.len()].clone(),
                    v,
                );
            }
        }
        if let Some(huge) = answer.huge_lifetime {
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(HUGE_LIFETIMES[huge as usize % HUGE_LIFETIMES.len()]),
            );
        }
        std::future::ready(Ok(response))
    }
}

fuzz_target!(|input: Input| {
    let trust = match input.trust % 5 {
        0 => Trust::MaxAge,
        1 => Trust::For(Duration::from_secs(30)),
        2 => Trust::UntilInvalidated,
        3 => Trust::For(Duration::MAX),
        _ => Trust::Never,
    };
    let policy = match input.policy % 4 {
        0 => CachePolicy::max_age(Duration::from_secs(60)),
        1 => CachePolicy::no_cache(),
        2 => CachePolicy::max_age(Duration::MAX).with_expires(),
        _ => CachePolicy::no_store(),
    }
    .trust(trust);
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let layer = MediaCacheLayer::new(policy)
        .route("/live/{*path}", CachePolicy::no_cache().public())
        .exclude("/skip/{*path}")
        .max_buffer_bytes(u64::from(input.max_buffer) * 4)
        .store_capacity_bytes(4 * 1024)
        .clock(move || now);
    let slot = Arc::new(Mutex::new(None));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut service = layer.layer(Inner(slot.clone(), seen.clone()));

    for ask in input.asks.iter().take(4) {
        let method = METHODS[ask.method as usize % METHODS.len()].clone();
        let mut request = Request::builder()
            .method(method.clone())
            .uri(PATHS[ask.path as usize % PATHS.len()])
            .body(())
            .unwrap();
        for (name, value) in ask.headers.iter().take(8) {
            if let Ok(v) = HeaderValue::from_bytes(value) {
                request.headers_mut().append(
                    REQUEST_HEADERS[*name as usize % REQUEST_HEADERS.len()].clone(),
                    v,
                );
            }
        }
        let inner_status = STATUSES[ask.answer.status as usize % STATUSES.len()];
        let inner_etag = ask.answer.headers.iter().take(8).any(|(n, v)| {
            (*n as usize).is_multiple_of(RESPONSE_HEADERS.len())
                && HeaderValue::from_bytes(v).is_ok()
        });
        *slot.lock().unwrap() = Some(ask.answer.clone());
        seen.lock().unwrap().clear();

        let ready = std::future::poll_fn(|cx| service.poll_ready(cx))
            .now_or_never()
            .expect("ready at once");
        ready.unwrap();
        let response = service
            .call(request)
            .now_or_never()
            .expect("response at once")
            .unwrap();
        // Whether the request itself reached the service (not only the
        // layer's own `GET` before a conditional write).
        let called = seen.lock().unwrap().contains(&method);
        let status = response.status();
        let etag = response.headers().get(header::ETAG).cloned();
        let body = response
            .into_body()
            .collect()
            .now_or_never()
            .expect("body at once")
            .map(|collected| collected.to_bytes());

        if called && !(200..300).contains(&inner_status) {
            assert_eq!(
                status.as_u16(),
                inner_status,
                "non-2xx answers pass through"
            );
        }
        let inner_own = called && status.as_u16() == inner_status;
        if (status == StatusCode::NOT_MODIFIED || status == StatusCode::PRECONDITION_FAILED)
            && !inner_own
        {
            if called {
                assert!(
                    (200..300).contains(&inner_status),
                    "{status} from a {inner_status}"
                );
            }
            assert!(body.as_ref().is_ok_and(|b| b.is_empty()));
        }
        if status == StatusCode::NOT_MODIFIED && !inner_own {
            assert!(
                method == Method::GET || method == Method::HEAD,
                "304 to {method}"
            );
        }
        if let (Ok(bytes), Some(etag)) = (body, etag)
            && called
            && status == StatusCode::OK
            && method == Method::GET
            && !inner_etag
        {
            assert_eq!(
                etag,
                content_etag(&bytes).header_value(),
                "content ETag of the body sent"
            );
        }
    }
});
