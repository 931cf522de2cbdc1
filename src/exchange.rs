//! One request's exchange with the layer: what `call` decided about the
//! request, carried to the response, and the decisions made there — what a
//! probe or an internal `GET` says, how the inner service's head gets the
//! policy and validators, whether to read the body first, which
//! preconditions hold, what is learned.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime};

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, ETAG, EXPIRES, LAST_MODIFIED,
    PRAGMA, RANGE, SET_COOKIE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, response};
use http_body::Body;
use tokio::sync::OwnedMutexGuard;

use crate::body::{Buffered, Filled, ResponseBody};
use crate::bus::shared::{Looked, Lookup};
use crate::cache_status::Report;
use crate::coalesce::{self, Joined, Leader, Shared, Waiting};
use crate::config::Config;
use crate::fingerprint::Fingerprint;
use crate::handle::Counter;
use crate::headers::{EntityTag, HttpDate};
use crate::key::{Key, Selecting};
use crate::policy::{CachePolicy, Directives, Trust};
use crate::preconditions::{self, Precondition, Present, Target};
use crate::range::{self, RangeDecision};
use crate::response as build;
use crate::rules::RouteMatch;
use crate::store::{self, Basis, Entry, Found};
use crate::stream::{self, Learning, Streamed};
use crate::tags::{CacheTags, Tags};
use crate::validators::{self, ContentHasher, Validators};
use crate::write::Current;

/// What a probe or a write's judgement leads to.
pub(crate) enum Outcome<B: Body> {
    /// The layer answers: a 304 or a 412.
    Answer(Response<ResponseBody<B>>),
    /// The inner service is called, without `Range` when `strip_range`.
    Call { strip_range: bool },
}

/// What to do once the inner service's head is in.
pub(crate) enum Plan<B: Body> {
    /// Answer with the body as it streams.
    Finish,
    /// A `HEAD` with no body to hash and no `ETag`: learn the validators
    /// with an internal `GET` first (if the service is held for it).
    Learn,
    /// Read the body first; `buffered` may already hold its budget.
    Buffer { hash: bool, buffered: Buffered<B> },
    /// A `GET`'s body too large to read first: it streams, hashed, verified
    /// or cut as it passes ([`Exchange::stream`]).
    Stream,
    /// A `HEAD`'s body too large to read first, with no tag the layer may
    /// vouch for: read to its end and hashed (never buffered), then the
    /// `HEAD` is answered with the tag ([`Exchange::adopt_learned`]).
    Drain,
}

/// An `ETag` learned from an earlier answer, put on a streamed one while
/// the service's own validators say the same.
struct Claim {
    etag: EntityTag,
    /// The representation's length when it was learned.
    len: u64,
    /// The service's `Last-Modified` is the one it had then: the claim is
    /// as good as a validator of the service's own, and may answer a 304
    /// or a range without reading the whole body to verify it.
    vouched: bool,
}

/// The body as the layer holds it when it decides the answer.
pub(crate) enum Source<B: Body> {
    Stream(B),
    Buffered(Buffered<B>),
    /// A `HEAD`'s body, read to its end and dropped ([`Plan::Drain`]).
    Drained,
}

impl<B: Body> Source<B> {
    fn into_body(self) -> ResponseBody<B> {
        match self {
            Source::Stream(body) => ResponseBody::stream(body),
            Source::Buffered(buffered) => ResponseBody::chunks(buffered),
            Source::Drained => ResponseBody::empty(),
        }
    }

    fn is_complete(&self) -> bool {
        match self {
            Source::Stream(_) | Source::Drained => true,
            Source::Buffered(buffered) => buffered.is_complete(),
        }
    }
}

/// What `call` decided about a request, carried to the response.
pub(crate) struct Exchange {
    pub(crate) config: Arc<Config>,
    method: Method,
    route: RouteMatch,
    uri: Uri,
    request_headers: HeaderMap,
    now: SystemTime,
    /// The request's path group in the store.
    key: Key,
    epoch: store::Epoch,
    /// Held by a conditional write from its judgement until the service has
    /// answered it (and its invalidation ran): see
    /// [`WriteTurn`](crate::future::WriteTurn).
    write_turn: Option<OwnedMutexGuard<()>>,
    store_allowed: bool,
    entry: Option<Found>,
    fingerprint: Option<Fingerprint>,
    /// With `authoritative`: the request had `Range` and `If-Range`, hidden
    /// from the service unless something verified `If-Range`.
    unverified_if_range: bool,
    // Decided from the response.
    /// The response passes untouched from here on (not a 2xx to GET/HEAD).
    passes: bool,
    trust: Trust,
    synthesize_last_modified: bool,
    expires_after: Option<Duration>,
    directives: Directives,
    validators: Validators,
    /// The layer hashed the answer's body (a `HEAD` that carried the whole
    /// body, too): its validators are the `GET`'s.
    hashed: bool,
    /// The layer's content tag is the answer's: what the service said of
    /// the bytes it named.
    basis: Option<Basis>,
    first_seen: Option<HttpDate>,
    /// This request leads a flight of identical `GET`s: see [`coalesce`].
    flight: Option<Leader>,
    /// It may lead one (unconditional, no `Range`).
    may_lead: bool,
    /// Until when it may wait for one.
    wait_until: Option<Instant>,
    /// The answer's cache tags (policy's and response's), rendered.
    tags: Tags,
    /// What `Cache-Status` and the metrics say of the exchange: see
    /// [`Exchange::report`].
    happened: Happened,
}

/// What happened to a request, as [`Exchange::report`] tells it.
#[derive(Default)]
struct Happened {
    /// The counters this exchange moved (one bit per [`Counter`]). Atomic
    /// only to keep the exchange `Sync` through `&self` (one owner: a plain
    /// load and store, never contended).
    seen: AtomicU32,
    /// The status the service answered the request with.
    forwarded: Option<StatusCode>,
    /// A trusted entry or a probe could have answered, but the request
    /// asked for the origin.
    refused_stored: bool,
}

const _: () = assert!(Counter::COUNT <= 32, "one bit per counter");

impl Exchange {
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
            fingerprint: None,
            unverified_if_range: false,
            passes: false,
            trust: Trust::Never,
            synthesize_last_modified: false,
            expires_after: None,
            directives: Directives::default(),
            validators: Validators::new(),
            hashed: false,
            basis: None,
            first_seen: None,
            flight: None,
            may_lead: false,
            wait_until: None,
            tags: Tags::default(),
            happened: Happened::default(),
        }
    }

    /// The validators the answer carries so far.
    pub(crate) fn validators(&self) -> &Validators {
        &self.validators
    }

    /// The route rule the request matched.
    pub(crate) fn route(&self) -> RouteMatch {
        self.route
    }

    /// Whether the store (and the probe) may answer this request.
    pub(crate) fn store_allowed(&self) -> bool {
        self.store_allowed
    }

    pub(crate) fn set_unverified_if_range(&mut self, ranged: bool) {
        self.unverified_if_range = ranged;
    }

    pub(crate) fn set_fingerprint(&mut self, fingerprint: Fingerprint) {
        self.fingerprint = Some(fingerprint);
    }

    /// The request's path, for traces.
    fn key(&self) -> &str {
        self.uri.path()
    }

    /// The request as the store selects variants by.
    fn selecting(&self) -> Selecting<'_> {
        Selecting::new(&self.uri, &self.request_headers, self.config.forwarded_host)
    }

    pub(crate) fn count(&self, counter: Counter) {
        self.config.count(counter, self.route);
        self.saw(counter);
    }

    /// Remembers that this exchange moved `counter`.
    fn saw(&self, counter: Counter) {
        let seen = &self.happened.seen;
        seen.store(seen.load(Relaxed) | 1 << counter as u32, Relaxed);
    }

    fn has_seen(&self, counter: Counter) -> bool {
        self.happened.seen.load(Relaxed) & (1 << counter as u32) != 0
    }

    /// A trusted entry or a probe could have answered, but the request
    /// asked for the origin (`Cache-Control: no-cache`).
    pub(crate) fn refuse_stored(&mut self) {
        self.happened.refused_stored = true;
    }

    /// What the layer did with the request, for `Cache-Status` (RFC 9211):
    /// answered alone unless the service answered the request or an
    /// internal `GET`; else why it was forwarded, and what came of it.
    fn report(&self) -> Report {
        use crate::cache_status::{Detail, Forward};
        let collapsed = self.has_seen(Counter::Coalesced);
        if self.happened.forwarded.is_none()
            && !self.has_seen(Counter::ValidatorFetches)
            && !collapsed
        {
            // The trust left, when a trusted entry (not a probe) answered.
            let ttl = self
                .trusted_entry()
                .filter(|_| !self.has_seen(Counter::Probes))
                .and_then(|entry| entry.trusted_until.seconds_left(self.now));
            return Report::Hit { ttl };
        }
        let fwd = if !(self.is_get() || self.method == Method::HEAD) {
            Forward::Method
        } else if self.happened.refused_stored {
            Forward::Request
        } else if self.entry.is_some() && self.trusted_entry().is_none() {
            Forward::Stale
        } else {
            Forward::Miss
        };
        let detail = if self.has_seen(Counter::BufferBudgetExhausted) {
            Some(Detail::BufferBudget)
        } else if self.has_seen(Counter::StreamedUnhashed) {
            Some(Detail::BodyTooLarge)
        } else if self.has_seen(Counter::NotLearnedTooLarge) {
            Some(Detail::EntryTooLarge)
        } else {
            None
        };
        Report::Forwarded {
            fwd,
            status: self.happened.forwarded,
            stored: self.has_seen(Counter::Learned),
            collapsed,
            detail,
        }
    }

    /// Adds the layer's `Cache-Status` member to the answer, when the layer
    /// is configured to.
    pub(crate) fn mark<B>(&self, response: &mut Response<B>) {
        if let Some(name) = &self.config.cache_status {
            self.report().append_to(response.headers_mut(), name);
        }
    }

    /// The entry found in `call`, when it may answer without the service
    /// now. Trust is re-read at each use on purpose: an invalidation bus can
    /// disconnect between the lookup and the answer, and nothing learned
    /// before that may be used after it.
    pub(crate) fn trusted_entry(&self) -> Option<&Entry> {
        self.entry
            .as_ref()
            .filter(|found| found.may_answer(self.now))
            .map(Found::entry)
    }

    /// A conditional write's turn came: the writes before it to the same
    /// resource have been answered and invalidated what `call` could have
    /// found, so the entry is looked up now.
    pub(crate) fn take_turn(&mut self, turn: OwnedMutexGuard<()>) {
        self.write_turn = Some(turn);
        self.entry = if self.store_allowed {
            self.config.store.lookup(self.key, self.selecting())
        } else {
            None
        };
    }

    /// Judges a conditional write against what the layer learned of its
    /// target: 412 without calling the service, or the write goes on (and
    /// keeps its turn until the service has answered).
    pub(crate) fn judge_write<B: Body>(&mut self, current: Current) -> Outcome<B> {
        let present = Present::scan(&self.request_headers);
        let verdict = match &current {
            Current::Exists(validators) | Current::Hashed { validators, .. } => {
                preconditions::judge(
                    &self.method,
                    &self.request_headers,
                    present,
                    Target::Exists(validators),
                )
            }
            Current::Absent => {
                preconditions::judge(&self.method, &self.request_headers, present, Target::Absent)
            }
            Current::Unknown => Precondition::Proceed,
        };
        if verdict == Precondition::Proceed {
            return Outcome::Call { strip_range: false };
        }
        self.write_turn = None;
        let validators = match current {
            Current::Exists(validators) | Current::Hashed { validators, .. } => validators,
            Current::Absent | Current::Unknown => Validators::new(),
        };
        Outcome::Answer(self.failed(&validators))
    }

    /// A 304 from a stored entry, without calling the inner service.
    fn not_modified_from<B: Body>(&self, entry: &Entry) -> Response<ResponseBody<B>> {
        self.count(Counter::ShortCircuitNotModified);
        tracing::debug!(key = self.key(), "304 from the validator store");
        build::from_entry(entry, self.now, ResponseBody::empty())
    }

    /// A 412 from known validators, without calling the inner service.
    fn failed<B: Body>(&self, current: &Validators) -> Response<ResponseBody<B>> {
        self.count(Counter::ShortCircuitPreconditionFailed);
        tracing::debug!(key = self.key(), "412 from known validators");
        build::precondition_failed(current, self.now, ResponseBody::empty())
    }

    /// Starts the lookup of this request's group in the shared second level
    /// (`None` when there is none, or it cannot be used now).
    pub(crate) fn shared_lookup(&self) -> Option<Lookup> {
        self.config.store.shared_lookup(self.key)
    }

    /// Decides from what the shared second level had: installed locally
    /// (unless invalidated since the request began), it answers as a local
    /// hit — a 304 or 412 when trusted and the preconditions say so — and
    /// otherwise the service is called as on a local miss.
    pub(crate) fn after_lookup<B: Body>(&mut self, looked: Looked) -> Outcome<B> {
        let store = &self.config.store;
        self.entry = store.install(self.key, self.selecting(), looked, self.epoch);
        let Some(current) = self.trusted_entry().map(|e| e.validators.clone()) else {
            return Outcome::Call { strip_range: false };
        };
        let present = Present::scan(&self.request_headers);
        let target = Target::Exists(&current);
        match preconditions::judge(&self.method, &self.request_headers, present, target) {
            Precondition::NotModified => {
                let entry = self.trusted_entry().expect("trusted above");
                Outcome::Answer(self.not_modified_from(entry))
            }
            Precondition::Failed => Outcome::Answer(self.failed(&current)),
            Precondition::Proceed => Outcome::Call { strip_range: false },
        }
    }

    /// Decides from a probe's answer: a 304 or 412, or the inner service is
    /// called (without `Range` when `If-Range` failed).
    pub(crate) fn after_probe<B: Body>(&mut self, current: Option<Validators>) -> Outcome<B> {
        self.count(Counter::Probes);
        let Some(current) = current.filter(|v| !v.is_empty()) else {
            // Unknown: a range the service would cut unchecked is not sent.
            return Outcome::Call {
                strip_range: self.unverified_if_range,
            };
        };
        let present = Present::scan(&self.request_headers);
        let target = Target::Exists(&current);
        match preconditions::judge(&self.method, &self.request_headers, present, target) {
            Precondition::NotModified => Outcome::Answer(self.not_modified_for_probe(&current)),
            Precondition::Failed => Outcome::Answer(self.failed(&current)),
            Precondition::Proceed => {
                let decision = range::decide(&self.request_headers, Some(&current), self.now);
                let strip_range = decision == RangeDecision::Strip;
                if strip_range {
                    self.request_headers.remove(RANGE);
                }
                Outcome::Call { strip_range }
            }
        }
    }

    /// The probe's 304: the stored header set when the store holds this
    /// representation, else the policy's headers and the probe's validators.
    fn not_modified_for_probe<B: Body>(&self, current: &Validators) -> Response<ResponseBody<B>> {
        let stored = self.entry.as_ref().map(Found::entry).filter(|entry| {
            match (entry.validators.etag(), current.etag()) {
                (Some(a), Some(b)) => a.weak_eq(b),
                _ => false,
            }
        });
        if let Some(entry) = stored {
            return self.not_modified_from(entry);
        }
        self.count(Counter::ShortCircuitNotModified);
        tracing::debug!(key = self.key(), "304 from the probe");
        let policy = self.config.rules.request_policy(self.route);
        build::not_modified(
            build::probe_headers(policy, current, self.now),
            None,
            self.now,
            ResponseBody::empty(),
        )
    }

    fn is_get(&self) -> bool {
        self.method == Method::GET
    }

    /// Apply policy and validators to the inner service's head, and decide
    /// whether the body must be read before answering.
    pub(crate) fn plan<B: Body>(&mut self, head: &mut response::Parts, body: &B) -> Plan<B> {
        self.happened.forwarded = Some(head.status);
        if !(self.is_get() || self.method == Method::HEAD) {
            self.after_other_method(head);
            return Plan::Finish;
        }
        if self.is_get()
            && (head.status == StatusCode::NOT_FOUND || head.status == StatusCode::GONE)
        {
            self.config.store.forget(self.key);
        }
        if !self.adopt_policy(head) {
            self.passes = true;
            return Plan::Finish;
        }
        self.adopt_validators(head);
        let head_ok = self.method == Method::HEAD && head.status == StatusCode::OK;
        if head_ok {
            self.adopt_head_claim(head);
        }
        if head.status == StatusCode::OK
            && let Some(plan) = self.buffering(body)
        {
            return plan;
        }
        if head_ok
            && self.config.learn_head
            && self.validators.etag().is_none()
            && !self.directives.no_store
        {
            return Plan::Learn;
        }
        // Not hashed: a fingerprint can only be vouched for by a trusted
        // entry learned from a verified answer (a HEAD after a GET).
        let known = self
            .trusted_entry()
            .and_then(|e| e.validators.etag().cloned());
        self.settle_fingerprint(&mut head.headers, known.as_ref());
        Plan::Finish
    }

    /// An answer to another method passes untouched; a successful unsafe one
    /// invalidates (RFC 9111 §4.4) and ends the write's turn.
    fn after_other_method(&mut self, head: &response::Parts) {
        let store = &self.config.store;
        if preconditions::is_unsafe(&self.method) {
            if head.status.is_success() || head.status.is_redirection() {
                let authority = crate::key::authority_of(&self.uri, &self.request_headers);
                store.invalidate_after_write(&self.uri, authority, &head.headers);
            }
            if self.method == Method::POST && head.status.is_success() {
                store.accept_post(self.route.scope(self.key));
            }
        }
        // The write has been answered and its invalidation made: the next
        // write to the resource may be judged.
        self.write_turn = None;
        self.passes = true;
    }

    /// The policy's headers on a 2xx or 304; returns whether the answer is
    /// a 2xx (the only answers the layer goes on with).
    fn adopt_policy(&mut self, head: &mut response::Parts) -> bool {
        let config = self.config.clone();
        let chosen = head.extensions.remove::<CachePolicy>();
        let own_tags = head.extensions.remove::<CacheTags>();
        let policy = match &chosen {
            Some(policy) => policy,
            None => config.rules.response_policy(self.route, &head.headers),
        };
        if head.status.is_success() || head.status == StatusCode::NOT_MODIFIED {
            let applied = build::apply_policy(&mut head.headers, policy, self.now);
            self.expires_after = policy.expires_after().filter(|_| applied);
            self.tags = crate::tags::emit(&mut head.headers, policy, own_tags, &config);
        }
        if !head.status.is_success() {
            return false;
        }
        self.trust = policy.effective_trust();
        self.synthesize_last_modified = policy.synthesizes_last_modified();
        self.store_allowed = self.store_allowed || policy.is_public();
        self.directives = Directives::parse(&head.headers);
        true
    }

    /// The validators the answer carries: the service's (an unquoted tag
    /// repaired), the trusted entry's under `authoritative` or on a `HEAD`
    /// that has none.
    fn adopt_validators(&mut self, head: &mut response::Parts) {
        if self.config.authoritative {
            // The service's tag is not the content's: the layer's replaces
            // it (a hash for a 200 to GET, the trusted entry's otherwise).
            head.headers.remove(ETAG);
            if head.status == StatusCode::PARTIAL_CONTENT
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
    }

    /// A `HEAD` answered without a body to hash and without an `ETag`
    /// carries the tag the store learned from `GET` when the service's own
    /// validators vouch for it: the same `Last-Modified` (present) and, if
    /// declared, the same `Content-Length` as when it was learned — the rule
    /// a streamed `GET`'s 304 follows ([`Exchange::claim`]). RFC 9110 §9.3.2:
    /// a `HEAD` carries the `GET`'s header fields, so it never carries a tag
    /// of its own making.
    fn adopt_head_claim(&mut self, head: &mut response::Parts) {
        if self.validators.etag().is_some() {
            return;
        }
        let Some(claim) = self.claim(content_length(&head.headers)) else {
            return;
        };
        if claim.vouched {
            head.headers.insert(ETAG, claim.etag.header_value().clone());
            self.validators = std::mem::take(&mut self.validators).with_etag(claim.etag);
        }
    }

    /// Whether a 200 is read before its head is sent: to hash it, or to cut
    /// a range from it (GET), within the per-response limit and the budget.
    /// A `HEAD` is hashed only when the service produced its body anyway
    /// (axum's router and hyper `service_fn`s do, and the server drops it):
    /// RFC 9110 §9.3.2, the same validators as `GET`.
    fn buffering<B: Body>(&mut self, body: &B) -> Option<Plan<B>> {
        let has_body = body.size_hint().exact() != Some(0) && !body.is_end_stream();
        if self.method == Method::HEAD && !has_body {
            return None;
        }
        let want_hash = self.wants_hash();
        let want_range = self.is_get() && self.request_headers.contains_key(RANGE);
        if !(want_hash || want_range) {
            return None;
        }
        let hint = body.size_hint();
        // A body of unknown length that the store learned to be large
        // streams at once, rather than after reading `max_buffer` of it.
        if hint.lower() > self.config.max_buffer
            || (hint.exact().is_none() && self.known_to_be_large())
        {
            return self.not_buffered(want_hash);
        }
        let mut buffered = Buffered::new();
        // A body of known length takes its whole share of the budget at
        // once, or none: under load the first comers complete instead of
        // every body holding a part and none finishing.
        if let Some(len) = hint.exact()
            && !buffered.reserve_to(&self.config.budget, len)
        {
            self.count(Counter::BufferBudgetExhausted);
            return self.not_buffered(want_hash);
        }
        Some(Plan::Buffer {
            hash: want_hash,
            buffered,
        })
    }

    /// A body too large to read first (or refused by the budget): a
    /// `GET`'s streams, hashed as it goes; a `HEAD`'s (which the server
    /// drops) is read to its end and hashed, so the `HEAD` carries the tag
    /// the `GET` would ([`Plan::Drain`]), unless hashing large bodies or
    /// learning `HEAD` validators is off: then it passes unhashed.
    fn not_buffered<B: Body>(&self, want_hash: bool) -> Option<Plan<B>> {
        if self.is_get() {
            return Some(Plan::Stream);
        }
        if want_hash && self.config.hash_large && self.config.learn_head {
            return Some(Plan::Drain);
        }
        if want_hash {
            self.count_unhashed();
        }
        None
    }

    /// Whether the store learned this representation over
    /// `max_buffer_bytes`.
    fn known_to_be_large(&self) -> bool {
        self.stored(|entry| entry.basis)
            .is_some_and(|basis| basis.len > self.config.max_buffer)
    }

    /// What `read` takes from the stored variant this request selects,
    /// trusted or not (`call` may have looked it up already).
    fn stored<R>(&self, read: impl FnOnce(&Entry) -> Option<R>) -> Option<R> {
        match &self.entry {
            Some(found) => read(found.entry()),
            None => read(
                self.config
                    .store
                    .lookup(self.key, self.selecting())?
                    .entry(),
            ),
        }
    }

    /// Whether a body read as far as the limits allow goes on as a stream:
    /// a `GET`'s that did not end (nor fail) within them.
    pub(crate) fn streams<B: Body>(&self, read: &Buffered<B>) -> bool {
        self.is_get() && read.rest.is_some() && read.error.is_none()
    }

    /// Counts and traces why buffering stopped short of the end.
    pub(crate) fn after_fill(&self, filled: Filled, hashing: bool) {
        match filled {
            Filled::Ended => {}
            Filled::Failed => tracing::debug!(key = self.key(), "body failed while buffering"),
            Filled::OverLimit | Filled::OverBudget => {
                if filled == Filled::OverBudget {
                    self.count(Counter::BufferBudgetExhausted);
                }
                if hashing && !self.is_get() {
                    self.count_unhashed();
                }
            }
        }
    }

    fn count_unhashed(&self) {
        self.count(Counter::StreamedUnhashed);
        tracing::debug!(key = self.key(), "body streamed without a content ETag");
    }

    /// Whether the layer would hash this answer's body: it has no `ETag`
    /// of the service's and may be kept, or its URL is fingerprinted.
    fn wants_hash(&self) -> bool {
        (self.validators.etag().is_none() && !self.directives.no_store)
            || self.fingerprint.is_some()
    }

    /// The answer to a `GET` whose body is not read before its head is
    /// sent (over `max_buffer_bytes`, or refused by the budget). `read` is
    /// what was read of it, hashed into `hasher`.
    ///
    /// The body is hashed as it streams and its tag learned at its end. If
    /// an earlier answer taught the tag of a representation the service
    /// still describes the same way (length, `Last-Modified`), the head
    /// carries that tag and the body verifies it ([`stream`]). Preconditions
    /// are judged against what the head carries — a 304 needs the
    /// service's `Last-Modified` to vouch for the tag, else the whole body
    /// goes, verified — and one byte range is cut as it passes.
    pub(crate) fn stream<B: Body>(
        &mut self,
        mut head: response::Parts,
        read: Buffered<B>,
        hasher: Option<ContentHasher>,
    ) -> Response<ResponseBody<B>> {
        // Not shared (not buffered): waiters go to the service.
        self.flight = None;
        let hash = match hasher {
            _ if !self.wants_hash() => None,
            _ if !self.config.hash_large => {
                self.count_unhashed();
                None
            }
            hasher => Some(hasher.unwrap_or_else(ContentHasher::new)),
        };
        let declared = content_length(&head.headers).or_else(|| read.exact_len());
        let last_modified = self.validators.last_modified_date();
        let claim = hash.as_ref().and_then(|_| self.claim(declared));
        if let Some(claim) = &claim {
            tracing::debug!(key = self.key(), etag = %claim.etag, "learned ETag on a streamed answer");
            head.headers.insert(ETAG, claim.etag.header_value().clone());
            self.validators = std::mem::take(&mut self.validators).with_etag(claim.etag.clone());
            if self.synthesize_last_modified {
                self.synthesize_last_modified(&mut head.headers);
            }
        }
        let tag = claim.as_ref().map(|c| c.etag.clone());
        self.settle_fingerprint(&mut head.headers, tag.as_ref());
        let unverified = claim.as_ref().is_some_and(|c| !c.vouched);
        if let Some(answer) = self.judge_answer(&head.headers, false, unverified) {
            return answer;
        }
        head.headers
            .entry(ACCEPT_RANGES)
            .or_insert(HeaderValue::from_static("bytes"));
        let len = declared.or(claim.as_ref().map(|c| c.len));
        let window = match self.stream_range(&mut head, len) {
            Ok(window) => window,
            Err(len) => return range::unsatisfiable(head, len),
        };
        let learning = match hash {
            Some(_) => self.learning(&head.headers, declared, last_modified),
            None => None,
        };
        let verify = claim
            .filter(|c| window.is_none() || !c.vouched)
            .map(|c| c.etag);
        let plan = stream::Plan {
            hash,
            window,
            verify,
            learning,
            // Only a length the service declared: a learned one may be
            // the old representation's.
            len: declared,
            route: self.route,
        };
        let streamed = Streamed::new(self.config.clone(), read, plan);
        Response::from_parts(head, ResponseBody::streamed(streamed))
    }

    /// The learned tag a streamed answer may carry: the service sent none,
    /// and its `Content-Length` (if any) and `Last-Modified` (or their
    /// absence) are those the tag was learned with.
    fn claim(&self, declared: Option<u64>) -> Option<Claim> {
        if !self.store_allowed || self.validators.etag().is_some() {
            return None;
        }
        let last_modified = self.validators.last_modified_date();
        self.stored(|entry| {
            let basis = entry.basis?;
            if basis.last_modified != last_modified || declared.is_some_and(|len| len != basis.len)
            {
                return None;
            }
            Some(Claim {
                etag: entry.validators.etag()?.clone(),
                len: basis.len,
                vouched: last_modified.is_some(),
            })
        })
    }

    /// The range cut from a streamed `200` to `GET`, with the head made a
    /// `206` for it; `Err` is a `416` for a representation of that length.
    /// `len` is the complete length, if known. `If-Range` is judged against
    /// what the head carries.
    fn stream_range(
        &self,
        head: &mut response::Parts,
        len: Option<u64>,
    ) -> Result<Option<(u64, u64)>, u64> {
        if !self.is_get()
            || range::decide(&self.request_headers, Some(&self.validators), self.now)
                != RangeDecision::CutHere
        {
            return Ok(None);
        }
        let Some(value) = crate::headers::single_line(self.request_headers.get_all(RANGE)) else {
            return Ok(None);
        };
        match range::evaluate_streamed(value, len) {
            range::StreamRange::Full => Ok(None),
            range::StreamRange::Unsatisfiable(len) => Err(len),
            range::StreamRange::Part { first, last, len } => {
                head.status = StatusCode::PARTIAL_CONTENT;
                let content_range = match len {
                    Some(len) => range::content_range(first, last, len),
                    None => range::content_range_of_unknown(first, last),
                };
                head.headers.insert(CONTENT_RANGE, content_range);
                head.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                self.count(Counter::RangesCutFromStream);
                Ok(Some((first, last)))
            }
        }
    }

    /// What a streamed answer teaches once its body has ended, if it may be
    /// learned: everything but the content tag.
    fn learning(
        &self,
        headers: &HeaderMap,
        declared: Option<u64>,
        last_modified: Option<HttpDate>,
    ) -> Option<Box<Learning>> {
        if !self.may_learn(headers) {
            return None;
        }
        let vary = crate::key::vary_names(headers)?;
        Some(Box::new(Learning {
            key: self.key,
            epoch: self.epoch,
            uri: self.uri.clone(),
            request_headers: self.request_headers.clone(),
            vary,
            entry: self.entry_of(headers),
            declared,
            last_modified,
            route: self.route,
        }))
    }

    /// What an internal `GET` (or the `HEAD`'s own body, read to its end)
    /// taught a `HEAD` that came without a body to buffer: the `GET`'s `ETag`
    /// goes on the `HEAD` answer (RFC 9110 §9.3.2), with its length when
    /// the service declared none, and the store then learns it as it would
    /// from the `GET` — with the length and `Last-Modified` the tag was
    /// computed for, so later answers may carry it ([`Exchange::claim`]).
    pub(crate) fn adopt_learned(&mut self, head: &mut response::Parts, current: Current) {
        let learned = match current {
            Current::Exists(validators) => validators.etag().cloned(),
            Current::Hashed { validators, len } => {
                self.basis = Some(Basis {
                    len,
                    last_modified: validators.last_modified_date(),
                });
                head.headers
                    .entry(CONTENT_LENGTH)
                    .or_insert_with(|| HeaderValue::from(len));
                validators.etag().cloned()
            }
            Current::Absent | Current::Unknown => None,
        };
        if let Some(etag) = &learned {
            head.headers.insert(ETAG, etag.header_value().clone());
            self.validators = std::mem::take(&mut self.validators).with_etag(etag.clone());
            self.hashed = true;
        }
        // As for any answer not hashed here: a fingerprint is vouched for by
        // the content's tag, or by a trusted entry learned from one.
        let known = learned.or_else(|| {
            self.trusted_entry()
                .and_then(|e| e.validators.etag().cloned())
        });
        self.settle_fingerprint(&mut head.headers, known.as_ref());
    }

    /// Whether a completely read body is the representation: always for a
    /// `GET`; for a `HEAD`, when it is not empty and its length is the one
    /// the answer declares (`Content-Length`, else the body's exact size),
    /// so a `HEAD` body that is not the `GET`'s — a `HEAD` handler's empty
    /// one above all — never gives it a validator.
    pub(crate) fn represents<B: Body>(&self, head: &response::Parts, read: &Buffered<B>) -> bool {
        if self.method != Method::HEAD {
            return true;
        }
        read.len > 0 && content_length(&head.headers).is_none_or(|len| len == read.len)
    }

    /// The content ETag of a completely read body; it becomes the
    /// response's ETag unless the service sent its own.
    pub(crate) fn content_etag(
        &mut self,
        head: &mut response::Parts,
        hasher: ContentHasher,
        len: u64,
    ) -> EntityTag {
        self.hashed = true;
        let (etag, remembered) = hasher.finish(&self.config.hash_memo);
        if remembered {
            self.count(Counter::HashMemoHits);
        }
        if self.validators.etag().is_none() {
            self.basis = Some(Basis {
                len,
                last_modified: self.validators.last_modified_date(),
            });
            head.headers.insert(ETAG, etag.header_value().clone());
            self.validators = std::mem::take(&mut self.validators).with_etag(etag.clone());
        }
        self.count(Counter::Hashed);
        etag
    }

    /// For a fingerprinted URL: `immutable` caching when `content` (the hash
    /// of the bytes served) is the one in the URL, `no-cache` otherwise.
    pub(crate) fn settle_fingerprint(
        &mut self,
        headers: &mut HeaderMap,
        content: Option<&EntityTag>,
    ) {
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
    pub(crate) fn finish<B: Body>(
        &mut self,
        mut head: response::Parts,
        source: Source<B>,
    ) -> Response<ResponseBody<B>> {
        // Waiters get this answer, or (dropped) go to the service.
        let flight = self.flight.take();
        if self.passes {
            return Response::from_parts(head, source.into_body());
        }
        let learnable =
            (self.is_get() || self.hashed) && head.status == StatusCode::OK && source.is_complete();
        if learnable && self.synthesize_last_modified {
            self.synthesize_last_modified(&mut head.headers);
        }
        if let Some(leader) = flight {
            leader.end(|| match &source {
                Source::Buffered(buffered) => self.shareable(&head, buffered),
                Source::Stream(_) | Source::Drained => None,
            });
        }
        if let Some(answer) = self.judge_answer(&head.headers, learnable, false) {
            return answer;
        }
        if learnable && !self.validators.is_empty() {
            self.learn(&head.headers);
        }
        self.serve(head, source)
    }

    /// The preconditions against the inner service's 2xx: a 304 or 412
    /// made from it, or `None` to send it. Evaluated even when no validator
    /// is known: `If-None-Match: *` holds against any representation (304,
    /// RFC 9110 §13.1.2) and `If-Match: "x"` matches none (412, §13.1.1).
    /// `unverified`: the `ETag` is a claim the body has yet to prove, so a
    /// 304 is not made from it (the verified `200` goes instead).
    fn judge_answer<B: Body>(
        &mut self,
        headers: &HeaderMap,
        learnable: bool,
        unverified: bool,
    ) -> Option<Response<ResponseBody<B>>> {
        let present = Present::scan(&self.request_headers);
        let target = if self.validators.etag().is_none() && self.leaves_tags_unjudged() {
            Target::Untagged(&self.validators)
        } else {
            Target::Exists(&self.validators)
        };
        match preconditions::judge(&self.method, &self.request_headers, present, target) {
            Precondition::NotModified if unverified => None,
            Precondition::NotModified => {
                if learnable {
                    self.learn(headers);
                }
                self.count(Counter::NotModifiedFromInner);
                Some(build::not_modified(
                    build::not_modified_headers(headers),
                    None,
                    self.now,
                    ResponseBody::empty(),
                ))
            }
            Precondition::Failed => {
                self.count(Counter::PreconditionFailedFromInner);
                Some(build::precondition_failed(
                    &self.validators,
                    self.now,
                    ResponseBody::empty(),
                ))
            }
            Precondition::Proceed => None,
        }
    }

    /// Whether the entity tags an answer without a known `ETag` is judged
    /// against are left alone ([`Target::Untagged`]): when the service saw
    /// the preconditions and answered 2xx (not under `authoritative`, which
    /// hides them from `GET` and `HEAD`, `classify::Plan::layer_alone_judges`,
    /// and not for an answer shared from another request's), and for a
    /// `HEAD`, which has no body a wrong guess could splice into a client's
    /// copy. A `GET` the layer alone judges, without a tag, fails `If-Match`.
    fn leaves_tags_unjudged(&self) -> bool {
        let service_judged = !self.config.authoritative && !self.has_seen(Counter::Coalesced);
        service_judged || self.method == Method::HEAD
    }

    /// The whole body, or the range the layer cuts from a complete buffered
    /// 200 (advertised with `Accept-Ranges`).
    fn serve<B: Body>(
        &self,
        mut head: response::Parts,
        source: Source<B>,
    ) -> Response<ResponseBody<B>> {
        match source {
            Source::Buffered(buffered)
                if self.is_get() && head.status == StatusCode::OK && buffered.is_complete() =>
            {
                head.headers
                    .entry(ACCEPT_RANGES)
                    .or_insert(HeaderValue::from_static("bytes"));
                let decision =
                    range::decide(&self.request_headers, Some(&self.validators), self.now);
                if decision == RangeDecision::CutHere {
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
        if !self.may_learn(headers) {
            return;
        }
        let Some(vary) = crate::key::vary_names(headers) else {
            return;
        };
        let entry = self.entry_of(headers);
        // Counted in `Stats` and traced by the store; the exchange exports
        // them with the route and remembers them for `Cache-Status`.
        let learned = self
            .config
            .store
            .learn(self.key, self.selecting(), &vary, entry, self.epoch);
        let counter = match learned {
            Ok(()) => Some(Counter::Learned),
            Err(store::NotLearned::TooLarge) => Some(Counter::NotLearnedTooLarge),
            Err(store::NotLearned::Invalidated) => None,
        };
        if let Some(counter) = counter {
            self.saw(counter);
            self.config.export(counter, self.route);
        }
        #[cfg(feature = "metrics")]
        crate::metrics::store_gauges_after_learn(&self.config.store, self.now);
    }

    /// Whether an answer may teach the store: not `no-store`, `private` or
    /// with `Set-Cookie`, and a request without credentials unless the
    /// policy is `public` (`Vary: *` is checked by the caller).
    fn may_learn(&self, headers: &HeaderMap) -> bool {
        self.store_allowed
            && !self.directives.no_store
            && !self.directives.private
            && !headers.contains_key(SET_COOKIE)
    }

    /// The store entry for an answer with these headers.
    fn entry_of(&self, headers: &HeaderMap) -> Entry {
        Entry {
            validators: self.validators.clone(),
            headers: build::stored_not_modified_headers(headers, self.now),
            trusted_until: self.trust.until(self.directives.reuse_lifetime(), self.now),
            expires_after: self.expires_after,
            first_seen: self
                .first_seen
                .or_else(|| self.validators.last_modified_date())
                .unwrap_or_else(|| HttpDate::from_system_time(self.now)),
            basis: self.basis,
            tags: self.tags.clone(),
        }
    }

    /// Whether this request may be answered from an identical one's
    /// response, as a shared cache could answer it (RFC 9111 §3, §5.2.1):
    /// a `GET` that the store may answer (no credentials unless the policy
    /// is `public`), whose client did not ask for a fresh answer
    /// (`Cache-Control: no-cache`/`no-store`, `Pragma: no-cache`, §5.2.1.4
    /// and §5.4).
    fn may_share(&self) -> bool {
        if !(self.config.coalesce && self.is_get() && self.store_allowed) {
            return false;
        }
        let headers = &self.request_headers;
        if headers.contains_key(CACHE_CONTROL) {
            let asked = Directives::parse(headers);
            if asked.no_cache || asked.no_store {
                return false;
            }
        }
        !crate::headers::list_members(headers.get_all(PRAGMA))
            .any(|member| member.eq_ignore_ascii_case(b"no-cache"))
    }

    /// Joins the flight of identical `GET`s at the inner service, or leads
    /// one; `sent` is the request as the service gets it. `Some` is the
    /// wait; `None`, call the service (as the leader, or alone).
    pub(crate) fn coalesce<ReqBody>(&mut self, sent: &Request<ReqBody>) -> Option<Waiting> {
        if !self.may_share() {
            return None;
        }
        let sent = Present::scan(sent.headers());
        self.may_lead = !(sent.range || sent.if_range || sent.any_precondition());
        self.wait_until = Some(Instant::now() + self.config.coalesce_timeout);
        self.join(&[])
    }

    /// After a wait that gave no answer for this request (the leader's
    /// answer is another variant, or none): wait for the flight of this
    /// request's variant under `vary`, lead it, or call the service alone.
    pub(crate) fn rejoin(&mut self, vary: &[http::HeaderName]) -> Option<Waiting> {
        if self.wait_until.is_some_and(|until| Instant::now() >= until) {
            return None;
        }
        self.join(vary)
    }

    fn join(&mut self, vary: &[http::HeaderName]) -> Option<Waiting> {
        let key = self.selecting().hash(vary, store::MAX_SELECTOR_BYTES)?;
        match self.config.flights.join(key, self.may_lead, self.epoch)? {
            Joined::Lead(leader) => {
                self.flight = Some(leader);
                None
            }
            Joined::Wait(landing) => {
                let left = self.wait_until.map_or(Duration::ZERO, |until| {
                    until.saturating_duration_since(Instant::now())
                });
                Some(coalesce::wait(landing, left))
            }
        }
    }

    /// The leader's answer as waiters may share it: a complete `200` the
    /// store could keep, with the `Vary`'d values of the leader's request.
    fn shareable<B: Body>(&self, head: &response::Parts, read: &Buffered<B>) -> Option<Shared> {
        if head.status != StatusCode::OK || !read.is_complete() || !self.may_learn(&head.headers) {
            return None;
        }
        let vary = crate::key::vary_names(&head.headers)?;
        let selector = self.selecting().encode(&vary, store::MAX_SELECTOR_BYTES)?;
        Some(Shared {
            status: head.status,
            version: head.version,
            headers: head.headers.clone(),
            chunks: read.chunks.clone(),
            len: read.len,
            trailers: read.trailers.clone(),
            vary,
            selector,
            expires_after: self.expires_after,
        })
    }

    /// A waiter's answer from its leader's response, judged by this
    /// request's own preconditions and `Range`; `None` when the response is
    /// of another variant (its `Vary`'d fields differ).
    pub(crate) fn answer_shared<B: Body>(
        &mut self,
        shared: &Shared,
    ) -> Option<Response<ResponseBody<B>>> {
        if !self.selecting().matches(&shared.vary, &shared.selector) {
            return None;
        }
        self.now = (self.config.clock)();
        let (mut head, ()) = Response::new(()).into_parts();
        head.status = shared.status;
        head.version = shared.version;
        head.headers = shared.headers.clone();
        build::refresh_dates(&mut head.headers, shared.expires_after, self.now);
        self.validators = Validators::from_headers(&head.headers);
        self.directives = Directives::parse(&head.headers);
        self.happened.forwarded = Some(shared.status);
        self.count(Counter::Coalesced);
        tracing::debug!(
            key = self.key(),
            "answered from an identical request's response"
        );
        if let Some(answer) = self.judge_answer(&head.headers, false, false) {
            return Some(answer);
        }
        let read = Buffered::complete(shared.chunks.clone(), shared.len, shared.trailers.clone());
        Some(self.serve(head, Source::Buffered(read)))
    }
}

/// A single valid `Content-Length`, if the answer declares one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    crate::headers::single_line(headers.get_all(CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
