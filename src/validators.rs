//! Validators of a representation, and the content hash that makes strong
//! entity tags identical on every replica.
//!
//! # The content ETag
//!
//! The tag is **XXH3-128** (the 128-bit variant of XXH3, default secret, seed
//! 0) of the exact body bytes, written as 32 lowercase hexadecimal digits of
//! the canonical (big-endian) digest, in double quotes. It is the value that
//! `xxhsum -H2 FILE` prints, so any other stack can reproduce it:
//!
//! ```
//! use tower_media_cache::content_etag;
//!
//! assert_eq!(
//!     content_etag(b"hello world").to_string(),
//!     "\"df8d09e93f874900a99b8775cc15b6c7\"",
//! );
//! ```
//!
//! The value depends only on the bytes: not on the machine, the process, the
//! file's modification time or the crate version (a test pins it).

use std::time::SystemTime;

use http::header::{ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue};
use twox_hash::XxHash3_128;

use crate::headers::{self, EntityTag, HttpDate};

/// The validators of a representation: its entity tag and its last
/// modification date, either of which may be unknown.
///
/// A [probe](crate::CachePolicy::probe) returns these; the store keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    etag: Option<EntityTag>,
    last_modified: Option<HttpDate>,
}

impl Validators {
    /// No validators known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the entity tag.
    pub fn with_etag(mut self, etag: EntityTag) -> Self {
        self.etag = Some(etag);
        self
    }

    /// Sets the last modification time; HTTP dates have whole seconds, so
    /// the fraction is dropped.
    pub fn with_last_modified(mut self, time: SystemTime) -> Self {
        self.last_modified = Some(HttpDate::from_system_time(time));
        self
    }

    /// The entity tag, if known.
    pub fn etag(&self) -> Option<&EntityTag> {
        self.etag.as_ref()
    }

    /// The last modification time in whole seconds, if known.
    pub fn last_modified(&self) -> Option<SystemTime> {
        self.last_modified.map(HttpDate::to_system_time)
    }

    pub(crate) fn last_modified_date(&self) -> Option<HttpDate> {
        self.last_modified
    }

    pub(crate) fn set_last_modified_date(&mut self, date: HttpDate) {
        self.last_modified = Some(date);
    }

    /// Whether neither validator is known.
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }

    /// Reads `ETag` and `Last-Modified` from response headers. A header that
    /// does not parse, or appears more than once, counts as absent.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            etag: headers::single_line(headers.get_all(ETAG))
                .and_then(|v| EntityTag::from_header(v).ok()),
            last_modified: headers::single_date(headers.get_all(LAST_MODIFIED)),
        }
    }

    /// Writes the known validators into response headers, replacing any.
    pub(crate) fn write_to(&self, headers: &mut HeaderMap) {
        if let Some(etag) = &self.etag {
            headers.insert(ETAG, etag.header_value().clone());
        }
        if let Some(date) = self.last_modified {
            headers.insert(LAST_MODIFIED, date.header_value());
        }
    }
}

/// The strong content entity tag of a byte string: **XXH3-128** (default
/// secret, seed 0) of the bytes, as 32 lowercase hexadecimal digits of the
/// canonical big-endian digest, in double quotes — what `xxhsum -H2 FILE`
/// prints, so any other stack can reproduce it. It depends only on the
/// bytes, never on the machine, the process or the crate version.
///
/// ```
/// use tower_media_cache::content_etag;
///
/// assert_eq!(
///     content_etag(b"hello world").to_string(),
///     "\"df8d09e93f874900a99b8775cc15b6c7\"",
/// );
/// ```
pub fn content_etag(bytes: &[u8]) -> EntityTag {
    EntityTag::from_hash(XxHash3_128::oneshot(bytes))
}

/// Incremental form of [`content_etag`], fed one body frame at a time so
/// that the body is never copied into one contiguous buffer.
pub(crate) struct ContentHasher(XxHash3_128);

impl ContentHasher {
    pub(crate) fn new() -> Self {
        Self(XxHash3_128::new())
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    pub(crate) fn finish(&self) -> EntityTag {
        EntityTag::from_hash(self.0.finish_128())
    }
}

impl std::fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentHasher").finish_non_exhaustive()
    }
}

/// Repairs an `ETag` that a service sent without the mandatory quotes
/// (RFC 9110 §8.8.3): `abc` becomes `"abc"` when every byte is allowed in
/// an entity tag. Returns `None` when the value is already valid or cannot
/// be repaired; an unrepairable value is left exactly as the service sent it.
pub(crate) fn repair_unquoted_etag(value: &HeaderValue) -> Option<HeaderValue> {
    if EntityTag::from_header(value).is_ok() {
        return None;
    }
    let bytes = headers::trim_ows(value.as_bytes());
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() {
        return None;
    }
    EntityTag::strong(text)
        .ok()
        .map(|tag| tag.header_value().clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_etag_of_a_fixed_string_is_pinned() {
        // XXH3-128 test vectors; these must never change between versions.
        assert_eq!(
            content_etag(b"").to_string(),
            "\"99aa06d3014798d86001c324468d497f\""
        );
        assert_eq!(
            content_etag(b"hello world").to_string(),
            "\"df8d09e93f874900a99b8775cc15b6c7\""
        );
    }

    #[test]
    fn incremental_hash_equals_one_shot_hash_and_the_reference() {
        // 300 000 bytes take XXH3's long-input path (many 1 KiB blocks).
        // The expected value was computed with the reference C
        // implementation: `xxhsum -H2` 0.8.1 (Debian package `xxhash`).
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let reference = "\"173e6dc9aee9fff9fc0f7694d76899d1\"";
        assert_eq!(content_etag(&data).to_string(), reference);
        let mut hasher = ContentHasher::new();
        for chunk in data.chunks(8191) {
            hasher.update(chunk);
        }
        assert_eq!(hasher.finish().to_string(), reference);
    }

    #[test]
    fn unquoted_etag_is_quoted() {
        let repaired = repair_unquoted_etag(&HeaderValue::from_static("abc123")).unwrap();
        assert_eq!(repaired, "\"abc123\"");
        assert_eq!(
            repair_unquoted_etag(&HeaderValue::from_static("\"ok\"")),
            None
        );
        assert_eq!(repair_unquoted_etag(&HeaderValue::from_static("a b")), None);
    }

    #[test]
    fn validators_from_headers_ignore_duplicates_and_garbage() {
        let mut headers = HeaderMap::new();
        headers.append(ETAG, HeaderValue::from_static("\"a\""));
        headers.append(ETAG, HeaderValue::from_static("\"b\""));
        headers.insert(LAST_MODIFIED, HeaderValue::from_static("never"));
        assert!(Validators::from_headers(&headers).is_empty());
    }
}
