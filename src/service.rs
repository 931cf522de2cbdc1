use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::config::Config;
use crate::fingerprint::Fingerprint;
use crate::future::{Ctx, ResponseFuture, WriteTurn};
use crate::inner::Held;
use crate::key::{Key, Selecting};
use crate::preconditions::{self, Precondition, Present};
use crate::rules::RouteMatch;
use crate::store::Found;

/// Middleware that adds validators and `Cache-Control` to responses and
/// answers conditional requests, from its validator store when it may.
///
/// Made by [`MediaCacheLayer`](crate::MediaCacheLayer). Clones share the
/// store and configuration.
#[derive(Clone)]
pub struct MediaCache<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for MediaCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCache")
            .field("inner", &self.inner)
            .field("store", &self.config.store)
            .finish_non_exhaustive()
    }
}

impl<S> MediaCache<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A handle on the validator store.
    pub fn handle(&self) -> crate::CacheHandle {
        crate::CacheHandle {
            store: self.config.store.clone(),
        }
    }
}

/// `uri` with another path and query.
fn with_path(uri: &http::Uri, path_and_query: &str) -> Option<http::Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    http::Uri::from_parts(parts).ok()
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MediaCache<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    /// Classify the request → maybe answer from the store or a probe → call
    /// the inner service; the [`ResponseFuture`] does the rest.
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        let route = config.rules.route(request.uri().path());
        if route == RouteMatch::Excluded {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let now = (config.clock)();
        let policy = config.rules.request_policy(route);
        let method = request.method().clone();
        let headers = request.headers();

        // Classify, in one pass over the header names.
        let present = Present::scan(headers);
        let store_allowed = !present.credentials || policy.is_public();
        // RFC 9110 §13.2.1: preconditions are ignored for CONNECT, OPTIONS
        // and TRACE.
        let conditional = !matches!(method, Method::CONNECT | Method::OPTIONS | Method::TRACE)
            && present.any_precondition();
        let key = Key::of(request.uri());
        let write = conditional && preconditions::is_unsafe(&method);
        // A write the layer may refuse with 412 itself (else the service
        // judges its preconditions: it may not accept the method at all).
        let guarded = write && config.guards_write(&method, route.scope(key));
        if write && guarded && config.verify_writes {
            return self.conditional_write(request, route, key, now, store_allowed);
        }
        let ranged = method == Method::GET && present.range && present.if_range;
        let needs_entry = (conditional && (!write || guarded))
            || ranged
            || method == Method::HEAD
            || (config.authoritative && present.range);
        let entry = if store_allowed && needs_entry {
            let selecting =
                Selecting::scanned(request.uri(), headers, &present, config.forwarded_host);
            config.store.lookup(key, selecting)
        } else {
            None
        };

        // Answer from a trusted entry.
        if policy.probe_ref().is_none()
            && let Some(entry) = entry
                .as_ref()
                .filter(|found| found.may_answer(now))
                .map(Found::entry)
        {
            if conditional && (!write || guarded) {
                match preconditions::evaluate_present(&method, headers, &entry.validators, present)
                {
                    Precondition::NotModified => {
                        return ResponseFuture::ready(Ctx::short_circuit_not_modified(
                            config,
                            entry,
                            request.uri().path(),
                            now,
                        ));
                    }
                    Precondition::Failed => {
                        return ResponseFuture::ready(Ctx::short_circuit_failed(
                            config,
                            &entry.validators,
                            request.uri().path(),
                            now,
                        ));
                    }
                    Precondition::Proceed => {}
                }
            }
            if ranged && !preconditions::if_range(headers, &entry.validators, now) {
                // The client's partial copy is not the current one:
                // have the inner service send all of it.
                request.headers_mut().remove(RANGE);
            }
        }

        let entry_trusted = entry.as_ref().is_some_and(|found| found.may_answer(now));
        let mut ctx = Ctx::new(
            self.config.clone(),
            &request,
            route,
            key,
            now,
            store_allowed,
            entry,
        );

        // A fingerprinted URL reaches the inner service as its plain path.
        if config.fingerprints.is_some()
            && let Some(fingerprint) =
                Fingerprint::parse(request.uri().path(), request.uri().query())
        {
            if let Some(plain) = with_path(request.uri(), &fingerprint.plain) {
                *request.uri_mut() = plain;
            }
            ctx.set_fingerprint(fingerprint);
        }

        // The layer alone judges validators: the service answers as if the
        // request were unconditional (the context kept the fields).
        if config.authoritative && (method == Method::GET || method == Method::HEAD) {
            let headers = request.headers_mut();
            for name in [
                IF_MATCH,
                IF_NONE_MATCH,
                IF_MODIFIED_SINCE,
                IF_UNMODIFIED_SINCE,
                IF_RANGE,
            ] {
                headers.remove(name);
            }
            // A range is only passed on unconditionally, or once `If-Range`
            // was checked against a trusted entry (above) or will be against
            // the probe (below); else the layer cuts it from the full answer.
            let checked = (store_allowed && policy.probe_ref().is_some()) || entry_trusted;
            if ranged && !checked {
                headers.remove(RANGE);
            }
            ctx.set_unverified_if_range(ranged);
        }

        // Ask the probe instead of the inner service.
        if store_allowed
            && ((conditional && (!write || guarded)) || ranged)
            && let Some(probe) = policy.probe_ref()
        {
            let (parts, body) = request.into_parts();
            let probing = probe.probe(&parts);
            let request = Request::from_parts(parts, body);
            return ResponseFuture::probing(probing, self.hold(request), ctx);
        }

        ResponseFuture::inner(self.inner.call(request), ctx)
    }
}

impl<S: Clone> MediaCache<S> {
    /// The service that was driven to readiness moves into the future with
    /// the request; a clone takes its place (tower-service's pattern).
    fn hold<ReqBody>(&mut self, request: Request<ReqBody>) -> Box<Held<S, ReqBody>> {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::new(Held::new(ready, request))
    }

    /// A conditional write the layer guards: it waits for the writes before
    /// it to the same resource, then is judged against a trusted entry, the
    /// probe, or an internal `GET` (see
    /// [`MediaCacheLayer::verify_conditional_writes`](crate::MediaCacheLayer::verify_conditional_writes)).
    fn conditional_write<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        route: RouteMatch,
        key: Key,
        now: std::time::SystemTime,
        store_allowed: bool,
    ) -> ResponseFuture<S::Future, ResBody>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
        ReqBody: Default + Send + 'static,
        ResBody: Body,
    {
        let config = self.config.clone();
        let ctx = Ctx::new(
            config.clone(),
            &request,
            route,
            key,
            now,
            store_allowed,
            None,
        );
        let lock = config.store.write_lock(key);
        let turn: WriteTurn = Box::pin(lock.lock_owned());
        let (parts, body) = request.into_parts();
        let probe = config
            .rules
            .request_policy(route)
            .probe_ref()
            .filter(|_| store_allowed)
            .map(|probe| probe.probe(&parts));
        let request = Request::from_parts(parts, body);
        ResponseFuture::conditional_write(turn, probe, self.hold(request), ctx)
    }
}
