//! Property tests: a small reference model of RFC 9110 §13.2.2 (steps 1–4),
//! written from the RFC text and independently of `src/`, compared with
//! `preconditions::evaluate` over random header sets, methods and
//! validators; and a property over the whole service: a non-2xx answer of
//! the inner service never becomes a 304 or 412.
//!
//! The field values come from small pools whose meaning the model knows
//! directly (it does not parse anything), so the model stays obviously
//! correct. Garbage members follow the crate's documented rule: a member
//! that is not an entity tag matches nothing.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::{Service, ServiceExt, service_fn};
use tower_media_cache::preconditions::{Precondition, evaluate};
use tower_media_cache::{CachePolicy, EntityTag, MediaCacheLayer, Trust, Validators};

/// Last-Modified of the representation, in whole seconds (the validator is
/// built with an extra fraction that HTTP dates cannot carry).
const LM: u64 = 1_700_000_000;

// ---------------------------------------------------------------------------
// The pools, each value with its meaning.

/// One member of an entity-tag list as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Member {
    Tag {
        weak: bool,
        opaque: &'static str,
    },
    /// Not an entity tag: matches nothing.
    Garbage,
}

/// One field line of `If-Match` / `If-None-Match`.
#[derive(Debug, Clone, Copy)]
struct TagLine {
    text: &'static str,
    /// The line is exactly `*` (with optional spaces around it).
    star: bool,
    members: &'static [Member],
}

const fn s(opaque: &'static str) -> Member {
    Member::Tag {
        weak: false,
        opaque,
    }
}

const fn w(opaque: &'static str) -> Member {
    Member::Tag { weak: true, opaque }
}

const G: Member = Member::Garbage;

const TAG_LINES: &[TagLine] = &[
    TagLine {
        text: "\"a\"",
        star: false,
        members: &[s("a")],
    },
    TagLine {
        text: "W/\"a\"",
        star: false,
        members: &[w("a")],
    },
    TagLine {
        text: "\"b\"",
        star: false,
        members: &[s("b")],
    },
    TagLine {
        text: "W/\"b\"",
        star: false,
        members: &[w("b")],
    },
    TagLine {
        text: "*",
        star: true,
        members: &[G],
    },
    TagLine {
        text: " * ",
        star: true,
        members: &[G],
    },
    TagLine {
        text: "\"b\", W/\"a\"",
        star: false,
        members: &[s("b"), w("a")],
    },
    TagLine {
        text: " \"a\" ,\t\"b\" ",
        star: false,
        members: &[s("a"), s("b")],
    },
    TagLine {
        text: "\"c\",,W/\"b\",",
        star: false,
        members: &[s("c"), w("b")],
    },
    // Garbage: unquoted, unterminated, lowercase weak prefix, two tags
    // without a comma, `*` inside a list.
    TagLine {
        text: "a",
        star: false,
        members: &[G],
    },
    TagLine {
        text: "\"a",
        star: false,
        members: &[G],
    },
    TagLine {
        text: "w/\"a\"",
        star: false,
        members: &[G],
    },
    TagLine {
        text: "\"a\" \"b\"",
        star: false,
        members: &[G],
    },
    TagLine {
        text: "*, \"a\"",
        star: false,
        members: &[G, s("a")],
    },
    TagLine {
        text: "\"\"",
        star: false,
        members: &[s("")],
    },
];

/// One field line of `If-Modified-Since` / `If-Unmodified-Since`.
#[derive(Debug, Clone)]
struct DateLine {
    text: String,
    /// The date in seconds since the epoch, `None` when it is not an
    /// HTTP-date.
    secs: Option<u64>,
}

fn imf(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn date_lines() -> Vec<DateLine> {
    let mut out: Vec<DateLine> = [-3600i64, -1, 0, 1, 3600]
        .into_iter()
        .map(|offset| {
            let secs = (LM as i64 + offset) as u64;
            DateLine {
                text: imf(secs),
                secs: Some(secs),
            }
        })
        .collect();
    // LM and LM - 1 in the two obsolete forms (2023-11-14 22:13:20 UTC).
    out.push(DateLine {
        text: "Tuesday, 14-Nov-23 22:13:20 GMT".into(),
        secs: Some(LM),
    });
    out.push(DateLine {
        text: "Tue Nov 14 22:13:19 2023".into(),
        secs: Some(LM - 1),
    });
    out.push(DateLine {
        text: "Thu, 01 Jan 1970 00:00:00 GMT".into(),
        secs: Some(0),
    });
    out.push(DateLine {
        text: "Fri, 31 Dec 9999 23:59:59 GMT".into(),
        secs: Some(253_402_300_799),
    });
    for bad in [
        "yesterday",
        "Tue, 14 Nov 2023 22:13:20 GMT garbage",
        "Tue, 32 Nov 2023 22:13:20 GMT",
        "Tue, 14 Nov 2023 25:13:20 GMT",
        "Sat, 01 Jan 10000 00:00:00 GMT",
        "1700000000",
        "",
    ] {
        out.push(DateLine {
            text: bad.into(),
            secs: None,
        });
    }
    out
}

static DATE_LINES: LazyLock<Vec<DateLine>> = LazyLock::new(date_lines);

const METHODS: [Method; 5] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
];

/// The validators of the representation, as the model sees them.
#[derive(Debug, Clone, Copy)]
struct Current {
    etag: Option<(bool, &'static str)>,
    last_modified: bool,
}

impl Current {
    fn validators(self) -> Validators {
        let mut v = Validators::new();
        if let Some((weak, opaque)) = self.etag {
            let tag = if weak {
                EntityTag::weak(opaque)
            } else {
                EntityTag::strong(opaque)
            };
            v = v.with_etag(tag.unwrap());
        }
        if self.last_modified {
            v = v.with_last_modified(
                UNIX_EPOCH + Duration::from_secs(LM) + Duration::from_millis(700),
            );
        }
        v
    }
}

/// A generated request: method and the pool indices of each field's lines.
#[derive(Debug, Clone)]
struct Case {
    method: usize,
    if_match: Vec<usize>,
    if_none_match: Vec<usize>,
    if_modified_since: Vec<usize>,
    if_unmodified_since: Vec<usize>,
    current: Current,
}

fn lines(pool: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..pool, 0..=3)
}

fn current() -> impl Strategy<Value = Current> {
    (
        prop_oneof![
            Just(None),
            Just(Some((false, "a"))),
            Just(Some((true, "a"))),
            Just(Some((false, "b"))),
        ],
        any::<bool>(),
    )
        .prop_map(|(etag, last_modified)| Current {
            etag,
            last_modified,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..METHODS.len(),
        lines(TAG_LINES.len()),
        lines(TAG_LINES.len()),
        lines(DATE_LINES.len()),
        lines(DATE_LINES.len()),
        current(),
    )
        .prop_map(
            |(method, if_match, if_none_match, if_modified_since, if_unmodified_since, current)| {
                Case {
                    method,
                    if_match,
                    if_none_match,
                    if_modified_since,
                    if_unmodified_since,
                    current,
                }
            },
        )
}

impl Case {
    fn headers(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut add = |name: &HeaderName, text: &str| {
            map.append(name.clone(), HeaderValue::from_str(text).unwrap());
        };
        for &i in &self.if_match {
            add(&IF_MATCH, TAG_LINES[i].text);
        }
        for &i in &self.if_none_match {
            add(&IF_NONE_MATCH, TAG_LINES[i].text);
        }
        for &i in &self.if_modified_since {
            add(&IF_MODIFIED_SINCE, &DATE_LINES[i].text);
        }
        for &i in &self.if_unmodified_since {
            add(&IF_UNMODIFIED_SINCE, &DATE_LINES[i].text);
        }
        map
    }
}

// ---------------------------------------------------------------------------
// The model: RFC 9110 §13.1 and §13.2.2, one rule per sentence.

/// What an entity-tag list field says once all its lines are combined.
enum TagField {
    /// `*`: "any current representation" (§13.1.1, §13.1.2). Only when the
    /// whole field value is `*`; several lines combine into a list, where
    /// `*` is not a valid member.
    Any,
    List(Vec<Member>),
}

fn tag_field(indices: &[usize]) -> Option<TagField> {
    match indices {
        [] => None,
        [only] if TAG_LINES[*only].star => Some(TagField::Any),
        _ => Some(TagField::List(
            indices
                .iter()
                .flat_map(|&i| TAG_LINES[i].members.iter().copied())
                .collect(),
        )),
    }
}

/// §8.8.3.2 strong comparison: both strong, same opaque-tag.
fn strong_match(member: Member, current: Option<(bool, &str)>) -> bool {
    match (member, current) {
        (Member::Tag { weak, opaque }, Some((cur_weak, cur))) => {
            !weak && !cur_weak && opaque == cur
        }
        _ => false,
    }
}

/// §8.8.3.2 weak comparison: same opaque-tag, weakness ignored.
fn weak_match(member: Member, current: Option<(bool, &str)>) -> bool {
    match (member, current) {
        (Member::Tag { opaque, .. }, Some((_, cur))) => opaque == cur,
        _ => false,
    }
}

/// A date field: ignored unless exactly one line holding a valid HTTP-date
/// ("more than one member" / "appears to be a list of dates").
fn date_field(indices: &[usize]) -> Option<u64> {
    match indices {
        [only] => DATE_LINES[*only].secs,
        _ => None,
    }
}

fn model(case: &Case) -> Precondition {
    let method = &METHODS[case.method];
    let get_or_head = *method == Method::GET || *method == Method::HEAD;
    let etag = case.current.etag;
    let last_modified = case.current.last_modified.then_some(LM);

    // Step 1: If-Match present → evaluate it; false → 412; true → step 3.
    if let Some(field) = tag_field(&case.if_match) {
        // §13.1.1: "*" is true if the origin has a current representation
        // (it has: the model is only asked then); otherwise true iff a
        // listed tag matches the current one by strong comparison.
        let holds = match field {
            TagField::Any => true,
            TagField::List(members) => members.iter().any(|&m| strong_match(m, etag)),
        };
        if !holds {
            return Precondition::Failed;
        }
    } else if !case.if_unmodified_since.is_empty() {
        // Step 2: no If-Match, If-Unmodified-Since present → evaluate it.
        // §13.1.4: ignored when not a valid HTTP-date or when the resource
        // has no modification date; false when modified after the date.
        if let (Some(date), Some(modified)) = (date_field(&case.if_unmodified_since), last_modified)
            && modified > date
        {
            return Precondition::Failed;
        }
    }

    // Step 3: If-None-Match present → evaluate it; false → 304 for GET or
    // HEAD, 412 otherwise; true → step 5 (skipping If-Modified-Since).
    if let Some(field) = tag_field(&case.if_none_match) {
        // §13.1.2: "*" is false if a current representation exists;
        // otherwise false iff a listed tag matches by weak comparison.
        let holds = match field {
            TagField::Any => false,
            TagField::List(members) => !members.iter().any(|&m| weak_match(m, etag)),
        };
        if !holds {
            return if get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
        return Precondition::Proceed;
    }

    // Step 4: GET or HEAD, no If-None-Match, If-Modified-Since present.
    // §13.1.3: ignored when invalid or for other methods; false (→ 304)
    // when the last modification is earlier than or equal to the date.
    if get_or_head
        && !case.if_modified_since.is_empty()
        && let (Some(date), Some(modified)) = (date_field(&case.if_modified_since), last_modified)
        && modified <= date
    {
        return Precondition::NotModified;
    }

    Precondition::Proceed
}

/// `cases` random cases; failures are reported, not written to files.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(4000))]

    #[test]
    fn evaluate_agrees_with_the_rfc_model(case in case()) {
        let headers = case.headers();
        let actual = evaluate(&METHODS[case.method], &headers, &case.current.validators());
        prop_assert_eq!(actual, model(&case), "{:?}\n{:?}", headers, case.current);
    }
}

// Fixed cases from the RFC's own text, so that the model itself is checked
// against something other than the implementation.
#[test]
fn the_model_follows_the_rfc_examples() {
    let base = Case {
        method: 0,
        if_match: vec![],
        if_none_match: vec![],
        if_modified_since: vec![],
        if_unmodified_since: vec![],
        current: Current {
            etag: Some((false, "a")),
            last_modified: true,
        },
    };
    let with = |f: &dyn Fn(&mut Case)| {
        let mut c = base.clone();
        f(&mut c);
        model(&c)
    };
    let tag = |text: &str| TAG_LINES.iter().position(|l| l.text == text).unwrap();
    let date = |secs: u64| {
        DATE_LINES
            .iter()
            .position(|l| l.secs == Some(secs))
            .unwrap()
    };
    assert_eq!(with(&|_| {}), Precondition::Proceed);
    assert_eq!(
        with(&|c| c.if_none_match = vec![tag("W/\"a\"")]),
        Precondition::NotModified
    );
    assert_eq!(
        with(&|c| c.if_match = vec![tag("W/\"a\"")]),
        Precondition::Failed
    );
    assert_eq!(
        with(&|c| c.if_match = vec![tag("*")]),
        Precondition::Proceed
    );
    assert_eq!(
        with(&|c| {
            c.if_none_match = vec![tag("*")];
            c.method = 2
        }),
        Precondition::Failed
    );
    assert_eq!(
        with(&|c| c.if_modified_since = vec![date(LM)]),
        Precondition::NotModified
    );
    assert_eq!(
        with(&|c| c.if_modified_since = vec![date(LM - 1)]),
        Precondition::Proceed
    );
    assert_eq!(
        with(&|c| c.if_unmodified_since = vec![date(LM - 1)]),
        Precondition::Failed
    );
    assert_eq!(
        with(&|c| {
            c.if_none_match = vec![tag("\"b\"")];
            c.if_modified_since = vec![date(LM)]
        }),
        Precondition::Proceed
    );
    assert_eq!(
        with(&|c| {
            c.if_match = vec![tag("\"a\"")];
            c.if_unmodified_since = vec![date(LM - 1)]
        }),
        Precondition::Proceed
    );
}

// ---------------------------------------------------------------------------
// The whole service: inner answers that are not 2xx pass through untouched.

const STATUSES: [u16; 8] = [200, 201, 204, 206, 301, 304, 404, 500];

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

#[derive(Debug, Clone)]
struct Exchange {
    case: Case,
    status: u16,
    inner_etag: bool,
    inner_last_modified: bool,
}

fn exchange() -> impl Strategy<Value = Exchange> {
    (case(), 0..STATUSES.len(), any::<bool>(), any::<bool>()).prop_map(
        |(case, status, inner_etag, inner_last_modified)| Exchange {
            case,
            status: STATUSES[status],
            inner_etag,
            inner_last_modified,
        },
    )
}

fn policy(n: u8) -> CachePolicy {
    match n % 4 {
        0 => CachePolicy::max_age(Duration::from_secs(60)),
        1 => CachePolicy::max_age(Duration::from_secs(60)).trust(Trust::UntilInvalidated),
        2 => CachePolicy::no_cache(),
        _ => CachePolicy::no_cache().trust(Trust::For(Duration::from_secs(60))),
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// Several requests on one service (so that the store learns from the
    /// 200s and may answer later ones itself). Whenever the inner service is
    /// called with the request and answers a status that is not 2xx, the
    /// client gets exactly that status: no 304, no 412. (Before a
    /// conditional write the layer may also send the inner service a `GET`
    /// of its own to learn the current validators; a 412 made from that
    /// `GET`'s 404 is RFC 9110 §13.1.1 — `If-Match` cannot match a
    /// representation that does not exist — and is checked as such.)
    #[test]
    fn non_2xx_inner_answers_never_become_304_or_412(
        policy_kind in any::<u8>(),
        exchanges in prop::collection::vec(exchange(), 1..4),
    ) {
        let now = UNIX_EPOCH + Duration::from_secs(LM + 100);
        let layer = MediaCacheLayer::new(policy(policy_kind)).clock(move || now);
        let calls = Arc::new(AtomicUsize::new(0));
        let script = Arc::new(std::sync::Mutex::new(None::<Exchange>));
        let inner = {
            let calls = calls.clone();
            let script = script.clone();
            service_fn(move |req: Request<()>| {
                let ex = script.lock().unwrap().clone().unwrap();
                if req.method() == METHODS[ex.case.method] {
                    calls.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(b"body of a")));
                    *response.status_mut() = StatusCode::from_u16(ex.status).unwrap();
                    if ex.inner_etag {
                        let tag = match ex.case.current.etag {
                            Some((true, o)) => format!("W/\"{o}\""),
                            Some((false, o)) => format!("\"{o}\""),
                            None => "\"a\"".to_owned(),
                        };
                        response.headers_mut().insert(ETAG, HeaderValue::from_str(&tag).unwrap());
                    }
                    if ex.inner_last_modified {
                        response
                            .headers_mut()
                            .insert(LAST_MODIFIED, HeaderValue::from_str(&imf(LM)).unwrap());
                    }
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let mut service = tower::ServiceBuilder::new().layer(layer).service(inner);
        for ex in exchanges {
            *script.lock().unwrap() = Some(ex.clone());
            let before = calls.load(Ordering::SeqCst);
            let mut request = Request::builder()
                .method(METHODS[ex.case.method].clone())
                .uri("/media/a.jpg")
                .body(())
                .unwrap();
            *request.headers_mut() = ex.case.headers();
            let (status, body) = RUNTIME.block_on(async {
                let response = service.ready().await.unwrap().call(request).await.unwrap();
                let status = response.status();
                (status, response.into_body().collect().await.unwrap().to_bytes())
            });
            let called = calls.load(Ordering::SeqCst) > before;
            if called && !(200..300).contains(&ex.status) {
                prop_assert_eq!(status.as_u16(), ex.status, "{:?}", ex);
            }
            let fetched_absent = !called
                && METHODS[ex.case.method] != Method::GET
                && METHODS[ex.case.method] != Method::HEAD
                && (ex.status == 404 || ex.status == 410);
            if fetched_absent && status == StatusCode::PRECONDITION_FAILED {
                prop_assert!(!ex.case.if_match.is_empty(), "412 without If-Match: {:?}", ex);
            }
            if status == StatusCode::NOT_MODIFIED || status == StatusCode::PRECONDITION_FAILED {
                let inner_own_304 = called && ex.status == 304 && status == 304;
                prop_assert!(body.is_empty() || inner_own_304);
                if called {
                    prop_assert!(
                        (200..300).contains(&ex.status) || ex.status == 304 && status == 304,
                        "{} made from an inner {}: {:?}", status, ex.status, ex
                    );
                }
            }
        }
    }
}

#[test]
fn pools_are_what_the_model_says() {
    // Each tag line that the model calls a single valid tag parses as one.
    for line in TAG_LINES {
        if let [Member::Tag { weak, opaque }] = line.members {
            let tag: EntityTag = line.text.parse().unwrap();
            assert_eq!(tag.is_weak(), *weak, "{}", line.text);
            assert_eq!(tag.opaque(), opaque.as_bytes());
        }
    }
    // Each date line that the model calls valid is that second.
    for line in DATE_LINES.iter() {
        let parsed = httpdate::parse_http_date(&line.text)
            .ok()
            .map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(parsed, line.secs, "{:?}", line.text);
    }
}
