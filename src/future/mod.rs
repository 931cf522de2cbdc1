//! The response future: a state machine that drives one request through the
//! probe, the write's turn and internal `GET`, the inner service and the
//! body, asking its [`Exchange`] what each step decides.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Response, response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::sync::OwnedMutexGuard;

use crate::body::{Buffered, ResponseBody};
use crate::bus::shared::Lookup;
use crate::coalesce::Waiting;
use crate::exchange::Exchange;
use crate::inner::Pending;
use crate::policy::ProbeFuture;
use crate::validators::ContentHasher;
use crate::write::Fetched;

mod steps;
use steps::{after_turn, answered, decided, fetched, judged, looked_up, read};

/// The inner service and the request, waiting for the future to call.
pub(crate) type Held<F> = Box<dyn Pending<F>>;
/// The turn of a conditional write: see
/// [`Store::write_lock`](crate::store::Store::write_lock).
pub(crate) type WriteTurn = Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>;

pin_project! {
    /// Response future of [`MediaCache`](crate::MediaCache).
    pub struct ResponseFuture<F, B: Body> {
        #[pin]
        state: State<F, B>,
        // Boxed, with the buffering state: a future answered at once (a
        // short-circuit) stays small, which matters where it is boxed per
        // request (axum routes).
        exchange: Option<Box<Exchange>>,
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
        // The shared second level is asked for the entry the local store
        // lacks (within its timeout); then as a local hit or miss. `keep`:
        // the service is kept for an internal GET after a HEAD.
        LookingUp { lookup: Lookup, held: Option<Held<F>>, keep: bool },
        // The internal GET that learns the current validators: of a write's
        // target, or of a HEAD answered without a body to hash (`head`).
        Fetching { #[pin] future: F, held: Option<Held<F>>, head: Option<Box<Answered<B>>> },
        // Its body, hashed and dropped.
        Draining { fetched: Box<Fetched<B>>, held: Option<Held<F>>, head: Option<Box<Answered<B>>> },
        // The held service is polled ready, then called as `call` says.
        Calling { held: Option<Held<F>>, call: Option<Call<B>> },
        // The inner service is answering.
        Inner { #[pin] future: F, held: Option<Held<F>> },
        // An identical GET is at the inner service: its answer, or a turn
        // to call the service (see `coalesce`).
        Waiting { waiting: Waiting, held: Option<Held<F>> },
        // Its body is read (and hashed) before the head is sent.
        Buffering { reading: Option<Box<Reading<B>>> },
    }
}

/// What a held service is called with once it is ready.
pub(crate) enum Call<B> {
    /// The request, without `Range` when `strip_range`.
    Request { strip_range: bool },
    /// The request (a `HEAD`), keeping the service for a `GET` after it.
    Keeping,
    /// An internal `GET`, to learn the validators of this `HEAD` answer.
    Fetch(Box<Answered<B>>),
}

/// The service's answer to a `HEAD`, waiting for an internal `GET` (or
/// for its own body to be read and hashed: then `body` is `None`).
pub(crate) struct Answered<B> {
    head: response::Parts,
    body: Option<B>,
}

/// A response whose body the layer is reading before it answers.
struct Reading<B: Body> {
    head: response::Parts,
    body: Option<Pin<Box<B>>>,
    buffered: Buffered<B>,
    hasher: Option<ContentHasher>,
}

impl<B: Body> Reading<B> {
    /// Reads as much of the body as the limits allow (see
    /// [`Buffered::poll_fill`]); the exchange counts why it stopped.
    fn poll_fill(&mut self, cx: &mut Context<'_>, exchange: &Exchange) -> Poll<()> {
        let config = &exchange.config;
        let filled = ready!(self.buffered.poll_fill(
            cx,
            &mut self.body,
            self.hasher.as_mut(),
            config.max_buffer,
            &config.budget,
        ));
        exchange.after_fill(filled, self.hasher.is_some());
        Poll::Ready(())
    }
}

impl<F, B: Body> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B: Body> ResponseFuture<F, B> {
    fn with(state: State<F, B>, exchange: Option<Exchange>) -> Self {
        Self {
            state,
            exchange: exchange.map(Box::new),
        }
    }

    /// An excluded route.
    pub(crate) fn passthrough(future: F) -> Self {
        Self::with(State::Passthrough { future }, None)
    }

    /// An answer the layer made without the service.
    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        let response = Some(response);
        Self::with(State::Ready { response }, None)
    }

    /// The service was called.
    pub(crate) fn inner(future: F, exchange: Exchange) -> Self {
        Self::with(State::Inner { future, held: None }, Some(exchange))
    }

    /// The service is called, and held on for an internal `GET` after.
    pub(crate) fn calling(held: Held<F>, exchange: Exchange) -> Self {
        let (held, call) = (Some(held), Some(Call::Keeping));
        Self::with(State::Calling { held, call }, Some(exchange))
    }

    /// An identical request is at the service: wait for its answer.
    pub(crate) fn waiting(waiting: Waiting, held: Held<F>, exchange: Exchange) -> Self {
        let held = Some(held);
        Self::with(State::Waiting { waiting, held }, Some(exchange))
    }

    /// The probe is asked first.
    pub(crate) fn probing(probe: ProbeFuture, held: Held<F>, exchange: Exchange) -> Self {
        let held = Some(held);
        Self::with(State::Probing { probe, held }, Some(exchange))
    }

    /// The shared second level is asked first.
    pub(crate) fn looking(lookup: Lookup, held: Held<F>, keep: bool, exchange: Exchange) -> Self {
        let held = Some(held);
        Self::with(State::LookingUp { lookup, held, keep }, Some(exchange))
    }

    /// A conditional write waits for its turn.
    pub(crate) fn conditional_write(
        turn: WriteTurn,
        probe: Option<ProbeFuture>,
        held: Held<F>,
        exchange: Exchange,
    ) -> Self {
        let held = Some(held);
        let state = State::WaitingTurn { turn, probe, held };
        Self::with(state, Some(exchange))
    }
}

/// The exchange every state but `Ready` and `Passthrough` has.
fn exchange(exchange: &mut Option<Box<Exchange>>) -> &mut Exchange {
    exchange.as_mut().expect("an exchange for this state")
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
                    let mut response = response.take().expect("polled after completion");
                    if let Some(exchange) = this.exchange.as_deref() {
                        exchange.mark(&mut response);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Passthrough { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::stream)));
                }
                StateProj::WaitingTurn { turn, probe, held } => {
                    let turn = ready!(turn.as_mut().poll(cx));
                    let exchange = exchange(this.exchange);
                    exchange.take_turn(turn);
                    after_turn(exchange, probe.take(), held.take())
                }
                StateProj::Probing { probe, held } => {
                    let validators = ready!(probe.as_mut().poll(cx));
                    let outcome = exchange(this.exchange).after_probe(validators);
                    decided(outcome, held.take())
                }
                StateProj::LookingUp { lookup, held, keep } => {
                    let looked = ready!(Pin::new(lookup).poll(cx));
                    looked_up(exchange(this.exchange), looked, held.take(), *keep)
                }
                StateProj::Fetching { future, held, head } => {
                    let answer = ready!(future.poll(cx));
                    fetched(exchange(this.exchange), answer, held.take(), head.take())
                }
                StateProj::Draining {
                    fetched,
                    held,
                    head,
                } => {
                    let current = ready!(fetched.poll_drain(cx));
                    judged(exchange(this.exchange), current, held.take(), head.take())
                }
                StateProj::Calling { held, call } => {
                    let pending = held.as_mut().expect("service held until called");
                    if let Err(output) = ready!(pending.poll_ready(cx)) {
                        // The service failed to become ready: its error is
                        // the answer.
                        return Poll::Ready(output.map(|r| r.map(ResponseBody::stream)));
                    }
                    let call = call.take().expect("called once");
                    steps::call(exchange(this.exchange), held, call)
                }
                StateProj::Waiting { waiting, held } => {
                    let landed = ready!(waiting.as_mut().poll(cx));
                    steps::landed(exchange(this.exchange), landed, held.take())
                }
                StateProj::Inner { future, held } => {
                    let (head, body) = ready!(future.poll(cx))?.into_parts();
                    answered(exchange(this.exchange), head, body, held.take())
                }
                StateProj::Buffering { reading } => {
                    let exchange = exchange(this.exchange);
                    let state = reading.as_mut().expect("reading state present");
                    ready!(state.poll_fill(cx, exchange));
                    read(exchange, *reading.take().expect("reading state present"))
                }
            };
            this.state.set(next);
        }
    }
}
