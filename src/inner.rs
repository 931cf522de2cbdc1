//! Calling the inner service from the response future, when the call cannot
//! happen in `call` itself: after a probe, or after an internal `GET` that
//! learns the validators a conditional write is judged against.
//!
//! An internal `GET` is the only request the layer ever sends of its own,
//! and it is sent only where the layer knows its inner service routes by
//! method ([`Wiring::WholeService`]): behind axum's `Router::layer` the inner
//! service is one method's handler, and a `GET` sent to a `PUT` handler
//! would run the write.
//!
//! The service that `poll_ready` drove to readiness moves into the future (a
//! clone takes its place, tower-service's pattern). Its first call uses that
//! readiness; a second call (the write after the internal `GET`) polls it
//! ready again first, as the `Service` contract requires — `Buffer` or
//! `ConcurrencyLimit` in front of the handler would panic otherwise.

use std::future::Future;
use std::task::{Context, Poll};

use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RANGE, TRANSFER_ENCODING,
};
use http::{Method, Request};
use tower_service::Service;

/// What the layer knows of the service it wraps, which decides whether it
/// may send that service requests of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wiring {
    /// Made by [`Layer::layer`](tower_layer::Layer::layer), the way axum's
    /// `Router::layer`, `Router::route_layer` and `MethodRouter::layer`,
    /// `ServiceBuilder` and tonic's `Server::builder().layer` wrap services:
    /// the inner service may be one method's handler. The layer sends it
    /// only the requests its clients sent.
    PerMethod,
    /// Made by [`MediaCacheLayer::wrap_router`](crate::MediaCacheLayer::wrap_router):
    /// the user says the inner service routes every method itself, so an
    /// internal `GET` reaches the `GET` handler.
    WholeService,
}

impl Wiring {
    /// Whether the layer may send the inner service a `GET` of its own (to
    /// judge a conditional write, or to learn a `HEAD`'s validators).
    pub(crate) fn may_fetch(self) -> bool {
        self == Wiring::WholeService
    }
}

/// The inner service and the request, held by a response future until it
/// decides to call. Object-safe, so the future's type does not name the
/// service.
pub(crate) trait Pending<F: Future>: Send {
    /// Ready when the service may be called. An error of the service comes
    /// back as the whole output of the response (`Err(output)`).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), F::Output>>;

    /// Calls the service with a `GET` of the request's target: the same
    /// headers and extensions without preconditions, `Range` and the
    /// fields that describe the request's own body; an empty body. `None`,
    /// and nothing is sent, unless the service routes by method
    /// ([`Wiring::may_fetch`]).
    fn fetch(&mut self) -> Option<F>;

    /// Calls the service with the request itself, without `Range` when
    /// `strip_range`. Once only.
    fn send(&mut self, strip_range: bool) -> F;

    /// Calls the service with a copy of the request with an empty body,
    /// keeping the request for a later [`fetch`](Self::fetch): for a `HEAD`,
    /// whose body is empty anyway.
    fn send_copy(&mut self) -> F;
}

/// [`Pending`] for a service `S`.
pub(crate) struct Held<S, ReqBody> {
    service: S,
    wiring: Wiring,
    /// Whether the service may be called without polling it again.
    ready: bool,
    request: Option<Request<ReqBody>>,
}

impl<S, ReqBody> Held<S, ReqBody> {
    /// `service` must have been driven to readiness.
    pub(crate) fn new(service: S, wiring: Wiring, request: Request<ReqBody>) -> Self {
        Self {
            service,
            wiring,
            ready: true,
            request: Some(request),
        }
    }
}

impl<S, ReqBody: Default> Held<S, ReqBody> {
    /// The held request's method, target, version, header fields and
    /// extensions, with an empty body.
    fn copy(&self) -> Request<ReqBody> {
        let original = self.request.as_ref().expect("the request is held");
        let mut request = Request::new(ReqBody::default());
        *request.method_mut() = original.method().clone();
        *request.uri_mut() = original.uri().clone();
        *request.version_mut() = original.version();
        *request.headers_mut() = original.headers().clone();
        *request.extensions_mut() = original.extensions().clone();
        request
    }
}

impl<S, ReqBody, R> Pending<S::Future> for Held<S, ReqBody>
where
    S: Service<Request<ReqBody>, Response = R> + Send,
    ReqBody: Default + Send,
{
    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), <S::Future as Future>::Output>> {
        if self.ready {
            return Poll::Ready(Ok(()));
        }
        match self.service.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(Err(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn fetch(&mut self) -> Option<S::Future> {
        if !self.wiring.may_fetch() {
            return None;
        }
        let mut request = self.copy();
        *request.method_mut() = Method::GET;
        let headers = request.headers_mut();
        for name in crate::preconditions::FIELDS.into_iter().chain([
            RANGE,
            CONTENT_LENGTH,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            TRANSFER_ENCODING,
            EXPECT,
        ]) {
            headers.remove(name);
        }
        self.ready = false;
        Some(self.service.call(request))
    }

    fn send_copy(&mut self) -> S::Future {
        let request = self.copy();
        self.ready = false;
        self.service.call(request)
    }

    fn send(&mut self, strip_range: bool) -> S::Future {
        let mut request = self.request.take().expect("the request is sent once");
        if strip_range {
            request.headers_mut().remove(RANGE);
        }
        self.ready = false;
        self.service.call(request)
    }
}
