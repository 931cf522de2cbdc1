use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE,
};
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::fingerprint::Fingerprint;
use crate::future::{Ctx, ResponseFuture};
use crate::layer::Config;
use crate::preconditions::{self, Precondition, Present};
use crate::rules::RouteMatch;
use crate::store;

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
    ReqBody: Send + 'static,
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
        let ranged = method == Method::GET && present.range && present.if_range;
        let key = store::key_of(request.uri());
        let needs_entry = conditional
            || ranged
            || method == Method::HEAD
            || (config.authoritative && present.range);
        let entry = if store_allowed && needs_entry {
            let host = store::host_of(request.uri(), present.host);
            config.store.lookup(key, host, headers)
        } else {
            None
        };

        // Answer from a trusted entry.
        if policy.probe_ref().is_none()
            && let Some(entry) = entry.as_ref().filter(|e| e.is_trusted(now))
        {
            if conditional {
                match preconditions::evaluate_present(&method, headers, &entry.validators, present)
                {
                    Precondition::NotModified => {
                        return ResponseFuture::ready(Ctx::short_circuit_not_modified(
                            config, entry, key, now,
                        ));
                    }
                    Precondition::Failed => {
                        return ResponseFuture::ready(Ctx::short_circuit_failed(
                            config,
                            &entry.validators,
                            key,
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

        let entry_trusted = entry.as_ref().is_some_and(|e| e.is_trusted(now));
        let mut ctx = Ctx::new(
            self.config.clone(),
            &request,
            route,
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
            && (conditional || ranged)
            && let Some(probe) = policy.probe_ref()
        {
            let (parts, body) = request.into_parts();
            let probing = probe.probe(&parts);
            let request = Request::from_parts(parts, body);
            // The service that was driven to readiness moves into the
            // future; a clone takes its place (tower-service's pattern).
            let clone = self.inner.clone();
            let mut ready = std::mem::replace(&mut self.inner, clone);
            let call = Box::new(move |strip_range: bool| {
                let mut request = request;
                if strip_range {
                    request.headers_mut().remove(RANGE);
                }
                ready.call(request)
            });
            return ResponseFuture::probing(probing, call, ctx);
        }

        ResponseFuture::inner(self.inner.call(request), ctx)
    }
}
