//! The steps between the response future's states: each takes what a
//! state produced and returns the next state, asking the [`Exchange`].

use std::future::Future;

use http::{Response, response};
use http_body::Body;

use super::{Answered, Call, Held, Reading, State};
use crate::body::Buffered;
use crate::bus::shared::Looked;
use crate::coalesce::Landed;
use crate::exchange::{Exchange, Outcome, Plan, Source};
use crate::handle::Counter;
use crate::policy::ProbeFuture;
use crate::validators::ContentHasher;
use crate::write::{self, Current, Fetched};

/// A write's turn came: judged against a trusted entry, else the probe,
/// else an internal `GET` of its target where the service routes by method;
/// else the service judges it, with its preconditions.
pub(super) fn after_turn<F: Future, B: Body>(
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
    match held.fetch() {
        Some(future) => {
            exchange.count(Counter::ValidatorFetches);
            State::Fetching {
                future,
                held: Some(held),
                head: None,
            }
        }
        None => decided(exchange.judge_write(Current::Unknown), Some(held)),
    }
}

/// The internal `GET` answered (or failed: then the validators stay
/// unknown): go on now, or hash its body first.
pub(super) fn fetched<F, B: Body, E>(
    exchange: &mut Exchange,
    answer: Result<Response<B>, E>,
    held: Option<Held<F>>,
    head: Option<Box<Answered<B>>>,
) -> State<F, B> {
    let current = match answer {
        Err(_) => Current::Unknown,
        Ok(response) => match write::fetched(response, exchange.config.authoritative) {
            Ok(current) => current,
            Err(fetched) => {
                return State::Draining {
                    fetched,
                    held,
                    head,
                };
            }
        },
    };
    judged(exchange, current, held, head)
}

/// What the internal `GET` taught: a `HEAD`'s answer gets its validators
/// and is finished; a write is judged.
pub(super) fn judged<F, B: Body>(
    exchange: &mut Exchange,
    current: Current,
    held: Option<Held<F>>,
    head: Option<Box<Answered<B>>>,
) -> State<F, B> {
    match head {
        Some(answered) => {
            let Answered { mut head, body } = *answered;
            exchange.adopt_learned(&mut head, current);
            let source = body.map_or(Source::Drained, Source::Stream);
            State::Ready {
                response: Some(exchange.finish(head, source)),
            }
        }
        None => decided(exchange.judge_write(current), held),
    }
}

/// The layer answers, or the request goes on to the service.
pub(super) fn decided<F, B: Body>(outcome: Outcome<B>, held: Option<Held<F>>) -> State<F, B> {
    match outcome {
        Outcome::Answer(response) => State::Ready {
            response: Some(response),
        },
        Outcome::Call { strip_range } => State::Calling {
            held,
            call: Some(Call::Request { strip_range }),
        },
    }
}

/// The shared second level answered (or not in time): a 304 or 412 from
/// what it had, or the service is called as on a local miss.
pub(super) fn looked_up<F, B: Body>(
    exchange: &mut Exchange,
    looked: Looked,
    held: Option<Held<F>>,
    keep: bool,
) -> State<F, B> {
    match exchange.after_lookup(looked) {
        Outcome::Call { .. } if keep => State::Calling {
            held,
            call: Some(Call::Keeping),
        },
        outcome => decided(outcome, held),
    }
}

/// The service's head is in: answer now, read the body first, or (a
/// `HEAD` with nothing to hash) learn the validators with a `GET` first.
pub(super) fn answered<F, B: Body>(
    exchange: &mut Exchange,
    mut head: response::Parts,
    body: B,
    held: Option<Held<F>>,
) -> State<F, B> {
    match exchange.plan(&mut head, &body) {
        Plan::Finish => State::Ready {
            response: Some(exchange.finish(head, Source::Stream(body))),
        },
        Plan::Learn => match held {
            Some(held) => {
                let call = Some(Call::Fetch(Box::new(Answered {
                    head,
                    body: Some(body),
                })));
                State::Calling {
                    held: Some(held),
                    call,
                }
            }
            None => judged(
                exchange,
                Current::Unknown,
                held,
                Some(Box::new(Answered {
                    head,
                    body: Some(body),
                })),
            ),
        },
        Plan::Drain => {
            let validators = exchange.validators().clone();
            State::Draining {
                fetched: Box::new(Fetched::new(body, validators)),
                held: None,
                head: Some(Box::new(Answered { head, body: None })),
            }
        }
        Plan::Stream => {
            let mut read = Buffered::new();
            read.rest = Some(Box::pin(body));
            State::Ready {
                response: Some(exchange.stream(head, read, None)),
            }
        }
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
pub(super) fn read<F, B: Body>(exchange: &mut Exchange, reading: Reading<B>) -> State<F, B> {
    let Reading {
        mut head,
        buffered,
        hasher,
        ..
    } = reading;
    if exchange.streams(&buffered) {
        return State::Ready {
            response: Some(exchange.stream(head, buffered, hasher)),
        };
    }
    let hash = match hasher {
        Some(hasher) if buffered.is_complete() && exchange.represents(&head, &buffered) => {
            let len = buffered.len;
            Some(exchange.content_etag(&mut head, hasher, len))
        }
        _ => None,
    };
    exchange.settle_fingerprint(&mut head.headers, hash.as_ref());
    State::Ready {
        response: Some(exchange.finish(head, Source::Buffered(buffered))),
    }
}

/// A wait for an identical request's answer ended: answered from it, or
/// (another variant, none, too late) wait for another flight, lead one,
/// or call the service alone.
pub(super) fn landed<F: Future, B: Body>(
    exchange: &mut Exchange,
    landed: Landed,
    held: Option<Held<F>>,
) -> State<F, B> {
    let waiting = match landed {
        Landed::Shared(shared) => match exchange.answer_shared(&shared) {
            Some(response) => {
                return State::Ready {
                    response: Some(response),
                };
            }
            None => exchange.rejoin(&shared.vary),
        },
        Landed::Abandoned => exchange.rejoin(&[]),
        Landed::TimedOut => None,
    };
    match waiting {
        Some(waiting) => State::Waiting { waiting, held },
        None => State::Calling {
            held,
            call: Some(Call::Request { strip_range: false }),
        },
    }
}

/// The held service is ready: call it as `call` says.
pub(super) fn call<F: Future, B: Body>(
    exchange: &mut Exchange,
    held: &mut Option<Held<F>>,
    call: Call<B>,
) -> State<F, B> {
    let pending = held.as_mut().expect("service held until called");
    match call {
        Call::Request { strip_range } => State::Inner {
            future: pending.send(strip_range),
            held: None,
        },
        Call::Keeping => State::Inner {
            future: pending.send_copy(),
            held: held.take(),
        },
        Call::Fetch(answered) => match pending.fetch() {
            Some(future) => {
                exchange.count(Counter::ValidatorFetches);
                State::Fetching {
                    future,
                    held: None,
                    head: Some(answered),
                }
            }
            // `classify` does not hold a service that may be one method's
            // handler for this; were it held, the HEAD keeps its own
            // validators.
            None => judged(exchange, Current::Unknown, None, Some(answered)),
        },
    }
}
