//! Precondition evaluation and validator parsing, in ns per call.
//!
//! `cargo bench --bench preconditions`
//!
//! The `list_bytes` group reports a short and a 64 KiB `If-None-Match` list
//! with a bytes counter, so the per-byte cost of both can be compared: the
//! parsers are single forward scans, so the long list must cost at most a
//! small constant factor more *per byte* than the short one.

use std::time::{Duration, UNIX_EPOCH};

use divan::Bencher;
use divan::counter::BytesCount;
use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Method};
use tower_media_cache::preconditions::{Precondition, evaluate};
use tower_media_cache::{EntityTag, Validators, content_etag};

fn main() {
    divan::main();
}

/// 2023-11-14T22:13:20Z, and the current representation's validators.
const LAST_MODIFIED: u64 = 1_700_000_000;

fn current() -> Validators {
    Validators::new()
        .with_etag(content_etag(b"the current representation"))
        .with_last_modified(UNIX_EPOCH + Duration::from_secs(LAST_MODIFIED))
}

/// A content ETag (34 bytes with quotes) that is not the current one.
fn other_tag(i: usize) -> String {
    content_etag(format!("old version {i}").as_bytes()).to_string()
}

fn fields(name: http::HeaderName, value: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(name, HeaderValue::from_str(value).unwrap());
    map
}

/// A list of `n` tags that ends with the current one (so every member is
/// read before the match).
fn list_ending_with_current(n: usize) -> String {
    let mut tags: Vec<String> = (1..n).map(other_tag).collect();
    tags.push(current().etag().unwrap().to_string());
    tags.join(", ")
}

/// A list of non-matching tags at least `bytes` long.
fn list_of_len(bytes: usize) -> String {
    let mut list = String::new();
    let mut i = 0;
    while list.len() < bytes {
        if !list.is_empty() {
            list.push_str(", ");
        }
        list.push_str(&other_tag(i));
        i += 1;
    }
    list
}

fn run(bencher: Bencher, field: HeaderMap, expect: Precondition) {
    let validators = current();
    assert_eq!(evaluate(&Method::GET, &field, &validators), expect);
    bencher.bench_local(|| {
        evaluate(
            divan::black_box(&Method::GET),
            divan::black_box(&field),
            divan::black_box(&validators),
        )
    });
}

#[divan::bench_group(sample_count = 200, min_time = 0.5, max_time = 2)]
mod if_none_match {
    use super::*;

    #[divan::bench]
    fn one_tag_match(bencher: Bencher) {
        let tag = current().etag().unwrap().to_string();
        run(
            bencher,
            fields(IF_NONE_MATCH, &tag),
            Precondition::NotModified,
        );
    }

    #[divan::bench]
    fn one_tag_no_match(bencher: Bencher) {
        run(
            bencher,
            fields(IF_NONE_MATCH, &other_tag(0)),
            Precondition::Proceed,
        );
    }

    #[divan::bench]
    fn ten_tags_last_matches(bencher: Bencher) {
        run(
            bencher,
            fields(IF_NONE_MATCH, &list_ending_with_current(10)),
            Precondition::NotModified,
        );
    }

    #[divan::bench]
    fn star(bencher: Bencher) {
        run(
            bencher,
            fields(IF_NONE_MATCH, "*"),
            Precondition::NotModified,
        );
    }

    #[divan::bench]
    fn no_preconditions(bencher: Bencher) {
        run(bencher, HeaderMap::new(), Precondition::Proceed);
    }
}

#[divan::bench_group(sample_count = 200, min_time = 0.5, max_time = 2)]
mod if_modified_since {
    use super::*;

    /// The same instant (LAST_MODIFIED + 1 day) in the three forms of
    /// RFC 9110 §5.6.7.
    const FORMS: [&str; 3] = [
        "Wed, 15 Nov 2023 22:13:20 GMT",
        "Wednesday, 15-Nov-23 22:13:20 GMT",
        "Wed Nov 15 22:13:20 2023",
    ];

    fn form(bencher: Bencher, index: usize) {
        run(
            bencher,
            fields(IF_MODIFIED_SINCE, FORMS[index]),
            Precondition::NotModified,
        );
    }

    #[divan::bench]
    fn imf_fixdate(bencher: Bencher) {
        form(bencher, 0);
    }

    #[divan::bench]
    fn rfc850(bencher: Bencher) {
        form(bencher, 1);
    }

    #[divan::bench]
    fn asctime(bencher: Bencher) {
        form(bencher, 2);
    }
}

/// Per-byte cost of a non-matching `If-None-Match` list: every member is
/// parsed and compared. Sizes in bytes of the field value.
#[divan::bench_group(sample_count = 200, min_time = 0.5, max_time = 2)]
mod list_bytes {
    use super::*;

    const SIZES: [usize; 4] = [34, 370, 4 * 1024, 64 * 1024];

    #[divan::bench(args = SIZES)]
    fn if_none_match_no_match(bencher: Bencher, size: usize) {
        let list = if size <= 34 {
            other_tag(0)
        } else {
            list_of_len(size)
        };
        let len = list.len();
        let field = fields(IF_NONE_MATCH, &list);
        let validators = current();
        assert_eq!(
            evaluate(&Method::GET, &field, &validators),
            Precondition::Proceed
        );
        bencher.counter(BytesCount::new(len)).bench_local(|| {
            evaluate(
                divan::black_box(&Method::GET),
                divan::black_box(&field),
                divan::black_box(&validators),
            )
        });
    }
}

/// Parsing one `ETag` field value into an [`EntityTag`].
#[divan::bench(sample_count = 200, min_time = 0.5, max_time = 2)]
fn parse_etag(bencher: Bencher) {
    let value = HeaderValue::from_str(&other_tag(0)).unwrap();
    bencher.bench_local(|| EntityTag::from_header(divan::black_box(&value)));
}
