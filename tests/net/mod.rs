//! A real server on 127.0.0.1 and hyper-util's client, for the tests that
//! go over TCP.
#![allow(dead_code, unreachable_pub)]

pub mod media;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower_media_cache::content_etag;

/// A server task on an ephemeral port of 127.0.0.1. `stop` shuts it down
/// gracefully and waits for it; dropping it (a failed test) aborts it.
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Binds 127.0.0.1:0 and spawns `serve(listener, shutdown)`.
    pub async fn start<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, stopped));
        Self {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Serves an axum router.
    pub async fn axum(app: Router) -> Self {
        Self::start(|listener, stopped| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .await
                .unwrap();
        })
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What came back: status, headers, the whole body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: impl http::header::AsHeaderName) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("header missing in {:?}", self.headers))
    }
}

pub async fn send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    try_send(client, method, url, headers)
        .await
        .map_err(|(_, error)| error)
        .expect("the response arrives whole")
}

/// As [`send`], but a response cut short is an error: with what arrived
/// of it when the server closed the connection after the head, or `None`
/// when it closed it before.
pub async fn try_send(
    client: &HttpClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, (Option<Answer>, String)> {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .map_err(|error| (None, error.to_string()))?;
    let (head, mut body) = response.into_parts();
    let mut answer = Answer {
        status: head.status,
        headers: head.headers,
        body: Bytes::new(),
    };
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received.extend_from_slice(data);
                }
            }
            Err(error) => {
                answer.body = received.into();
                return Err((Some(answer), error.to_string()));
            }
        }
    }
    answer.body = received.into();
    Ok(answer)
}

pub async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> Answer {
    send(client, Method::GET, url, headers).await
}

pub fn etag_of(bytes: &[u8]) -> String {
    content_etag(bytes)
        .header_value()
        .to_str()
        .unwrap()
        .to_owned()
}

/// Deterministic pseudo-random bytes (xorshift64), so no compression or
/// coincidence can make two different bodies look alike.
pub fn pseudo_random(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    Bytes::from(bytes)
}
