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

use bytes::Bytes;
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
/// that the body is never copied into one contiguous buffer. A body of one
/// frame is not hashed until the end, so that [`HashMemo`] can recognise
/// a buffer it has hashed before.
pub(crate) struct ContentHasher {
    state: XxHash3_128,
    /// The first frame, kept (a `Bytes` clone) until a second one comes.
    first: Option<Bytes>,
    /// Whether anything went into `state`.
    fed: bool,
}

impl ContentHasher {
    pub(crate) fn new() -> Self {
        Self {
            state: XxHash3_128::new(),
            first: None,
            fed: false,
        }
    }

    /// Feeds a frame the layer keeps anyway (no copy).
    pub(crate) fn update_bytes(&mut self, bytes: &Bytes) {
        if !self.fed && self.first.is_none() {
            self.first = Some(bytes.clone());
            return;
        }
        self.update(bytes);
    }

    /// Feeds bytes.
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if let Some(first) = self.first.take() {
            self.state.write(&first);
        }
        self.state.write(bytes);
        self.fed = true;
    }

    /// The content ETag of everything fed — a body of one frame through
    /// `memo` — and whether the memo knew it.
    pub(crate) fn finish(self, memo: &HashMemo) -> (EntityTag, bool) {
        match self.first {
            Some(only) if !self.fed => memo.etag_of(only),
            first => {
                let mut state = self.state;
                if let Some(first) = first {
                    state.write(&first);
                }
                (EntityTag::from_hash(state.finish_128()), false)
            }
        }
    }
}

/// The content ETags of `Bytes` buffers the layer has hashed, by buffer
/// identity: a service that hands out the same `Bytes` again (media held in
/// memory, clones from a cache) is recognised without reading it.
///
/// An entry is keyed by the buffer's address and length and holds a clone
/// of the `Bytes`, so the buffer cannot be freed, and its memory cannot be
/// reused for other content, while the entry lives; `Bytes` are immutable
/// (a `BytesMut` can only take a buffer back when it is unique, which the
/// clone prevents). Bounded by the bytes it keeps alive
/// ([`MediaCacheLayer::hash_memo_bytes`](crate::MediaCacheLayer::hash_memo_bytes));
/// buffers under [`HashMemo::MIN_LEN`] are hashed every time (that costs
/// less than the lookup).
pub(crate) struct HashMemo {
    entries: Option<MemoMap>,
}

/// Buffer address and length → a clone of the buffer and its content ETag.
type MemoMap = quick_cache::sync::Cache<(usize, usize), (Bytes, EntityTag), MemoWeight>;

#[derive(Debug, Clone)]
struct MemoWeight;

impl quick_cache::Weighter<(usize, usize), (Bytes, EntityTag)> for MemoWeight {
    fn weight(&self, key: &(usize, usize), _value: &(Bytes, EntityTag)) -> u64 {
        key.1 as u64
    }
}

impl std::fmt::Debug for HashMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashMemo")
            .field("bytes", &self.entries.as_ref().map_or(0, |e| e.weight()))
            .finish()
    }
}

impl HashMemo {
    /// Buffers shorter than this are hashed every time.
    pub(crate) const MIN_LEN: usize = 1024;

    /// No memo: every buffer is hashed.
    pub(crate) const NONE: HashMemo = HashMemo { entries: None };

    /// A memo keeping at most `bytes` of buffers alive (0: no memo).
    pub(crate) fn new(bytes: u64) -> Self {
        let entries = (bytes > 0).then(|| {
            // One shard: a shard holds only its part of the capacity, and a
            // buffer larger than that part (a video held in memory) would
            // never be remembered. The memo's work under the lock is one
            // look-up per response.
            let options = quick_cache::OptionsBuilder::new()
                .estimated_items_capacity((bytes / 16_384).clamp(16, 65_536) as usize)
                .weight_capacity(bytes)
                .shards(1)
                .build()
                .expect("capacity and item estimate are set");
            quick_cache::sync::Cache::with_options(
                options,
                MemoWeight,
                Default::default(),
                Default::default(),
            )
        });
        Self { entries }
    }

    /// The content ETag of `bytes`, remembered or hashed and remembered;
    /// and whether it was remembered.
    pub(crate) fn etag_of(&self, bytes: Bytes) -> (EntityTag, bool) {
        let Some(entries) = self
            .entries
            .as_ref()
            .filter(|_| bytes.len() >= Self::MIN_LEN)
        else {
            return (content_etag(&bytes), false);
        };
        let key = (bytes.as_ptr() as usize, bytes.len());
        if let Some((_, etag)) = entries.get(&key) {
            return (etag, true);
        }
        let etag = content_etag(&bytes);
        entries.insert(key, (bytes, etag.clone()));
        (etag, false)
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
        assert_eq!(hasher.finish(&HashMemo::NONE).0.to_string(), reference);
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
