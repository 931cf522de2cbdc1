//! The precondition engine with arbitrary header sets, methods and
//! validators. Values are drawn from generators that hit the interesting
//! cases often (the current tag, strong or weak, `*`, dates around
//! `Last-Modified`) as well as raw bytes.
//!
//! Checks: no panic; `evaluate` follows RFC 9110 §13.2.2 step by step as
//! composed from the public single-field functions; 304 only for GET/HEAD;
//! no preconditions → Proceed; `if_range` is true without `If-Range`.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use http::header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use tower_media_cache::preconditions::{
    Precondition, evaluate, if_match, if_modified_since, if_none_match, if_range,
    if_unmodified_since,
};
use tower_media_cache::{EntityTag, Validators};

const BASE: u64 = 1_700_000_000;

#[derive(Arbitrary, Debug)]
enum Value {
    Raw(Vec<u8>),
    Current { weak: bool },
    Tag { weak: bool, opaque: u8 },
    Star,
    List(Vec<(bool, u8)>),
    Date(i32),
    Rfc850(i32),
    Asctime(i32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    fields: Vec<(u8, Value)>,
    etag: Option<(bool, u8)>,
    last_modified: Option<i32>,
    now: i32,
}

fn at(offset: i32) -> SystemTime {
    if offset >= 0 {
        UNIX_EPOCH + Duration::from_secs(BASE + offset as u64)
    } else {
        UNIX_EPOCH + Duration::from_secs(BASE.saturating_sub(offset.unsigned_abs() as u64))
    }
}

fn opaque(n: u8) -> String {
    format!("t{}", n % 8)
}

fn tag(weak: bool, n: u8) -> String {
    if weak {
        format!("W/\"{}\"", opaque(n))
    } else {
        format!("\"{}\"", opaque(n))
    }
}

fn render(value: &Value, current: Option<&EntityTag>) -> Option<HeaderValue> {
    let text = match value {
        Value::Raw(bytes) => return HeaderValue::from_bytes(bytes).ok(),
        Value::Current { weak } => match current {
            Some(t) if *weak => format!("W/\"{}\"", String::from_utf8_lossy(t.opaque())),
            Some(t) => format!("\"{}\"", String::from_utf8_lossy(t.opaque())),
            None => "\"none\"".to_owned(),
        },
        Value::Tag { weak, opaque } => tag(*weak, *opaque),
        Value::Star => "*".to_owned(),
        Value::List(items) => items
            .iter()
            .map(|(w, n)| tag(*w, *n))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Date(o) => httpdate::fmt_http_date(at(*o)),
        Value::Rfc850(o) => {
            let imf = httpdate::fmt_http_date(at(*o));
            // "Sun, 06 Nov 1994 08:49:37 GMT" -> "Sunday, 06-Nov-94 08:49:37 GMT"
            let day = match &imf[..3] {
                "Mon" => "Monday",
                "Tue" => "Tuesday",
                "Wed" => "Wednesday",
                "Thu" => "Thursday",
                "Fri" => "Friday",
                "Sat" => "Saturday",
                _ => "Sunday",
            };
            format!(
                "{day}, {}-{}-{} {} GMT",
                &imf[5..7],
                &imf[8..11],
                &imf[14..16],
                &imf[17..25]
            )
        }
        Value::Asctime(o) => {
            let imf = httpdate::fmt_http_date(at(*o));
            let day: u32 = imf[5..7].parse().unwrap();
            format!(
                "{} {} {:>2} {} {}",
                &imf[..3],
                &imf[8..11],
                day,
                &imf[17..25],
                &imf[12..16]
            )
        }
    };
    HeaderValue::from_str(&text).ok()
}

const NAMES: [HeaderName; 5] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

const METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

fuzz_target!(|input: Input| {
    let mut current = Validators::new();
    if let Some((weak, n)) = input.etag {
        let t = if weak {
            EntityTag::weak(&opaque(n))
        } else {
            EntityTag::strong(&opaque(n))
        };
        current = current.with_etag(t.unwrap());
    }
    if let Some(o) = input.last_modified {
        current = current.with_last_modified(at(o));
    }
    let method = &METHODS[input.method as usize % METHODS.len()];
    let mut fields = HeaderMap::new();
    for (name, value) in input.fields.iter().take(12) {
        if let Some(v) = render(value, current.etag()) {
            fields.append(NAMES[*name as usize % NAMES.len()].clone(), v);
        }
    }

    let result = evaluate(method, &fields, &current);
    let _ = if_range(&fields, &current, at(input.now));

    // §13.2.2, composed from the single-field functions.
    let safe = *method == Method::GET || *method == Method::HEAD;
    // Steps 1 and 2: If-Match, or If-Unmodified-Since only without it.
    let step_1 = fields.contains_key(IF_MATCH) && !if_match(&fields, &current);
    let step_2 = !fields.contains_key(IF_MATCH)
        && fields.contains_key(IF_UNMODIFIED_SINCE)
        && !if_unmodified_since(&fields, &current);
    let expected = if step_1 || step_2 {
        Precondition::Failed
    } else if fields.contains_key(IF_NONE_MATCH) && !if_none_match(&fields, &current) {
        if safe {
            Precondition::NotModified
        } else {
            Precondition::Failed
        }
    } else if !fields.contains_key(IF_NONE_MATCH)
        && safe
        && fields.contains_key(IF_MODIFIED_SINCE)
        && !if_modified_since(&fields, &current)
    {
        Precondition::NotModified
    } else {
        Precondition::Proceed
    };
    assert_eq!(result, expected, "{method} {fields:?} vs {current:?}");

    if !safe {
        assert_ne!(result, Precondition::NotModified);
    }
    let any = [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|n| fields.contains_key(n));
    if !any {
        assert_eq!(result, Precondition::Proceed);
    }
    if !fields.contains_key(IF_RANGE) {
        assert!(if_range(&fields, &current, at(input.now)));
    }
});
