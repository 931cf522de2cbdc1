//! Media seeking: Range, If-Range and 206 from buffered bodies, RFC 9110 §14.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Content, Origin, get, req, send};
use http::Request;
use tower_media_cache::{CachePolicy, MediaCacheLayer, content_etag};

const LEN: usize = 3 * 1024 * 1024 + 17;
const LM: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// A multi-megabyte "video" with bytes that differ by position.
fn video(seed: u8) -> Bytes {
    (0..LEN)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn origin(body: Bytes) -> Origin {
    Origin::new(Content {
        status: http::StatusCode::OK,
        body,
        headers: Default::default(),
    })
}

fn layer() -> MediaCacheLayer {
    MediaCacheLayer::new(CachePolicy::max_age(Duration::from_secs(259_200)))
}

fn ranged(range: &str) -> Request<()> {
    req(get("/video.mp4").header("range", range))
}

#[tokio::test]
async fn first_bytes() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let answer = send(&service, ranged("bytes=0-1023")).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, body.slice(0..1024));
    assert_eq!(
        answer.header("content-range"),
        Some(format!("bytes 0-1023/{LEN}").as_str())
    );
    assert_eq!(answer.header("content-length"), Some("1024"));
    assert_eq!(
        answer.header("etag"),
        Some(content_etag(&body).to_string().as_str())
    );
    assert_eq!(answer.header("cache-control"), Some("max-age=259200"));
    assert_eq!(answer.header("accept-ranges"), Some("bytes"));
}

#[tokio::test]
async fn a_middle_slice() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let answer = send(&service, ranged("bytes=1000000-2000000")).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, body.slice(1_000_000..2_000_001));
}

#[tokio::test]
async fn a_suffix() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let answer = send(&service, ranged("bytes=-500")).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, body.slice(LEN - 500..));
    let start = LEN - 500;
    assert_eq!(
        answer.header("content-range"),
        Some(format!("bytes {start}-{}/{LEN}", LEN - 1).as_str())
    );
}

#[tokio::test]
async fn an_open_range() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let answer = send(&service, ranged("bytes=3000000-")).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, body.slice(3_000_000..));
}

#[tokio::test]
async fn an_unsatisfiable_range_gets_416() {
    let service = origin(video(0)).wrap(&layer());
    let answer = send(&service, ranged(&format!("bytes={LEN}-"))).await;
    assert_eq!(answer.status, 416);
    assert!(answer.body.is_empty());
    assert_eq!(
        answer.header("content-range"),
        Some(format!("bytes */{LEN}").as_str())
    );
    assert_eq!(answer.header("cache-control"), None);
}

#[tokio::test]
async fn a_malformed_range_is_ignored() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    for bad in ["bytes=x-y", "pages=1-2", "bytes=5-1", "bytes"] {
        let answer = send(&service, ranged(bad)).await;
        assert_eq!(answer.status, 200, "{bad}");
        assert_eq!(answer.body.len(), LEN);
    }
}

#[tokio::test]
async fn several_ranges_get_multipart_byteranges() {
    let body = video(0);
    let origin = Origin::new(
        Content {
            status: http::StatusCode::OK,
            body: body.clone(),
            headers: Default::default(),
        }
        .header("content-type", "video/mp4"),
    );
    let service = origin.wrap(&layer());
    let answer = send(&service, ranged("bytes=0-9, 100-109")).await;
    assert_eq!(answer.status, 206);
    let content_type = answer.header("content-type").unwrap();
    let boundary = content_type
        .strip_prefix("multipart/byteranges; boundary=")
        .unwrap();
    let text = answer.body.clone();
    let parts: Vec<&[u8]> = split(&text, format!("--{boundary}").as_bytes());
    // preamble (empty), two parts, the closing "--\r\n"
    assert_eq!(parts.len(), 4, "{:?}", String::from_utf8_lossy(&text));
    assert!(contains(
        parts[1],
        format!("Content-Range: bytes 0-9/{LEN}").as_bytes()
    ));
    assert!(contains(parts[1], b"Content-Type: video/mp4"));
    assert!(parts[1].ends_with(&[&body[0..10], b"\r\n"].concat()));
    assert!(contains(
        parts[2],
        format!("Content-Range: bytes 100-109/{LEN}").as_bytes()
    ));
    assert_eq!(
        answer.header("content-length"),
        Some(text.len().to_string().as_str())
    );
}

fn split<'a>(haystack: &'a [u8], needle: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        if &haystack[i..i + needle.len()] == needle {
            out.push(&haystack[start..i]);
            i += needle.len();
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&haystack[start..]);
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn if_range_with_the_current_etag_gets_206() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let tag = content_etag(&body).to_string();
    let answer = send(
        &service,
        req(get("/video.mp4")
            .header("range", "bytes=10-19")
            .header("if-range", tag)),
    )
    .await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, body.slice(10..20));
}

#[tokio::test]
async fn if_range_with_another_etag_gets_the_full_200() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let answer = send(
        &service,
        req(get("/video.mp4")
            .header("range", "bytes=10-19")
            .header("if-range", "\"old\"")),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, body);
}

#[tokio::test]
async fn if_range_with_a_weak_etag_gets_the_full_200() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let weak = format!("W/{}", content_etag(&body));
    let answer = send(
        &service,
        req(get("/video.mp4")
            .header("range", "bytes=10-19")
            .header("if-range", weak)),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body.len(), LEN);
}

#[tokio::test]
async fn if_range_with_a_date_needs_exact_equality() {
    let body = video(0);
    let origin = Origin::new(
        Content {
            status: http::StatusCode::OK,
            body: body.clone(),
            headers: Default::default(),
        }
        .header("last-modified", LM),
    );
    let service = origin.wrap(&layer());
    let exact = send(
        &service,
        req(get("/v")
            .header("range", "bytes=0-3")
            .header("if-range", LM)),
    )
    .await;
    assert_eq!(exact.status, 206);
    let later = "Mon, 07 Nov 1994 08:49:37 GMT";
    let other = send(
        &service,
        req(get("/v")
            .header("range", "bytes=0-3")
            .header("if-range", later)),
    )
    .await;
    assert_eq!(other.status, 200);
}

#[tokio::test]
async fn a_matching_if_none_match_gives_304_never_206() {
    let body = video(0);
    let service = origin(body.clone()).wrap(&layer());
    let tag = content_etag(&body).to_string();
    let answer = send(
        &service,
        req(get("/video.mp4")
            .header("range", "bytes=0-1")
            .header("if-none-match", tag)),
    )
    .await;
    assert_eq!(answer.status, 304);
}

#[tokio::test]
async fn head_with_range_has_no_body() {
    let service = origin(video(0)).wrap(&layer());
    let answer = send(
        &service,
        req(Request::head("/video.mp4")
            .header("host", "media.example")
            .header("range", "bytes=0-1")),
    )
    .await;
    assert!(answer.body.is_empty());
    assert_ne!(answer.status, 206);
}

#[tokio::test]
async fn a_206_from_the_inner_service_passes_through() {
    let origin = Origin::new(
        Content::ok(b"0123")
            .status(206)
            .header("content-range", "bytes 0-3/100")
            .header("etag", "\"whole\""),
    );
    let service = origin.wrap(&layer());
    let answer = send(&service, ranged("bytes=0-3")).await;
    assert_eq!(answer.status, 206);
    assert_eq!(answer.body, "0123");
    assert_eq!(answer.header("etag"), Some("\"whole\""));
    assert_eq!(answer.header("content-range"), Some("bytes 0-3/100"));
}

#[tokio::test]
async fn a_resumed_download_after_the_file_changed_gets_the_whole_new_file() {
    let old = video(0);
    let new = video(0x5a);
    let origin = origin(old.clone());
    let service = origin.wrap(&layer());
    // The download starts, and stops after the first megabyte.
    let first = send(&service, req(get("/video.mp4"))).await;
    let tag = first.header("etag").unwrap().to_owned();
    // The file changes on the origin.
    origin.set(Content {
        status: http::StatusCode::OK,
        body: new.clone(),
        headers: Default::default(),
    });
    // The resume asks for the rest, only if still the same file.
    let resume = send(
        &service,
        req(get("/video.mp4")
            .header("range", "bytes=1048576-")
            .header("if-range", &tag)),
    )
    .await;
    assert_eq!(resume.status, 200, "not a 206 of a different file");
    assert_eq!(resume.body, new);
    assert_ne!(resume.header("etag"), Some(tag.as_str()));
}

#[tokio::test]
async fn a_trusted_entry_with_a_stale_if_range_drops_range_before_the_inner_service() {
    let body = video(0);
    let origin = origin(body.clone());
    let service = origin.wrap(&layer());
    send(&service, req(get("/video.mp4"))).await;
    let answer = send(
        &service,
        req(get("/video.mp4")
            .header("range", "bytes=0-9")
            .header("if-range", "\"stale\"")),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(
        origin.last_request().headers.get("range").is_none(),
        "Range removed"
    );
}
