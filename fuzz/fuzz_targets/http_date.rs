//! HTTP dates: arbitrary bytes as `If-Modified-Since`, `If-Unmodified-Since`
//! and `If-Range` values, compared against the `httpdate` crate as an
//! oracle (spaces and tabs around the value trimmed, as RFC 9110 §5.5 lets a
//! recipient do), plus a round trip of formatted dates from the input.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{IF_MODIFIED_SINCE, IF_RANGE, IF_UNMODIFIED_SINCE};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use tower_media_cache::preconditions::{Precondition, evaluate, if_range};
use tower_media_cache::{EntityTag, Validators};

const LAST_MODIFIED: [u64; 4] = [0, 784_111_777, 1_700_000_000, 253_402_300_799];

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn oracle(value: &HeaderValue) -> Option<u64> {
    let text = std::str::from_utf8(trim(value.as_bytes())).ok()?;
    let time = httpdate::parse_http_date(text).ok()?;
    Some(time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn map(name: http::HeaderName, value: &HeaderValue) -> HeaderMap {
    let mut m = HeaderMap::new();
    m.insert(name, value.clone());
    m
}

fn check(value: &HeaderValue) {
    let expected = oracle(value);
    for lm in LAST_MODIFIED {
        let modified = UNIX_EPOCH + Duration::from_secs(lm);
        let current = Validators::new()
            .with_etag(EntityTag::strong("e").unwrap())
            .with_last_modified(modified);
        let ims = evaluate(&Method::GET, &map(IF_MODIFIED_SINCE, value), &current);
        let ius = evaluate(&Method::PUT, &map(IF_UNMODIFIED_SINCE, value), &current);
        let now = modified + Duration::from_secs(10);
        let range = if_range(&map(IF_RANGE, value), &current, now);
        match expected {
            Some(date) => {
                let want_ims = if lm <= date {
                    Precondition::NotModified
                } else {
                    Precondition::Proceed
                };
                let want_ius = if lm > date {
                    Precondition::Failed
                } else {
                    Precondition::Proceed
                };
                assert_eq!(ims, want_ims, "If-Modified-Since {value:?}, LM {lm}");
                assert_eq!(ius, want_ius, "If-Unmodified-Since {value:?}, LM {lm}");
                let starts_like_tag = {
                    let t = trim(value.as_bytes());
                    t.starts_with(b"\"") || t.starts_with(b"W/")
                };
                if !starts_like_tag {
                    assert_eq!(range, date == lm, "If-Range {value:?}, LM {lm}");
                }
            }
            None => {
                assert_eq!(ims, Precondition::Proceed, "invalid IMS {value:?} ignored");
                assert_eq!(ius, Precondition::Proceed, "invalid IUS {value:?} ignored");
                let t = trim(value.as_bytes());
                if !(t.starts_with(b"\"") || t.starts_with(b"W/")) {
                    assert!(
                        !range,
                        "invalid If-Range date {value:?} must not allow a range"
                    );
                }
            }
        }
        // Two lines make the field invalid: ignored.
        let mut twice = map(IF_MODIFIED_SINCE, value);
        twice.append(IF_MODIFIED_SINCE, value.clone());
        assert_eq!(
            evaluate(&Method::GET, &twice, &current),
            Precondition::Proceed
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = HeaderValue::from_bytes(data) {
        check(&value);
    }
    // Round trip: a date built from the input, formatted, parses back to
    // the same second.
    if data.len() >= 8 {
        let secs = u64::from_le_bytes(data[..8].try_into().unwrap()) % 253_402_300_800;
        let time: SystemTime = UNIX_EPOCH + Duration::from_secs(secs);
        let text = httpdate::fmt_http_date(time);
        let value = HeaderValue::from_str(&text).unwrap();
        assert_eq!(oracle(&value), Some(secs));
        check(&value);
    }
});
