//! The origin, the request sequences and the comparison of the differential
//! test (`tests/differential.rs`). The fuzz target
//! `fuzz/fuzz_targets/differential.rs` includes this file by path, so it
//! depends only on crates both packages have (no `tower`, no `tokio`, no
//! `proptest`): the generators live next to their drivers.
//!
//! Two copies of one deterministic origin ([`App`]), each with its own files,
//! run behind two identically configured layers: copy A with
//! `Trust::UntilInvalidated` (the store answers conditional requests alone),
//! copy B with `Trust::Never` (the handler always runs). Content changes only
//! through requests that go through the layers, so both copies must answer
//! every request alike — status, validators, caching headers, bytes. Any
//! difference is the store answering what the service would not. And a
//! request the handler would refuse keeps the handler's answer (see
//! [`run`] for both checks and the README's exceptions).
//!
//! The origin is sensitive to exactly the inputs a store could conflate:
//!
//! - a resource is the percent-decoded path (decoded once) without the
//!   query: `/media/x.jpg`, `/media/%78.jpg`, `/media%2Fx.jpg` and
//!   `/media/x.jpg?v=1` are one file, and a write through any spelling
//!   changes it for all (`/media/%2578.jpg` is another file: `/media/%78.jpg`);
//! - a body ends with the bytes of `Host` — exact but for ASCII case, which
//!   RFC 9110 §4.2.3 and the README make insensitive; non-UTF-8 bytes kept,
//!   absent and empty told apart — and, under `/media/`, with the exact
//!   `Accept-Language` field lines in order, named in `Vary`;
//! - `/private/` answers 401 without `Authorization: Bearer ok`;
//! - it evaluates no precondition itself: only the layers do.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_LANGUAGE, ACCEPT_RANGES, ALLOW, AUTHORIZATION, CONTENT_TYPE, DATE, ETAG, HOST, IF_MATCH,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED, RANGE, VARY,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_media_cache::{CacheHandle, CachePolicy, MediaCache, MediaCacheLayer, Trust};
use tower_service::Service;

/// `Last-Modified` of the files the app starts with, in seconds since the
/// epoch; each write moves the app's clock one second on.
pub const EPOCH: u64 = 1_700_000_000;

/// The layers' clock: fixed, and well after every `Last-Modified` the app
/// can send (a sequence writes at most a few dozen times), so `If-Range`
/// dates are old enough to be strong and `Date` is the same in both copies.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(EPOCH + 1_000_000)
}

/// The layer both copies sit behind, differing only in `trust`: `no-cache`
/// everywhere (not public, so requests with credentials bypass the store),
/// and a public `max-age` under `/plain/`, whose handler ignores
/// credentials.
pub fn layer(trust: Trust) -> MediaCacheLayer {
    let now = now();
    MediaCacheLayer::new(CachePolicy::no_cache().trust(trust))
        .route(
            "/plain/{*path}",
            CachePolicy::max_age(Duration::from_secs(60))
                .public()
                .trust(trust),
        )
        .clock(move || now)
}

// ---------------------------------------------------------------------------
// The origin.

#[derive(Debug, Clone)]
struct File {
    bytes: Vec<u8>,
    /// Seconds after [`EPOCH`].
    modified: u64,
}

#[derive(Debug, Clone)]
struct Files {
    /// By percent-decoded path.
    files: BTreeMap<Vec<u8>, File>,
    /// Seconds after [`EPOCH`] of the last write.
    clock: u64,
}

/// The directory a decoded path is in, which decides how it is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Varies on `Accept-Language`, has `Last-Modified`.
    Media,
    /// Does not vary, has no `Last-Modified`.
    Plain,
    /// 401 without `Authorization: Bearer ok`.
    Private,
    /// The only place `POST` is allowed (it appends).
    Upload,
    Other,
}

impl Dir {
    fn of(path: &[u8]) -> Self {
        [
            (&b"/media/"[..], Dir::Media),
            (b"/plain/", Dir::Plain),
            (b"/private/", Dir::Private),
            (b"/upload/", Dir::Upload),
        ]
        .into_iter()
        .find(|(prefix, _)| path.starts_with(prefix))
        .map_or(Dir::Other, |(_, dir)| dir)
    }

    fn allow(self) -> &'static str {
        match self {
            Dir::Upload => "GET, HEAD, PUT, POST, DELETE, OPTIONS",
            _ => "GET, HEAD, PUT, DELETE, OPTIONS",
        }
    }
}

/// Decodes every `%XX` (either case of hex digit) once; a `%` not followed
/// by two hex digits stays as it is.
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    out
}

/// The text a representation ends with: what it was selected by, byte for
/// byte, with "absent" told apart from "empty".
///
/// Except for the ASCII case of `Host`: a host name is case-insensitive
/// (RFC 9110 §4.2.3), and the README says the store compares it so, so an
/// app serving `A.example` and `a.example` differently would be outside
/// what any cache can serve. Every other byte counts, non-UTF-8 included.
fn selection_suffix(dir: Dir, headers: &HeaderMap) -> Vec<u8> {
    let mut out = b"\n--\nhost: ".to_vec();
    match headers.get(HOST) {
        None => out.push(b'-'),
        Some(host) => {
            out.push(b'<');
            out.extend(host.as_bytes().iter().map(u8::to_ascii_lowercase));
            out.push(b'>');
        }
    }
    if dir == Dir::Media {
        out.extend_from_slice(b"\naccept-language:");
        let mut lines = headers.get_all(ACCEPT_LANGUAGE).iter().peekable();
        if lines.peek().is_none() {
            out.extend_from_slice(b" -");
        }
        for line in lines {
            out.extend_from_slice(b" <");
            out.extend_from_slice(line.as_bytes());
            out.push(b'>');
        }
    }
    out
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn http_date(after_epoch: u64) -> HeaderValue {
    let date = UNIX_EPOCH + Duration::from_secs(EPOCH + after_epoch);
    HeaderValue::from_str(&httpdate::fmt_http_date(date)).expect("an HTTP-date is a header value")
}

/// A deterministic origin over `Request<Bytes>`: files in memory, written
/// by `PUT`, `POST` (under `/upload/`) and `DELETE`. It is a hand-written
/// `service_fn` (its future is always ready) because the fuzz crate has
/// `tower-service` but not `tower`.
#[derive(Clone, Debug)]
pub struct App {
    files: Arc<Mutex<Files>>,
    calls: Arc<AtomicUsize>,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

impl App {
    /// `/media/x.jpg`, `/plain/z.txt` and `/private/p.txt` exist;
    /// `/upload/u.bin` does not yet.
    pub fn new() -> Self {
        let files = [
            ("/media/x.jpg", "x0"),
            ("/plain/z.txt", "z0"),
            ("/private/p.txt", "p0"),
        ]
        .into_iter()
        .map(|(path, bytes)| {
            let file = File {
                bytes: bytes.into(),
                modified: 0,
            };
            (path.as_bytes().to_vec(), file)
        })
        .collect();
        Self {
            files: Arc::new(Mutex::new(Files { files, clock: 0 })),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests this copy's handler ran.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The status the handler would answer `request` with now, without
    /// answering it (on a copy of the files).
    pub fn verdict(&self, request: Request<Bytes>) -> StatusCode {
        let mut files = self.files.lock().unwrap().clone();
        serve(&mut files, request).status()
    }
}

/// The handler. It reads no conditional field: whatever it answers, it
/// would answer without them too.
fn serve(files: &mut Files, request: Request<Bytes>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let path = percent_decode(parts.uri.path().as_bytes());
    let dir = Dir::of(&path);
    let method = parts.method;
    if dir == Dir::Private
        && method != Method::OPTIONS
        && parts.headers.get(AUTHORIZATION) != Some(&HeaderValue::from_static("Bearer ok"))
    {
        let mut response = respond(StatusCode::UNAUTHORIZED, "who are you?");
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    if method == Method::GET || method == Method::HEAD {
        let Some(file) = files.files.get(&path) else {
            return respond(StatusCode::NOT_FOUND, "no such file");
        };
        let mut bytes = file.bytes.clone();
        bytes.extend(selection_suffix(dir, &parts.headers));
        // HEAD: the same head as GET and no body (hyper would drop a
        // body anyway; axum sends one and lets hyper drop it).
        if method == Method::HEAD {
            bytes.clear();
        }
        let mut response = respond(StatusCode::OK, bytes);
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        if dir != Dir::Plain {
            headers.insert(LAST_MODIFIED, http_date(file.modified));
        }
        if dir == Dir::Media {
            headers.insert(VARY, HeaderValue::from_static("Accept-Language"));
        }
        return response;
    }
    let writing = match method {
        Method::PUT | Method::DELETE => true,
        Method::POST => dir == Dir::Upload,
        _ => false,
    };
    if writing {
        files.clock += 1;
    }
    let clock = files.clock;
    match method {
        Method::PUT => {
            let created = files
                .files
                .insert(
                    path,
                    File {
                        bytes: body.to_vec(),
                        modified: clock,
                    },
                )
                .is_none();
            respond(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::NO_CONTENT
                },
                Bytes::new(),
            )
        }
        Method::POST if dir == Dir::Upload => {
            let created = !files.files.contains_key(&path);
            let file = files.files.entry(path).or_insert(File {
                bytes: Vec::new(),
                modified: clock,
            });
            file.bytes.extend_from_slice(&body);
            file.modified = clock;
            respond(
                if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::NO_CONTENT
                },
                Bytes::new(),
            )
        }
        Method::DELETE => {
            if files.files.remove(&path).is_some() {
                respond(StatusCode::NO_CONTENT, Bytes::new())
            } else {
                respond(StatusCode::NOT_FOUND, "no such file")
            }
        }
        Method::OPTIONS => {
            let mut response = respond(StatusCode::NO_CONTENT, Bytes::new());
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(dir.allow()));
            response
        }
        _ => {
            let mut response = respond(StatusCode::METHOD_NOT_ALLOWED, "not here");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(dir.allow()));
            response
        }
    }
}

impl Service<Request<Bytes>> for App {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let response = serve(&mut self.files.lock().unwrap(), request);
        std::future::ready(Ok(response))
    }
}

// ---------------------------------------------------------------------------
// Requests: every field comes from a small pool. Pools list the plainest
// value first (proptest shrinks towards it) and repeat common values to
// weight them.

/// The files a sequence works on (by their canonical path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `/media/x.jpg`
    Media,
    /// `/plain/z.txt`
    Plain,
    /// `/private/p.txt`
    Private,
    /// `/upload/u.bin` (absent at first)
    Upload,
}

/// `/media/` twice: the only one whose answers vary on `Accept-Language`.
pub const RESOURCES: &[Resource] = &[
    Resource::Media,
    Resource::Media,
    Resource::Plain,
    Resource::Private,
    Resource::Upload,
];

impl Resource {
    fn dir_and_name(self) -> (&'static str, &'static str) {
        match self {
            Resource::Media => ("media", "x.jpg"),
            Resource::Plain => ("plain", "z.txt"),
            Resource::Private => ("private", "p.txt"),
            Resource::Upload => ("upload", "u.bin"),
        }
    }
}

/// How a resource's path is spelled in the request target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// `/media/x.jpg`
    Canonical,
    /// `/media/%78.jpg`: the same file.
    EscapedLetter,
    /// `/media/x%2ejpg`: the same file.
    EscapedDotLower,
    /// `/media/x%2Ejpg`: the same file.
    EscapedDotUpper,
    /// `/media%2fx.jpg`: the same file (the app decodes `%2f` to `/`); no
    /// route of the layer matches it.
    EscapedSlashLower,
    /// `/media%2Fx.jpg`: the same file.
    EscapedSlashUpper,
    /// `/media/x.jpg/`: another file.
    TrailingSlash,
    /// `/media/%2578.jpg`: another file, `/media/%78.jpg` (decoded once).
    DoubleEscaped,
}

pub const SPELLINGS: &[Spelling] = &[
    Spelling::Canonical,
    Spelling::Canonical,
    Spelling::Canonical,
    Spelling::EscapedLetter,
    Spelling::EscapedDotLower,
    Spelling::EscapedDotUpper,
    Spelling::EscapedSlashLower,
    Spelling::EscapedSlashUpper,
    Spelling::TrailingSlash,
    Spelling::DoubleEscaped,
];

impl Spelling {
    fn path(self, resource: Resource) -> String {
        let (dir, name) = resource.dir_and_name();
        let first = name.as_bytes()[0];
        let rest = &name[1..];
        match self {
            Spelling::Canonical => format!("/{dir}/{name}"),
            Spelling::EscapedLetter => format!("/{dir}/%{first:02x}{rest}"),
            Spelling::EscapedDotLower => format!("/{dir}/{}", name.replace('.', "%2e")),
            Spelling::EscapedDotUpper => format!("/{dir}/{}", name.replace('.', "%2E")),
            Spelling::EscapedSlashLower => format!("/{dir}%2f{name}"),
            Spelling::EscapedSlashUpper => format!("/{dir}%2F{name}"),
            Spelling::TrailingSlash => format!("/{dir}/{name}/"),
            Spelling::DoubleEscaped => format!("/{dir}/%25{first:02x}{rest}"),
        }
    }
}

/// Appended to the path; the app ignores the query.
pub const QUERIES: &[&str] = &["", "", "?v=1", "?x=2", "?"];

pub const METHODS: &[Method] = &[
    Method::GET,
    Method::GET,
    Method::GET,
    Method::GET,
    Method::GET,
    Method::HEAD,
    Method::HEAD,
    Method::PUT,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
];

/// The `Host` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `a.example`
    Lower,
    Absent,
    /// Present and empty.
    Empty,
    /// `A.example`
    Upper,
    /// `x\xff.example`: not UTF-8.
    InvalidX,
    /// `y\xff.example`: not UTF-8 either, and another host.
    InvalidY,
}

pub const HOSTS: &[Host] = &[
    Host::Lower,
    Host::Lower,
    Host::Absent,
    Host::Empty,
    Host::Upper,
    Host::InvalidX,
    Host::InvalidY,
];

impl Host {
    fn value(self) -> Option<&'static [u8]> {
        match self {
            Host::Lower => Some(b"a.example"),
            Host::Absent => None,
            Host::Empty => Some(b""),
            Host::Upper => Some(b"A.example"),
            Host::InvalidX => Some(b"x\xff.example"),
            Host::InvalidY => Some(b"y\xff.example"),
        }
    }
}

/// `Accept-Language` field lines (none: absent).
pub const LANGUAGES: &[&[&str]] = &[
    &[],
    &[],
    &["fr"],
    &[""],
    &["FR"],
    &["fr-CH"],
    &["fr-ch"],
    &["fr, de"],
    &["fr,de"],
    &["fr,"],
    &[","],
    &["fr;q=\"x, y\""],
    &["fr;q=\"x,y\""],
    &["fr", "de"],
];

/// A credential field, or none.
pub const CREDENTIALS: &[Option<(&str, &str)>] = &[
    None,
    None,
    None,
    Some(("authorization", "Bearer ok")),
    Some(("authorization", "Bearer bad")),
    Some(("cookie", "session=1")),
];

/// `Range` alone; `If-Range` adds `bytes=0-3` when this is none.
pub const RANGES: &[Option<&str>] = &[
    None,
    None,
    None,
    Some("bytes=0-3"),
    Some("bytes=-2"),
    Some("bytes=2-"),
    Some("bytes=0-0,2-3"),
    Some("bytes=100-"),
    Some("bytes=abc"),
];

/// Bytes of `PUT` and `POST` bodies: few, so that contents (and tags) recur.
pub const BODY_BYTES: &[u8] = b"ab\xff";

/// A conditional request field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // named after the fields: `If-…`
pub enum Field {
    IfNoneMatch,
    IfMatch,
    IfModifiedSince,
    IfUnmodifiedSince,
    /// With a `Range`.
    IfRange,
}

pub const FIELDS: &[Field] = &[
    Field::IfNoneMatch,
    Field::IfNoneMatch,
    Field::IfMatch,
    Field::IfModifiedSince,
    Field::IfUnmodifiedSince,
    Field::IfRange,
];

/// The value of a conditional field, resolved against the answers seen so
/// far in the sequence (B's, the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    /// The `n`th most recent distinct ETag seen for this resource (any
    /// spelling): the current one or a stale one.
    Tag(usize),
    /// `W/` and that tag.
    WeakTag(usize),
    /// The `n`th most recent distinct ETag seen for any resource.
    AnyTag(usize),
    /// The two most recent tags of this resource, as one list.
    TagList,
    Star,
    /// Sent as is: malformed tags, garbage dates.
    Raw(&'static str),
    /// The most recent `Last-Modified` seen for this resource (or the
    /// initial one), moved by this many seconds.
    Date(i64),
}

const TAG_VALUES: &[Value] = &[
    Value::Tag(0),
    Value::Tag(0),
    Value::Tag(1),
    Value::WeakTag(0),
    Value::AnyTag(0),
    Value::AnyTag(1),
    Value::TagList,
    Value::Star,
    Value::Raw("abc"),
    Value::Raw("\"unterminated"),
];

const DATE_VALUES: &[Value] = &[
    Value::Date(0),
    Value::Date(-1),
    Value::Date(1),
    Value::Raw("yesterday"),
    Value::Raw("Thu, 01 Jan 1970 00:00:00 GMT"),
];

const IF_RANGE_VALUES: &[Value] = &[
    Value::Tag(0),
    Value::Tag(1),
    Value::WeakTag(0),
    Value::Date(0),
    Value::Date(-1),
    Value::Raw("abc"),
];

impl Field {
    fn name(self) -> HeaderName {
        match self {
            Field::IfNoneMatch => IF_NONE_MATCH,
            Field::IfMatch => IF_MATCH,
            Field::IfModifiedSince => IF_MODIFIED_SINCE,
            Field::IfUnmodifiedSince => IF_UNMODIFIED_SINCE,
            Field::IfRange => IF_RANGE,
        }
    }

    /// The values that make sense for this field (and some that do not).
    pub fn values(self) -> &'static [Value] {
        match self {
            Field::IfNoneMatch | Field::IfMatch => TAG_VALUES,
            Field::IfModifiedSince | Field::IfUnmodifiedSince => DATE_VALUES,
            Field::IfRange => IF_RANGE_VALUES,
        }
    }
}

/// One conditional field line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    pub field: Field,
    pub value: Value,
}

impl Condition {
    /// The field with the `index`th of its values (modulo their number).
    pub fn pick(field: Field, index: usize) -> Self {
        let values = field.values();
        Self {
            field,
            value: values[index % values.len()],
        }
    }
}

/// Whom a request is for and how it says so: the target's spelling, the
/// selecting fields, the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub resource: Resource,
    pub spelling: Spelling,
    pub query: &'static str,
    pub host: Host,
    pub language: &'static [&'static str],
    pub credentials: Option<(&'static str, &'static str)>,
}

impl Shape {
    /// The canonical path of `resource`, `Host: a.example`, nothing else.
    pub fn plain(resource: Resource) -> Self {
        Self {
            resource,
            spelling: Spelling::Canonical,
            query: "",
            host: Host::Lower,
            language: &[],
            credentials: None,
        }
    }

    /// This shape with one field changed.
    pub fn mutated(self, mutation: Mutation) -> Self {
        let mut shape = self;
        match mutation {
            Mutation::Resource(resource) => shape.resource = resource,
            Mutation::Spelling(spelling) => shape.spelling = spelling,
            Mutation::Query(query) => shape.query = query,
            Mutation::Host(host) => shape.host = host,
            Mutation::Language(language) => shape.language = language,
            Mutation::Credentials(credentials) => shape.credentials = credentials,
        }
        shape
    }
}

/// One field of a [`Shape`], drawn again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    Resource(Resource),
    Spelling(Spelling),
    Query(&'static str),
    Host(Host),
    Language(&'static [&'static str]),
    Credentials(Option<(&'static str, &'static str)>),
}

/// The kinds of [`Mutation`], weighted: the selecting fields most, since
/// those are where a store conflates.
const MUTATION_KINDS: &[u8] = &[0, 1, 1, 2, 3, 3, 4, 4, 4, 5];

/// How many ways [`Mutation::pick`] tells apart in its first argument.
pub const MUTATION_WEIGHTS: usize = MUTATION_KINDS.len();

impl Mutation {
    /// The `which`th kind of mutation (modulo [`MUTATION_WEIGHTS`]) with the
    /// `index`th value of its pool (modulo its length).
    pub fn pick(which: usize, index: usize) -> Self {
        fn nth<T: Copy>(pool: &[T], index: usize) -> T {
            pool[index % pool.len()]
        }
        match MUTATION_KINDS[which % MUTATION_KINDS.len()] {
            0 => Mutation::Resource(nth(RESOURCES, index)),
            1 => Mutation::Spelling(nth(SPELLINGS, index)),
            2 => Mutation::Query(nth(QUERIES, index)),
            3 => Mutation::Host(nth(HOSTS, index)),
            4 => Mutation::Language(nth(LANGUAGES, index)),
            _ => Mutation::Credentials(nth(CREDENTIALS, index)),
        }
    }
}

/// `base` and the shapes a chain of `mutations` makes from it, each one
/// field away from the one before.
///
/// A store conflates requests that differ in one detail (a spelling, a
/// `Host` byte, an `Accept-Language` space), so sequences draw their
/// requests from a few such near neighbours rather than from independent
/// shapes, which would almost never share a store key.
pub fn neighbours(base: Shape, mutations: &[Mutation]) -> Vec<Shape> {
    let mut shapes = vec![base];
    for mutation in mutations {
        let last = *shapes.last().unwrap();
        shapes.push(last.mutated(*mutation));
    }
    shapes
}

/// One request of a sequence, as generated.
#[derive(Debug, Clone)]
pub struct Step {
    pub method: Method,
    pub shape: Shape,
    pub conditions: Vec<Condition>,
    pub range: Option<&'static str>,
    /// Sent with `PUT` and `POST` only.
    pub body: Vec<u8>,
}

impl Step {
    /// A plain request (see [`Shape::plain`]).
    pub fn new(method: Method, resource: Resource) -> Self {
        Self::shaped(method, Shape::plain(resource))
    }

    /// A request of this shape, with no condition, range or body.
    pub fn shaped(method: Method, shape: Shape) -> Self {
        Self {
            method,
            shape,
            conditions: Vec::new(),
            range: None,
            body: Vec::new(),
        }
    }

    pub fn spelling(self, spelling: Spelling) -> Self {
        self.mutated(Mutation::Spelling(spelling))
    }

    pub fn query(self, query: &'static str) -> Self {
        self.mutated(Mutation::Query(query))
    }

    pub fn host(self, host: Host) -> Self {
        self.mutated(Mutation::Host(host))
    }

    pub fn language(self, lines: &'static [&'static str]) -> Self {
        self.mutated(Mutation::Language(lines))
    }

    pub fn credentials(self, name: &'static str, value: &'static str) -> Self {
        self.mutated(Mutation::Credentials(Some((name, value))))
    }

    fn mutated(mut self, mutation: Mutation) -> Self {
        self.shape = self.shape.mutated(mutation);
        self
    }

    pub fn condition(mut self, field: Field, value: Value) -> Self {
        self.conditions.push(Condition { field, value });
        self
    }

    pub fn range(mut self, range: &'static str) -> Self {
        self.range = Some(range);
        self
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    /// The concrete request, its conditional values taken from `history`.
    pub fn request(&self, history: &History) -> Request<Bytes> {
        let shape = &self.shape;
        let uri = format!("{}{}", shape.spelling.path(shape.resource), shape.query);
        let body = if self.method == Method::PUT || self.method == Method::POST {
            Bytes::from(self.body.clone())
        } else {
            Bytes::new()
        };
        let mut request = Request::builder()
            .method(self.method.clone())
            .uri(uri)
            .body(body)
            .expect("every spelling is a valid request target");
        let headers = request.headers_mut();
        if let Some(host) = shape.host.value() {
            headers.insert(HOST, HeaderValue::from_bytes(host).unwrap());
        }
        for line in shape.language {
            headers.append(ACCEPT_LANGUAGE, HeaderValue::from_static(line));
        }
        if let Some((name, value)) = shape.credentials {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        let mut range = self.range;
        for condition in &self.conditions {
            let value = history.resolve(shape.resource, condition.value);
            headers.append(condition.field.name(), value);
            if condition.field == Field::IfRange && range.is_none() {
                range = Some("bytes=0-3");
            }
        }
        if let Some(range) = range {
            headers.insert(RANGE, HeaderValue::from_static(range));
        }
        request
    }
}

/// What the sequence has seen so far: the reference copy's validators.
#[derive(Debug, Default)]
pub struct History {
    /// Distinct tags, least recently seen first.
    tags: Vec<(Resource, HeaderValue)>,
    /// Distinct `Last-Modified` values, least recently seen first.
    dates: Vec<(Resource, HeaderValue)>,
}

fn remember(list: &mut Vec<(Resource, HeaderValue)>, resource: Resource, value: &HeaderValue) {
    list.retain(|(r, v)| !(*r == resource && v == value));
    list.push((resource, value.clone()));
}

impl History {
    fn learn(&mut self, resource: Resource, headers: &HeaderMap) {
        if let Some(tag) = headers.get(ETAG) {
            remember(&mut self.tags, resource, tag);
        }
        if let Some(date) = headers.get(LAST_MODIFIED) {
            remember(&mut self.dates, resource, date);
        }
    }

    fn tag(&self, resource: Option<Resource>, back: usize) -> HeaderValue {
        self.tags
            .iter()
            .rev()
            .filter(|(r, _)| resource.is_none_or(|resource| *r == resource))
            .nth(back)
            .map_or_else(
                || HeaderValue::from_static("\"never-seen\""),
                |(_, tag)| tag.clone(),
            )
    }

    fn resolve(&self, resource: Resource, value: Value) -> HeaderValue {
        let concat = |parts: &[&[u8]]| HeaderValue::from_bytes(&parts.concat()).unwrap();
        match value {
            Value::Tag(back) => self.tag(Some(resource), back),
            Value::WeakTag(back) => concat(&[b"W/", self.tag(Some(resource), back).as_bytes()]),
            Value::AnyTag(back) => self.tag(None, back),
            Value::TagList => concat(&[
                self.tag(Some(resource), 0).as_bytes(),
                b", ",
                self.tag(Some(resource), 1).as_bytes(),
            ]),
            Value::Star => HeaderValue::from_static("*"),
            Value::Raw(text) => HeaderValue::from_static(text),
            Value::Date(shift) => {
                let seen = self
                    .dates
                    .iter()
                    .rev()
                    .find(|(r, _)| *r == resource)
                    .and_then(|(_, date)| httpdate::parse_http_date(date.to_str().ok()?).ok())
                    .unwrap_or(UNIX_EPOCH + Duration::from_secs(EPOCH));
                let date = if shift < 0 {
                    seen - Duration::from_secs(shift.unsigned_abs())
                } else {
                    seen + Duration::from_secs(shift.unsigned_abs())
                };
                HeaderValue::from_str(&httpdate::fmt_http_date(date)).unwrap()
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Running a sequence through both copies.

/// A collected answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    fn brief(&self) -> String {
        let etag = self
            .headers
            .get(ETAG)
            .map_or_else(|| "-".to_owned(), |v| format!("{v:?}"));
        format!("{} etag {etag} body {:?}", self.status.as_u16(), self.body)
    }
}

/// How much of two answers [`differences`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Status, body bytes, and the values of every header but `Date`.
    /// `Date` is the only field left out: both copies share a fixed clock,
    /// but a 304 or 412 from the store gets a fresh `Date` by design.
    /// `Last-Modified` is compared in full: the app's is a deterministic
    /// logical clock, the same in both copies.
    Everything,
    /// A `HEAD` with a `GET`: the same, without the body and without
    /// `Accept-Ranges`, which the layer only advertises on the `GET`
    /// answers it can cut (B's own `HEAD` has none either, so this is not
    /// the store's doing).
    HeadWithGet,
}

/// Every way `a` differs from `b`, one line each.
fn differences(a: &Answer, b: &Answer, compare: Compare) -> Vec<String> {
    let mut out = Vec::new();
    if a.status != b.status {
        out.push(format!("status: A {} / B {}", a.status, b.status));
    }
    if compare == Compare::Everything && a.body != b.body {
        out.push(format!("body: A {:?} / B {:?}", a.body, b.body));
    }
    let mut names: Vec<&HeaderName> = a.headers.keys().chain(b.headers.keys()).collect();
    names.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    for name in names {
        if *name == DATE || (compare == Compare::HeadWithGet && *name == ACCEPT_RANGES) {
            continue;
        }
        let values = |answer: &Answer| answer.headers.get_all(name).iter().cloned().collect();
        let (in_a, in_b): (Vec<HeaderValue>, Vec<HeaderValue>) = (values(a), values(b));
        if in_a != in_b {
            out.push(format!("{name}: A {in_a:?} / B {in_b:?}"));
        }
    }
    out
}

/// One line per request: method, target, fields, body.
fn describe(request: &Request<Bytes>) -> String {
    let mut out = format!("{} {}", request.method(), request.uri());
    for (name, value) in request.headers() {
        let _ = write!(out, " | {name}: {value:?}");
    }
    if !request.body().is_empty() {
        let _ = write!(out, " | body {:?}", request.body());
    }
    out
}

async fn send(service: &mut MediaCache<App>, request: Request<Bytes>) -> Answer {
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .unwrap_or_else(|never| match never {});
    let response = service
        .call(request)
        .await
        .unwrap_or_else(|never| match never {});
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body completes").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// The same request as `GET`, without `Range` and `If-Range` (ignored on
/// `HEAD`): what a `HEAD` may be answered like when the store knows the
/// representation.
fn as_get(request: &Request<Bytes>) -> Request<Bytes> {
    let mut get = Request::builder()
        .method(Method::GET)
        .uri(request.uri().clone())
        .body(Bytes::new())
        .unwrap();
    *get.headers_mut() = request.headers().clone();
    get.headers_mut().remove(RANGE);
    get.headers_mut().remove(IF_RANGE);
    get
}

/// What a sequence did, for the totals the test prints.
#[derive(Debug, Default, Clone, Copy)]
pub struct Summary {
    pub requests: usize,
    /// 304s and 412s copy A answered from its store.
    pub store_answers: u64,
    /// Handler calls in A and in B (information only: the layer may call
    /// the inner service more than once per request, e.g. to learn the
    /// validators a write is conditioned on).
    pub calls_a: usize,
    pub calls_b: usize,
    /// `HEAD`s that A answered with the validators of a `GET` (see
    /// [`run`]).
    pub heads_like_get: usize,
    /// Conditional writes answered 412 where the handler would have said
    /// 401 (see [`layer_judges_first`]), in A and B together.
    pub judged_first: usize,
}

impl std::ops::AddAssign for Summary {
    fn add_assign(&mut self, other: Self) {
        self.requests += other.requests;
        self.store_answers += other.store_answers;
        self.calls_a += other.calls_a;
        self.calls_b += other.calls_b;
        self.heads_like_get += other.heads_like_get;
        self.judged_first += other.judged_first;
    }
}

/// The two copies.
struct Pair {
    a: MediaCache<App>,
    b: MediaCache<App>,
    app_a: App,
    app_b: App,
    handle_a: CacheHandle,
}

impl Pair {
    fn new() -> Self {
        let (app_a, app_b) = (App::new(), App::new());
        let (layer_a, layer_b) = (layer(Trust::UntilInvalidated), layer(Trust::Never));
        Self {
            a: layer_a.wrap_router(app_a.clone()),
            b: layer_b.wrap_router(app_b.clone()),
            handle_a: layer_a.handle(),
            app_a,
            app_b,
        }
    }
}

/// Whether the README lets the layer answer `step` 412 before its handler
/// runs although the handler would refuse it: a conditional `PUT` or
/// `DELETE` (the default `write_methods`; the sequences send no `PATCH`,
/// and a `POST` is judged so only where the handler accepts `POST`) that
/// the handler would refuse with 401 — the README: "the layer's 412 comes
/// before the handler's own checks: put authentication outside the layer".
/// A 404 is never such an exception: a `DELETE` of a missing file reaches
/// the handler (RFC 9110 §13.2.1), and a `PUT` to one would create it.
fn layer_judges_first(step: &Step, verdict: StatusCode) -> bool {
    verdict == StatusCode::UNAUTHORIZED
        && (step.method == Method::PUT || step.method == Method::DELETE)
        && step.conditions.iter().any(|condition| {
            matches!(
                condition.field,
                Field::IfMatch | Field::IfNoneMatch | Field::IfUnmodifiedSince
            )
        })
}

/// Sends every step to both copies and checks their answers; on the first
/// failed check, returns the whole sequence as sent with both answers.
///
/// Two checks per request:
///
/// 1. **A answers what B answers**: status, every header but `Date`, body.
///    One documented difference is allowed, for `HEAD` only: the README
///    says "A `HEAD` gets the validators the store learned from `GET` (when
///    trusted), so it never disagrees with `GET`". B never trusts its store,
///    so its `HEAD`s carry no ETag (and no `If-None-Match` can match them)
///    while A's may. A's `HEAD` answer must then be B's answer to the same
///    request as a `GET` (see [`Compare::HeadWithGet`]): what the store
///    knows must be what a `GET` says now, never a stale tag.
/// 2. **An answer the handler would not give as 2xx is the answer**: when a
///    copy's handler, as its files are just before the request, would
///    answer it with a status that is not 2xx (401, 404, 405 — it reads no
///    conditional field), that copy answers exactly that (RFC 9110
///    §13.2.1: preconditions are then ignored; the README: "an error or a
///    redirect is never turned into 304 or 412"). This catches a 412 where
///    the app says 405 even when both copies judge preconditions alike.
///    One exception, which the README documents: a conditional `PUT` or
///    `DELETE` is judged by the layer *before* the handler ("the layer's
///    412 comes before the handler's own checks"), so it may get 412 where
///    the handler would have said 401 — see [`layer_judges_first`].
pub async fn run(steps: &[Step]) -> Result<Summary, String> {
    let mut pair = Pair::new();
    let mut history = History::default();
    let mut transcript = String::new();
    let mut summary = Summary::default();
    for (i, step) in steps.iter().enumerate() {
        let request = step.request(&history);
        let _ = writeln!(transcript, "#{i} {}", describe(&request));
        let verdicts = (
            pair.app_a.verdict(step.request(&history)),
            pair.app_b.verdict(step.request(&history)),
        );
        let a = send(&mut pair.a, request).await;
        let b = send(&mut pair.b, step.request(&history)).await;
        let _ = writeln!(transcript, "     A: {}\n     B: {}", a.brief(), b.brief());
        summary.requests += 1;

        let mut found = differences(&a, &b, Compare::Everything);
        if !found.is_empty() && step.method == Method::HEAD {
            let get = send(&mut pair.b, as_get(&step.request(&history))).await;
            let like_get = differences(&a, &get, Compare::HeadWithGet);
            if like_get.is_empty() && a.body.is_empty() {
                summary.heads_like_get += 1;
                found.clear();
            } else {
                let _ = writeln!(transcript, "     B as GET: {}", get.brief());
                found.push("and A's HEAD is not B's GET either:".into());
                found.extend(like_get);
            }
        }
        for (copy, verdict, answer) in [("A", verdicts.0, &a), ("B", verdicts.1, &b)] {
            let judged_first = answer.status == StatusCode::PRECONDITION_FAILED
                && layer_judges_first(step, verdict);
            if !verdict.is_success() && answer.status != verdict {
                if judged_first {
                    summary.judged_first += 1;
                    continue;
                }
                found.push(format!(
                    "{copy}'s handler would answer {verdict}, yet {copy} answered {} \
                     (RFC 9110 §13.2.1: preconditions are ignored then)",
                    answer.status
                ));
            }
        }
        if !found.is_empty() {
            return Err(format!(
                "request #{i} (A: Trust::UntilInvalidated, B: Trust::Never):\n  \
                 {}\nThe sequence:\n{transcript}",
                found.join("\n  ")
            ));
        }
        history.learn(step.shape.resource, &b.headers);
    }
    let stats = pair.handle_a.stats();
    summary.store_answers =
        stats.short_circuit_not_modified + stats.short_circuit_precondition_failed;
    summary.calls_a = pair.app_a.calls();
    summary.calls_b = pair.app_b.calls();
    Ok(summary)
}
