//! The app users build, wired every way the README and axum, hyper and
//! tower-http users wire the layer, and its bare twin — the oracle.
//!
//! One resource type, `/media/{name}`, with a handler per method (`GET`,
//! `HEAD`, `PUT`, `DELETE`, `POST`) over an in-memory set of documents
//! (mirrored to files for tower-http's `ServeDir`). The handlers are
//! correct by RFC 9110 on their own: they evaluate every precondition
//! against the content tag (XXH3-128, as the layer computes it) and the
//! document's `Last-Modified`, but send no `ETag` (the layer adds it). So
//! the bare app, without any layer, is what every wiring must answer, byte
//! for byte in status and body, and its data is what every wiring's data
//! must be after every step.
//!
//! Every handler records the method it was called with: a handler called
//! with another method than its own (the layer's internal `GET` reaching a
//! `PUT` handler) is a violation, whatever it answered.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, head};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_media_cache::preconditions::{Precondition, evaluate, evaluate_absent};
use tower_media_cache::{CacheHandle, CachePolicy, EntityTag, MediaCacheLayer, Trust, Validators};

/// The first document's modification time; each write is 10 s later.
const EPOCH_SECS: u64 = 1_600_000_000;

/// One document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Doc {
    pub bytes: Bytes,
    pub modified: u64,
}

impl Doc {
    pub fn tag(&self) -> EntityTag {
        tower_media_cache::content_etag(&self.bytes)
    }

    pub fn last_modified(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(self.modified)
    }

    pub fn validators(&self) -> Validators {
        Validators::new()
            .with_etag(self.tag())
            .with_last_modified(self.last_modified())
    }
}

/// The handlers, one per method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Handler {
    Get,
    Head,
    Put,
    Delete,
    Post,
}

impl Handler {
    /// Whether a request with `method` may reach this handler. axum sends
    /// `HEAD` to the `GET` handler of a route without a `HEAD` handler.
    fn takes(self, method: &Method) -> bool {
        match self {
            Handler::Get => method == Method::GET || method == Method::HEAD,
            Handler::Head => method == Method::HEAD,
            Handler::Put => method == Method::PUT,
            Handler::Delete => method == Method::DELETE,
            Handler::Post => method == Method::POST,
        }
    }
}

/// The app's state: its documents, a write clock, and what its handlers saw.
#[derive(Clone, Default)]
pub struct Data {
    docs: Arc<Mutex<BTreeMap<String, Doc>>>,
    writes: Arc<AtomicU64>,
    calls: Arc<Mutex<BTreeMap<(Handler, String), usize>>>,
    violations: Arc<Mutex<Vec<String>>>,
    /// Where the documents are mirrored as files, for `ServeDir`.
    dir: Option<Arc<PathBuf>>,
}

impl Data {
    pub fn new() -> Self {
        Self::default()
    }

    /// Documents mirrored as files under a fresh folder, for `ServeDir`.
    pub fn with_files() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "tower-media-cache-wiring-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("media")).unwrap();
        Self {
            dir: Some(Arc::new(dir)),
            ..Self::default()
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.as_deref().expect("a data set with files").clone()
    }

    pub fn docs(&self) -> BTreeMap<String, Doc> {
        self.docs.lock().unwrap().clone()
    }

    pub fn doc(&self, name: &str) -> Option<Doc> {
        self.docs.lock().unwrap().get(name).cloned()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Calls per handler and method.
    pub fn calls(&self) -> BTreeMap<(Handler, String), usize> {
        self.calls.lock().unwrap().clone()
    }

    pub fn calls_of(&self, handler: Handler) -> usize {
        self.calls()
            .iter()
            .filter(|((h, _), _)| *h == handler)
            .map(|(_, n)| n)
            .sum()
    }

    fn record(&self, handler: Handler, method: &Method) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry((handler, method.to_string()))
            .or_default() += 1;
        if !handler.takes(method) {
            self.violations
                .lock()
                .unwrap()
                .push(format!("the {handler:?} handler ran for a {method}"));
        }
    }

    /// Stores `bytes` under `name` at the next write time.
    pub fn write(&self, name: &str, bytes: Bytes) {
        let modified = EPOCH_SECS + 10 * (self.writes.fetch_add(1, Ordering::SeqCst) + 1);
        let doc = Doc { bytes, modified };
        if let Some(dir) = &self.dir {
            let path = dir.join("media").join(name);
            std::fs::write(&path, &doc.bytes).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(doc.last_modified()).unwrap();
        }
        self.docs.lock().unwrap().insert(name.to_owned(), doc);
    }

    fn remove(&self, name: &str) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_file(dir.join("media").join(name));
        }
        self.docs.lock().unwrap().remove(name);
    }

    /// What the files say, for `ServeDir`'s data sets (must equal `docs`).
    pub fn files(&self) -> BTreeMap<String, Bytes> {
        let mut files = BTreeMap::new();
        if let Some(dir) = &self.dir {
            for entry in std::fs::read_dir(dir.join("media")).unwrap() {
                let entry = entry.unwrap();
                let name = entry.file_name().into_string().unwrap();
                files.insert(name, Bytes::from(std::fs::read(entry.path()).unwrap()));
            }
        }
        files
    }
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

/// The head a `GET` of `doc` carries (no `ETag`: the layer adds one).
fn doc_headers(doc: &Doc) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    headers.insert(
        LAST_MODIFIED,
        httpdate::fmt_http_date(doc.last_modified())
            .parse()
            .unwrap(),
    );
    headers
}

/// `GET` (and `HEAD`, where axum sends it here): 404, or the document after
/// its preconditions.
fn read(
    data: &Data,
    handler: Handler,
    method: &Method,
    name: &str,
    headers: &HeaderMap,
) -> Response {
    data.record(handler, method);
    let Some(doc) = data.doc(name) else {
        return status(StatusCode::NOT_FOUND);
    };
    match evaluate(method, headers, &doc.validators()) {
        Precondition::NotModified => (StatusCode::NOT_MODIFIED, doc_headers(&doc)).into_response(),
        Precondition::Failed => status(StatusCode::PRECONDITION_FAILED),
        Precondition::Proceed if handler == Handler::Head => {
            let mut headers = doc_headers(&doc);
            headers.insert(CONTENT_LENGTH, HeaderValue::from(doc.bytes.len()));
            (headers, ()).into_response()
        }
        Precondition::Proceed => (doc_headers(&doc), doc.bytes.clone()).into_response(),
    }
}

/// `PUT`, `DELETE` and `POST`: preconditions first (RFC 9110 §13.2.1: a
/// `DELETE` of nothing is a 404 whatever they say), then the write.
fn write(
    data: &Data,
    handler: Handler,
    method: &Method,
    name: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    data.record(handler, method);
    let current = data.doc(name);
    if handler == Handler::Delete && current.is_none() {
        return status(StatusCode::NOT_FOUND);
    }
    let verdict = match &current {
        Some(doc) => evaluate(method, headers, &doc.validators()),
        None => evaluate_absent(headers),
    };
    if verdict != Precondition::Proceed {
        return status(StatusCode::PRECONDITION_FAILED);
    }
    match handler {
        Handler::Put => {
            data.write(name, body);
            status(if current.is_some() {
                StatusCode::NO_CONTENT
            } else {
                StatusCode::CREATED
            })
        }
        Handler::Delete => {
            data.remove(name);
            status(StatusCode::NO_CONTENT)
        }
        _ => {
            let mut bytes = current.map(|doc| doc.bytes.to_vec()).unwrap_or_default();
            bytes.extend_from_slice(&body);
            data.write(name, Bytes::from(bytes));
            status(StatusCode::OK)
        }
    }
}

async fn get_media(
    State(data): State<Data>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    read(&data, Handler::Get, &method, &name, &headers)
}

async fn head_media(
    State(data): State<Data>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    read(&data, Handler::Head, &method, &name, &headers)
}

async fn put_media(
    State(data): State<Data>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(&data, Handler::Put, &method, &name, &headers, body)
}

async fn delete_media(
    State(data): State<Data>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(&data, Handler::Delete, &method, &name, &headers, body)
}

async fn post_media(
    State(data): State<Data>,
    Path(name): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(&data, Handler::Post, &method, &name, &headers, body)
}

/// The write handlers of the route.
fn writes() -> MethodRouter<Data> {
    axum::routing::put(put_media)
        .delete(delete_media)
        .post(post_media)
}

/// The route with a handler for every method, `HEAD` included.
fn all_methods() -> MethodRouter<Data> {
    get(get_media).head(head_media).merge(writes())
}

/// A hyper `service_fn` that matches on the method itself (`HEAD` runs the
/// `GET` code, whose body the server drops).
async fn dispatch(data: Data, request: Request<Body>) -> Result<Response, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some(name) = path
        .strip_prefix("/media/")
        .map(percent_decode)
        .filter(|name| !name.contains('/'))
    else {
        return Ok(status(StatusCode::NOT_FOUND));
    };
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let (method, headers) = (&parts.method, &parts.headers);
    Ok(match *method {
        Method::GET | Method::HEAD => read(&data, Handler::Get, method, &name, headers),
        Method::PUT => write(&data, Handler::Put, method, &name, headers, body),
        Method::DELETE => write(&data, Handler::Delete, method, &name, headers, body),
        Method::POST => write(&data, Handler::Post, method, &name, headers, body),
        _ => status(StatusCode::METHOD_NOT_ALLOWED),
    })
}

/// `%XX` decoded, as axum's `Path` and `ServeDir` decode.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the layer is put around the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wiring {
    /// The README's one-liner: `Router::layer`, each method's handler
    /// wrapped on its own, a `HEAD` handler of the route's own.
    RouterLayer,
    /// `Router::layer` over a route without a `HEAD` handler (axum sends
    /// `HEAD` to the `GET` handler and drops the body after the layer).
    RouterLayerGetServesHead,
    /// `Router::route_layer`.
    RouteLayer,
    /// `MethodRouter::layer` on the `GET` handler only: writes do not pass
    /// the layer, so only `Trust::Never` is correct (the matrix runs it so).
    MethodRouterLayer,
    /// `MediaCacheLayer::wrap_router` around the whole router.
    WholeRouter,
    /// `ServiceBuilder::layer` around a hyper `service_fn`.
    ServiceFnLayer,
    /// `MediaCacheLayer::wrap_router` around a hyper `service_fn`.
    ServiceFnWhole,
    /// `Router::layer` over a route whose `GET`/`HEAD` are tower-http's
    /// `ServeDir` (the route's fallback), with `authoritative()`.
    ServeDirLayer,
    /// `MediaCacheLayer::wrap_router` around that router.
    ServeDirWhole,
}

impl Wiring {
    pub const ALL: [Wiring; 9] = [
        Wiring::RouterLayer,
        Wiring::RouterLayerGetServesHead,
        Wiring::RouteLayer,
        Wiring::MethodRouterLayer,
        Wiring::WholeRouter,
        Wiring::ServiceFnLayer,
        Wiring::ServiceFnWhole,
        Wiring::ServeDirLayer,
        Wiring::ServeDirWhole,
    ];

    /// Whether every write passes the layer (so it may trust what it
    /// learned until a write invalidates it).
    pub fn writes_pass_the_layer(self) -> bool {
        self != Wiring::MethodRouterLayer
    }

    /// Whether the layer sees every method as one service (and so may send
    /// a `GET` of its own).
    pub fn is_whole(self) -> bool {
        matches!(
            self,
            Wiring::WholeRouter | Wiring::ServiceFnWhole | Wiring::ServeDirWhole
        )
    }

    fn serves_files(self) -> bool {
        matches!(self, Wiring::ServeDirLayer | Wiring::ServeDirWhole)
    }

    /// A data set for this wiring.
    pub fn data(self) -> Data {
        if self.serves_files() {
            Data::with_files()
        } else {
            Data::new()
        }
    }
}

/// Any of the apps, as one type.
pub type App = BoxCloneSyncService<Request<Body>, Response, Infallible>;

/// The layer's response as axum's.
fn boxed<S>(service: S) -> App
where
    S: Service<Request<Body>, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    BoxCloneSyncService::new(service.map_response(IntoResponse::into_response))
}

/// The router of the app, `routes` on `/media/{name}`.
fn router(data: &Data, routes: MethodRouter<Data>) -> Router {
    Router::new()
        .route("/media/{name}", routes)
        .with_state(data.clone())
}

/// The app without any layer: the oracle.
pub fn bare(data: &Data) -> App {
    boxed(router(data, all_methods()))
}

/// The app wired with `layer` as `wiring` says.
pub fn wired(wiring: Wiring, layer: &MediaCacheLayer, data: &Data) -> App {
    let layer = layer.clone();
    match wiring {
        Wiring::RouterLayer => boxed(router(data, all_methods()).layer(layer)),
        Wiring::RouterLayerGetServesHead => {
            boxed(router(data, get(get_media).merge(writes())).layer(layer))
        }
        Wiring::RouteLayer => boxed(router(data, all_methods()).route_layer(layer)),
        Wiring::MethodRouterLayer => boxed(router(
            data,
            get(get_media)
                .layer(layer)
                .merge(head(head_media))
                .merge(writes()),
        )),
        Wiring::WholeRouter => {
            boxed(Router::new().fallback_service(layer.wrap_router(router(data, all_methods()))))
        }
        Wiring::ServiceFnLayer => {
            let data = data.clone();
            let inner = service_fn(move |request| dispatch(data.clone(), request));
            boxed(ServiceBuilder::new().layer(layer).service(inner))
        }
        Wiring::ServiceFnWhole => {
            let data = data.clone();
            let inner = service_fn(move |request| dispatch(data.clone(), request));
            boxed(layer.wrap_router(inner))
        }
        Wiring::ServeDirLayer => boxed(files(data).layer(layer.authoritative())),
        Wiring::ServeDirWhole => {
            let layer = layer.authoritative();
            boxed(Router::new().fallback_service(layer.wrap_router(files(data))))
        }
    }
}

/// `GET` and `HEAD` by `ServeDir` over the data's folder, writes by the
/// write handlers.
fn files(data: &Data) -> Router {
    let serve = tower_http::services::ServeDir::new(data.root());
    let get_head = service_fn(move |request: Request<Body>| {
        let serve = serve.clone();
        async move {
            let response = serve.oneshot(request).await.unwrap_or_else(|e| match e {});
            Ok::<_, Infallible>(response.map(Body::new))
        }
    });
    let counted = {
        let data = data.clone();
        ServiceBuilder::new()
            .map_request(move |request: Request<Body>| {
                data.record(Handler::Get, request.method());
                request
            })
            .service(get_head)
    };
    router(data, writes().fallback_service(counted))
}

/// The layer's policies the matrix runs under.
pub fn policies() -> [(&'static str, CachePolicy); 3] {
    [
        (
            "UntilInvalidated",
            CachePolicy::no_cache().trust(Trust::UntilInvalidated),
        ),
        ("max-age", CachePolicy::max_age(Duration::from_secs(3600))),
        ("no-cache", CachePolicy::no_cache()),
    ]
}

/// A layer with `policy`, and a handle on its store.
pub fn layer(policy: CachePolicy) -> (MediaCacheLayer, CacheHandle) {
    let layer = MediaCacheLayer::new(policy);
    let handle = layer.handle();
    (layer, handle)
}

/// An answer, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn etag(&self) -> Option<&str> {
        self.headers.get(ETAG).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` to `app` and reads the answer.
pub async fn send(app: &App, request: Request<Body>) -> Answer {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| match e {});
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("a body").to_bytes();
    Answer {
        status: head.status,
        headers: head.headers,
        body,
    }
}

// ---------------------------------------------------------------------------
// Random sequences against the bare twin (tests/wiring.rs, the fuzz target)
// ---------------------------------------------------------------------------

/// Where a sequence's choices come from: a seeded generator in the tests,
/// the fuzzer's bytes in `fuzz/fuzz_targets/differential.rs`.
pub trait Choose {
    /// A number below `n` (> 0).
    fn below(&mut self, n: usize) -> usize;

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// SplitMix64: small, seedable, the same sequence everywhere.
pub struct Rng(pub u64);

impl Choose for Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One request of a sequence.
#[derive(Clone, Debug)]
pub struct Step {
    method: Method,
    uri: String,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
}

impl Step {
    pub fn request(&self) -> Request<Body> {
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(&self.uri);
        for (name, value) in &self.headers {
            builder = builder.header(*name, value.as_str());
        }
        builder.body(Body::from(self.body)).unwrap()
    }
}

pub const NAMES: [&str; 2] = ["a.jpg", "b.jpg"];
pub const BODIES: [&str; 5] = ["one", "two", "", "three, a little longer", "one"];

/// What the driver knows: every tag each name ever had.
#[derive(Default)]
pub struct History {
    tags: BTreeMap<&'static str, Vec<EntityTag>>,
}

impl History {
    fn saw(&mut self, name: &'static str, data: &Data) {
        if let Some(doc) = data.doc(name) {
            let tags = self.tags.entry(name).or_default();
            let tag = doc.tag();
            if !tags.iter().any(|t| t.strong_eq(&tag)) {
                tags.push(tag);
            }
        }
    }
}

fn tag_text(tag: &EntityTag) -> String {
    tag.header_value().to_str().unwrap().to_owned()
}

/// A random step against the model's current state.
pub fn step(rng: &mut impl Choose, model: &Data, history: &History) -> Step {
    let name = *rng.pick(&NAMES);
    let uri = match rng.below(10) {
        0 => format!("/media/{name}?x=1"),
        1 => format!("/MEDIA/{}", name.to_uppercase()),
        2 => format!("/media/%{:02X}{}", name.as_bytes()[0], &name[1..]),
        _ => format!("/media/{name}"),
    };
    let method = match rng.below(100) {
        0..35 => Method::GET,
        35..55 => Method::HEAD,
        55..78 => Method::PUT,
        78..90 => Method::DELETE,
        _ => Method::POST,
    };
    let doc = model.doc(name);
    let current = doc.as_ref().map(|d| d.tag());
    let stale = history.tags.get(name).and_then(|tags| {
        let old: Vec<_> = tags
            .iter()
            .filter(|t| current.as_ref().is_none_or(|c| !c.strong_eq(t)))
            .collect();
        (!old.is_empty()).then(|| old[rng.below(old.len())].clone())
    });
    let tag = |choice: usize| -> String {
        match choice {
            0 | 1 => current
                .as_ref()
                .map(tag_text)
                .unwrap_or_else(|| "\"nothing\"".into()),
            2 | 3 => stale
                .as_ref()
                .map(tag_text)
                .unwrap_or_else(|| "\"stale\"".into()),
            4 => "*".into(),
            5 => current
                .as_ref()
                .map(|t| format!("W/{}", tag_text(t)))
                .unwrap_or_else(|| "W/\"x\"".into()),
            _ => "garbage".into(),
        }
    };
    let date = |choice: usize| -> String {
        let secs = doc.as_ref().map_or(1_600_000_000, |d| d.modified);
        let secs = match choice {
            0 => secs,
            1 => secs - 5,
            2 => secs + 5,
            _ => return "not a date".into(),
        };
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_secs(secs))
    };
    let mut headers = Vec::new();
    match rng.below(10) {
        0 | 1 => headers.push(("if-match", tag(rng.below(7)))),
        2 | 3 => headers.push(("if-none-match", tag(rng.below(7)))),
        4 => headers.push(("if-unmodified-since", date(rng.below(4)))),
        5 => headers.push(("if-modified-since", date(rng.below(4)))),
        6 => {
            headers.push(("if-match", tag(rng.below(7))));
            headers.push(("if-unmodified-since", date(rng.below(4))));
        }
        _ => {}
    }
    if rng.chance(20) {
        headers.push(("host", (*rng.pick(&["a.test", "A.TEST", "b.test"])).into()));
    }
    if rng.chance(8) {
        headers.push(("cache-control", "no-cache".into()));
    }
    let body = match method {
        Method::PUT => *rng.pick(&BODIES),
        Method::POST => "+",
        _ => "",
    };
    Step {
        method,
        uri,
        headers,
        body,
    }
}

/// What went wrong at a step, if anything.
fn check(
    step: &Step,
    wiring: Wiring,
    ours: &Answer,
    twin: &Answer,
    before: &BTreeMap<String, Doc>,
    data: &Data,
    model: &Data,
) -> Option<String> {
    if ours.status != twin.status {
        // Behind `Router::layer`, `ServeDir` answers `HEAD` with no body and
        // the layer hides the preconditions from it (`authoritative`): until
        // a `GET` taught the tag, the layer cannot judge `If-Match` or
        // `If-None-Match` tags, and the `HEAD` gets its 200 without a tag
        // (README, Wiring).
        let unjudged_head = wiring == Wiring::ServeDirLayer
            && step.method == Method::HEAD
            && ours.status == StatusCode::OK
            && matches!(
                twin.status,
                StatusCode::NOT_MODIFIED | StatusCode::PRECONDITION_FAILED
            )
            && ours.etag().is_none();
        // A whole-router layer judges a conditional `PUT` against its own
        // `GET`: a 404 there is "no representation" (If-Match fails), also
        // where the 404 is the router's, for a path no route serves (README,
        // Writes). The write is refused either way.
        let refused_on_no_route = wiring.is_whole()
            && step.method == Method::PUT
            && ours.status == StatusCode::PRECONDITION_FAILED
            && twin.status == StatusCode::NOT_FOUND
            && data.docs() == *before;
        if !(unjudged_head || refused_on_no_route) {
            return Some(format!(
                "status {} where the bare app says {}",
                ours.status, twin.status
            ));
        }
    }
    if step.method == Method::GET && ours.status == StatusCode::OK && ours.body != twin.body {
        return Some(format!(
            "body {:?} where the bare app sends {:?}",
            ours.body, twin.body
        ));
    }
    let docs = data.docs();
    if docs != model.docs() {
        return Some(format!(
            "data {docs:?} where the bare app has {:?}",
            model.docs()
        ));
    }
    if matches!(
        ours.status,
        StatusCode::NOT_MODIFIED | StatusCode::PRECONDITION_FAILED
    ) && &docs != before
    {
        return Some(format!("a {} changed the data", ours.status));
    }
    if wiring.is_whole() || matches!(wiring, Wiring::ServeDirLayer) {
        let files = data.files();
        let expected: BTreeMap<_, _> = docs
            .iter()
            .map(|(k, d)| (k.clone(), d.bytes.clone()))
            .collect();
        if files != expected && !files.is_empty() {
            return Some(format!(
                "files {files:?} where the documents are {expected:?}"
            ));
        }
    }
    let name = step
        .uri
        .trim_start_matches("/media/")
        .split('?')
        .next()
        .unwrap_or("");
    let name = match name.strip_prefix('%') {
        Some(rest) => {
            let byte = u8::from_str_radix(&rest[..2], 16).unwrap();
            format!("{}{}", byte as char, &rest[2..])
        }
        None => name.to_owned(),
    };
    let reads = step.method == Method::GET || step.method == Method::HEAD;
    if reads
        && matches!(ours.status, StatusCode::OK | StatusCode::NOT_MODIFIED)
        && let Some(tag) = ours.etag()
    {
        let current = docs.get(&name).map(|d| tag_text(&d.tag()));
        if current.as_deref() != Some(tag) {
            return Some(format!(
                "{} carries {tag}, the current tag is {current:?}",
                step.method
            ));
        }
    }
    let violations = data.violations();
    if !violations.is_empty() {
        return Some(violations.join("; "));
    }
    None
}

pub async fn run(
    wiring: Wiring,
    policy_name: &str,
    policy: CachePolicy,
    rng: &mut impl Choose,
    steps: usize,
) -> Result<(), String> {
    let (model, data) = (Data::new(), wiring.data());
    let twin = bare(&model);
    let (layer, _handle) = layer(policy);
    let app = wired(wiring, &layer, &data);
    let mut history = History::default();
    for name in NAMES {
        if rng.chance(70) {
            model.write(name, Bytes::from_static(b"seed"));
            data.write(name, Bytes::from_static(b"seed"));
            history.saw(name, &model);
        }
    }
    let mut log = String::new();
    for i in 0..steps {
        let step = step(rng, &model, &history);
        let before = data.docs();
        let ours = send(&app, step.request()).await;
        let theirs = send(&twin, step.request()).await;
        let _ = writeln!(
            log,
            "  {i}: {} {} {:?} {:?} -> {} (bare {}) etag {:?}",
            step.method,
            step.uri,
            step.headers,
            step.body,
            ours.status,
            theirs.status,
            ours.etag()
        );
        if let Some(wrong) = check(&step, wiring, &ours, &theirs, &before, &data, &model) {
            return Err(format!(
                "{wiring:?} under {policy_name}, step {i}: {wrong}\n{log}"
            ));
        }
        for name in NAMES {
            history.saw(name, &model);
        }
    }
    Ok(())
}
