//! Differential test: the validator store never answers what the service
//! would not (issue 11).
//!
//! Random request sequences go through two copies of one app
//! (`differential_app`), each with its own files, changed only by requests
//! through its own layer: copy A behind a layer with
//! `Trust::UntilInvalidated`, whose store answers revalidations and judges
//! conditional writes alone; copy B behind the same layer with
//! `Trust::Never`, which never answers from its store. For every request:
//!
//! - both answers are the same: status, every header but `Date`, body
//!   bytes. The one exception is the README's: A may answer a `HEAD` with
//!   the validators its store learned from `GET`, and that answer must then
//!   be B's answer to the same request as a `GET`;
//! - when the handler would answer with something other than 2xx, that is
//!   the answer (RFC 9110 §13.2.1), but for the 412 the README lets the
//!   layer give a conditional `PUT` or `DELETE` before its handler runs.
//!
//! The app is sensitive to exactly what a store could conflate — spellings
//! of one path, the query, `Host` bytes, `Accept-Language` lines — and the
//! sequences mix those with credentials, ranges and every conditional field,
//! valued from the tags and dates seen earlier in the sequence. A failure
//! prints the whole sequence (shrunk by proptest), each request as sent with
//! both answers. `fuzz/fuzz_targets/differential.rs` runs the same check on
//! sequences decoded from fuzzer bytes.
//!
//! Bounded: [`CASES`] sequences of 1–40 requests, about 35 s in a debug
//! build on two cores; `PROPTEST_CASES` overrides the number. The fixed
//! sequences at the end are the smallest found for each kind of difference
//! the store had before the store-safety fixes; each failed then.

mod differential_app;

use std::sync::Mutex;
use std::time::Instant;

use http::Method;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use differential_app::{
    BODY_BYTES, CREDENTIALS, Condition, FIELDS, Field, HOSTS, Host, LANGUAGES, METHODS,
    MUTATION_WEIGHTS, Mutation, QUERIES, RANGES, RESOURCES, Resource, SPELLINGS, Shape, Spelling,
    Step, Summary, Value, neighbours,
};

/// Sequences per run when `PROPTEST_CASES` is not set.
const CASES: u32 = 8000;

fn condition() -> impl Strategy<Value = Condition> {
    (select(FIELDS), 0..256usize).prop_map(|(field, index)| Condition::pick(field, index))
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        select(RESOURCES),
        select(SPELLINGS),
        select(QUERIES),
        select(HOSTS),
        select(LANGUAGES),
        select(CREDENTIALS),
    )
        .prop_map(
            |(resource, spelling, query, host, language, credentials)| Shape {
                resource,
                spelling,
                query,
                host,
                language,
                credentials,
            },
        )
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (0..MUTATION_WEIGHTS, 0..256usize).prop_map(|(which, index)| Mutation::pick(which, index))
}

/// 1–40 requests over up to five shapes, each one field away from the
/// one before (see `differential_app::neighbours`).
fn sequence() -> impl Strategy<Value = Vec<Step>> {
    let request = (
        0..5usize,
        select(METHODS),
        vec(condition(), 0..3),
        select(RANGES),
        vec(select(BODY_BYTES), 0..4),
    );
    (shape(), vec(mutation(), 0..5), vec(request, 1..=40)).prop_map(
        |(base, mutations, requests)| {
            let shapes = neighbours(base, &mutations);
            requests
                .into_iter()
                .map(|(which, method, conditions, range, body)| Step {
                    method,
                    shape: shapes[which % shapes.len()],
                    conditions,
                    range,
                    body,
                })
                .collect()
        },
    )
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES)
}

/// Runs one fixed sequence through both copies.
async fn check(steps: &[Step]) {
    if let Err(difference) = differential_app::run(steps).await {
        panic!("{difference}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_never_answers_what_the_service_would_not() {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let cases = config.cases;
    let runtime = tokio::runtime::Handle::current();
    let totals = Mutex::new(Summary::default());
    let started = Instant::now();
    // proptest drives the cases synchronously; each one runs on the Tokio
    // runtime of the test.
    let result = tokio::task::block_in_place(|| {
        TestRunner::new(config).run(&sequence(), |steps| {
            let summary = runtime
                .block_on(differential_app::run(&steps))
                .map_err(TestCaseError::fail)?;
            *totals.lock().unwrap() += summary;
            Ok(())
        })
    });
    let elapsed = started.elapsed();
    if let Err(error) = result {
        panic!("{error}");
    }
    let totals = *totals.lock().unwrap();
    eprintln!(
        "differential: {cases} cases, {} requests in {:.1} s ({:.0} cases/s, {:.0} requests/s); \
         A answered {} from its store, its handler ran {} times and B's {}; \
         {} HEADs answered like a GET, {} conditional writes answered 412 before the handler \
         would have refused them",
        totals.requests,
        elapsed.as_secs_f64(),
        f64::from(cases) / elapsed.as_secs_f64(),
        totals.requests as f64 / elapsed.as_secs_f64(),
        totals.store_answers,
        totals.calls_a,
        totals.calls_b,
        totals.heads_like_get,
        totals.judged_first,
    );
    assert!(
        totals.store_answers > 0,
        "the store answered nothing: the sequences test nothing"
    );
}

// ---------------------------------------------------------------------------
// The smallest sequences found, one per kind of difference.

fn get(resource: Resource) -> Step {
    Step::new(Method::GET, resource)
}

fn head(resource: Resource) -> Step {
    Step::new(Method::HEAD, resource)
}

fn put(resource: Resource, body: &[u8]) -> Step {
    Step::new(Method::PUT, resource).body(body)
}

/// A revalidation with the most recent tag seen for the resource.
fn revalidate(resource: Resource) -> Step {
    get(resource).condition(Field::IfNoneMatch, Value::Tag(0))
}

/// A's store knows the tag, B's handler runs: a write guarded by a tag that
/// is not the current one must fail (or run) in both, not only where the
/// store has an entry. Without an entry, both run it: a lost update.
#[tokio::test]
async fn write_preconditions_are_judged_alike_with_and_without_a_store_entry() {
    check(&[
        get(Resource::Plain),
        put(Resource::Plain, b"a").condition(Field::IfMatch, Value::Raw("\"stale\"")),
    ])
    .await;
}

/// `POST` is refused outside `/upload/` whatever the preconditions say.
#[tokio::test]
async fn a_method_the_app_refuses_is_not_answered_412() {
    check(&[
        get(Resource::Media),
        Step::new(Method::POST, Resource::Media)
            .body(b"a")
            .condition(Field::IfMatch, Value::Raw("\"stale\"")),
    ])
    .await;
}

/// `/plain%2Fz.txt` is `/plain/z.txt` to the app: a `PUT` through one
/// spelling changes the file behind the other.
#[tokio::test]
async fn a_write_through_another_spelling_of_the_path_leaves_no_stale_304() {
    let escaped = |step: Step| step.spelling(Spelling::EscapedSlashUpper);
    check(&[
        escaped(get(Resource::Plain)),
        put(Resource::Plain, b"a"),
        escaped(revalidate(Resource::Plain)),
    ])
    .await;
}

/// The app ignores the query: `/media/x.jpg?v=1` is `/media/x.jpg`.
#[tokio::test]
async fn a_write_through_another_query_leaves_no_stale_304() {
    check(&[
        get(Resource::Media),
        put(Resource::Media, b"a").query("?v=1"),
        revalidate(Resource::Media),
    ])
    .await;
}

#[tokio::test]
async fn an_absent_host_and_an_empty_host_are_not_one_variant() {
    check(&[
        get(Resource::Plain).host(Host::Absent),
        revalidate(Resource::Plain).host(Host::Empty),
    ])
    .await;
}

#[tokio::test]
async fn hosts_that_are_not_utf8_are_not_one_variant() {
    check(&[
        get(Resource::Plain).host(Host::InvalidX),
        revalidate(Resource::Plain).host(Host::InvalidY),
    ])
    .await;
}

#[tokio::test]
async fn accept_language_values_differing_in_case_are_not_one_variant() {
    check(&[
        get(Resource::Media).language(&["fr"]),
        revalidate(Resource::Media).language(&["FR"]),
    ])
    .await;
}

#[tokio::test]
async fn accept_language_values_differing_in_whitespace_are_not_one_variant() {
    check(&[
        get(Resource::Media).language(&["fr,de"]),
        revalidate(Resource::Media).language(&["fr, de"]),
    ])
    .await;
}

/// Inside a quoted string, a space is part of the value.
#[tokio::test]
async fn accept_language_values_differing_inside_a_quoted_string_are_not_one_variant() {
    check(&[
        get(Resource::Media).language(&["fr;q=\"x,y\""]),
        revalidate(Resource::Media).language(&["fr;q=\"x, y\""]),
    ])
    .await;
}

#[tokio::test]
async fn an_accept_language_of_empty_members_is_not_an_absent_one() {
    check(&[
        get(Resource::Media).language(&[","]),
        revalidate(Resource::Media),
    ])
    .await;
}

#[tokio::test]
async fn an_empty_accept_language_is_not_an_absent_one() {
    check(&[
        get(Resource::Media).language(&[""]),
        revalidate(Resource::Media),
    ])
    .await;
}

/// A `HEAD` gets the validators the store learned from a `GET`: those of
/// its own variant, never another's.
#[tokio::test]
async fn a_head_never_carries_the_tag_of_another_variant() {
    check(&[
        get(Resource::Media).language(&["fr"]),
        head(Resource::Media).language(&["FR"]),
    ])
    .await;
}

#[tokio::test]
async fn accept_language_lines_are_not_joined_into_one_value() {
    check(&[
        get(Resource::Media).language(&["fr", "de"]),
        revalidate(Resource::Media).language(&["fr,de"]),
    ])
    .await;
}
