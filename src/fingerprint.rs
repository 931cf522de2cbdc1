//! Cache busting with fingerprinted URLs: the content hash in the file name.
//!
//! A fetcher that cached `/media/AAAA.jpg` for three days cannot be told
//! early that it changed; the only way to push a change is a new URL. A
//! fingerprinted URL is that new URL, made for you: `/media/AAAA.jpg` with
//! content hash `3f9c2a1b…` is linked as `/media/AAAA.3f9c2a1b5d7e9f01.jpg`,
//! and a changed file gets a changed link.
//!
//! With [`MediaCacheLayer::fingerprinted_urls`](crate::MediaCacheLayer::fingerprinted_urls)
//! the layer maps such requests to the plain path for the inner service and,
//! when the fingerprint is the hash of the bytes the service returns, answers
//! with `Cache-Control: public, max-age=31536000, immutable`.
//!
//! **A stale fingerprint** (the bytes changed since the page was rendered)
//! gets the *current* bytes with `Cache-Control: no-cache`, never
//! `immutable`. Why not 404: a page cached with the old link would show a
//! broken image. Why not a redirect to the new fingerprint: it costs the
//! fetcher a second round trip, and a redirect is itself cacheable under the
//! old URL. `no-cache` keeps every cache revalidating that URL, so no cache
//! pins bytes that do not match the name.
//!
//! # Example
//!
//! ```
//! use tower_media_cache::fingerprinted_path;
//!
//! let bytes = b"jpeg bytes";
//! let url = fingerprinted_path("/media/AAAA.jpg", bytes);
//! assert_eq!(url, "/media/AAAA.95aa5e73279a52c2.jpg");
//! ```

use crate::headers::EntityTag;
use crate::validators::content_etag;

/// Hex digits of the content hash put in a file name: 64 bits.
pub const FINGERPRINT_LEN: usize = 16;

/// The fingerprinted form of `path` for a body with these bytes:
/// `dir/name.ext` becomes `dir/name.<16 hex digits>.ext` (`dir/name` becomes
/// `dir/name.<hex>`). The digits are the first 16 of the body's content ETag.
pub fn fingerprinted_path(path: &str, content: &[u8]) -> String {
    fingerprint_with(path, &content_etag(content)).expect("a content ETag is hex digits")
}

/// The fingerprinted form of `path` for a known content ETag (one made by
/// the layer or [`content_etag`]); `None` for any other kind of tag.
pub fn fingerprint_with(path: &str, etag: &EntityTag) -> Option<String> {
    let opaque = etag.opaque();
    if etag.is_weak()
        || opaque.len() < FINGERPRINT_LEN
        || !opaque
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let hex = std::str::from_utf8(&opaque[..FINGERPRINT_LEN]).ok()?;
    let name_start = path.rfind('/').map_or(0, |i| i + 1);
    Some(match path[name_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let dot = name_start + dot;
            format!("{}.{hex}{}", &path[..dot], &path[dot..])
        }
        _ => format!("{path}.{hex}"),
    })
}

/// A fingerprint found in a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    hex: [u8; FINGERPRINT_LEN],
    /// The path without the fingerprint, query kept.
    pub(crate) plain: String,
}

impl Fingerprint {
    /// Finds `name.<16 lowercase hex>.ext` or `name.<16 hex>` in the last
    /// path segment. Anything else is not a fingerprinted URL.
    pub(crate) fn parse(path: &str, query: Option<&str>) -> Option<Self> {
        let name_start = path.rfind('/').map_or(0, |i| i + 1);
        let name = &path[name_start..];
        let (before_ext, ext) = match name.rfind('.') {
            Some(dot) if name[dot + 1..].len() != FINGERPRINT_LEN || !is_hex(&name[dot + 1..]) => {
                (&name[..dot], &name[dot..])
            }
            _ => (name, ""),
        };
        let dot = before_ext.rfind('.')?;
        let hex = &before_ext[dot + 1..];
        if dot == 0 || hex.len() != FINGERPRINT_LEN || !is_hex(hex) {
            return None;
        }
        let mut plain = String::with_capacity(path.len());
        plain.push_str(&path[..name_start]);
        plain.push_str(&before_ext[..dot]);
        plain.push_str(ext);
        if let Some(query) = query {
            plain.push('?');
            plain.push_str(query);
        }
        let mut digits = [0u8; FINGERPRINT_LEN];
        digits.copy_from_slice(hex.as_bytes());
        Some(Self { hex: digits, plain })
    }

    /// Whether this fingerprint names the bytes whose content ETag is `etag`.
    pub(crate) fn matches(&self, etag: &EntityTag) -> bool {
        etag.opaque().starts_with(&self.hex)
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_goes_before_the_extension() {
        let tag = content_etag(b"x");
        let hex = &tag.to_string()[1..17];
        assert_eq!(
            fingerprint_with("/media/AAAA.jpg", &tag).unwrap(),
            format!("/media/AAAA.{hex}.jpg")
        );
        assert_eq!(
            fingerprint_with("/media/README", &tag).unwrap(),
            format!("/media/README.{hex}")
        );
        assert_eq!(
            fingerprint_with("/a.b/.hidden", &tag).unwrap(),
            format!("/a.b/.hidden.{hex}")
        );
        assert_eq!(
            fingerprint_with("/a", &EntityTag::strong("v1").unwrap()),
            None
        );
    }

    #[test]
    fn parse_round_trips_and_keeps_the_query() {
        let url = fingerprinted_path("/media/AAAA.jpg", b"bytes");
        let found = Fingerprint::parse(&url, Some("w=100")).unwrap();
        assert_eq!(found.plain, "/media/AAAA.jpg?w=100");
        assert!(found.matches(&content_etag(b"bytes")));
        assert!(!found.matches(&content_etag(b"other bytes")));
        let bare = fingerprinted_path("/media/README", b"bytes");
        assert_eq!(
            Fingerprint::parse(&bare, None).unwrap().plain,
            "/media/README"
        );
    }

    #[test]
    fn ordinary_names_are_not_fingerprints() {
        for path in [
            "/media/AAAA.jpg",
            "/media/a.tar.gz",
            "/media/.0123456789abcdef.jpg",
            "/media/x.0123456789ABCDEF.jpg",
            "/media/x.0123456789abcde.jpg",
            "/",
            "",
        ] {
            assert_eq!(Fingerprint::parse(path, None), None, "{path}");
        }
    }
}
