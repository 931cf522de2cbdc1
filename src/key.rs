//! What the validator store keys by.
//!
//! * The **group** of a request ([`Key`]): a 64-bit hash of its path
//!   normalised so that every spelling a server might take for the same
//!   resource lands in one group — percent-decoded, ASCII-lowercased, dot
//!   segments resolved, repeated and trailing slashes dropped, the query
//!   ignored. Invalidation works on groups, so a write through any spelling
//!   (`/a.jpg?x=1`, `/%61.jpg`, `/A.JPG`) forgets every stored variant of the
//!   resource. Grouping more than the server would is always safe: it only
//!   invalidates more.
//! * The **selector** of one stored variant ([`Selecting`]): the exact bytes
//!   of everything that picks the representation — the path and query as
//!   sent, the authority (URI and `Host`, as bytes), optionally
//!   `X-Forwarded-Host` and `Forwarded`, and every line of every field named
//!   in `Vary`, in order. Nothing is normalised (RFC 9111 §4.1: when unsure
//!   whether the origin ignores a difference, it is a miss), and a field that
//!   is absent never matches one that is present, even empty.

use std::borrow::Cow;
use std::hash::Hasher as _;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// The group a request path belongs to. Cheap to copy and compare.
///
/// 64 bits are plenty: a collision only puts two paths in one group, so a
/// write to one also invalidates the other (harmless); which stored variant
/// answers a request is decided by the exact selector bytes, never by this
/// hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64);

impl Key {
    /// The group of a request target (its path; the query is ignored).
    pub(crate) fn of(uri: &Uri) -> Self {
        Self::of_path(uri.path().as_bytes())
    }

    /// The group of a path, spelled any way.
    pub(crate) fn of_path(path: &[u8]) -> Self {
        Self(twox_hash::XxHash3_64::oneshot(&normalize_path(path)))
    }

    /// The hash, for maps keyed by group.
    pub(crate) fn hash(self) -> u64 {
        self.0
    }

    /// Which of `stripes` stripes (epochs, write locks) the group falls in.
    pub(crate) fn stripe(self, stripes: usize) -> usize {
        (self.0 % stripes as u64) as usize
    }
}

/// The path a group is named by: percent-decoded (every `%XX`, once),
/// ASCII-lowercased, `.` and empty segments dropped, `..` resolved, no
/// trailing slash; `/` for the root. A path already in that form is
/// borrowed, not copied.
pub(crate) fn normalize_path(path: &[u8]) -> Cow<'_, [u8]> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded = percent_decode(path);
    let mut segments: Vec<&[u8]> = Vec::new();
    for segment in decoded.split(|&b| b == b'/') {
        match segment {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    let mut out = Vec::with_capacity(decoded.len() + 1);
    for segment in &segments {
        out.push(b'/');
        out.extend(segment.iter().map(u8::to_ascii_lowercase));
    }
    if out.is_empty() {
        out.push(b'/');
    }
    Cow::Owned(out)
}

/// Whether `path` is certainly in the form [`normalize_path`] returns: no
/// `%`, no uppercase letter, no `//` and no segment starting with `.`, a
/// leading and no trailing slash. A branch-free scan that keeps the common
/// case (`/media/aaaa.jpg`) free of allocation; a path it refuses (such as
/// `/.well-known/x`) is normalised the long way, to the same result.
fn is_normal(path: &[u8]) -> bool {
    if path == b"/" {
        return true;
    }
    let [b'/', .., last] = path else {
        return false;
    };
    if *last == b'/' {
        return false;
    }
    // Branch-free, one table lookup per byte: `%` and `A`-`Z` are never
    // normal; `/` and `.` are not right after a slash.
    let mut bad = 0u8;
    let mut after_slash = 0u8;
    for &b in path {
        let class = BYTE_CLASS[b as usize];
        bad |= class & (ODD | after_slash);
        after_slash = (class & SLASH) >> 1;
    }
    bad == 0
}

const ODD: u8 = 1;
/// `/` or `.`: not normal right after a slash.
const SLASH_OR_DOT: u8 = 2;
/// `/` itself (shifted right once, it is [`SLASH_OR_DOT`]).
const SLASH: u8 = 4;
/// [`is_normal`]'s byte classes.
static BYTE_CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = b'A';
    while b <= b'Z' {
        table[b as usize] = ODD;
        b += 1;
    }
    table[b'%' as usize] = ODD;
    table[b'/' as usize] = SLASH_OR_DOT | SLASH;
    table[b'.' as usize] = SLASH_OR_DOT;
    table
};

fn percent_decode(path: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// Field lines start with this byte in a selector and a field ends with
/// [`END`]; header values and request targets contain neither, so the
/// encoding is unambiguous (an absent field is `END` alone, an empty line is
/// `LINE END`).
const LINE: u8 = b'\n';
const END: u8 = 0;

/// The parts of a request that select a stored variant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Selecting<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    host: Host<'a>,
    /// Whether `X-Forwarded-Host` and `Forwarded` are part of the authority
    /// ([`MediaCacheLayer::vary_on_forwarded_host`](crate::MediaCacheLayer::vary_on_forwarded_host)).
    forwarded: bool,
}

/// The request's `Host` field lines.
#[derive(Debug, Clone, Copy)]
enum Host<'a> {
    None,
    One(&'a HeaderValue),
    /// More than one line: a request to refuse (RFC 9112 §3.2), never
    /// learned nor answered from the store.
    Several,
}

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where [`Selecting::parts`] sends the selector, part by part.
trait Sink {
    /// Takes `bytes` — ASCII case-folded when `fold` — and returns whether
    /// to go on.
    fn take(&mut self, bytes: &[u8], fold: bool) -> bool;

    /// Takes one separator byte ([`LINE`] or [`END`]).
    fn mark(&mut self, byte: u8) -> bool;
}

/// Measures a selector, refusing one longer than `limit`.
struct Length {
    len: usize,
    limit: usize,
}

impl Sink for Length {
    fn take(&mut self, bytes: &[u8], _fold: bool) -> bool {
        self.len += bytes.len();
        self.len <= self.limit
    }

    fn mark(&mut self, _byte: u8) -> bool {
        self.len += 1;
        self.len <= self.limit
    }
}

/// Hashes a selector, refusing one longer than `limit`.
struct Hashing {
    state: twox_hash::XxHash3_64,
    len: usize,
    limit: usize,
}

impl Sink for Hashing {
    fn take(&mut self, bytes: &[u8], fold: bool) -> bool {
        self.len += bytes.len();
        if fold {
            let mut folded = [0u8; 64];
            for chunk in bytes.chunks(folded.len()) {
                let folded = &mut folded[..chunk.len()];
                folded.copy_from_slice(chunk);
                folded.make_ascii_lowercase();
                self.state.write(folded);
            }
        } else {
            self.state.write(bytes);
        }
        self.len <= self.limit
    }

    fn mark(&mut self, byte: u8) -> bool {
        self.state.write(&[byte]);
        self.len += 1;
        self.len <= self.limit
    }
}

/// Builds a selector, refusing one longer than `limit`.
struct Encoder {
    out: Vec<u8>,
    limit: usize,
}

impl Sink for Encoder {
    fn take(&mut self, bytes: &[u8], fold: bool) -> bool {
        let start = self.out.len();
        self.out.extend_from_slice(bytes);
        if fold {
            self.out[start..].make_ascii_lowercase();
        }
        self.out.len() <= self.limit
    }

    fn mark(&mut self, byte: u8) -> bool {
        self.out.push(byte);
        self.out.len() <= self.limit
    }
}

/// Compares a request with a stored selector, without allocating.
struct Matcher<'a> {
    rest: &'a [u8],
}

impl Sink for Matcher<'_> {
    #[inline]
    fn mark(&mut self, byte: u8) -> bool {
        match self.rest.split_first() {
            Some((&first, tail)) if first == byte => {
                self.rest = tail;
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn take(&mut self, bytes: &[u8], fold: bool) -> bool {
        let Some((head, tail)) = self.rest.split_at_checked(bytes.len()) else {
            return false;
        };
        // The stored side was folded when it was encoded; most requests
        // send it folded too, so the plain comparison comes first.
        let equal = head == bytes || (fold && head.eq_ignore_ascii_case(bytes));
        self.rest = tail;
        equal
    }
}

impl<'a> Selecting<'a> {
    /// The selecting parts of a request.
    pub(crate) fn new(uri: &'a Uri, headers: &'a HeaderMap, forwarded: bool) -> Self {
        let mut lines = headers.get_all(http::header::HOST).iter();
        let host = match (lines.next(), lines.next()) {
            (None, _) => Host::None,
            (Some(one), None) => Host::One(one),
            (Some(_), Some(_)) => Host::Several,
        };
        Self {
            uri,
            headers,
            host,
            forwarded,
        }
    }

    /// The same, from the `Host` lines the request's header scan found
    /// (the short-circuit path: no second lookup).
    pub(crate) fn scanned(
        uri: &'a Uri,
        headers: &'a HeaderMap,
        present: &crate::preconditions::Present<'a>,
        forwarded: bool,
    ) -> Self {
        let host = match (present.host, present.several_hosts) {
            (_, true) => Host::Several,
            (Some(one), false) => Host::One(one),
            (None, false) => Host::None,
        };
        Self {
            uri,
            headers,
            host,
            forwarded,
        }
    }

    /// The request target.
    pub(crate) fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// Feeds the selector, part by part, to `sink`; stops as soon as `sink`
    /// refuses, and returns false then.
    fn parts(&self, vary: &[HeaderName], sink: &mut impl Sink) -> bool {
        let target = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        if !(sink.take(target.as_bytes(), false) && sink.mark(END)) {
            return false;
        }
        // Host names are case-insensitive (RFC 9110 §4.2.3): the one
        // normalisation every origin makes. Every other byte counts.
        let authority = self.uri.authority().map(|a| a.as_str().as_bytes());
        if !(authority.is_none_or(|a| sink.mark(LINE) && sink.take(a, true)) && sink.mark(END)) {
            return false;
        }
        let host = match self.host {
            Host::None => true,
            Host::One(line) => sink.mark(LINE) && sink.take(line.as_bytes(), true),
            Host::Several => false,
        };
        if !(host && sink.mark(END)) {
            return false;
        }
        if self.forwarded
            && !(field(self.headers, &X_FORWARDED_HOST, false, sink)
                && field(self.headers, &http::header::FORWARDED, false, sink))
        {
            return false;
        }
        vary.iter()
            .all(|name| field(self.headers, name, false, sink))
    }

    /// The selector of the variant this request would create under a
    /// response that varies on `vary`, or `None` when it is longer than
    /// `limit` bytes (such requests are not learned).
    pub(crate) fn encode(&self, vary: &[HeaderName], limit: usize) -> Option<Box<[u8]>> {
        // Measured first, then written into an exact allocation: a selector
        // is built on every learn, and growing or shrinking it would copy.
        let mut length = Length { len: 0, limit };
        if !self.parts(vary, &mut length) {
            return None;
        }
        let mut encoder = Encoder {
            out: Vec::with_capacity(length.len),
            limit,
        };
        self.parts(vary, &mut encoder)
            .then(|| encoder.out.into_boxed_slice())
    }

    /// A 64-bit hash (XXH3) of the selector [`encode`](Self::encode) would
    /// make, without allocating; `None` past `limit` bytes. Equal
    /// selectors hash equal; a match of hashes is not a match of
    /// selectors (compare with [`matches`](Self::matches)).
    pub(crate) fn hash(&self, vary: &[HeaderName], limit: usize) -> Option<u64> {
        let mut hashing = Hashing {
            state: twox_hash::XxHash3_64::new(),
            len: 0,
            limit,
        };
        self.parts(vary, &mut hashing)
            .then(|| hashing.state.finish())
    }

    /// Whether this request selects the variant stored with `selector`
    /// under `vary`: byte for byte, without allocating.
    pub(crate) fn matches(&self, vary: &[HeaderName], selector: &[u8]) -> bool {
        let mut matcher = Matcher { rest: selector };
        self.parts(vary, &mut matcher) && matcher.rest.is_empty()
    }
}

/// Every line of a field, each after [`LINE`], then [`END`].
fn field(headers: &HeaderMap, name: &HeaderName, fold: bool, sink: &mut impl Sink) -> bool {
    headers
        .get_all(name)
        .iter()
        .all(|line| sink.mark(LINE) && sink.take(line.as_bytes(), fold))
        && sink.mark(END)
}

/// The field names a response's `Vary` lists (RFC 9110 §12.5.5), each once,
/// in order; `None` for `Vary: *` (the response varies on something no
/// request field tells: never stored).
pub(crate) fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for member in crate::headers::list_members(headers.get_all(http::header::VARY)) {
        if member == b"*" {
            return None;
        }
        if let Ok(name) = HeaderName::from_bytes(member)
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    Some(names)
}

/// The authority a request targets, as bytes: the URI's (HTTP/2,
/// absolute-form) or the first `Host` line's; empty when neither.
pub(crate) fn authority_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> &'a [u8] {
    uri.authority()
        .map(|a| a.as_str().as_bytes())
        .or_else(|| headers.get(http::header::HOST).map(|h| h.as_bytes()))
        .unwrap_or_default()
}

/// The path a `Location` or `Content-Location` value refers to, resolved
/// against the request (RFC 3986 §5.2: absolute, scheme-relative,
/// absolute-path and relative references), when it is on the request's
/// host; `None` for another host (RFC 9111 §4.4 forbids invalidating it) or
/// a value that is no URI reference. The host is compared without port and
/// case; the path is left for [`Key::of_path`] to normalise.
pub(crate) fn same_host_path(
    reference: &[u8],
    base: &Uri,
    base_authority: &[u8],
) -> Option<String> {
    let reference = std::str::from_utf8(reference).ok()?.trim();
    let reference = reference.split(['?', '#']).next().unwrap_or_default();
    let after_scheme = match reference.find("://") {
        Some(i)
            if reference[..i]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
        {
            Some(&reference[i + 1..])
        }
        _ => None,
    };
    if let Some(rest) = after_scheme.or_else(|| reference.starts_with("//").then_some(reference)) {
        let rest = &rest[2..];
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !host_part(authority.as_bytes()).eq_ignore_ascii_case(host_part(base_authority)) {
            return None;
        }
        return Some(if path.is_empty() {
            "/".into()
        } else {
            path.into()
        });
    }
    if reference.starts_with('/') {
        return Some(reference.into());
    }
    if reference.is_empty() || reference.contains(':') && !reference.starts_with('.') {
        // Empty (the request itself) or another scheme (`mailto:`).
        return None;
    }
    let base = base.path();
    let directory = &base[..base.rfind('/').map_or(0, |i| i + 1)];
    Some(format!("{directory}{reference}"))
}

/// The host of an authority: without user information and port.
fn host_part(authority: &[u8]) -> &[u8] {
    let authority = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    match authority.iter().rposition(|&b| b == b':') {
        // A port follows the last colon, unless it is inside an IPv6 literal.
        Some(colon) if !authority[colon..].contains(&b']') => &authority[..colon],
        _ => authority,
    }
}

#[cfg(test)]
mod hash_tests {
    use super::*;

    #[test]
    fn the_hash_is_that_of_the_encoded_selector() {
        let uri: Uri = "http://Media.Example/a%20b?q=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, "MEDIA.example".parse().unwrap());
        headers.append(http::header::ACCEPT_LANGUAGE, "fr".parse().unwrap());
        headers.append(http::header::ACCEPT_LANGUAGE, "de".parse().unwrap());
        let long = "x".repeat(100);
        headers.insert(http::header::FROM, long.parse().unwrap());
        let vary = [http::header::ACCEPT_LANGUAGE, http::header::FROM];
        let selecting = Selecting::new(&uri, &headers, false);
        let encoded = selecting.encode(&vary, 8192).unwrap();
        assert_eq!(
            selecting.hash(&vary, 8192),
            Some(twox_hash::XxHash3_64::oneshot(&encoded))
        );
        assert_eq!(selecting.hash(&vary, 10), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn norm(path: &str) -> String {
        String::from_utf8_lossy(&normalize_path(path.as_bytes())).into_owned()
    }

    #[test]
    fn spellings_of_one_path_share_a_group() {
        for spelling in [
            "/media/x.jpg",
            "/media/%78.jpg",
            "/Media/X.JPG",
            "/media//x.jpg",
            "/media/./x.jpg",
            "/media/y/../x.jpg",
            "/media/x.jpg/",
            "/media%2Fx.jpg",
            "/media%2fx.jpg",
        ] {
            assert_eq!(norm(spelling), "/media/x.jpg", "{spelling}");
            assert_eq!(
                Key::of_path(spelling.as_bytes()),
                Key::of_path(b"/media/x.jpg")
            );
        }
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("//"), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/a/%zz"), "/a/%zz");
        assert_eq!(norm("/a/%2"), "/a/%2");
        assert_ne!(Key::of_path(b"/media/x.jpg"), Key::of_path(b"/media/y.jpg"));
    }

    #[test]
    fn the_query_does_not_change_the_group() {
        let a: Uri = "/media/x.jpg?v=1".parse().unwrap();
        let b: Uri = "/media/x.jpg".parse().unwrap();
        assert_eq!(Key::of(&a), Key::of(&b));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/media/x.jpg", "/a/b..c", "/a/b/c.d.e"] {
            assert!(
                matches!(normalize_path(path.as_bytes()), Cow::Borrowed(_)),
                "{path}"
            );
        }
        // Refused by the quick scan, normalised the long way to themselves.
        for path in ["/a/.hidden", "/a/..b", "/.well-known/x"] {
            assert_eq!(norm(path), path);
        }
    }

    #[test]
    fn the_quick_scan_never_passes_a_path_the_long_way_would_change() {
        // Every path of up to six bytes over an alphabet with every byte
        // class the scan tells apart.
        let alphabet = b"/.%aA2";
        let mut paths = vec![Vec::new()];
        for _ in 0..6 {
            let longer: Vec<Vec<u8>> = paths
                .iter()
                .flat_map(|p| alphabet.iter().map(move |&b| [p.as_slice(), &[b]].concat()))
                .collect();
            paths.extend(longer);
        }
        paths.sort();
        paths.dedup();
        for path in paths {
            if is_normal(&path) {
                let decoded = percent_decode(&path);
                let mut full = Vec::new();
                for segment in decoded.split(|&b| b == b'/').filter(|s| !s.is_empty()) {
                    full.push(b'/');
                    full.extend(segment.iter().map(u8::to_ascii_lowercase));
                }
                if full.is_empty() {
                    full.push(b'/');
                }
                let dots = path.split(|&b| b == b'/').any(|s| s == b"." || s == b"..");
                assert!(
                    !dots && full == path,
                    "{:?}",
                    String::from_utf8_lossy(&path)
                );
            }
        }
    }

    #[test]
    fn several_host_lines_never_select_nor_encode() {
        let uri: Uri = "/a".parse().unwrap();
        let two = headers(&[("host", b"a.example"), ("host", b"a.example")]);
        let one = headers(&[("host", b"a.example")]);
        assert!(selecting(&uri, &two).encode(&[], 1024).is_none());
        let stored = selecting(&uri, &one).encode(&[], 1024).unwrap();
        assert!(!selecting(&uri, &two).matches(&[], &stored));
    }

    fn selecting<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Selecting<'a> {
        Selecting::new(uri, headers, false)
    }

    fn headers(lines: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(*name, HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    #[test]
    fn selectors_compare_exact_bytes_and_tell_absent_from_empty() {
        let uri: Uri = "/a?q=1".parse().unwrap();
        let vary = [http::header::ACCEPT_LANGUAGE];
        let cases: &[&[(&'static str, &[u8])]] = &[
            &[],
            &[("accept-language", b"")],
            &[("accept-language", b",")],
            &[("accept-language", b"fr")],
            &[("accept-language", b"FR")],
            &[("accept-language", b"fr,de")],
            &[("accept-language", b"fr, de")],
            &[("accept-language", b"fr"), ("accept-language", b"de")],
            &[("accept-language", b""), ("accept-language", b"")],
            &[("host", b"x\xff.example")],
            &[("host", b"y\xff.example")],
            &[("host", b"X\xfe.example")],
            &[("host", b"")],
        ];
        for (i, a) in cases.iter().enumerate() {
            let a = headers(a);
            let stored = selecting(&uri, &a).encode(&vary, 1024).unwrap();
            for (j, b) in cases.iter().enumerate() {
                let b = headers(b);
                assert_eq!(
                    selecting(&uri, &b).matches(&vary, &stored),
                    i == j,
                    "case {i} against case {j}"
                );
            }
        }
    }

    #[test]
    fn host_names_compare_case_insensitively_and_nothing_else_does() {
        let uri: Uri = "/a".parse().unwrap();
        let vary = [http::header::ACCEPT_LANGUAGE];
        let stored = headers(&[("host", b"Media.Example"), ("accept-language", b"fr")]);
        let stored = selecting(&uri, &stored).encode(&vary, 1024).unwrap();
        let same = headers(&[("host", b"media.EXAMPLE"), ("accept-language", b"fr")]);
        assert!(selecting(&uri, &same).matches(&vary, &stored));
        let other = headers(&[("host", b"media.example"), ("accept-language", b"FR")]);
        assert!(!selecting(&uri, &other).matches(&vary, &stored));
        let long = format!("{}.example", "A".repeat(200));
        let a = headers(&[("host", long.as_bytes())]);
        let b = headers(&[("host", long.to_ascii_lowercase().as_bytes())]);
        let stored = selecting(&uri, &a).encode(&[], 1024).unwrap();
        assert!(selecting(&uri, &b).matches(&[], &stored));
    }

    #[test]
    fn selectors_include_the_exact_target() {
        let h = HeaderMap::new();
        let a: Uri = "/a?q=1".parse().unwrap();
        let b: Uri = "/a?q=2".parse().unwrap();
        let stored = selecting(&a, &h).encode(&[], 1024).unwrap();
        assert!(selecting(&a, &h).matches(&[], &stored));
        assert!(!selecting(&b, &h).matches(&[], &stored));
    }

    #[test]
    fn forwarded_host_is_part_of_the_selector_only_when_asked() {
        let uri: Uri = "/a".parse().unwrap();
        let one = headers(&[("x-forwarded-host", b"one.example")]);
        let two = headers(&[("x-forwarded-host", b"two.example")]);
        let plain = selecting(&uri, &one).encode(&[], 1024).unwrap();
        assert!(selecting(&uri, &two).matches(&[], &plain));
        let with = |h| Selecting::new(&uri, h, true);
        let stored = with(&one).encode(&[], 1024).unwrap();
        assert!(with(&one).matches(&[], &stored));
        assert!(!with(&two).matches(&[], &stored));
    }

    #[test]
    fn location_references_resolve_to_paths_on_the_same_host() {
        let base: Uri = "/media/a.jpg?x=1".parse().unwrap();
        let host = b"media.example";
        let path = |r: &str| same_host_path(r.as_bytes(), &base, host);
        assert_eq!(path("/media/b.jpg"), Some("/media/b.jpg".into()));
        assert_eq!(path("/media/b.jpg?v=2#top"), Some("/media/b.jpg".into()));
        assert_eq!(path("b.jpg"), Some("/media/b.jpg".into()));
        assert_eq!(path("../b.jpg"), Some("/media/../b.jpg".into()));
        assert_eq!(path("http://media.example/b"), Some("/b".into()));
        assert_eq!(path("http://MEDIA.example:80/b"), Some("/b".into()));
        assert_eq!(path("https://user@media.example:443/b"), Some("/b".into()));
        assert_eq!(path("//media.example/b"), Some("/b".into()));
        assert_eq!(path("http://media.example"), Some("/".into()));
        assert_eq!(path("http://other.example/b"), None);
        assert_eq!(path("//other.example/b"), None);
        assert_eq!(path("mailto:a@b"), None);
        assert_eq!(path(""), None);
        assert_eq!(
            same_host_path(b"http://[::1]:8080/b", &base, b"[::1]"),
            Some("/b".into())
        );
        assert_eq!(same_host_path(b"/b\xff", &base, host), None);
    }

    #[test]
    fn vary_star_is_reported() {
        assert_eq!(vary_names(&headers(&[("vary", b"accept, *")])), None);
        assert_eq!(
            vary_names(&headers(&[
                ("vary", b"Accept-Encoding"),
                ("vary", b"accept-encoding, origin")
            ])),
            Some(vec![http::header::ACCEPT_ENCODING, http::header::ORIGIN])
        );
    }

    #[test]
    fn selectors_longer_than_the_limit_are_refused() {
        let uri: Uri = format!("/a?{}", "q".repeat(100)).parse().unwrap();
        let h = HeaderMap::new();
        assert!(selecting(&uri, &h).encode(&[], 64).is_none());
        assert!(selecting(&uri, &h).encode(&[], 1024).is_some());
    }
}
