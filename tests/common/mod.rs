//! Shared test fixtures: an inner service with counted calls and mutable
//! content, and small request helpers.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Service, ServiceExt};
use tower_media_cache::{MediaCache, MediaCacheLayer, ResponseBody};

/// What the fake origin answers.
#[derive(Clone, Debug)]
pub struct Content {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

impl Content {
    pub fn ok(body: &'static [u8]) -> Self {
        Self {
            status: StatusCode::OK,
            body: Bytes::from_static(body),
            headers: HeaderMap::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.append(name, value.parse().unwrap());
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = StatusCode::from_u16(status).unwrap();
        self
    }
}

/// A fake origin: counts calls, records the requests it saw, serves `content`.
#[derive(Clone, Debug)]
pub struct Origin {
    pub calls: Arc<AtomicUsize>,
    pub content: Arc<Mutex<Content>>,
    pub seen: Arc<Mutex<Vec<http::request::Parts>>>,
}

impl Origin {
    pub fn new(content: Content) -> Self {
        Self {
            calls: Arc::new(AtomicUsize::new(0)),
            content: Arc::new(Mutex::new(content)),
            seen: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn set(&self, content: Content) {
        *self.content.lock().unwrap() = content;
    }

    pub fn last_request(&self) -> http::request::Parts {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the origin")
    }

    /// The layer around the origin as a whole service (it answers every
    /// method): the layer may send it an internal `GET`.
    pub fn wrap(&self, layer: &MediaCacheLayer) -> MediaCache<Origin> {
        layer.wrap_router(self.clone())
    }

    /// The layer as `tower::Layer` puts it, as if the origin were one
    /// method's handler: the layer sends it only the clients' requests.
    pub fn wrap_per_method(&self, layer: &MediaCacheLayer) -> MediaCache<Origin> {
        tower::Layer::layer(layer, self.clone())
    }
}

impl Service<Request<()>> for Origin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (parts, ()) = request.into_parts();
        let head_only = parts.method == http::Method::HEAD;
        self.seen.lock().unwrap().push(parts);
        let content = self.content.lock().unwrap().clone();
        let body = if head_only {
            Bytes::new()
        } else {
            content.body
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = content.status;
        *response.headers_mut() = content.headers;
        std::future::ready(Ok(response))
    }
}

/// A collected answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

pub async fn send<S, Q, B>(service: &S, request: Request<Q>) -> Answer
where
    S: Service<Request<Q>, Response = Response<ResponseBody<B>>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn get(uri: &str) -> http::request::Builder {
    Request::get(uri).header("host", "media.example")
}

pub fn req(builder: http::request::Builder) -> Request<()> {
    builder.body(()).unwrap()
}
