//! What [`MediaCache::call`](crate::MediaCache) does with a request, decided
//! in one pure function, [`classify`]: it reads the request, the
//! configuration and the store, and changes nothing (no counter, no store
//! write, no edit of the request — the edits are part of the [`Plan`]).

use std::sync::Arc;
use std::time::SystemTime;

use http::header::RANGE;
use http::{Method, Request, Response, Uri};
use http_body::Body;

use crate::body::ResponseBody;
use crate::cache_status::Report;
use crate::config::Config;
use crate::exchange::Exchange;
use crate::fingerprint::Fingerprint;
use crate::handle::Counter;
use crate::inner::Wiring;
use crate::key::{Key, Selecting};
use crate::preconditions::{self, Precondition, Present, Target};
use crate::range::{self, RangeDecision};
use crate::response as build;
use crate::rules::RouteMatch;
use crate::store::Found;
use crate::validators::Validators;

/// What `call` does with a request.
pub(crate) enum Decision {
    /// An excluded route: the service answers, untouched.
    Pass,
    /// A trusted store entry answers, without the service (for a request
    /// that matched this route).
    Answer(Answer, RouteMatch),
    /// A conditional write the layer guards: it waits for its turn, then is
    /// judged against the store, the probe or an internal `GET`.
    Write(Plan),
    /// The probe answers, or tells how to call the service.
    Probe(Plan),
    /// The service answers; the layer finishes its answer.
    Call(Plan),
    /// Nothing in the local store for a request that needs an entry: the
    /// shared second level is asked first, then the request goes on as a
    /// local hit or miss would ([`Exchange::after_lookup`]).
    Lookup(Plan),
}

/// An answer from the store.
pub(crate) enum Answer {
    /// `304` with the entry's stored header set.
    NotModified(Found),
    /// `412` with the current validators (and the seconds the entry's
    /// trust has left, when bounded).
    Failed(Validators, Option<u64>),
}

impl Answer {
    /// The response, counted, traced and (when configured) with the
    /// layer's `Cache-Status` member.
    pub(crate) fn respond<B: Body>(
        self,
        config: &Config,
        route: RouteMatch,
        uri: &Uri,
        now: SystemTime,
    ) -> Response<ResponseBody<B>> {
        let (mut response, ttl) = match self {
            Answer::NotModified(found) => {
                config.count(Counter::ShortCircuitNotModified, route);
                tracing::debug!(key = uri.path(), "304 from the validator store");
                let response = build::from_entry(found.entry(), now, ResponseBody::empty());
                (response, found.entry().trusted_until.seconds_left(now))
            }
            Answer::Failed(current, ttl) => {
                config.count(Counter::ShortCircuitPreconditionFailed, route);
                tracing::debug!(key = uri.path(), "412 from known validators");
                let response = build::precondition_failed(&current, now, ResponseBody::empty());
                (response, ttl)
            }
        };
        if let Some(name) = &config.cache_status {
            Report::Hit { ttl }.append_to(response.headers_mut(), name);
        }
        response
    }
}

/// What the layer carries from `call` to the response when the service (or
/// a probe) is asked: the request's identity, what the store had, and how
/// the request is edited before the service sees it.
pub(crate) struct Plan {
    route: RouteMatch,
    key: Key,
    store_allowed: bool,
    entry: Option<Found>,
    /// `If-Range` failed against a trusted entry: the service sends all.
    strip_range: bool,
    /// With `authoritative`: the preconditions are the layer's alone.
    hide_preconditions: bool,
    /// With `authoritative`: `Range` is hidden until `If-Range` is verified.
    hide_range: bool,
    /// With `authoritative`: `Range` and `If-Range` came, unverified yet.
    unverified_if_range: bool,
    fingerprint: Option<Fingerprint>,
    /// A `HEAD` whose answer may come without a body to hash: the service
    /// is held, to learn the validators with an internal `GET`.
    learns_head: bool,
    /// A trusted entry or a probe could have answered, but the request asked
    /// for the origin (`Cache-Control: no-cache`).
    refused_stored: bool,
}

impl Plan {
    fn new(route: RouteMatch, key: Key, store_allowed: bool, entry: Option<Found>) -> Self {
        Self {
            route,
            key,
            store_allowed,
            entry,
            strip_range: false,
            hide_preconditions: false,
            hide_range: false,
            unverified_if_range: false,
            fingerprint: None,
            learns_head: false,
            refused_stored: false,
        }
    }

    /// Whether the service is held for an internal `GET` after a `HEAD`.
    pub(crate) fn learns_head(&self) -> bool {
        self.learns_head
    }

    /// With `authoritative`, the layer alone judges validators: the service
    /// sees no preconditions, and a range only unconditionally or once
    /// `If-Range` was `checked` against a trusted entry or will be against
    /// the probe; else the layer cuts it from the full answer.
    fn layer_alone_judges(&mut self, ranged: bool, checked: bool) {
        self.hide_preconditions = true;
        self.hide_range = ranged && !checked;
        self.unverified_if_range = ranged;
    }

    /// Applies the plan's edits to the request and opens the exchange that
    /// carries the rest to the response.
    pub(crate) fn begin<ReqBody>(
        mut self,
        config: &Arc<Config>,
        request: &mut Request<ReqBody>,
        now: SystemTime,
    ) -> Exchange {
        if self.strip_range {
            request.headers_mut().remove(RANGE);
        }
        // The exchange keeps the fields the service will not see.
        let (fingerprint, hide_preconditions) = (self.fingerprint.take(), self.hide_preconditions);
        let (hide_range, unverified_if_range) = (self.hide_range, self.unverified_if_range);
        let mut exchange = self.open(config, request, now);
        if let Some(fingerprint) = fingerprint {
            // A fingerprinted URL reaches the service as its plain path.
            if let Some(plain) = with_path(request.uri(), &fingerprint.plain) {
                *request.uri_mut() = plain;
            }
            exchange.set_fingerprint(fingerprint);
        }
        if hide_preconditions {
            let headers = request.headers_mut();
            for name in preconditions::FIELDS {
                headers.remove(name);
            }
            if hide_range {
                headers.remove(RANGE);
            }
            exchange.set_unverified_if_range(unverified_if_range);
        }
        exchange
    }

    /// The exchange of a conditional write, which has no entry yet (it looks
    /// one up when its turn comes).
    pub(crate) fn begin_write<ReqBody>(
        self,
        config: &Arc<Config>,
        request: &Request<ReqBody>,
        now: SystemTime,
    ) -> (Key, Exchange) {
        (self.key, self.open(config, request, now))
    }

    /// The exchange that carries what the plan knew to the response.
    fn open<ReqBody>(
        self,
        config: &Arc<Config>,
        request: &Request<ReqBody>,
        now: SystemTime,
    ) -> Exchange {
        let mut exchange = Exchange::new(
            config.clone(),
            request,
            self.route,
            self.key,
            now,
            self.store_allowed,
            self.entry,
        );
        if self.refused_stored {
            exchange.refuse_stored();
        }
        exchange
    }
}

/// `uri` with another path and query.
fn with_path(uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Classify the request → maybe answer from the store → else how the
/// service is asked.
pub(crate) fn classify<ReqBody>(
    request: &Request<ReqBody>,
    config: &Config,
    wiring: Wiring,
    now: SystemTime,
) -> Decision {
    let route = config.rules.route(request.uri().path());
    if route == RouteMatch::Excluded {
        return Decision::Pass;
    }
    let policy = config.rules.request_policy(route);
    let method = request.method();
    let headers = request.headers();
    // One pass over the header names.
    let present = Present::scan(headers);
    let store_allowed = !present.credentials || policy.is_public();
    // RFC 9110 §13.2.1: preconditions are ignored for CONNECT, OPTIONS and
    // TRACE.
    let conditional = !matches!(*method, Method::CONNECT | Method::OPTIONS | Method::TRACE)
        && present.any_precondition();
    let key = Key::of(request.uri());
    let write = conditional && preconditions::is_unsafe(method);
    // A write the layer may refuse with 412 itself (else the service judges
    // its preconditions: it may not accept the method at all).
    let guarded = write && config.guards_write(method, route.scope(key));
    if guarded && config.verify_writes {
        return Decision::Write(Plan::new(route, key, store_allowed, None));
    }
    // Preconditions the layer may answer before the service.
    let judged = conditional && (!write || guarded);
    let ranged = *method == Method::GET && present.range && present.if_range;
    let needs_entry =
        judged || ranged || *method == Method::HEAD || (config.authoritative && present.range);
    let entry = if store_allowed && needs_entry {
        let selecting = Selecting::scanned(request.uri(), headers, &present, config.forwarded_host);
        config.store.lookup(key, selecting)
    } else {
        None
    };
    let mut trusted = entry.as_ref().is_some_and(|found| found.may_answer(now));
    // The client asked for the origin: nothing stored answers, and a probe
    // is not asked either (the service answers).
    let probe_answers = store_allowed && (judged || ranged) && policy.probe_ref().is_some();
    let refused_stored = (trusted || probe_answers) && no_cache_requested(headers);
    let (entry, probe_allowed) = if refused_stored {
        trusted = false;
        (None, false)
    } else {
        (entry, true)
    };
    let mut strip_range = false;
    if trusted && policy.probe_ref().is_none() {
        let current = &entry.as_ref().expect("a trusted entry").entry().validators;
        match answer_from_store(request, present, judged, ranged, current, now) {
            StoreSays::NotModified => {
                let found = entry.expect("a trusted entry");
                return Decision::Answer(Answer::NotModified(found), route);
            }
            StoreSays::Failed => {
                let found = entry.as_ref().expect("a trusted entry");
                let ttl = found.entry().trusted_until.seconds_left(now);
                return Decision::Answer(Answer::Failed(current.clone(), ttl), route);
            }
            StoreSays::Proceed { strip_range: strip } => strip_range = strip,
        }
    }
    let probe = probe_allowed && probe_answers;
    let mut plan = Plan::new(route, key, store_allowed, entry);
    plan.refused_stored = refused_stored;
    plan.strip_range = strip_range;
    // The internal GET that learns a HEAD's validators is sent only to a
    // service that routes by method: behind axum's `Router::layer` it would
    // reach the HEAD handler (or another method's).
    plan.learns_head = *method == Method::HEAD && config.learn_head && wiring.may_fetch();
    if config.fingerprints.is_some() {
        plan.fingerprint = Fingerprint::parse(request.uri().path(), request.uri().query());
    }
    if config.authoritative && (*method == Method::GET || *method == Method::HEAD) {
        let checked = (store_allowed && policy.probe_ref().is_some()) || trusted;
        plan.layer_alone_judges(ranged, checked);
    }
    let shared = store_allowed
        && needs_entry
        && plan.entry.is_none()
        && policy.probe_ref().is_none()
        && (*method == Method::GET || *method == Method::HEAD)
        && config.store.shares();
    if probe {
        Decision::Probe(plan)
    } else if shared {
        Decision::Lookup(plan)
    } else {
        Decision::Call(plan)
    }
}

/// Whether the request asks that no stored response be used without the
/// origin's say: `Cache-Control: no-cache` (RFC 9111 §5.2.1.4), or, for
/// HTTP/1.0 clients, `Pragma: no-cache` when there is no `Cache-Control`
/// (§5.4). Directive names are case-insensitive; an argument (`no-cache=x`,
/// which is not defined for requests) does not change it. A request
/// `max-age=0` (a browser's ordinary reload) does not count: the layer's
/// answers are the origin's own, with no age.
pub(crate) fn no_cache_requested(headers: &http::HeaderMap) -> bool {
    let is_no_cache = |member: &[u8]| {
        let name = member.split(|&b| b == b'=').next().unwrap_or(member);
        crate::headers::trim_ows(name).eq_ignore_ascii_case(b"no-cache")
    };
    if headers.contains_key(http::header::CACHE_CONTROL) {
        return crate::headers::list_members(headers.get_all(http::header::CACHE_CONTROL))
            .any(is_no_cache);
    }
    crate::headers::list_members(headers.get_all(http::header::PRAGMA)).any(is_no_cache)
}

/// What a trusted entry says of a request the layer may judge.
enum StoreSays {
    NotModified,
    Failed,
    /// The service is called; without `Range` when `If-Range` failed (the
    /// client's partial copy is not the current one: it gets all of it).
    Proceed {
        strip_range: bool,
    },
}

/// Judges a request against a trusted entry's validators: 304 or 412
/// without the service when the preconditions the layer judges say so.
fn answer_from_store<ReqBody>(
    request: &Request<ReqBody>,
    present: Present<'_>,
    judged: bool,
    ranged: bool,
    current: &Validators,
    now: SystemTime,
) -> StoreSays {
    let (method, headers) = (request.method(), request.headers());
    if judged {
        match preconditions::judge(method, headers, present, Target::Exists(current)) {
            Precondition::NotModified => return StoreSays::NotModified,
            Precondition::Failed => return StoreSays::Failed,
            Precondition::Proceed => {}
        }
    }
    let strip_range = ranged && range::decide(headers, Some(current), now) == RangeDecision::Strip;
    StoreSays::Proceed { strip_range }
}
