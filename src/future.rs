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
use crate::exchange::{Exchange, Outcome, Plan, Source};
use crate::handle::Counter;
use crate::inner::Pending;
use crate::policy::ProbeFuture;
use crate::validators::ContentHasher;
use crate::write::{self, Current, Fetched};

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
        // The internal GET that learns a write's current validators.
        Fetching { #[pin] future: F, held: Option<Held<F>> },
        // Its body, hashed and dropped.
        Draining { fetched: Box<Fetched<B>>, held: Option<Held<F>> },
        // The request goes to the inner service once it is ready.
        Calling { held: Option<Held<F>>, strip_range: bool },
        // The inner service is answering.
        Inner { #[pin] future: F },
        // Its body is read (and hashed) before the head is sent.
        Buffering { reading: Option<Box<Reading<B>>> },
    }
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
        Self::with(State::Inner { future }, Some(exchange))
    }

    /// The probe is asked first.
    pub(crate) fn probing(probe: ProbeFuture, held: Held<F>, exchange: Exchange) -> Self {
        let held = Some(held);
        Self::with(State::Probing { probe, held }, Some(exchange))
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
                    let response = response.take().expect("polled after completion");
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
                StateProj::Fetching { future, held } => {
                    let answer = ready!(future.poll(cx));
                    fetched(exchange(this.exchange), answer, held.take())
                }
                StateProj::Draining { fetched, held } => {
                    let current = ready!(fetched.poll_drain(cx));
                    decided(exchange(this.exchange).judge_write(current), held.take())
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
                    let (head, body) = ready!(future.poll(cx))?.into_parts();
                    answered(exchange(this.exchange), head, body)
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

/// A write's turn came: judged against a trusted entry, else the probe,
/// else an internal `GET` of its target.
fn after_turn<F: Future, B: Body>(
    exchange: &mut Exchange,
    probe: Option<ProbeFuture>,
    held: Option<Held<F>>,
) -> State<F, B> {
    if let Some(current) = exchange.trusted_entry().map(|e| e.validators.clone()) {
        return decided(exchange.judge_write(Current::Exists(current)), held);
    }
    if let Some(probe) = probe {
        return State::Probing { probe, held };
    }
    let mut held = held.expect("request held until called");
    exchange.count(Counter::ValidatorFetches);
    State::Fetching {
        future: held.fetch(),
        held: Some(held),
    }
}

/// The internal `GET` answered (or failed: then the service judges the
/// write): judge now, or hash its body first.
fn fetched<F, B: Body, E>(
    exchange: &mut Exchange,
    answer: Result<Response<B>, E>,
    held: Option<Held<F>>,
) -> State<F, B> {
    let current = match answer {
        Err(_) => Current::Unknown,
        Ok(response) => match write::fetched(response, exchange.config.authoritative) {
            Ok(current) => current,
            Err(fetched) => return State::Draining { fetched, held },
        },
    };
    decided(exchange.judge_write(current), held)
}

/// The layer answers, or the request goes on to the service.
fn decided<F, B: Body>(outcome: Outcome<B>, held: Option<Held<F>>) -> State<F, B> {
    match outcome {
        Outcome::Answer(response) => State::Ready {
            response: Some(response),
        },
        Outcome::Call { strip_range } => State::Calling { held, strip_range },
    }
}

/// The service's head is in: answer now, or read the body first.
fn answered<F, B: Body>(
    exchange: &mut Exchange,
    mut head: response::Parts,
    body: B,
) -> State<F, B> {
    match exchange.plan(&mut head, &body) {
        Plan::Finish => State::Ready {
            response: Some(exchange.finish(head, Source::Stream(body))),
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

/// The body is read (to its end, or as far as the limits allow): its
/// content ETag, if complete, then the answer.
fn read<F, B: Body>(exchange: &mut Exchange, reading: Reading<B>) -> State<F, B> {
    let Reading {
        mut head,
        buffered,
        hasher,
        ..
    } = reading;
    let hash = match hasher {
        Some(hasher) if buffered.is_complete() && exchange.represents(&head, &buffered) => {
            Some(exchange.content_etag(&mut head, hasher))
        }
        _ => None,
    };
    exchange.settle_fingerprint(&mut head.headers, hash.as_ref());
    State::Ready {
        response: Some(exchange.finish(head, Source::Buffered(buffered))),
    }
}
