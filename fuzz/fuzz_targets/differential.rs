//! The differential test of `tests/differential.rs`, driven by the fuzzer:
//! request sequences decoded from its bytes go through two copies of one app
//! (`tests/differential_app`, included by path), one behind a layer whose
//! store answers alone (`Trust::UntilInvalidated`) and one behind the same
//! layer whose handler always runs (`Trust::Never`). Runs without an
//! executor: every future here is ready at once.
//!
//! Checks, on every request: both copies answer the same status, headers
//! (but `Date`) and bytes — a `HEAD` that A answers from what its store
//! learned from `GET` must be what B answers to that `GET` — and a request
//! the handler would answer with something other than 2xx gets exactly that
//! answer, never a 304 or 412. A failure panics with the whole sequence.
//!
//! The decoder builds sequences as the proptest strategy does — a few
//! neighbouring shapes, then requests over them — from the same pools, a
//! byte or so per field, so small inputs already make several requests.
//!
//! The same bytes then drive the wiring matrix of `tests/wiring.rs`
//! (`tests/wiring_app`, included by path): the first byte picks a wiring
//! (per method behind axum's `Router::layer`, `route_layer`,
//! `MethodRouter::layer`, a `service_fn`, `ServeDir`, or wrapped whole) and
//! a trust mode, the rest the requests; the app behind the layer must
//! answer as its bare twin and keep its data.
#![no_main]

#[path = "../../tests/differential_app/mod.rs"]
mod differential_app;
#[path = "../../tests/wiring_app/mod.rs"]
mod wiring_app;

use arbitrary::{Result, Unstructured};
use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;

use differential_app::{
    BODY_BYTES, CREDENTIALS, Condition, FIELDS, HOSTS, LANGUAGES, METHODS, MUTATION_WEIGHTS,
    Mutation, QUERIES, RANGES, RESOURCES, SPELLINGS, Shape, Step, neighbours,
};

/// Longest sequence decoded from one input.
const MAX_STEPS: usize = 40;
/// Most shapes a sequence draws its requests from.
const MAX_SHAPES: u8 = 5;

fn shape(u: &mut Unstructured<'_>) -> Result<Shape> {
    Ok(Shape {
        resource: *u.choose(RESOURCES)?,
        spelling: *u.choose(SPELLINGS)?,
        query: u.choose(QUERIES)?,
        host: *u.choose(HOSTS)?,
        language: u.choose(LANGUAGES)?,
        credentials: *u.choose(CREDENTIALS)?,
    })
}

fn mutation(u: &mut Unstructured<'_>) -> Result<Mutation> {
    let which = u.choose_index(MUTATION_WEIGHTS)?;
    Ok(Mutation::pick(which, usize::from(u.arbitrary::<u8>()?)))
}

fn condition(u: &mut Unstructured<'_>) -> Result<Condition> {
    let field = *u.choose(FIELDS)?;
    Ok(Condition::pick(field, usize::from(u.arbitrary::<u8>()?)))
}

fn step(u: &mut Unstructured<'_>, shapes: &[Shape]) -> Result<Step> {
    let shape = *u.choose(shapes)?;
    let method = u.choose(METHODS)?.clone();
    let conditions = (0..u.int_in_range(0..=2u8)?)
        .map(|_| condition(u))
        .collect::<Result<_>>()?;
    let range = *u.choose(RANGES)?;
    let body = (0..u.int_in_range(0..=3u8)?)
        .map(|_| u.choose(BODY_BYTES).copied())
        .collect::<Result<_>>()?;
    Ok(Step {
        method,
        shape,
        conditions,
        range,
        body,
    })
}

/// A base shape, a chain of mutations, then requests until the bytes run
/// out.
fn sequence(u: &mut Unstructured<'_>) -> Result<Vec<Step>> {
    let base = shape(u)?;
    let mutations = (1..u.int_in_range(1..=MAX_SHAPES)?)
        .map(|_| mutation(u))
        .collect::<Result<Vec<_>>>()?;
    let shapes = neighbours(base, &mutations);
    let mut steps = Vec::new();
    while steps.len() < MAX_STEPS && !u.is_empty() {
        steps.push(step(u, &shapes)?);
    }
    Ok(steps)
}

/// The fuzzer's bytes as the wiring matrix's choices (zeros once spent).
struct Bytes<'a>(Unstructured<'a>);

impl wiring_app::Choose for Bytes<'_> {
    fn below(&mut self, n: usize) -> usize {
        self.0.choose_index(n).unwrap_or(0)
    }
}

/// A wiring, a trust mode and up to `MAX_STEPS` requests from `data`.
fn wiring(data: &[u8]) {
    use wiring_app::Wiring;
    let [first, rest @ ..] = data else {
        return;
    };
    let wiring = Wiring::ALL[usize::from(*first) % Wiring::ALL.len()];
    let policies = wiring_app::policies();
    let (name, policy) = policies[usize::from(*first / 16) % policies.len()].clone();
    if !wiring.writes_pass_the_layer() && name != "no-cache" {
        return;
    }
    let steps = (rest.len() / 4).min(MAX_STEPS);
    let mut bytes = Bytes(Unstructured::new(rest));
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
    }
    let outcome = RUNTIME.with(|runtime| {
        runtime.block_on(wiring_app::run(wiring, name, policy, &mut bytes, steps))
    });
    if let Err(difference) = outcome {
        panic!("{difference}");
    }
}

fuzz_target!(|data: &[u8]| {
    wiring(data);
    let Ok(steps) = sequence(&mut Unstructured::new(data)) else {
        return;
    };
    let outcome = differential_app::run(&steps)
        .now_or_never()
        .expect("every future here is ready at once");
    if let Err(difference) = outcome {
        panic!("{difference}");
    }
});
