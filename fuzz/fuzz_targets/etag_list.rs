//! Entity-tag lists: arbitrary bytes, split into field lines at `\n`, as
//! `If-None-Match` / `If-Match` / `If-Range` / `ETag` values.
//!
//! Beyond "never panics", checks what must hold for any input:
//! - a value that parses as one entity tag round-trips through `Display`;
//! - a single-line `If-None-Match: <tag>` is "not modified" against that tag,
//!   a single-line `If-Match: <tag>` holds only when the tag is strong, and so
//!   does `If-Range: <tag>`;
//! - `If-None-Match` only ever yields Proceed/NotModified for GET, `If-Match`
//!   only Proceed/Failed;
//! - a well-formed list made of the valid tags matches each of them.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{IF_MATCH, IF_NONE_MATCH, IF_RANGE};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use tower_media_cache::preconditions::{Precondition, evaluate, if_match, if_none_match, if_range};
use tower_media_cache::{EntityTag, Validators};

fn currents() -> Vec<Validators> {
    vec![
        Validators::new(),
        Validators::new().with_etag(EntityTag::strong("x").unwrap()),
        Validators::new().with_etag(EntityTag::weak("x").unwrap()),
        Validators::new()
            .with_etag(EntityTag::strong("abc").unwrap())
            .with_last_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
    ]
}

fn single(name: http::HeaderName, value: &HeaderValue) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, value.clone());
    map
}

fuzz_target!(|data: &[u8]| {
    let lines: Vec<HeaderValue> = data
        .split(|&b| b == b'\n')
        .take(16)
        .filter_map(|line| HeaderValue::from_bytes(line).ok())
        .collect();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);

    let mut none_match = HeaderMap::new();
    let mut if_match_map = HeaderMap::new();
    let mut ranged = HeaderMap::new();
    for line in &lines {
        none_match.append(IF_NONE_MATCH, line.clone());
        if_match_map.append(IF_MATCH, line.clone());
        ranged.append(IF_RANGE, line.clone());
    }
    for current in currents() {
        let _ = if_match(&if_match_map, &current);
        let _ = if_none_match(&none_match, &current);
        let _ = if_range(&ranged, &current, now);
        for method in [Method::GET, Method::HEAD] {
            assert_ne!(
                evaluate(&method, &none_match, &current),
                Precondition::Failed,
                "If-None-Match alone never fails a GET/HEAD"
            );
        }
        assert_ne!(
            evaluate(&Method::PUT, &none_match, &current),
            Precondition::NotModified,
            "no 304 for PUT"
        );
        assert_ne!(
            evaluate(&Method::GET, &if_match_map, &current),
            Precondition::NotModified,
            "If-Match alone never yields 304"
        );
    }

    let mut valid = Vec::new();
    for line in &lines {
        let Ok(tag) = EntityTag::from_header(line) else {
            continue;
        };
        // Round-trip through the header value, and through `Display` when
        // the tag is UTF-8 (`Display` is lossy for other obs-text bytes).
        let again = EntityTag::from_header(tag.header_value()).expect("a parsed tag re-parses");
        if std::str::from_utf8(tag.header_value().as_bytes()).is_ok() {
            let shown: EntityTag = tag.to_string().parse().expect("Display re-parses");
            assert_eq!(shown, again);
        }
        assert_eq!(again.is_weak(), tag.is_weak());
        assert_eq!(again.opaque(), tag.opaque());
        assert!(again.weak_eq(&tag));
        assert_eq!(again.strong_eq(&tag), !tag.is_weak());

        let current = Validators::new().with_etag(tag.clone());
        assert_eq!(
            evaluate(&Method::GET, &single(IF_NONE_MATCH, line), &current),
            Precondition::NotModified,
            "If-None-Match: {tag} against itself"
        );
        assert_eq!(
            evaluate(&Method::DELETE, &single(IF_NONE_MATCH, line), &current),
            Precondition::Failed
        );
        let expected = if tag.is_weak() {
            Precondition::Failed
        } else {
            Precondition::Proceed
        };
        assert_eq!(
            evaluate(&Method::PUT, &single(IF_MATCH, line), &current),
            expected,
            "If-Match: {tag} against itself"
        );
        assert_eq!(
            if_range(&single(IF_RANGE, line), &current, now),
            !tag.is_weak()
        );
        valid.push(tag);
    }

    // A clean list of the valid tags matches every member, on one line or
    // spread over several.
    if !valid.is_empty() {
        let mut bytes = Vec::new();
        for (i, t) in valid.iter().enumerate() {
            if i > 0 {
                bytes.extend_from_slice(b" ,\t");
            }
            bytes.extend_from_slice(t.header_value().as_bytes());
        }
        let joined = HeaderValue::from_bytes(&bytes).expect("tags are valid header bytes");
        let list = single(IF_NONE_MATCH, &joined);
        let mut spread = HeaderMap::new();
        for t in &valid {
            spread.append(IF_NONE_MATCH, t.header_value().clone());
        }
        for tag in &valid {
            let current = Validators::new().with_etag(tag.clone());
            assert_eq!(
                evaluate(&Method::GET, &list, &current),
                Precondition::NotModified,
                "{joined:?} should match {tag}"
            );
            assert_eq!(
                evaluate(&Method::GET, &spread, &current),
                Precondition::NotModified
            );
        }
    }
});
