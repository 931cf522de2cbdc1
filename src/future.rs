use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::SystemTime;

use bytes::Buf;
use http::header::{
    ACCEPT_RANGES, CONTENT_LOCATION, ETAG, EXPIRES, LAST_MODIFIED, LOCATION, RANGE, SET_COOKIE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::OwnedMutexGuard;

use crate::body::{Buffered, Filled, ResponseBody};
use crate::config::Config;
use crate::fingerprint::Fingerprint;
use crate::handle::Counter;
use crate::headers::{EntityTag, HttpDate};
use crate::inner::Pending;
use crate::key::{Key, Selecting};
use crate::policy::{CachePolicy, Directives, ProbeFuture, Trust};
use crate::preconditions::{self, Precondition};
use crate::range::{self};
use crate::response as build;
use crate::rules::RouteMatch;
use crate::store::{self, Entry, Found};
use crate::validators::{self, ContentHasher, Validators};

/// The inner service and the request, waiting for the future to call.
type Held<F> = Box<dyn Pending<F>>;
/// The turn of a conditional write: see [`Store::write_lock`](crate::store::Store::write_lock).
pub(crate) type WriteTurn = Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>;

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
        // The answer is known.
        Ready { response: Option<Response<ResponseBody<B>>> },
        // An excluded route: the inner future, untouched.
        Passthrough { #[pin] future: F },
        // A conditional write waits for the writes before it to the same
        // resource; then it is judged against a trusted entry, the probe
        // (if any), or an internal GET.
        WaitingTurn { turn: WriteTurn, probe: Option<ProbeFuture>, held: Option<Held<F>> },
        // The probe tells the current validators.
        Probing { probe: ProbeFuture, held: Option<Held<F>> },
        // The internal GET that learns a write's current validators.
        Fetching { #[pin] future: F, held: Option<Held<F>> },
        // Its body, hashed and dropped.
        Draining { fetched: Option<Box<Fetched<B>>>, held: Option<Held<F>> },
        // The request goes to the inner service once it is ready.
        Calling { held: Option<Held<F>>, strip_range: bool },
        // The inner service is answering.
        Inner { #[pin] future: F },
        // Its body is read (and hashed) before the head is sent.
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

    pub(crate) fn probing(probe: ProbeFuture, held: Held<F>, ctx: Ctx) -> Self {
        Self {
            state: State::Probing {
                probe,
                held: Some(held),
            },
            ctx: Some(Box::new(ctx)),
        }
    }

    pub(crate) fn conditional_write(
        turn: WriteTurn,
        probe: Option<ProbeFuture>,
        held: Held<F>,
        ctx: Ctx,
    ) -> Self {
        Self {
            state: State::WaitingTurn {
                turn,
                probe,
                held: Some(held),
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
                StateProj::WaitingTurn { turn, probe, held } => {
                    let guard = ready!(turn.as_mut().poll(cx));
                    let ctx = this.ctx.as_mut().expect("context present for a write");
                    ctx.write_turn = Some(guard);
                    ctx.look_up_again();
                    let held = held.take();
                    match (
                        ctx.trusted_entry().map(|e| e.validators.clone()),
                        probe.take(),
                    ) {
                        (Some(current), _) => ctx.judge_write(Current::Exists(current), held),
                        (None, Some(probe)) => State::Probing { probe, held },
                        (None, None) => {
                            let mut held = held.expect("request held until called");
                            ctx.count(Counter::ValidatorFetches);
                            State::Fetching {
                                future: held.fetch(),
                                held: Some(held),
                            }
                        }
                    }
                }
                StateProj::Probing { probe, held } => {
                    let validators = ready!(probe.as_mut().poll(cx));
                    let ctx = this.ctx.as_mut().expect("context present while probing");
                    match ctx.after_probe(validators) {
                        Ok(response) => State::Ready {
                            response: Some(response),
                        },
                        Err(strip_range) => State::Calling {
                            held: held.take(),
                            strip_range,
                        },
                    }
                }
                StateProj::Fetching { future, held } => {
                    let ctx = this.ctx.as_mut().expect("context present for a write");
                    let held = held.take();
                    match ready!(future.poll(cx)) {
                        // The service could not say: it judges the write.
                        Err(_) => ctx.judge_write(Current::Unknown, held),
                        Ok(response) => match ctx.fetched(response) {
                            Ok(current) => ctx.judge_write(current, held),
                            Err(fetched) => State::Draining {
                                fetched: Some(fetched),
                                held,
                            },
                        },
                    }
                }
                StateProj::Draining { fetched, held } => {
                    let state = fetched.as_mut().expect("fetched body present");
                    let current = ready!(state.poll_drain(cx));
                    let ctx = this.ctx.as_mut().expect("context present for a write");
                    ctx.judge_write(current, held.take())
                }
                StateProj::Calling { held, strip_range } => {
                    let pending = held.as_mut().expect("request held until called");
                    if let Err(output) = ready!(pending.poll_ready(cx)) {
                        // The service failed to become ready: its error is
                        // the answer.
                        return Poll::Ready(output.map(|r| r.map(ResponseBody::stream)));
                    }
                    State::Inner {
                        future: pending.send(*strip_range),
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
                    let filled = ready!(state.buffered.poll_fill(
                        cx,
                        &mut state.body,
                        state.hasher.as_mut(),
                        ctx.config.max_buffer,
                        &ctx.config.budget,
                    ));
                    ctx.after_fill(filled, state.hasher.is_some());
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

/// What the layer knows of a write's target before the write runs.
pub(crate) enum Current {
    /// A current representation with these validators.
    Exists(Validators),
    /// No current representation: the service answers `GET` with 404/410.
    Absent,
    /// The service did not say (another status, an error): the write goes
    /// to the service with its preconditions, for it to judge.
    Unknown,
}

/// The body of an internal `GET`, hashed as it is read and dropped.
pub(crate) struct Fetched<B> {
    body: Pin<Box<B>>,
    validators: Validators,
    hasher: ContentHasher,
}

impl<B: Body> Fetched<B> {
    /// Reads to the end; the content ETag completes the validators. A body
    /// error leaves them unknown.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<Current> {
        loop {
            match ready!(self.body.as_mut().poll_frame(cx)) {
                None => {
                    let validators = std::mem::take(&mut self.validators);
                    return Poll::Ready(Current::Exists(
                        validators.with_etag(self.hasher.finish()),
                    ));
                }
                Some(Err(_)) => return Poll::Ready(Current::Unknown),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let len = chunk.len();
                            self.hasher.update(chunk);
                            data.advance(len);
                        }
                    }
                }
            }
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
    /// The request's path group in the store.
    key: Key,
    epoch: store::Epoch,
    /// Held by a conditional write from its judgement until the service has
    /// answered it (and its invalidation ran): see [`WriteTurn`].
    write_turn: Option<OwnedMutexGuard<()>>,
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
        key: Key,
        now: SystemTime,
        store_allowed: bool,
        entry: Option<Found>,
    ) -> Self {
        let epoch = config.store.epoch(key);
        Self {
            config,
            method: request.method().clone(),
            route,
            uri: request.uri().clone(),
            request_headers: request.headers().clone(),
            now,
            key,
            epoch,
            write_turn: None,
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
        self.uri.path()
    }

    /// The request as the store selects variants by.
    fn selecting(&self) -> Selecting<'_> {
        Selecting::new(&self.uri, &self.request_headers, self.config.forwarded_host)
    }

    fn count(&self, counter: Counter) {
        self.config.store.counters.bump(counter);
    }

    /// The entry found in `call`, when it may answer without the service
    /// now. Trust is re-read at each use on purpose: an invalidation bus can
    /// disconnect between the lookup and the answer, and nothing learned
    /// before that may be used after it.
    fn trusted_entry(&self) -> Option<&Entry> {
        self.entry
            .as_ref()
            .filter(|found| found.may_answer(self.now))
            .map(Found::entry)
    }

    /// Looks the entry up again: a write that waited for its turn must see
    /// what the writes before it left (they invalidated what `call` found).
    fn look_up_again(&mut self) {
        self.entry = if self.store_allowed {
            self.config.store.lookup(self.key, self.selecting())
        } else {
            None
        };
    }

    /// The answer to an internal `GET`: validators it carries, or its body
    /// to hash, or what its status says.
    fn fetched<B: Body>(&self, response: Response<B>) -> Result<Current, Box<Fetched<B>>> {
        let (mut head, body) = response.into_parts();
        if head.status == StatusCode::NOT_FOUND || head.status == StatusCode::GONE {
            return Ok(Current::Absent);
        }
        if !head.status.is_success() {
            return Ok(Current::Unknown);
        }
        if self.config.authoritative {
            head.headers.remove(ETAG);
        } else if let Some(repaired) = head
            .headers
            .get(ETAG)
            .and_then(validators::repair_unquoted_etag)
        {
            head.headers.insert(ETAG, repaired);
        }
        let validators = Validators::from_headers(&head.headers);
        if validators.etag().is_some() {
            return Ok(Current::Exists(validators));
        }
        Err(Box::new(Fetched {
            body: Box::pin(body),
            validators,
            hasher: ContentHasher::new(),
        }))
    }

    /// Judges a conditional write against what the layer learned of its
    /// target: 412 without calling the service, or the write goes on (and
    /// keeps its turn until the service has answered).
    fn judge_write<F, B: Body>(&mut self, current: Current, held: Option<Held<F>>) -> State<F, B> {
        let verdict = match &current {
            Current::Exists(validators) => {
                preconditions::evaluate(&self.method, &self.request_headers, validators)
            }
            // Only a write that can create the resource is judged against
            // its absence: a `DELETE` (or `POST`) of nothing would be a 404
            // without its preconditions, and then they are ignored
            // (RFC 9110 §13.2.1) — the service answers.
            Current::Absent if matches!(self.method, Method::PUT | Method::PATCH) => {
                preconditions::evaluate_absent(&self.request_headers)
            }
            Current::Absent => Precondition::Proceed,
            Current::Unknown => Precondition::Proceed,
        };
        if verdict == Precondition::Proceed {
            return State::Calling {
                held,
                strip_range: false,
            };
        }
        self.write_turn = None;
        let validators = match current {
            Current::Exists(validators) => validators,
            Current::Absent | Current::Unknown => Validators::new(),
        };
        State::Ready {
            response: Some(Self::short_circuit_failed(
                &self.config,
                &validators,
                self.key(),
                self.now,
            )),
        }
    }

    /// A 304 from a trusted store entry, without calling the inner service.
    pub(crate) fn short_circuit_not_modified<B: Body>(
        config: &Config,
        entry: &Entry,
        key: &str,
        now: SystemTime,
    ) -> Response<ResponseBody<B>> {
        config.store.counters.bump(Counter::ShortCircuitNotModified);
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
            .bump(Counter::ShortCircuitPreconditionFailed);
        tracing::debug!(key, "412 from known validators");
        build::precondition_failed(current, now, ResponseBody::empty())
    }

    /// Decides from a probe's answer: a response, or `Err(strip_range)` to
    /// call the inner service (without `Range` when `If-Range` failed).
    fn after_probe<B: Body>(
        &mut self,
        current: Option<Validators>,
    ) -> Result<Response<ResponseBody<B>>, bool> {
        self.config.store.counters.bump(Counter::Probes);
        let Some(current) = current.filter(|v| !v.is_empty()) else {
            // Unknown: a range the service would cut unchecked is not sent.
            return Err(self.unverified_if_range);
        };
        match preconditions::evaluate(&self.method, &self.request_headers, &current) {
            Precondition::NotModified => {
                let known = self.entry.as_ref().map(Found::entry).filter(|entry| {
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
                            .bump(Counter::ShortCircuitNotModified);
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

    /// `GET` or `HEAD`: the methods whose answers carry a representation's
    /// validators and policy.
    fn is_get_or_head(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }

    /// Apply policy and validators to the inner service's head, and decide
    /// whether the body must be read before answering.
    fn plan<B: Body>(&mut self, head: &mut response::Parts, body: &B) -> Plan<B> {
        let config = self.config.clone();
        let status = head.status;
        if !self.is_get_or_head() {
            if preconditions::is_unsafe(&self.method) {
                if status.is_success() || status.is_redirection() {
                    self.invalidate_after_write(&head.headers);
                }
                if self.method == Method::POST && status.is_success() {
                    config.store.accept_post(self.route.scope(self.key));
                }
            }
            // The write has been answered and its invalidation made: the
            // next write to the resource may be judged.
            self.write_turn = None;
            self.pass = true;
            return Plan::Finish;
        }
        if self.is_get() && (status == StatusCode::NOT_FOUND || status == StatusCode::GONE) {
            config.store.forget(self.key);
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
                && let Some(etag) = self.trusted_entry().and_then(|e| e.validators.etag())
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
            && let Some(entry) = self.trusted_entry()
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
            .trusted_entry()
            .and_then(|e| e.validators.etag().cloned());
        self.settle_fingerprint(&mut head.headers, known.as_ref());
        Plan::Finish
    }

    /// Counts and traces why buffering stopped short of the end.
    fn after_fill(&self, filled: Filled, hashing: bool) {
        match filled {
            Filled::Ended => {}
            Filled::Failed => tracing::debug!(key = self.key(), "body failed while buffering"),
            Filled::OverLimit if hashing => self.count_unhashed(false),
            Filled::OverBudget if hashing => self.count_unhashed(true),
            Filled::OverLimit | Filled::OverBudget => {}
        }
    }

    fn count_unhashed(&self, budget: bool) {
        self.count(Counter::StreamedUnhashed);
        if budget {
            self.count(Counter::BufferBudgetExhausted);
        }
        tracing::debug!(
            key = self.key(),
            budget,
            "body streamed without a content ETag"
        );
    }

    /// The content ETag of a completely read body; it becomes the
    /// response's ETag unless the service sent its own.
    fn content_etag(&mut self, head: &mut response::Parts, hasher: ContentHasher) -> EntityTag {
        let etag = hasher.finish();
        if self.validators.etag().is_none() {
            head.headers.insert(ETAG, etag.header_value().clone());
            self.validators = std::mem::take(&mut self.validators).with_etag(etag.clone());
        }
        self.config.store.counters.bump(Counter::Hashed);
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
                        .bump(Counter::NotModifiedFromInner);
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
                        .bump(Counter::PreconditionFailedFromInner);
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
                    return range::answer(
                        head,
                        buffered,
                        self.request_headers.get_all(RANGE),
                        self.validators.etag(),
                    );
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
        let previous = self.config.store.lookup(self.key, self.selecting());
        let first_seen = match previous.as_ref().map(Found::entry) {
            Some(entry) if entry.validators.etag().is_some_and(|e| e.weak_eq(etag)) => {
                entry.first_seen
            }
            Some(entry) => now.max(HttpDate::from_secs(
                entry.first_seen.secs().saturating_add(1),
            )),
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
        let Some(vary) = crate::key::vary_names(headers) else {
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
            trusted_until: self.trust.until(self.directives.reuse_lifetime(), self.now),
            expires_after: self.expires_after,
            first_seen: self
                .first_seen
                .or_else(|| self.validators.last_modified_date())
                .unwrap_or_else(|| HttpDate::from_system_time(self.now)),
        };
        // Refusals are counted and traced by the store.
        let _ = self
            .config
            .store
            .learn(self.key, self.selecting(), &vary, entry, self.epoch);
    }

    /// A `2xx`/`3xx` answer to an unsafe method invalidates the target and
    /// the `Location` / `Content-Location` references on the same host,
    /// RFC 9111 §4.4.
    fn invalidate_after_write(&self, headers: &HeaderMap) {
        let store = &self.config.store;
        store.invalidate(self.uri.path());
        let host = crate::key::authority_of(&self.uri, &self.request_headers);
        for name in [LOCATION, CONTENT_LOCATION] {
            for value in headers.get_all(&name) {
                if let Some(path) = crate::key::same_host_path(value.as_bytes(), &self.uri, host) {
                    store.invalidate(&path);
                }
            }
        }
    }
}
