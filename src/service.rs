//! The service: `call` classifies the request and hands it to the
//! response future in the state its decision says.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::ResponseBody;
use crate::classify::{Decision, classify};
use crate::config::Config;
use crate::exchange::Exchange;
use crate::future::{ResponseFuture, WriteTurn};
use crate::inner::{Held, Wiring};
use crate::policy::ProbeFuture;

/// Middleware that adds validators and `Cache-Control` to responses and
/// answers conditional requests, from its validator store when it may.
///
/// Made by [`MediaCacheLayer`](crate::MediaCacheLayer): as a [`Layer`](tower_layer::Layer)
/// (any wiring; the layer sends the service only its clients' requests) or
/// with [`MediaCacheLayer::wrap_router`](crate::MediaCacheLayer::wrap_router)
/// (a service that routes every method itself; the layer may also send it
/// a `GET` of its own). Clones share the store and configuration.
#[derive(Clone)]
pub struct MediaCache<S> {
    inner: S,
    config: Arc<Config>,
    wiring: Wiring,
}

impl<S: std::fmt::Debug> std::fmt::Debug for MediaCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCache")
            .field("inner", &self.inner)
            .field("store", &self.config.store)
            .field("wiring", &self.wiring)
            .finish_non_exhaustive()
    }
}

impl<S> MediaCache<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>, wiring: Wiring) -> Self {
        Self {
            inner,
            config,
            wiring,
        }
    }

    /// Whether the layer may send the wrapped service requests of its own
    /// (an internal `GET` to judge a conditional write or to learn a
    /// `HEAD`'s validators): only when made with
    /// [`MediaCacheLayer::wrap_router`](crate::MediaCacheLayer::wrap_router).
    pub fn sends_own_requests(&self) -> bool {
        self.wiring.may_fetch()
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

    /// Classifies the request (`classify.rs`), then one `match`: answer from the store,
    /// guard a write, ask the probe, or call the inner service; the
    /// [`ResponseFuture`] does the rest.
    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let now = (self.config.clock)();
        match classify(&request, &self.config, self.wiring, now) {
            Decision::Pass => ResponseFuture::passthrough(self.inner.call(request)),
            Decision::Answer(answer, route) => {
                ResponseFuture::ready(answer.respond(&self.config, route, request.uri(), now))
            }
            Decision::Write(plan) => {
                let (key, exchange) = plan.begin_write(&self.config, &request, now);
                let lock = self.config.store.write_lock(key);
                let turn: WriteTurn = Box::pin(lock.lock_owned());
                let (probe, request) = self.probe_for(request, &exchange);
                ResponseFuture::conditional_write(turn, probe, self.hold(request), exchange)
            }
            Decision::Probe(plan) => {
                let exchange = plan.begin(&self.config, &mut request, now);
                match self.probe_for(request, &exchange) {
                    (Some(probe), request) => {
                        ResponseFuture::probing(probe, self.hold(request), exchange)
                    }
                    (None, request) => ResponseFuture::inner(self.inner.call(request), exchange),
                }
            }
            Decision::Lookup(plan) => {
                let keep = plan.learns_head();
                let exchange = plan.begin(&self.config, &mut request, now);
                match exchange.shared_lookup() {
                    Some(lookup) => {
                        ResponseFuture::looking(lookup, self.hold(request), keep, exchange)
                    }
                    None if keep => ResponseFuture::calling(self.hold(request), exchange),
                    None => ResponseFuture::inner(self.inner.call(request), exchange),
                }
            }
            Decision::Call(plan) if plan.learns_head() => {
                let exchange = plan.begin(&self.config, &mut request, now);
                ResponseFuture::calling(self.hold(request), exchange)
            }
            Decision::Call(plan) => {
                let mut exchange = plan.begin(&self.config, &mut request, now);
                match exchange.coalesce(&request) {
                    Some(waiting) => ResponseFuture::waiting(waiting, self.hold(request), exchange),
                    None => ResponseFuture::inner(self.inner.call(request), exchange),
                }
            }
        }
    }
}

impl<S: Clone> MediaCache<S> {
    /// The service that was driven to readiness moves into the future with
    /// the request; a clone takes its place (tower-service's pattern).
    fn hold<ReqBody>(&mut self, request: Request<ReqBody>) -> Box<Held<S, ReqBody>> {
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        Box::new(Held::new(ready, self.wiring, request))
    }

    /// The route's probe, started for this request when the exchange may
    /// use it (not for requests with credentials under a policy that is not
    /// `public`).
    fn probe_for<ReqBody>(
        &self,
        request: Request<ReqBody>,
        exchange: &Exchange,
    ) -> (Option<ProbeFuture>, Request<ReqBody>) {
        let policy = self.config.rules.request_policy(exchange.route());
        let Some(probe) = policy.probe_ref().filter(|_| exchange.store_allowed()) else {
            return (None, request);
        };
        let (parts, body) = request.into_parts();
        let probing = probe.probe(&parts);
        (Some(probing), Request::from_parts(parts, body))
    }
}
