//! Building the answers the layer writes itself (304, 412, 206, 416) and
//! applying a policy's headers to a response.

use std::cell::RefCell;
use std::time::SystemTime;

use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LANGUAGE, CONTENT_LENGTH,
    CONTENT_RANGE, CONTENT_TYPE, DATE, EXPIRES, TRAILER, TRANSFER_ENCODING,
};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::headers::HttpDate;
use crate::policy::CachePolicy;
use crate::validators::Validators;

/// Applies a policy to a response's headers: `Cache-Control` (unless the
/// service set one and the policy keeps it) and `Expires` when the policy
/// sends it (RFC 9111 §5.3), then the targeted fields. The rendered values
/// are cloned, never rebuilt. Returns whether the policy's headers were
/// written.
pub(crate) fn apply_policy(headers: &mut HeaderMap, policy: &CachePolicy, now: SystemTime) -> bool {
    if policy.overrides_existing() || !headers.contains_key(CACHE_CONTROL) {
        headers.insert(CACHE_CONTROL, policy.header_value().clone());
        if let Some(expires) = policy.expires_at(now) {
            headers.insert(EXPIRES, HttpDate::from_system_time(expires).header_value());
        }
        apply_targeted(headers, policy);
        true
    } else {
        false
    }
}

/// `CDN-Cache-Control` (RFC 9213 §2) and `Surrogate-Control`, once the
/// policy's `Cache-Control` is written: each is added unless the service
/// set it; a policy that overrides existing fields replaces them, or
/// removes them when it has none (its `Cache-Control` is then what every
/// cache obeys — a fingerprint that does not match must not stay cached at
/// the CDN under the route's lifetime).
fn apply_targeted(headers: &mut HeaderMap, policy: &CachePolicy) {
    for (name, value) in [
        (CDN_CACHE_CONTROL, policy.cdn_header_value()),
        (SURROGATE_CONTROL, policy.surrogate_header_value()),
    ] {
        match value {
            Some(value) if policy.overrides_existing() || !headers.contains_key(&name) => {
                headers.insert(name, value.clone());
            }
            None if policy.overrides_existing() => {
                headers.remove(name);
            }
            _ => {}
        }
    }
}

/// `CDN-Cache-Control`, RFC 9213 §2.
pub(crate) const CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control`, Edge Architecture Specification §3.
pub(crate) const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// The header fields a 304 carries, from those the 200 would have carried,
/// RFC 9110 §15.4.5: everything (`Cache-Control`, `Content-Location`,
/// `ETag`, `Expires`, `Last-Modified`, `Vary`, …) except representation
/// metadata that describes a body the 304 does not have — `Content-Type`,
/// `Content-Encoding`, `Content-Language`, `Content-Length`,
/// `Content-Range`, `Transfer-Encoding`, `Trailer` — and `Date`, which is
/// generated fresh.
pub(crate) fn not_modified_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = headers.clone();
    for name in [
        CONTENT_TYPE,
        CONTENT_ENCODING,
        CONTENT_LANGUAGE,
        CONTENT_LENGTH,
        CONTENT_RANGE,
        TRANSFER_ENCODING,
        TRAILER,
        ACCEPT_RANGES,
        DATE,
    ] {
        kept.remove(name);
    }
    kept
}

/// The header set a store entry keeps for its 304s: what
/// [`not_modified_headers`] keeps of the `200`, with `Date` as the first
/// entry so that [`not_modified`] overwrites it in place (no hashing, no
/// growth of the map) on every answer, with room for one more field. Without `Cache-Status`: the caches
/// upstream of the layer that handled that `200` take no part in the 304s
/// the store answers later (RFC 9211 §2).
pub(crate) fn stored_not_modified_headers(headers: &HeaderMap, now: SystemTime) -> HeaderMap {
    // One slot to spare (clones keep it): a `Cache-Status` added to each
    // answer does not make the map grow and rehash.
    let mut stored = HeaderMap::with_capacity(headers.len() + 2);
    stored.insert(DATE, date_value(now));
    stored.extend(not_modified_headers(headers));
    stored.remove(crate::cache_status::CACHE_STATUS);
    stored
}

/// The `304` a trusted store entry answers: its header set with a fresh
/// `Date` (and `Expires`, when the policy makes it relative).
pub(crate) fn from_entry<B>(entry: &crate::store::Entry, now: SystemTime, body: B) -> Response<B> {
    not_modified(entry.headers.clone(), entry.expires_after, now, body)
}

/// A fresh `Date` on a header set the layer repeats (a stored 304's, a
/// coalesced 200's) — in place when it is the first field — and, when the
/// policy made `Expires` relative to the response time, a fresh `Expires`.
pub(crate) fn refresh_dates(
    headers: &mut HeaderMap,
    expires_after: Option<std::time::Duration>,
    now: SystemTime,
) {
    let date = date_value(now);
    match headers.iter_mut().next() {
        Some((name, value)) if name == DATE => *value = date,
        _ => {
            headers.insert(DATE, date);
        }
    }
    if let Some(after) = expires_after {
        headers.insert(
            EXPIRES,
            HttpDate::from_system_time(crate::headers::add_saturating(now, after)).header_value(),
        );
    }
}

/// `304 Not Modified` with the given header set, a fresh `Date` and, when
/// the policy made `Expires` relative to the response time, a fresh
/// `Expires`.
pub(crate) fn not_modified<B>(
    mut headers: HeaderMap,
    expires_after: Option<std::time::Duration>,
    now: SystemTime,
    body: B,
) -> Response<B> {
    refresh_dates(&mut headers, expires_after, now);
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    *response.headers_mut() = headers;
    response
}

/// `412 Precondition Failed`: an empty body, a fresh `Date`, and the
/// current validators so the client can retry against the current state.
/// No `Cache-Control`, so no cache keeps it.
pub(crate) fn precondition_failed<B>(
    current: &Validators,
    now: SystemTime,
    body: B,
) -> Response<B> {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::PRECONDITION_FAILED;
    let headers = response.headers_mut();
    current.write_to(headers);
    headers.insert(DATE, date_value(now));
    headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// The header set a 304 answered for a probe carries when the store has no
/// entry for that representation: the policy's headers and the validators.
pub(crate) fn probe_headers(
    policy: &CachePolicy,
    current: &Validators,
    now: SystemTime,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    apply_policy(&mut headers, policy, now);
    current.write_to(&mut headers);
    headers
}

/// An IMF-fixdate for `now`, rendered at most once per second per thread.
pub(crate) fn date_value(now: SystemTime) -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let date = HttpDate::from_system_time(now);
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        match &*cached {
            Some((secs, value)) if *secs == date.secs() => value.clone(),
            _ => {
                let value = date.header_value();
                *cached = Some((date.secs(), value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn not_modified_drops_representation_metadata_and_keeps_cache_fields() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("cache-control", "max-age=60"),
            ("etag", "\"a\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("content-location", "/a.jpg"),
            ("vary", "accept-encoding"),
            ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
            ("content-type", "image/jpeg"),
            ("content-encoding", "gzip"),
            ("content-length", "10"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let kept = not_modified_headers(&headers);
        for name in [
            "cache-control",
            "etag",
            "last-modified",
            "content-location",
            "vary",
            "expires",
        ] {
            assert!(kept.contains_key(name), "{name}");
        }
        for name in ["content-type", "content-encoding", "content-length", "date"] {
            assert!(!kept.contains_key(name), "{name}");
        }
    }

    #[test]
    fn existing_cache_control_is_kept_unless_overridden() {
        let now = SystemTime::UNIX_EPOCH;
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("private"));
        apply_policy(&mut headers, &CachePolicy::no_cache(), now);
        assert_eq!(headers[CACHE_CONTROL], "private");
        apply_policy(
            &mut headers,
            &CachePolicy::no_cache().override_existing(),
            now,
        );
        assert_eq!(headers[CACHE_CONTROL], "no-cache");
    }

    #[test]
    fn expires_follows_max_age() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let mut headers = HeaderMap::new();
        apply_policy(
            &mut headers,
            &CachePolicy::max_age(Duration::from_secs(60)).with_expires(),
            now,
        );
        assert_eq!(headers[EXPIRES], "Sun, 06 Nov 1994 08:50:37 GMT");
    }

    #[test]
    fn date_is_an_imf_fixdate() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(date_value(now), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            date_value(now + Duration::from_secs(1)),
            "Sun, 06 Nov 1994 08:49:38 GMT"
        );
    }
}
