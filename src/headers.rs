//! Entity tags, entity-tag lists and HTTP dates: every byte-level parse of a
//! validator happens here, once.
//!
//! The parsers are single forward scans over the field value: linear in its
//! length, no regular expressions, no allocation, and no panics on any input
//! (including non-ASCII bytes, which `HeaderValue` allows as obs-text).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use http::header::GetAll;

/// An entity tag, RFC 9110 §8.8.3.
///
/// ```text
/// entity-tag = [ weak ] opaque-tag
/// weak       = %s"W/"
/// opaque-tag = DQUOTE *etagc DQUOTE
/// etagc      = %x21 / %x23-7E / obs-text
/// ```
///
/// Example values: `"xyzzy"`, `W/"xyzzy"`, `""`.
///
/// `Display` shows obs-text bytes (0x80–0xFF) that are not UTF-8 as U+FFFD;
/// use [`header_value`](Self::header_value) for the exact bytes.
///
/// ```
/// use tower_media_cache::EntityTag;
///
/// let strong = EntityTag::strong("v42").unwrap();
/// assert_eq!(strong.to_string(), "\"v42\"");
/// let weak: EntityTag = "W/\"v42\"".parse().unwrap();
/// assert!(weak.weak_eq(&strong));
/// assert!(!weak.strong_eq(&strong));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EntityTag {
    /// The whole field value, quotes and `W/` included; always valid.
    value: HeaderValue,
    weak: bool,
}

/// An entity tag that failed to parse or to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct InvalidEntityTag;

impl fmt::Display for InvalidEntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid entity tag")
    }
}

impl std::error::Error for InvalidEntityTag {}

impl EntityTag {
    /// A strong entity tag with the given opaque value (without quotes).
    ///
    /// Fails when `opaque` contains a byte that RFC 9110 does not allow in an
    /// entity tag (a double quote, a control character, a space).
    pub fn strong(opaque: &str) -> Result<Self, InvalidEntityTag> {
        Self::build(opaque, false)
    }

    /// A weak entity tag (`W/"…"`) with the given opaque value.
    pub fn weak(opaque: &str) -> Result<Self, InvalidEntityTag> {
        Self::build(opaque, true)
    }

    fn build(opaque: &str, weak: bool) -> Result<Self, InvalidEntityTag> {
        if !opaque.bytes().all(is_etagc) {
            return Err(InvalidEntityTag);
        }
        let prefix = if weak { "W/" } else { "" };
        let value =
            HeaderValue::try_from(format!("{prefix}\"{opaque}\"")).map_err(|_| InvalidEntityTag)?;
        Ok(Self { value, weak })
    }

    /// Parses a whole `ETag` field value. Surrounding spaces and tabs are
    /// allowed; anything else around the tag is not.
    pub fn from_header(value: &HeaderValue) -> Result<Self, InvalidEntityTag> {
        let bytes = trim_ows(value.as_bytes());
        match scan_tag(bytes) {
            Some((tag, [])) => Ok(Self {
                weak: tag.weak,
                value: if bytes.len() == value.len() {
                    value.clone()
                } else {
                    HeaderValue::from_bytes(bytes).map_err(|_| InvalidEntityTag)?
                },
            }),
            _ => Err(InvalidEntityTag),
        }
    }

    /// Builds the strong tag for a 128-bit content hash: 32 lowercase hex
    /// digits, most significant first.
    pub(crate) fn from_hash(hash: u128) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [b'"'; 34];
        for (i, byte) in hash.to_be_bytes().into_iter().enumerate() {
            text[1 + 2 * i] = HEX[usize::from(byte >> 4)];
            text[2 + 2 * i] = HEX[usize::from(byte & 0x0f)];
        }
        let value =
            HeaderValue::from_bytes(&text).expect("hex digits and quotes are a valid header value");
        Self { value, weak: false }
    }

    /// Whether the tag is weak (`W/"…"`).
    pub fn is_weak(&self) -> bool {
        self.weak
    }

    /// The opaque value between the quotes.
    pub fn opaque(&self) -> &[u8] {
        let bytes = self.value.as_bytes();
        let start = if self.weak { 3 } else { 1 };
        &bytes[start..bytes.len() - 1]
    }

    /// The tag as an `ETag` header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.value
    }

    /// Strong comparison, RFC 9110 §8.8.3.2: both tags strong and their
    /// opaque values equal.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        self.as_ref().strong_eq(other.as_ref())
    }

    /// Weak comparison, RFC 9110 §8.8.3.2: opaque values equal, weakness
    /// ignored.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.as_ref().weak_eq(other.as_ref())
    }

    pub(crate) fn as_ref(&self) -> TagRef<'_> {
        TagRef {
            weak: self.weak,
            opaque: self.opaque(),
        }
    }
}

impl fmt::Debug for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(self.value.as_bytes()))
    }
}

impl std::str::FromStr for EntityTag {
    type Err = InvalidEntityTag;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = HeaderValue::from_str(s).map_err(|_| InvalidEntityTag)?;
        Self::from_header(&value)
    }
}

/// A borrowed view of an entity tag inside a field value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TagRef<'a> {
    pub(crate) weak: bool,
    pub(crate) opaque: &'a [u8],
}

impl TagRef<'_> {
    /// Strong comparison, RFC 9110 §8.8.3.2.
    pub(crate) fn strong_eq(self, other: TagRef<'_>) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison, RFC 9110 §8.8.3.2.
    pub(crate) fn weak_eq(self, other: TagRef<'_>) -> bool {
        self.opaque == other.opaque
    }
}

/// `etagc = %x21 / %x23-7E / obs-text`
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(crate) fn trim_ows(bytes: &[u8]) -> &[u8] {
    let mut bytes = trim_ows_start(bytes);
    while let [rest @ .., last] = bytes {
        if !is_ows(*last) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// The members of a comma-separated list value (RFC 9110 §5.6.1): split on
/// every comma, spaces and tabs trimmed, empty members skipped. For lists
/// of tokens and `name=value` items (`Vary`, `Cache-Control`, `Range`);
/// entity-tag lists, whose quoted strings may hold commas, have their own
/// scanner below.
pub(crate) fn members(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|member| !member.is_empty())
}

/// [`members`] over every line of a field, in order.
pub(crate) fn list_members<'a>(lines: GetAll<'a, HeaderValue>) -> impl Iterator<Item = &'a [u8]> {
    lines.into_iter().flat_map(|line| members(line.as_bytes()))
}

/// Scans one entity tag at the start of `bytes`; returns it and what follows.
fn scan_tag(bytes: &[u8]) -> Option<(TagRef<'_>, &[u8])> {
    let (weak, rest) = match bytes {
        [b'W', b'/', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    let rest = rest.strip_prefix(b"\"")?;
    let len = rest.iter().position(|&b| !is_etagc(b))?;
    if rest[len] != b'"' {
        return None;
    }
    Some((
        TagRef {
            weak,
            opaque: &rest[..len],
        },
        &rest[len + 1..],
    ))
}

/// What an `If-Match` or `If-None-Match` field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagList {
    /// The field is absent.
    Absent,
    /// The field is exactly `*`.
    Any,
    /// A list of entity tags (possibly with members that do not parse).
    Tags,
}

/// Classifies an entity-tag list field (RFC 9110 §13.1.1, §13.1.2):
/// `"*"` counts as the wildcard only when it is the whole field value of a
/// single field line.
pub(crate) fn tag_list_kind(values: &GetAll<'_, HeaderValue>) -> TagList {
    let mut iter = values.iter();
    match (iter.next(), iter.next()) {
        (None, _) => TagList::Absent,
        (Some(only), None) if trim_ows(only.as_bytes()) == b"*" => TagList::Any,
        _ => TagList::Tags,
    }
}

/// Whether an entity-tag list field names `current`, by weak or strong
/// comparison (RFC 9110 §8.8.3.2). The usual revalidation — one line
/// holding exactly the current tag — is one byte comparison; anything else
/// is a full [`any_tag`] scan.
pub(crate) fn list_names(
    values: &GetAll<'_, HeaderValue>,
    current: &EntityTag,
    weak: bool,
) -> bool {
    let mut iter = values.iter();
    if let (Some(only), None) = (iter.next(), iter.next())
        && is_exactly(only, current, weak)
    {
        return true;
    }
    let current = current.as_ref();
    any_tag(values, |tag| {
        if weak {
            tag.weak_eq(current)
        } else {
            tag.strong_eq(current)
        }
    })
}

/// Whether a field line is exactly `current` (spaces and tabs around it
/// allowed; `W/` ignored on both sides for weak comparison): the one-byte-
/// comparison fast path of [`list_names`]. `false` says nothing about lists.
pub(crate) fn is_exactly(line: &HeaderValue, current: &EntityTag, weak: bool) -> bool {
    let sent = trim_ows(line.as_bytes());
    let ours = current.header_value().as_bytes();
    if weak {
        sent.strip_prefix(b"W/").unwrap_or(sent) == ours.strip_prefix(b"W/").unwrap_or(ours)
    } else {
        !current.is_weak() && sent == ours
    }
}

/// Calls `found` for each well-formed entity tag of a `#entity-tag` list
/// spread over any number of field lines, until it returns `true`.
///
/// Members that are not valid entity tags (unquoted values, a `*` inside a
/// list, stray bytes) match nothing and are skipped up to the next comma
/// outside quotes; empty members and spaces or tabs around members are
/// allowed (RFC 9110 §5.6.1). One pass, linear in the input.
pub(crate) fn any_tag<'a>(
    values: impl IntoIterator<Item = &'a HeaderValue>,
    mut found: impl FnMut(TagRef<'_>) -> bool,
) -> bool {
    for value in values {
        let mut rest = value.as_bytes();
        loop {
            while let [first, tail @ ..] = rest {
                if !(is_ows(*first) || *first == b',') {
                    break;
                }
                rest = tail;
            }
            if rest.is_empty() {
                break;
            }
            match scan_tag(rest) {
                Some((tag, tail)) if ends_member(tail) => {
                    if found(tag) {
                        return true;
                    }
                    rest = tail;
                }
                _ => rest = skip_member(rest),
            }
        }
    }
    false
}

/// Whether only OWS stands between a tag and the next comma or the end.
fn ends_member(tail: &[u8]) -> bool {
    matches!(trim_ows_start(tail).first(), None | Some(b','))
}

fn trim_ows_start(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !is_ows(*first) {
            break;
        }
        bytes = rest;
    }
    bytes
}

/// Skips a malformed member: up to the next comma that is not inside quotes.
fn skip_member(bytes: &[u8]) -> &[u8] {
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => return &bytes[i..],
            _ => {}
        }
    }
    &[]
}

/// An HTTP date, RFC 9110 §5.6.7, as whole seconds since the Unix epoch,
/// between the epoch and the last second of year 9999 (the largest date an
/// IMF-fixdate can write): every conversion saturates at those bounds, so no
/// time from a request, a response or the clock can overflow.
///
/// All three forms are accepted by [`parse_http_date`]: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct HttpDate(u64);

impl HttpDate {
    /// The last second an IMF-fixdate can write: Fri, 31 Dec 9999 23:59:59 GMT.
    pub(crate) const MAX: Self = Self(253_402_300_799);

    /// Truncates a time to whole seconds; times before 1970 become the epoch,
    /// times after year 9999 become [`HttpDate::MAX`].
    pub(crate) fn from_system_time(time: SystemTime) -> Self {
        Self::from_secs(
            time.duration_since(UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs()),
        )
    }

    pub(crate) fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.0)
    }

    pub(crate) fn secs(self) -> u64 {
        self.0
    }

    /// Seconds since the epoch, saturating at [`HttpDate::MAX`].
    pub(crate) fn from_secs(secs: u64) -> Self {
        Self(secs.min(Self::MAX.0))
    }

    /// Renders the date as an IMF-fixdate header value.
    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::try_from(httpdate::fmt_http_date(self.to_system_time()))
            .expect("an IMF-fixdate is a valid header value")
    }
}

/// `time + by`, or the latest time the platform can represent when that
/// overflows: lifetimes come from the inner service's `Cache-Control` and
/// the policy, and may be as large as `u64::MAX` seconds.
pub(crate) fn add_saturating(time: SystemTime, by: Duration) -> SystemTime {
    time.checked_add(by).unwrap_or_else(|| {
        // Halve the step until it fits: ends at the platform's maximum
        // within 64 steps, whatever its representation.
        let mut latest = time;
        let mut step = by;
        while !step.is_zero() {
            match latest.checked_add(step) {
                Some(later) => latest = later,
                None => step /= 2,
            }
        }
        latest
    })
}

/// Parses one HTTP-date field value in any of the three forms of
/// RFC 9110 §5.6.7. Surrounding spaces and tabs are allowed; anything that is
/// not a date (non-ASCII bytes, trailing garbage, an impossible day, a year
/// past 9999) yields `None`.
pub(crate) fn parse_http_date(value: &HeaderValue) -> Option<HttpDate> {
    let text = std::str::from_utf8(trim_ows(value.as_bytes())).ok()?;
    // The longest valid form (RFC 850 with "Wednesday") is 37 bytes; refuse
    // anything longer before handing it to the parser.
    if text.len() > 40 {
        return None;
    }
    httpdate::parse_http_date(text)
        .ok()
        .map(HttpDate::from_system_time)
}

/// Parses a date field that must appear once (`If-Modified-Since`,
/// `If-Unmodified-Since`): several field lines make the field invalid, and
/// an invalid field is ignored (RFC 9110 §13.1.3, §13.1.4).
pub(crate) fn single_date(values: GetAll<'_, HeaderValue>) -> Option<HttpDate> {
    single_line(values).and_then(parse_http_date)
}

/// The value of a field that must appear on exactly one line; `None` when
/// it is absent or repeated.
pub(crate) fn single_line(values: GetAll<'_, HeaderValue>) -> Option<&HeaderValue> {
    let mut iter = values.into_iter();
    match (iter.next(), iter.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http::header::IF_NONE_MATCH;

    fn tags(lines: &[&str]) -> Vec<(bool, String)> {
        let values: Vec<HeaderValue> = lines
            .iter()
            .map(|l| HeaderValue::from_bytes(l.as_bytes()).unwrap())
            .collect();
        let mut out = Vec::new();
        any_tag(&values, |t| {
            out.push((t.weak, String::from_utf8_lossy(t.opaque).into_owned()));
            false
        });
        out
    }

    #[test]
    fn entity_tag_list_allows_ows_empty_members_and_several_lines() {
        assert_eq!(
            tags(&[" \"a\" ,\t W/\"b\",,", "\"c\""]),
            vec![(false, "a".into()), (true, "b".into()), (false, "c".into())]
        );
    }

    #[test]
    fn entity_tag_list_skips_malformed_members() {
        assert_eq!(
            tags(&["abc, \"ok\", *, \"x\"y, \"unterminated"]),
            vec![(false, "ok".into())]
        );
    }

    #[test]
    fn the_single_tag_fast_path_agrees_with_the_comparison_functions() {
        let strong: EntityTag = "\"x\"".parse().unwrap();
        let weak: EntityTag = "W/\"x\"".parse().unwrap();
        let mut map = HeaderMap::new();
        for (sent, current, weak_cmp, expected) in [
            ("\"x\"", &strong, false, true),
            (" \"x\"\t", &strong, false, true),
            ("W/\"x\"", &strong, false, false),
            ("\"x\"", &weak, false, false),
            ("W/\"x\"", &strong, true, true),
            ("\"x\"", &weak, true, true),
            ("W/W/\"x\"", &strong, true, false),
            ("\"y\"", &strong, true, false),
        ] {
            map.insert(IF_NONE_MATCH, HeaderValue::from_static(sent));
            let lines = map.get_all(IF_NONE_MATCH);
            assert_eq!(
                list_names(&lines, current, weak_cmp),
                expected,
                "{sent} {current}"
            );
        }
    }

    #[test]
    fn commas_inside_quotes_belong_to_the_tag() {
        assert_eq!(tags(&["\"a,b\""]), vec![(false, "a,b".into())]);
    }

    #[test]
    fn star_is_the_wildcard_only_as_the_whole_value() {
        let mut map = HeaderMap::new();
        map.insert(IF_NONE_MATCH, HeaderValue::from_static(" * "));
        assert_eq!(tag_list_kind(&map.get_all(IF_NONE_MATCH)), TagList::Any);
        map.insert(IF_NONE_MATCH, HeaderValue::from_static("*, \"a\""));
        assert_eq!(tag_list_kind(&map.get_all(IF_NONE_MATCH)), TagList::Tags);
        map.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
        map.append(IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert_eq!(tag_list_kind(&map.get_all(IF_NONE_MATCH)), TagList::Tags);
    }

    #[test]
    fn non_ascii_bytes_are_obs_text_inside_tags() {
        let value = HeaderValue::from_bytes(b"\"caf\xc3\xa9\"").unwrap();
        let tag = EntityTag::from_header(&value).unwrap();
        assert_eq!(tag.opaque(), b"caf\xc3\xa9");
    }

    #[test]
    fn etag_header_must_be_one_quoted_tag() {
        for bad in [
            "abc",
            "\"a\" \"b\"",
            "W/abc",
            "\"a",
            "w/\"a\"",
            "\"a\",\"b\"",
        ] {
            assert!(bad.parse::<EntityTag>().is_err(), "{bad}");
        }
        assert!(" W/\"a\" ".parse::<EntityTag>().unwrap().is_weak());
        assert_eq!(EntityTag::strong("a b"), Err(InvalidEntityTag));
        assert_eq!(EntityTag::strong("a\"b"), Err(InvalidEntityTag));
    }

    #[test]
    fn strong_and_weak_comparison_follow_the_rfc_table() {
        // RFC 9110 §8.8.3.2, the table of four examples.
        let w1: EntityTag = "W/\"1\"".parse().unwrap();
        let w2: EntityTag = "W/\"2\"".parse().unwrap();
        let s1: EntityTag = "\"1\"".parse().unwrap();
        assert!(!w1.strong_eq(&w1));
        assert!(w1.weak_eq(&w1));
        assert!(!w1.strong_eq(&w2));
        assert!(!w1.weak_eq(&w2));
        assert!(!w1.strong_eq(&s1));
        assert!(w1.weak_eq(&s1));
        assert!(s1.strong_eq(&s1));
        assert!(s1.weak_eq(&s1));
    }

    #[test]
    fn all_three_date_forms_parse_to_the_same_second() {
        let expected = Some(HttpDate(784_111_777));
        for form in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "  Sun, 06 Nov 1994 08:49:37 GMT\t",
        ] {
            assert_eq!(
                parse_http_date(&HeaderValue::from_static(form)),
                expected,
                "{form}"
            );
        }
    }

    #[test]
    fn invalid_dates_do_not_parse() {
        for bad in [
            "",
            "yesterday",
            "Sun, 06 Nov 1994 08:49:37 GMT trailing",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 99999 08:49:37 GMT",
            "-1",
            "Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(
                parse_http_date(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
        let non_ascii = HeaderValue::from_bytes(b"Sun, 06 Nov 1994 08:49:37 \xffMT").unwrap();
        assert_eq!(parse_http_date(&non_ascii), None);
    }

    #[test]
    fn far_future_and_far_past_dates_parse_without_overflow() {
        let far = parse_http_date(&HeaderValue::from_static("Fri, 31 Dec 9999 23:59:59 GMT"));
        assert_eq!(far, Some(HttpDate(253_402_300_799)));
        let past = parse_http_date(&HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
        assert_eq!(past, Some(HttpDate(0)));
        assert_eq!(far.unwrap().header_value(), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn content_hash_tag_is_32_hex_digits() {
        let tag = EntityTag::from_hash(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(tag.to_string(), "\"0123456789abcdef0011223344556677\"");
        assert!(!tag.is_weak());
    }
}
