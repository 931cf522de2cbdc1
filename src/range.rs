//! Byte ranges, RFC 9110 §14: parsing `Range: bytes=…` against a known
//! length, and cutting the ranges out of a buffered body without copying it.

use std::collections::VecDeque;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{
    CACHE_CONTROL, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, EXPIRES, GetAll, RANGE,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode, response};
use http_body::Body;

use crate::body::{Buffered, ResponseBody};
use crate::headers::EntityTag;
use crate::validators::Validators;

/// More ranges than this in one request are answered with the full
/// representation (RFC 9110 §14.2 lets a server ignore such requests; many
/// small ranges are a known amplification trick).
pub const MAX_RANGES: usize = 16;

/// What to answer to a `Range` request for a representation of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RangeAnswer {
    /// Ignore the field and send the whole representation (absent, not
    /// `bytes`, malformed, too many ranges, or ranges that overlap so much
    /// they add up to more than the whole).
    Full,
    /// `206` with these inclusive `(first, last)` ranges, in request order.
    Partial(Vec<(u64, u64)>),
    /// `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates a `Range` field for a representation of `len` bytes,
/// RFC 9110 §14.1.2 (syntax) and §14.2 (satisfiability):
///
/// ```text
/// Range = ranges-specifier
/// ranges-specifier = range-unit "=" range-set
/// range-set = 1#range-spec
/// range-spec = int-range / suffix-range / other-range
/// int-range = first-pos "-" [ last-pos ]
/// suffix-range = "-" suffix-length
/// ```
///
/// The unit is matched case-insensitively. A range whose first position is
/// past the end is unsatisfiable; a last position past the end is clipped;
/// a suffix longer than the representation means all of it.
pub(crate) fn evaluate(value: &HeaderValue, len: u64) -> RangeAnswer {
    let Some(specs) = range_specs(value) else {
        return RangeAnswer::Full;
    };
    let mut satisfiable = Vec::new();
    let mut count = 0usize;
    for spec in specs {
        count += 1;
        if count > MAX_RANGES {
            return RangeAnswer::Full;
        }
        let range = match spec {
            None => return RangeAnswer::Full,
            Some(Spec::Suffix(suffix)) => {
                (suffix > 0 && len > 0).then(|| (len.saturating_sub(suffix), len - 1))
            }
            Some(Spec::From { first, last }) => {
                let last = last.unwrap_or(u64::MAX);
                (first < len).then(|| (first, last.min(len - 1)))
            }
        };
        satisfiable.extend(range);
    }
    if count == 0 {
        return RangeAnswer::Full;
    }
    if satisfiable.is_empty() {
        return RangeAnswer::Unsatisfiable;
    }
    let total: u64 = satisfiable.iter().map(|(a, b)| b - a + 1).sum();
    if satisfiable.len() > 1 && total > len {
        return RangeAnswer::Full;
    }
    RangeAnswer::Partial(satisfiable)
}

/// One `range-spec` of a `bytes` range set (RFC 9110 §14.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-`.
    From { first: u64, last: Option<u64> },
    /// `-suffix`.
    Suffix(u64),
}

/// The `range-spec`s of a `Range` value in the `bytes` unit (matched
/// case-insensitively), each `None` when it is malformed (a last position
/// before the first, not digits, no dash); `None` for another unit or no
/// `=`. Empty list members are skipped.
fn range_specs(value: &HeaderValue) -> Option<impl Iterator<Item = Option<Spec>> + '_> {
    let bytes = crate::headers::trim_ows(value.as_bytes());
    let eq = bytes.iter().position(|&b| b == b'=')?;
    if !crate::headers::trim_ows(&bytes[..eq]).eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    Some(crate::headers::members(&bytes[eq + 1..]).map(|spec| {
        let dash = spec.iter().position(|&b| b == b'-')?;
        let (first, last) = (&spec[..dash], &spec[dash + 1..]);
        if first.is_empty() {
            return digits(last).map(Spec::Suffix);
        }
        let first = digits(first)?;
        let last = match last {
            [] => None,
            last => Some(digits(last).filter(|&last| last >= first)?),
        };
        Some(Spec::From { first, last })
    }))
}

/// The one part to cut from a body that streams by once (RFC 9110 §14.2),
/// whose complete length may be unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamRange {
    /// Send the whole representation: the field is ignored, names several
    /// ranges (a stream cannot be rewound for them), or needs a length
    /// that is not known (`first-`, `-suffix`).
    Full,
    /// `416`: nothing of a representation of this length is asked for.
    Unsatisfiable(u64),
    /// `206` with the bytes `first..=last`; `len` is the complete length,
    /// if known.
    Part {
        first: u64,
        last: u64,
        len: Option<u64>,
    },
}

/// Evaluates `Range` for a body that streams by once: as [`evaluate`] when
/// the length is known, keeping a single part; with the length unknown,
/// only a closed `first-last` can be cut, announced with the complete
/// length `*` (RFC 9110 §14.4).
pub(crate) fn evaluate_streamed(value: &HeaderValue, len: Option<u64>) -> StreamRange {
    match len {
        Some(len) => match evaluate(value, len) {
            RangeAnswer::Partial(ranges) => match ranges[..] {
                [(first, last)] => StreamRange::Part {
                    first,
                    last,
                    len: Some(len),
                },
                _ => StreamRange::Full,
            },
            RangeAnswer::Unsatisfiable => StreamRange::Unsatisfiable(len),
            RangeAnswer::Full => StreamRange::Full,
        },
        None => match closed_range(value) {
            Some((first, last)) => StreamRange::Part {
                first,
                last,
                len: None,
            },
            None => StreamRange::Full,
        },
    }
}

/// `bytes=first-last`, one range with both positions, and nothing else.
fn closed_range(value: &HeaderValue) -> Option<(u64, u64)> {
    let mut specs = range_specs(value)?;
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    match spec? {
        Spec::From {
            first,
            last: Some(last),
        } => Some((first, last)),
        _ => None,
    }
}

/// `1*DIGIT` as a number; `None` for anything else or on overflow.
fn digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The bytes `first..=last` of a body held as chunks, as cheap slices of
/// those chunks (no copy).
pub(crate) fn slice(chunks: &VecDeque<Bytes>, first: u64, last: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for chunk in chunks {
        let len = chunk.len() as u64;
        let (start, end) = (offset, offset + len);
        offset = end;
        if end <= first {
            continue;
        }
        if start > last {
            break;
        }
        let from = first.saturating_sub(start) as usize;
        let to = ((last + 1).min(end) - start) as usize;
        out.push(chunk.slice(from..to));
    }
    out
}

/// `Content-Range: bytes first-last/len`.
pub(crate) fn content_range(first: u64, last: u64, len: u64) -> HeaderValue {
    HeaderValue::try_from(format!("bytes {first}-{last}/{len}"))
        .expect("digits are a valid header value")
}

/// `Content-Range: bytes first-last/*`: the complete length is unknown.
pub(crate) fn content_range_of_unknown(first: u64, last: u64) -> HeaderValue {
    HeaderValue::try_from(format!("bytes {first}-{last}/*"))
        .expect("digits are a valid header value")
}

/// `Content-Range: bytes */len`, for 416.
pub(crate) fn unsatisfied_range(len: u64) -> HeaderValue {
    HeaderValue::try_from(format!("bytes */{len}")).expect("digits are a valid header value")
}

/// A `multipart/byteranges` body (RFC 9110 §14.6) for several ranges.
/// Returns the parts as chunks and the boundary used.
pub(crate) fn multipart(
    chunks: &VecDeque<Bytes>,
    ranges: &[(u64, u64)],
    len: u64,
    content_type: Option<&HeaderValue>,
    boundary: &str,
) -> VecDeque<Bytes> {
    let mut out = VecDeque::new();
    for (i, &(first, last)) in ranges.iter().enumerate() {
        let mut head = String::new();
        if i > 0 {
            head.push_str("\r\n");
        }
        head.push_str("--");
        head.push_str(boundary);
        head.push_str("\r\n");
        if let Some(ct) = content_type.and_then(|v| v.to_str().ok()) {
            head.push_str("Content-Type: ");
            head.push_str(ct);
            head.push_str("\r\n");
        }
        head.push_str(&format!(
            "Content-Range: bytes {first}-{last}/{len}\r\n\r\n"
        ));
        out.push_back(Bytes::from(head));
        out.extend(slice(chunks, first, last));
    }
    out.push_back(Bytes::from(format!("\r\n--{boundary}--\r\n")));
    out
}

/// What to do with a request's `Range`, decided in one place wherever the
/// layer meets it: before calling the service with validators known (a
/// trusted entry, a probe) and after the service answered a full `200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RangeDecision {
    /// No `Range`, or validators not known yet: leave the request as it is.
    Pass,
    /// `If-Range` does not match the current representation (RFC 9110
    /// §13.1.5): the whole representation is sent, never a part of another.
    Strip,
    /// The range may be served: the service may cut it, or the layer cuts
    /// it from the full body it holds.
    CutHere,
}

/// Decides a request's `Range` against the current validators, if known
/// (`If-Range`, RFC 9110 §13.1.5 and §14.2).
pub(crate) fn decide(
    request: &HeaderMap,
    current: Option<&Validators>,
    now: SystemTime,
) -> RangeDecision {
    match current {
        _ if !request.contains_key(RANGE) => RangeDecision::Pass,
        None => RangeDecision::Pass,
        Some(current) if crate::preconditions::if_range(request, current, now) => {
            RangeDecision::CutHere
        }
        Some(_) => RangeDecision::Strip,
    }
}

/// The answer to a `Range` request over a complete buffered `200`
/// (`If-Range` already checked): `206` for satisfiable ranges, one part or
/// `multipart/byteranges`; `416` for none; the whole body for a `Range`
/// that is ignored (malformed, several lines, too many ranges), RFC 9110
/// §14. `etag` is the full representation's, for the multipart boundary.
pub(crate) fn answer<B: Body>(
    mut head: response::Parts,
    mut buffered: Buffered<B>,
    range: GetAll<'_, HeaderValue>,
    etag: Option<&EntityTag>,
) -> Response<ResponseBody<B>> {
    let Some(value) = crate::headers::single_line(range) else {
        return Response::from_parts(head, ResponseBody::chunks(buffered));
    };
    let len = buffered.len;
    match evaluate(value, len) {
        RangeAnswer::Full => Response::from_parts(head, ResponseBody::chunks(buffered)),
        RangeAnswer::Unsatisfiable => unsatisfiable(head, len),
        RangeAnswer::Partial(ranges) => {
            head.status = StatusCode::PARTIAL_CONTENT;
            buffered.trailers = None;
            if let [(first, last)] = ranges[..] {
                head.headers
                    .insert(CONTENT_RANGE, content_range(first, last, len));
                head.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(last - first + 1));
                buffered.chunks = slice(&buffered.chunks, first, last).into();
            } else {
                let boundary = boundary(etag);
                let content_type = head.headers.get(CONTENT_TYPE).cloned();
                buffered.chunks = multipart(
                    &buffered.chunks,
                    &ranges,
                    len,
                    content_type.as_ref(),
                    &boundary,
                );
                let total: usize = buffered.chunks.iter().map(|c| c.len()).sum();
                head.headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::try_from(format!("multipart/byteranges; boundary={boundary}"))
                        .expect("boundary is hex digits"),
                );
                head.headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(total));
            }
            Response::from_parts(head, ResponseBody::chunks(buffered))
        }
    }
}

/// `416 Range Not Satisfiable` for a representation of `len` bytes, made
/// from its `200` head: `Content-Range: bytes */len` and no body (RFC 9110
/// §15.5.17), nothing that would let a cache keep it.
pub(crate) fn unsatisfiable<B: Body>(
    mut head: response::Parts,
    len: u64,
) -> Response<ResponseBody<B>> {
    head.status = StatusCode::RANGE_NOT_SATISFIABLE;
    for name in [CACHE_CONTROL, EXPIRES, CONTENT_TYPE] {
        head.headers.remove(name);
    }
    head.headers.insert(CONTENT_RANGE, unsatisfied_range(len));
    head.headers.insert(CONTENT_LENGTH, HeaderValue::from(0u64));
    Response::from_parts(head, ResponseBody::empty())
}

/// A multipart boundary that cannot occur in the content: derived from the
/// content hash, which the parts' bytes cannot contain by chance.
fn boundary(etag: Option<&EntityTag>) -> String {
    let tag = etag
        .map(|e| String::from_utf8_lossy(e.opaque()).into_owned())
        .unwrap_or_default();
    let digits: String = tag
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    format!("tower-media-cache-{digits}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(value: &'static str, len: u64) -> RangeAnswer {
        evaluate(&HeaderValue::from_static(value), len)
    }

    #[test]
    fn the_three_range_forms() {
        assert_eq!(
            eval("bytes=0-99", 1000),
            RangeAnswer::Partial(vec![(0, 99)])
        );
        assert_eq!(
            eval("bytes=900-", 1000),
            RangeAnswer::Partial(vec![(900, 999)])
        );
        assert_eq!(
            eval("bytes=-100", 1000),
            RangeAnswer::Partial(vec![(900, 999)])
        );
        assert_eq!(eval("Bytes = 5-5", 10), RangeAnswer::Partial(vec![(5, 5)]));
    }

    #[test]
    fn last_position_past_the_end_is_clipped_and_long_suffix_is_everything() {
        assert_eq!(
            eval("bytes=10-5000", 100),
            RangeAnswer::Partial(vec![(10, 99)])
        );
        assert_eq!(
            eval("bytes=-5000", 100),
            RangeAnswer::Partial(vec![(0, 99)])
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(eval("bytes=1000-", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(eval("bytes=-0", 1000), RangeAnswer::Unsatisfiable);
        assert_eq!(eval("bytes=0-", 0), RangeAnswer::Unsatisfiable);
    }

    #[test]
    fn malformed_ranges_are_ignored() {
        for bad in [
            "bytes=a-b",
            "bytes=5-1",
            "items=0-1",
            "bytes=",
            "bytes",
            "bytes=1",
            "bytes=--1",
            "bytes=99999999999999999999-",
            "bytes=0-1,x",
        ] {
            assert_eq!(eval(bad, 1000), RangeAnswer::Full, "{bad}");
        }
    }

    #[test]
    fn too_many_or_overlapping_ranges_get_the_full_body() {
        let many = (0..=MAX_RANGES)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let value = HeaderValue::try_from(format!("bytes={many}")).unwrap();
        assert_eq!(evaluate(&value, 1000), RangeAnswer::Full);
        assert_eq!(eval("bytes=0-999,0-999", 1000), RangeAnswer::Full);
        assert_eq!(
            eval("bytes=0-1, 5-6", 1000),
            RangeAnswer::Partial(vec![(0, 1), (5, 6)])
        );
    }

    #[test]
    fn a_stream_is_cut_once_and_without_its_length_only_between_two_positions() {
        let streamed =
            |value: &'static str, len| evaluate_streamed(&HeaderValue::from_static(value), len);
        let part = |first, last, len| StreamRange::Part { first, last, len };
        assert_eq!(streamed("bytes=10-19", Some(100)), part(10, 19, Some(100)));
        assert_eq!(streamed("bytes=-10", Some(100)), part(90, 99, Some(100)));
        assert_eq!(
            streamed("bytes=200-", Some(100)),
            StreamRange::Unsatisfiable(100)
        );
        assert_eq!(streamed("bytes=0-1,5-6", Some(100)), StreamRange::Full);
        assert_eq!(streamed("bytes=1000-1099", None), part(1000, 1099, None));
        assert_eq!(streamed(" BYTES = 5-5 ", None), part(5, 5, None));
        for unknowable in [
            "bytes=10-",
            "bytes=-10",
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=x-1",
            "items=0-1",
        ] {
            assert_eq!(
                streamed(unknowable, None),
                StreamRange::Full,
                "{unknowable}"
            );
        }
    }

    #[test]
    fn slices_cross_chunk_boundaries() {
        let chunks: VecDeque<Bytes> = [&b"abc"[..], b"defg", b"hij"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let cut = |a, b| slice(&chunks, a, b).concat();
        assert_eq!(cut(0, 9), b"abcdefghij");
        assert_eq!(cut(2, 7), b"cdefgh");
        assert_eq!(cut(3, 6), b"defg");
        assert_eq!(cut(9, 9), b"j");
    }

    #[test]
    fn multipart_body_has_a_part_per_range() {
        let chunks: VecDeque<Bytes> = [Bytes::from_static(b"0123456789")].into();
        let ct = HeaderValue::from_static("text/plain");
        let body = multipart(&chunks, &[(0, 1), (8, 9)], 10, Some(&ct), "B")
            .into_iter()
            .collect::<Vec<_>>()
            .concat();
        assert_eq!(
            String::from_utf8(body).unwrap(),
            "--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\
             \r\n--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 8-9/10\r\n\r\n89\
             \r\n--B--\r\n"
        );
    }
}
