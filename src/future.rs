use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Buf;
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, EXPIRES, LAST_MODIFIED, LOCATION, RANGE, SET_COOKIE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, response};
use http_body::Body;
use pin_project_lite::pin_project;

use crate::body::{Buffered, ResponseBody};
use crate::fingerprint::Fingerprint;
use crate::headers::{EntityTag, HttpDate};
use crate::layer::Config;
use crate::policy::{CachePolicy, Directives, ProbeFuture, Trust};
use crate::preconditions::{self, Precondition};
use crate::range::{self, RangeAnswer};
use crate::response as build;
use crate::rules::RouteMatch;
use crate::store::{self, Entry, Found};
use crate::validators::{self, ContentHasher, Validators};

type Call<F> = Box<dyn FnOnce(bool) -> F + Send>;

pin_project! {
    /// Response future of [`MediaCache`](crate::MediaCache).
    pub struct ResponseFuture<F, B: Body> {
        #[pin]
        state: State<F, B>,
        // Boxed, with the buffering state: a future answered at once (a
        // short-circuit) stays small, which matters where it is boxed per
        // request (axum routes).
        ctx: Option<Box<Ctx>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B: Body> {
        Ready { response: Option<Response<ResponseBody<B>>> },
        Passthrough { #[pin] future: F },
        Probing { probe: ProbeFuture, call: Option<Call<F>> },
        Inner { #[pin] future: F },
        Buffering { reading: Option<Box<Reading<B>>> },
    }
}

impl<F, B: Body> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B: Body> ResponseFuture<F, B> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            state: State::Passthrough { future },
            ctx: None,
        }
    }

    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        Self {
            state: State::Ready {
                response: Some(response),
            },
            ctx: None,
        }
    }

    pub(crate) fn inner(future: F, ctx: Ctx) -> Self {
        Self {
            state: State::Inner { future },
            ctx: Some(Box::new(ctx)),
        }
    }

    pub(crate) fn probing(probe: ProbeFuture, call: Call<F>, ctx: Ctx) -> Self {
        Self {
            state: State::Probing {
                probe,
                call: Some(call),
            },
            ctx: Some(Box::new(ctx)),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Ready { response } => {
                    let response = response
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(response));
                }
                StateProj::Passthrough { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::stream)));
                }
                StateProj::Probing { probe, call } => {
                    let validators = ready!(probe.as_mut().poll(cx));
                    let ctx = this.ctx.as_mut().expect("context present while probing");
                    match ctx.after_probe(validators) {
                        Ok(response) => State::Ready {
                            response: Some(response),
                        },
                        Err(strip_range) => {
                            let call = call.take().expect("inner service called once");
                            State::Inner {
                                future: call(strip_range),
                            }
                        }
                    }
                }
                StateProj::Inner { future } => {
                    let (mut head, body) = ready!(future.poll(cx))?.into_parts();
                    let ctx = this
                        .ctx
                        .as_mut()
                        .expect("context present for the inner call");
                    match ctx.plan(&mut head, &body) {
                        Plan::Finish => State::Ready {
                            response: Some(ctx.finish(head, Source::Stream(body))),
                        },
                        Plan::Buffer { hash, buffered } => State::Buffering {
                            reading: Some(Box::new(Reading {
                                head,
                                body: Some(Box::pin(body)),
                                buffered,
                                hasher: hash.then(ContentHasher::new),
                            })),
                        },
                    }
                }
                StateProj::Buffering { reading } => {
                    let ctx = this.ctx.as_mut().expect("context present while buffering");
                    let state = reading.as_mut().expect("reading state present");
                    ready!(ctx.poll_buffer(
                        cx,
                        &mut state.body,
                        &mut state.buffered,
                        state.hasher.as_mut()
                    ));
                    let Reading {
                        mut head,
                        buffered,
                        hasher,
                        ..
                    } = *reading.take().expect("reading state present");
                    let hash = match hasher {
                        Some(hasher) if buffered.is_complete() => {
                            Some(ctx.content_etag(&mut head, hasher))
                        }
                        _ => None,
                    };
                    ctx.settle_fingerprint(&mut head.headers, hash.as_ref());
                    State::Ready {
                        response: Some(ctx.finish(head, Source::Buffered(buffered))),
                    }
                }
            };
            this.state.set(next);
        }
    }
}

/// A response whose body the layer is reading before it answers.
struct Reading<B: Body> {
    head: response::Parts,
    body: Option<Pin<Box<B>>>,
    buffered: Buffered<B>,
    hasher: Option<ContentHasher>,
}

/// What to do once the inner service's head is in.
enum Plan<B: Body> {
    Finish,
    /// Read the body first; `buffered` may already hold its budget.
    Buffer {
        hash: bool,
        buffered: Buffered<B>,
    },
}

/// The body as the layer holds it when it decides the answer.
enum Source<B: Body> {
    Stream(B),
    Buffered(Buffered<B>),
}

impl<B: Body> Source<B> {
    fn into_body(self) -> ResponseBody<B> {
        match self {
            Source::Stream(body) => ResponseBody::stream(body),
            Source::Buffered(buffered) => ResponseBody::chunks(buffered),
        }
    }
}

/// What `call` decided about a request, carried to the response.
pub(crate) struct Ctx {
    config: Arc<Config>,
    method: Method,
    route: RouteMatch,
    uri: Uri,
    request_headers: HeaderMap,
    now: SystemTime,
    epoch: store::Epoch,
    store_allowed: bool,
    entry: Option<Found>,
    // Decided from the response.
    pass: bool,
    trust: Trust,
    synthesize_last_modified: bool,
    expires_after: Option<std::time::Duration>,
    directives: Directives,
    validators: Validators,
    first_seen: Option<HttpDate>,
    fingerprint: Option<Fingerprint>,
    /// With `authoritative`: the request had `Range` and `If-Range`, hidden
    /// from the service unless something verified `If-Range`.
    unverified_if_range: bool,
}

impl Ctx {
    pub(crate) fn new<ReqBody>(
        config: Arc<Config>,
        request: &Request<ReqBody>,
        route: RouteMatch,
        now: SystemTime,
        store_allowed: bool,
        entry: Option<Found>,
    ) -> Self {
        let epoch = config.store.epoch(store::key_of(request.uri()));
        Self {
            config,
            method: request.method().clone(),
            route,
            uri: request.uri().clone(),
            request_headers: request.headers().clone(),
            now,
            epoch,
            store_allowed,
            entry,
            pass: false,
            trust: Trust::Never,
            synthesize_last_modified: false,
            expires_after: None,
            directives: Directives::default(),
            validators: Validators::new(),
            first_seen: None,
            fingerprint: None,
            unverified_if_range: false,
        }
    }

    pub(crate) fn set_unverified_if_range(&mut self, ranged: bool) {
        self.unverified_if_range = ranged;
    }

    pub(crate) fn set_fingerprint(&mut self, fingerprint: Fingerprint) {
        self.fingerprint = Some(fingerprint);
    }

    fn key(&self) -> &str {
        store::key_of(&self.uri)
    }

    fn host(&self) -> &str {
        store::host_of(&self.uri, self.request_headers.get(http::header::HOST))
    }

    /// A 304 from a trusted store entry, without calling the inner service.
    pub(crate) fn short_circuit_not_modified<B: Body>(
        config: &Config,
        entry: &Entry,
        key: &str,
        now: SystemTime,
    ) -> Response<ResponseBody<B>> {
        config
            .store
            .counters
            .short_circuit_not_modified
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(key, "304 from the validator store");
        build::not_modified(
            entry.headers.clone(),
            entry.expires_after,
            now,
            ResponseBody::empty(),
        )
    }

    /// A 412 from known validators, without calling the inner service.
    pub(crate) fn short_circuit_failed<B: Body>(
        config: &Config,
        current: &Validators,
        key: &str,
        now: SystemTime,
    ) -> Response<ResponseBody<B>> {
        config
            .store
            .counters
            .short_circuit_precondition_failed
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(key, "412 from known validators");
        build::precondition_failed(current, now, ResponseBody::empty())
    }

    /// Decides from a probe's answer: a response, or `Err(strip_range)` to
    /// call the inner service (without `Range` when `If-Range` failed).
    fn after_probe<B: Body>(
        &mut self,
        current: Option<Validators>,
    ) -> Result<Response<ResponseBody<B>>, bool> {
        self.config
            .store
            .counters
            .probes
            .fetch_add(1, Ordering::Relaxed);
        let Some(current) = current.filter(|v| !v.is_empty()) else {
            // Unknown: a range the service would cut unchecked is not sent.
            return Err(self.unverified_if_range);
        };
        match preconditions::evaluate(&self.method, &self.request_headers, &current) {
            Precondition::NotModified => {
                let known = self.entry.as_ref().filter(|entry| {
                    match (entry.validators.etag(), current.etag()) {
                        (Some(a), Some(b)) => a.weak_eq(b),
                        _ => false,
                    }
                });
                let response = match known {
                    Some(entry) => {
                        Self::short_circuit_not_modified(&self.config, entry, self.key(), self.now)
                    }
                    None => {
                        self.config
                            .store
                            .counters
                            .short_circuit_not_modified
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(key = self.key(), "304 from the probe");
                        let policy = self.config.rules.request_policy(self.route);
                        build::not_modified(
                            build::probe_headers(policy, &current, self.now),
                            None,
                            self.now,
                            ResponseBody::empty(),
                        )
                    }
                };
                Ok(response)
            }
            Precondition::Failed => Ok(Self::short_circuit_failed(
                &self.config,
                &current,
                self.key(),
                self.now,
            )),
            Precondition::Proceed => {
                let strip = self.request_headers.contains_key(RANGE)
                    && !preconditions::if_range(&self.request_headers, &current, self.now);
                if strip {
                    self.request_headers.remove(RANGE);
                }
                Err(strip)
            }
        }
    }

    fn is_get(&self) -> bool {
        self.method == Method::GET
    }

    fn is_safe(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }

    /// Apply policy and validators to the inner service's head, and decide
    /// whether the body must be read before answering.
    fn plan<B: Body>(&mut self, head: &mut response::Parts, body: &B) -> Plan<B> {
        let config = self.config.clone();
        let status = head.status;
        if !self.is_safe() {
            if status.is_success() || status.is_redirection() {
                self.invalidate_after_write(&head.headers);
            }
            self.pass = true;
            return Plan::Finish;
        }
        if self.is_get() && (status == StatusCode::NOT_FOUND || status == StatusCode::GONE) {
            config.store.forget(self.key());
        }
        let chosen = head.extensions.remove::<CachePolicy>();
        let policy = match &chosen {
            Some(policy) => policy,
            None => config.rules.response_policy(self.route, &head.headers),
        };
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            let applied = build::apply_policy(&mut head.headers, policy, self.now);
            self.expires_after = policy.expires_after().filter(|_| applied);
        }
        if !status.is_success() {
            self.pass = true;
            return Plan::Finish;
        }
        self.trust = policy.effective_trust();
        self.synthesize_last_modified = policy.synthesizes_last_modified();
        self.store_allowed = self.store_allowed || policy.is_public();
        self.directives = Directives::parse(&head.headers);

        if self.config.authoritative {
            // The service's tag is not the content's: the layer's replaces
            // it (a hash for a 200 to GET, the trusted entry's otherwise).
            head.headers.remove(ETAG);
            if status == StatusCode::PARTIAL_CONTENT
                && let Some(etag) = self
                    .entry
                    .as_ref()
                    .filter(|e| e.is_trusted(self.now))
                    .and_then(|e| e.validators.etag())
            {
                head.headers.insert(ETAG, etag.header_value().clone());
            }
        }

        if let Some(repaired) = head
            .headers
            .get(ETAG)
            .and_then(validators::repair_unquoted_etag)
        {
            tracing::debug!(key = self.key(), "quoted an unquoted ETag");
            head.headers.insert(ETAG, repaired);
        }
        self.validators = Validators::from_headers(&head.headers);
        // A HEAD has no body to hash: the validators GET taught the store
        // fill in what the service did not send, so HEAD agrees with GET.
        if self.method == Method::HEAD
            && self.validators.etag().is_none()
            && let Some(entry) = self.entry.as_ref().filter(|e| e.is_trusted(self.now))
        {
            let mut known = entry.validators.clone();
            if let Some(date) = self.validators.last_modified_date() {
                known.set_last_modified_date(date);
            }
            known.write_to(&mut head.headers);
            self.validators = known;
        }

        if self.is_get() && status == StatusCode::OK {
            let want_hash = (self.validators.etag().is_none() && !self.directives.no_store)
                || self.fingerprint.is_some();
            let want_range = self.request_headers.contains_key(RANGE);
            if want_hash || want_range {
                let hint = body.size_hint();
                if hint.lower() <= config.max_buffer {
                    let mut buffered = Buffered::new();
                    // A body of known length takes its whole share of the
                    // budget at once, or none: under load the first comers
                    // complete instead of every body holding a part and
                    // none finishing.
                    match hint.exact() {
                        Some(len) if !buffered.reserve_to(&config.budget, len) => {
                            if want_hash {
                                self.count_unhashed(true);
                            }
                        }
                        _ => {
                            return Plan::Buffer {
                                hash: want_hash,
                                buffered,
                            };
                        }
                    }
                } else if want_hash {
                    self.count_unhashed(false);
                }
            }
        }
        // Not hashed: a fingerprint can only be vouched for by a trusted
        // entry learned from a verified answer (a HEAD after a GET).
        let known = self
            .entry
            .as_ref()
            .filter(|e| e.is_trusted(self.now))
            .and_then(|e| e.validators.etag().cloned());
        self.settle_fingerprint(&mut head.headers, known.as_ref());
        Plan::Finish
    }

    fn count_unhashed(&self, budget: bool) {
        let counters = &self.config.store.counters;
        counters.streamed_unhashed.fetch_add(1, Ordering::Relaxed);
        if budget {
            counters
                .buffer_budget_exhausted
                .fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(
            key = self.key(),
            budget,
            "body streamed without a content ETag"
        );
    }

    /// Reads the body into `buffered` until it ends, errors, or would go
    /// past the per-response limit or the global budget. Ready when one of
    /// those happened; `buffered.rest` then holds what was not read.
    fn poll_buffer<B: Body>(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut Option<Pin<Box<B>>>,
        buffered: &mut Buffered<B>,
        mut hasher: Option<&mut ContentHasher>,
    ) -> Poll<()> {
        let Some(inner) = body.as_mut() else {
            return Poll::Ready(());
        };
        loop {
            match ready!(inner.as_mut().poll_frame(cx)) {
                None => {
                    *body = None;
                    return Poll::Ready(());
                }
                Some(Err(error)) => {
                    tracing::debug!(key = self.key(), "body failed while buffering");
                    buffered.error = Some(error);
                    *body = None;
                    return Poll::Ready(());
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let bytes = data.copy_to_bytes(data.remaining());
                        let len = bytes.len() as u64;
                        let within_limit = buffered.len + len <= self.config.max_buffer;
                        let granted = within_limit
                            && buffered.reserve_to(&self.config.budget, buffered.len + len);
                        if let Some(hasher) = hasher.as_deref_mut() {
                            hasher.update(&bytes);
                        }
                        buffered.len += len;
                        buffered.chunks.push_back(bytes);
                        if !granted {
                            if hasher.is_some() {
                                self.count_unhashed(within_limit);
                            }
                            buffered.rest = body.take();
                            return Poll::Ready(());
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut buffered.trailers {
                                Some(existing) => existing.extend(trailers),
                                None => buffered.trailers = Some(trailers),
                            }
                        }
                    }
                },
            }
        }
    }

    /// The content ETag of a completely read body; it becomes the
    /// response's ETag unless the service sent its own.
    fn content_etag(&mut self, head: &mut response::Parts, hasher: ContentHasher) -> EntityTag {
        let etag = hasher.finish();
        if self.validators.etag().is_none() {
            head.headers.insert(ETAG, etag.header_value().clone());
            self.validators = std::mem::take(&mut self.validators).with_etag(etag.clone());
        }
        self.config
            .store
            .counters
            .hashed
            .fetch_add(1, Ordering::Relaxed);
        etag
    }

    /// For a fingerprinted URL: `immutable` caching when `content` (the hash
    /// of the bytes served) is the one in the URL, `no-cache` otherwise.
    fn settle_fingerprint(&mut self, headers: &mut HeaderMap, content: Option<&EntityTag>) {
        let (Some(fingerprint), Some(immutable)) = (&self.fingerprint, &self.config.fingerprints)
        else {
            return;
        };
        let verified = content.is_some_and(|etag| fingerprint.matches(etag));
        let fallback;
        let policy = if verified {
            immutable
        } else {
            tracing::debug!(key = self.key(), "fingerprint does not match the content");
            fallback = CachePolicy::no_cache().override_existing();
            &fallback
        };
        headers.remove(EXPIRES);
        build::apply_policy(headers, policy, self.now);
        self.trust = policy.effective_trust();
        self.expires_after = None;
        self.directives = Directives::parse(headers);
    }

    /// Evaluate preconditions → learn → serve a range or the whole body.
    fn finish<B: Body>(
        &mut self,
        mut head: response::Parts,
        source: Source<B>,
    ) -> Response<ResponseBody<B>> {
        if self.pass {
            return Response::from_parts(head, source.into_body());
        }
        let get_200 = self.is_get() && head.status == StatusCode::OK;
        let complete = match &source {
            Source::Stream(_) => true,
            Source::Buffered(buffered) => buffered.is_complete(),
        };
        if get_200 && complete && self.synthesize_last_modified {
            self.synthesize_last_modified(&mut head.headers);
        }
        if !self.validators.is_empty() {
            match preconditions::evaluate(&self.method, &self.request_headers, &self.validators) {
                Precondition::NotModified => {
                    if get_200 && complete {
                        self.learn(&head.headers);
                    }
                    self.config
                        .store
                        .counters
                        .not_modified_from_inner
                        .fetch_add(1, Ordering::Relaxed);
                    return build::not_modified(
                        build::not_modified_headers(&head.headers),
                        None,
                        self.now,
                        ResponseBody::empty(),
                    );
                }
                Precondition::Failed => {
                    self.config
                        .store
                        .counters
                        .precondition_failed_from_inner
                        .fetch_add(1, Ordering::Relaxed);
                    return build::precondition_failed(
                        &self.validators,
                        self.now,
                        ResponseBody::empty(),
                    );
                }
                Precondition::Proceed => {}
            }
        }
        if get_200 && complete && !self.validators.is_empty() {
            self.learn(&head.headers);
        }
        match source {
            Source::Buffered(buffered) if get_200 && buffered.is_complete() => {
                head.headers
                    .entry(ACCEPT_RANGES)
                    .or_insert(HeaderValue::from_static("bytes"));
                if preconditions::range_allowed(&self.request_headers, &self.validators, self.now) {
                    return self.serve_range(head, buffered);
                }
                Response::from_parts(head, ResponseBody::chunks(buffered))
            }
            source => Response::from_parts(head, source.into_body()),
        }
    }

    /// Last-Modified for a service that sends none: when this ETag was first
    /// seen under the key, strictly later than any earlier version's.
    fn synthesize_last_modified(&mut self, headers: &mut HeaderMap) {
        if self.validators.last_modified_date().is_some() {
            return;
        }
        let Some(etag) = self.validators.etag() else {
            return;
        };
        let now = HttpDate::from_system_time(self.now);
        let previous = self
            .config
            .store
            .lookup(self.key(), self.host(), &self.request_headers);
        let first_seen = match previous {
            Some(entry) if entry.validators.etag().is_some_and(|e| e.weak_eq(etag)) => {
                entry.first_seen
            }
            Some(entry) => now.max(HttpDate::from_secs(entry.first_seen.secs() + 1)),
            None => now,
        };
        self.validators.set_last_modified_date(first_seen);
        self.first_seen = Some(first_seen);
        headers.insert(LAST_MODIFIED, first_seen.header_value());
    }

    /// Remembers the validators of a `200` to `GET`, unless the response
    /// may not be shared: `no-store`, `private`, `Set-Cookie`, `Vary: *`, or
    /// a request with credentials under a policy that is not `public`.
    fn learn(&self, headers: &HeaderMap) {
        if !self.store_allowed
            || self.directives.no_store
            || self.directives.private
            || headers.contains_key(SET_COOKIE)
        {
            return;
        }
        let Some(vary) = store::vary_names(headers) else {
            return;
        };
        // `Date` first: a 304 answered from this entry overwrites it in
        // place in its copy of the map (no hashing, no growth).
        let mut stored = HeaderMap::with_capacity(headers.len() + 1);
        stored.insert(http::header::DATE, build::date_value(self.now));
        stored.extend(build::not_modified_headers(headers));
        let entry = Entry {
            validators: self.validators.clone(),
            headers: stored,
            trusted_until: store::trusted_until(
                self.trust,
                self.directives.reuse_lifetime(),
                self.now,
            ),
            expires_after: self.expires_after,
            first_seen: self
                .first_seen
                .or_else(|| self.validators.last_modified_date())
                .unwrap_or_else(|| HttpDate::from_system_time(self.now)),
        };
        self.config.store.learn(
            self.key(),
            self.host(),
            &vary,
            &self.request_headers,
            entry,
            self.epoch,
        );
    }

    /// A `2xx`/`3xx` answer to an unsafe method invalidates the target URI
    /// and a same-origin `Location` / `Content-Location`, RFC 9111 §4.4.
    fn invalidate_after_write(&self, headers: &HeaderMap) {
        let store = &self.config.store;
        store.invalidate(self.key());
        for name in [LOCATION, CONTENT_LOCATION] {
            let Some(uri) = headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Uri>().ok())
            else {
                continue;
            };
            let same_origin = match uri.authority() {
                Some(authority) => authority.as_str().eq_ignore_ascii_case(self.host()),
                None => uri.path().starts_with('/'),
            };
            if same_origin {
                store.invalidate(store::key_of(&uri));
            }
        }
    }

    /// `206` for satisfiable ranges, `416` for none, the whole body for a
    /// `Range` the layer ignores, RFC 9110 §14.
    fn serve_range<B: Body>(
        &self,
        mut head: response::Parts,
        mut buffered: Buffered<B>,
    ) -> Response<ResponseBody<B>> {
        let Some(value) = crate::headers::single_line(self.request_headers.get_all(RANGE)) else {
            return Response::from_parts(head, ResponseBody::chunks(buffered));
        };
        let len = buffered.len;
        match range::evaluate(value, len) {
            RangeAnswer::Full => Response::from_parts(head, ResponseBody::chunks(buffered)),
            RangeAnswer::Unsatisfiable => {
                head.status = StatusCode::RANGE_NOT_SATISFIABLE;
                for name in [CACHE_CONTROL, EXPIRES, CONTENT_TYPE] {
                    head.headers.remove(name);
                }
                head.headers
                    .insert(CONTENT_RANGE, range::unsatisfied_range(len));
                head.headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
                Response::from_parts(head, ResponseBody::empty())
            }
            RangeAnswer::Partial(ranges) => {
                head.status = StatusCode::PARTIAL_CONTENT;
                buffered.trailers = None;
                if let [(first, last)] = ranges[..] {
                    head.headers
                        .insert(CONTENT_RANGE, range::content_range(first, last, len));
                    head.headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                    buffered.chunks = range::slice(&buffered.chunks, first, last).into();
                } else {
                    let boundary = self.boundary();
                    let content_type = head.headers.get(CONTENT_TYPE).cloned();
                    buffered.chunks = range::multipart(
                        &buffered.chunks,
                        &ranges,
                        len,
                        content_type.as_ref(),
                        &boundary,
                    );
                    let total: usize = buffered.chunks.iter().map(|c| c.len()).sum();
                    head.headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::try_from(format!("multipart/byteranges; boundary={boundary}"))
                            .expect("boundary is hex digits"),
                    );
                    head.headers
                        .insert(CONTENT_LENGTH, HeaderValue::from(total));
                }
                Response::from_parts(head, ResponseBody::chunks(buffered))
            }
        }
    }

    /// A multipart boundary that cannot occur in the content: derived from
    /// the content hash, which the parts' bytes cannot contain by chance.
    fn boundary(&self) -> String {
        let tag = self
            .validators
            .etag()
            .map(|e| String::from_utf8_lossy(e.opaque()).into_owned())
            .unwrap_or_default();
        let digits: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        format!("tower-media-cache-{digits}")
    }
}
