//! RFC 9110 conditional requests: each precondition in its own function, and
//! the order of evaluation of §13.2.2 in [`evaluate`].
//!
//! The functions are public so that a handler that does its own I/O can
//! answer conditional requests exactly as the middleware does.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, HeaderValue, Method, header::IF_NONE_MATCH};
//! use tower_media_cache::{EntityTag, Validators};
//! use tower_media_cache::preconditions::{evaluate, Precondition};
//!
//! let current = Validators::new().with_etag(EntityTag::strong("v2").unwrap());
//! let mut request = HeaderMap::new();
//! request.insert(IF_NONE_MATCH, HeaderValue::from_static("\"v1\", W/\"v2\""));
//! assert_eq!(evaluate(&Method::GET, &request, &current), Precondition::NotModified);
//! ```

use std::time::SystemTime;

use http::header::{
    AUTHORIZATION, COOKIE, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, RANGE,
};
use http::{HeaderMap, Method};

use crate::headers::{self, HttpDate, TagList};
use crate::validators::Validators;

/// The conditional fields of RFC 9110 §13.1, for hiding them from the
/// service (the layer judges them alone, or asks a `GET` of its own).
pub(crate) const FIELDS: [http::HeaderName; 5] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

/// What the preconditions of a request say to do with it, RFC 9110 §13.2.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Every precondition holds (or none was sent): perform the method.
    Proceed,
    /// Answer `304 Not Modified` (GET and HEAD only).
    NotModified,
    /// Answer `412 Precondition Failed`.
    Failed,
}

/// Which of the fields the layer acts on a request carries, found in one
/// pass over its header names (cheaper than a hash lookup per field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Present<'a> {
    /// The first `Host` line, if any.
    pub(crate) host: Option<&'a http::HeaderValue>,
    /// Whether there is more than one `Host` line (a request RFC 9112
    /// §3.2 says to refuse).
    pub(crate) several_hosts: bool,
    /// The `If-None-Match` line when there is exactly one.
    pub(crate) if_none_match_line: Option<&'a http::HeaderValue>,
    pub(crate) if_match: bool,
    pub(crate) if_none_match: bool,
    pub(crate) if_modified_since: bool,
    pub(crate) if_unmodified_since: bool,
    pub(crate) range: bool,
    pub(crate) if_range: bool,
    pub(crate) credentials: bool,
}

impl<'a> Present<'a> {
    pub(crate) fn scan(headers: &'a HeaderMap) -> Self {
        let mut present = Self::default();
        for (name, value) in headers {
            let flag = if name == http::header::HOST {
                present.several_hosts |= present.host.is_some();
                present.host.get_or_insert(value);
                continue;
            } else if name == IF_MATCH {
                &mut present.if_match
            } else if name == IF_NONE_MATCH {
                present.if_none_match_line = (!present.if_none_match).then_some(value);
                &mut present.if_none_match
            } else if name == IF_MODIFIED_SINCE {
                &mut present.if_modified_since
            } else if name == IF_UNMODIFIED_SINCE {
                &mut present.if_unmodified_since
            } else if name == RANGE {
                &mut present.range
            } else if name == IF_RANGE {
                &mut present.if_range
            } else if name == AUTHORIZATION || name == COOKIE {
                &mut present.credentials
            } else {
                continue;
            };
            *flag = true;
        }
        present
    }

    /// Whether any precondition evaluated by [`evaluate`] is present.
    pub(crate) fn any_precondition(&self) -> bool {
        self.if_match || self.if_none_match || self.if_modified_since || self.if_unmodified_since
    }
}

/// `If-Match`, RFC 9110 §13.1.1.
///
/// True for `*` (a current representation exists: the caller evaluates only
/// then), or when any listed tag matches the current entity tag by **strong**
/// comparison. Members that are not valid entity tags match nothing, so a
/// field that does not parse at all is false: a write guarded by a condition
/// the server cannot read does not proceed.
pub fn if_match(field: &HeaderMap, current: &Validators) -> bool {
    let lines = field.get_all(IF_MATCH);
    match headers::tag_list_kind(&lines) {
        TagList::Absent | TagList::Any => true,
        TagList::Tags => current
            .etag()
            .is_some_and(|etag| headers::list_names(&lines, etag, false)),
    }
}

/// `If-None-Match`, RFC 9110 §13.1.2.
///
/// False for `*` (a current representation exists), or when any listed tag
/// matches the current entity tag by **weak** comparison; true otherwise.
/// Members that are not valid entity tags match nothing.
pub fn if_none_match(field: &HeaderMap, current: &Validators) -> bool {
    let lines = field.get_all(IF_NONE_MATCH);
    match headers::tag_list_kind(&lines) {
        TagList::Absent => true,
        TagList::Any => false,
        TagList::Tags => !current
            .etag()
            .is_some_and(|etag| headers::list_names(&lines, etag, true)),
    }
}

/// `If-Modified-Since`, RFC 9110 §13.1.3: true ("modified") unless the
/// representation's last modification, in whole seconds, is at or before the
/// date. The caller applies the rules on when the field is ignored; an
/// invalid date or several field lines are ignored here (true).
pub fn if_modified_since(field: &HeaderMap, current: &Validators) -> bool {
    match (
        headers::single_date(field.get_all(IF_MODIFIED_SINCE)),
        current.last_modified_date(),
    ) {
        (Some(since), Some(modified)) => modified > since,
        _ => true,
    }
}

/// `If-Unmodified-Since`, RFC 9110 §13.1.4: true unless the representation
/// was modified after the date. Ignored (true) when the date is invalid, the
/// field has several lines, or the representation has no modification date.
pub fn if_unmodified_since(field: &HeaderMap, current: &Validators) -> bool {
    match (
        headers::single_date(field.get_all(IF_UNMODIFIED_SINCE)),
        current.last_modified_date(),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => true,
    }
}

/// `If-Range`, RFC 9110 §13.1.5: whether a `Range` may be honoured.
///
/// True when the field is absent. An entity tag must match the current one
/// by **strong** comparison (a weak tag never matches). A date must equal the
/// `Last-Modified` exactly and that date must be a strong validator: at least
/// one second before `now`, the time the response is generated (§8.8.2.2).
/// Anything else, including a field that parses as neither, is false, and
/// the whole representation is sent.
pub fn if_range(field: &HeaderMap, current: &Validators, now: SystemTime) -> bool {
    if !field.contains_key(IF_RANGE) {
        return true;
    }
    let Some(value) = headers::single_line(field.get_all(IF_RANGE)) else {
        return false;
    };
    let trimmed = headers::trim_ows(value.as_bytes());
    if trimmed.starts_with(b"\"") || trimmed.starts_with(b"W/") {
        let Ok(tag) = crate::EntityTag::from_header(value) else {
            return false;
        };
        return current
            .etag()
            .is_some_and(|etag| tag.as_ref().strong_eq(etag.as_ref()));
    }
    match (
        headers::parse_http_date(value),
        current.last_modified_date(),
    ) {
        (Some(date), Some(modified)) => {
            date == modified && modified < HttpDate::from_system_time(now)
        }
        _ => false,
    }
}

/// Evaluates the preconditions of a request against the current validators
/// of the selected representation, in the order of RFC 9110 §13.2.2 (steps
/// 1 to 4; step 5, `If-Range`, is [`if_range`]):
///
/// 1. `If-Match` present and false → 412.
/// 2. No `If-Match`, `If-Unmodified-Since` present and false → 412.
/// 3. `If-None-Match` present and false → 304 for GET and HEAD, 412 otherwise.
/// 4. GET or HEAD, no `If-None-Match`, `If-Modified-Since` false → 304.
///
/// Call it only when a current representation exists and the response
/// without preconditions would be a 2xx (§13.2.1): the middleware never turns
/// an error or a redirect into a 304 or 412.
pub fn evaluate(method: &Method, field: &HeaderMap, current: &Validators) -> Precondition {
    evaluate_present(method, field, current, Present::scan(field))
}

/// [`evaluate`] for a request whose fields were already scanned.
pub(crate) fn evaluate_present(
    method: &Method,
    field: &HeaderMap,
    current: &Validators,
    present: Present<'_>,
) -> Precondition {
    if present.if_match {
        if !if_match(field, current) {
            return Precondition::Failed;
        }
    } else if present.if_unmodified_since && !if_unmodified_since(field, current) {
        return Precondition::Failed;
    }
    let get_or_head = method == Method::GET || method == Method::HEAD;
    if present.if_none_match {
        // The usual revalidation: one line naming exactly the current tag.
        let named = present
            .if_none_match_line
            .zip(current.etag())
            .is_some_and(|(line, etag)| headers::is_exactly(line, etag, true));
        if named || !if_none_match(field, current) {
            return if get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if get_or_head && present.if_modified_since && !if_modified_since(field, current) {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// [`evaluate`] for a target that has **no** current representation (the
/// service answers `GET` with 404 or 410), RFC 9110 §13.1.1, §13.1.2 and
/// §13.1.4: `If-Match` is false whatever it lists, `*` included (a write
/// must not create what the client believed existed); `If-None-Match` is
/// true whatever it lists, `*` included (nothing exists to match);
/// `If-Unmodified-Since` is ignored (no modification date is available).
///
/// ```
/// use http::{HeaderMap, HeaderValue, header::{IF_MATCH, IF_NONE_MATCH}};
/// use tower_media_cache::preconditions::{evaluate_absent, Precondition};
///
/// let mut create_only = HeaderMap::new();
/// create_only.insert(IF_NONE_MATCH, HeaderValue::from_static("*"));
/// assert_eq!(evaluate_absent(&create_only), Precondition::Proceed);
///
/// let mut update_only = HeaderMap::new();
/// update_only.insert(IF_MATCH, HeaderValue::from_static("*"));
/// assert_eq!(evaluate_absent(&update_only), Precondition::Failed);
/// ```
pub fn evaluate_absent(field: &HeaderMap) -> Precondition {
    if field.contains_key(IF_MATCH) {
        Precondition::Failed
    } else {
        Precondition::Proceed
    }
}

/// Whether a method is unsafe, RFC 9110 §9.2.1: anything but `GET`, `HEAD`,
/// `OPTIONS` and `TRACE`. Only a successful unsafe request invalidates what
/// caches stored (RFC 9111 §4.4); a CORS preflight (`OPTIONS`) never does.
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What the layer knows of a request's target when it judges the
/// preconditions.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// A current representation with these validators, one the response
    /// without preconditions would carry in a 2xx.
    Exists(&'a Validators),
    /// The service's 2xx to a request whose preconditions it saw, with no
    /// entity tag the layer knows: see [`evaluate_untagged`].
    Untagged(&'a Validators),
    /// No current representation (the service answers `GET` with 404/410).
    Absent,
}

/// [`evaluate`] for a 2xx whose entity tag the layer does not know, from a
/// service that saw the preconditions (RFC 9110 §13.2.2 order): what needs
/// no tag is judged — `*` (a current representation exists, §13.1.1 and
/// §13.1.2) and the dates against `Last-Modified` — and a list of tags in
/// `If-Match` or `If-None-Match` is the service's to judge, which it did by
/// answering 2xx. The layer never overrules a service with less knowledge
/// than it had: a `HEAD` handler that judged `If-Match` itself and sent no
/// `ETag` keeps its 200.
fn evaluate_untagged(
    method: &Method,
    field: &HeaderMap,
    current: &Validators,
    present: Present<'_>,
) -> Precondition {
    let any = |name| headers::tag_list_kind(&field.get_all(name)) == TagList::Any;
    if present.if_match {
        // `*` holds; a list of tags is the service's.
    } else if present.if_unmodified_since && !if_unmodified_since(field, current) {
        return Precondition::Failed;
    }
    let get_or_head = method == Method::GET || method == Method::HEAD;
    if present.if_none_match {
        if any(IF_NONE_MATCH) {
            return if get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if get_or_head && present.if_modified_since && !if_modified_since(field, current) {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// The one entry point the layer judges preconditions through: RFC 9110
/// §13.2.1's rules of when they apply, then §13.2.2's order.
///
/// * `CONNECT`, `OPTIONS` and `TRACE`: ignored (Proceed).
/// * An existing representation: [`evaluate`].
/// * No representation: only a method that could create one (`PUT`,
///   `PATCH`) is judged, by [`evaluate_absent`]; any other would be a 404
///   without its preconditions, so they are ignored and the service answers.
///
/// Callers only judge a target whose answer without preconditions would be
/// a 2xx (or, for writes, the state the write would act on): an error or a
/// redirect is never turned into 304 or 412.
pub(crate) fn judge(
    method: &Method,
    field: &HeaderMap,
    present: Present<'_>,
    target: Target<'_>,
) -> Precondition {
    if matches!(*method, Method::CONNECT | Method::OPTIONS | Method::TRACE) {
        return Precondition::Proceed;
    }
    match target {
        Target::Exists(current) => evaluate_present(method, field, current, present),
        Target::Untagged(current) => evaluate_untagged(method, field, current, present),
        Target::Absent if matches!(*method, Method::PUT | Method::PATCH) => evaluate_absent(field),
        Target::Absent => Precondition::Proceed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `If-Range` lets the `Range` be served (the layer's one decision).
    fn range_allowed(field: &HeaderMap, current: &Validators, now: SystemTime) -> bool {
        crate::range::decide(field, Some(current), now) == crate::range::RangeDecision::CutHere
    }
    use crate::EntityTag;
    use http::HeaderValue;
    use std::time::{Duration, UNIX_EPOCH};

    const LM: u64 = 1_700_000_000;

    fn current() -> Validators {
        Validators::new()
            .with_etag(EntityTag::strong("abc").unwrap())
            .with_last_modified(UNIX_EPOCH + Duration::from_secs(LM) + Duration::from_millis(700))
    }

    fn req(fields: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn date(secs: u64) -> String {
        httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn get(fields: &[(http::HeaderName, &str)]) -> Precondition {
        evaluate(&Method::GET, &req(fields), &current())
    }

    #[test]
    fn no_preconditions_proceed() {
        assert_eq!(get(&[]), Precondition::Proceed);
    }

    #[test]
    fn if_match_uses_strong_comparison() {
        assert_eq!(get(&[(IF_MATCH, "\"abc\"")]), Precondition::Proceed);
        assert_eq!(get(&[(IF_MATCH, "W/\"abc\"")]), Precondition::Failed);
        assert_eq!(get(&[(IF_MATCH, "\"x\", \"abc\"")]), Precondition::Proceed);
        assert_eq!(get(&[(IF_MATCH, "\"x\"")]), Precondition::Failed);
    }

    #[test]
    fn if_match_star_holds_when_a_representation_exists() {
        assert_eq!(get(&[(IF_MATCH, "*")]), Precondition::Proceed);
    }

    #[test]
    fn if_match_that_does_not_parse_fails() {
        assert_eq!(get(&[(IF_MATCH, "abc")]), Precondition::Failed);
    }

    #[test]
    fn if_match_without_a_current_etag_fails() {
        let no_tag = Validators::new();
        assert_eq!(
            evaluate(&Method::GET, &req(&[(IF_MATCH, "\"abc\"")]), &no_tag),
            Precondition::Failed
        );
    }

    #[test]
    fn if_unmodified_since_fails_when_modified_later() {
        assert_eq!(
            get(&[(IF_UNMODIFIED_SINCE, &date(LM - 1))]),
            Precondition::Failed
        );
        assert_eq!(
            get(&[(IF_UNMODIFIED_SINCE, &date(LM))]),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_unmodified_since_is_ignored_when_if_match_is_present() {
        assert_eq!(
            get(&[(IF_MATCH, "\"abc\""), (IF_UNMODIFIED_SINCE, &date(LM - 1))]),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_unmodified_since_is_ignored_when_the_date_is_invalid() {
        assert_eq!(
            get(&[(IF_UNMODIFIED_SINCE, "not a date")]),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_unmodified_since_is_ignored_without_last_modified() {
        let only_tag = Validators::new().with_etag(EntityTag::strong("abc").unwrap());
        let field = req(&[(IF_UNMODIFIED_SINCE, &date(1))]);
        assert_eq!(
            evaluate(&Method::GET, &field, &only_tag),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        assert_eq!(
            get(&[(IF_NONE_MATCH, "W/\"abc\"")]),
            Precondition::NotModified
        );
        assert_eq!(
            get(&[(IF_NONE_MATCH, "\"abc\"")]),
            Precondition::NotModified
        );
        assert_eq!(get(&[(IF_NONE_MATCH, "\"other\"")]), Precondition::Proceed);
    }

    #[test]
    fn if_none_match_reads_lists_over_several_lines_with_spaces_and_tabs() {
        assert_eq!(
            get(&[
                (IF_NONE_MATCH, " \"x\" ,\t"),
                (IF_NONE_MATCH, "\t\"y\" , \"abc\" ")
            ]),
            Precondition::NotModified
        );
    }

    #[test]
    fn if_none_match_star_is_not_modified_for_get() {
        assert_eq!(get(&[(IF_NONE_MATCH, "*")]), Precondition::NotModified);
        assert_eq!(get(&[(IF_NONE_MATCH, "*, \"x\"")]), Precondition::Proceed);
    }

    #[test]
    fn if_none_match_fails_unsafe_methods_with_412() {
        let field = req(&[(IF_NONE_MATCH, "*")]);
        assert_eq!(
            evaluate(&Method::PUT, &field, &current()),
            Precondition::Failed
        );
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        assert_eq!(
            get(&[(IF_NONE_MATCH, "\"other\""), (IF_MODIFIED_SINCE, &date(LM))]),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_match_is_evaluated_before_if_none_match() {
        assert_eq!(
            get(&[(IF_MATCH, "\"x\""), (IF_NONE_MATCH, "\"abc\"")]),
            Precondition::Failed
        );
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        assert_eq!(
            get(&[(IF_MODIFIED_SINCE, &date(LM))]),
            Precondition::NotModified
        );
        assert_eq!(
            get(&[(IF_MODIFIED_SINCE, &date(LM + 3600))]),
            Precondition::NotModified
        );
        assert_eq!(
            get(&[(IF_MODIFIED_SINCE, &date(LM - 1))]),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_modified_since_applies_to_get_and_head_only() {
        let field = req(&[(IF_MODIFIED_SINCE, &date(LM))]);
        assert_eq!(
            evaluate(&Method::HEAD, &field, &current()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&Method::POST, &field, &current()),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_modified_since_ignores_invalid_dates_and_several_lines() {
        assert_eq!(
            get(&[(IF_MODIFIED_SINCE, "garbage")]),
            Precondition::Proceed
        );
        assert_eq!(
            get(&[
                (IF_MODIFIED_SINCE, &date(LM)),
                (IF_MODIFIED_SINCE, &date(LM))
            ]),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_modified_since_accepts_all_three_date_forms() {
        // LM + 1 day in each of the three forms.
        for form in [
            "Wed, 15 Nov 2023 22:13:20 GMT",
            "Wednesday, 15-Nov-23 22:13:20 GMT",
            "Wed Nov 15 22:13:20 2023",
        ] {
            assert_eq!(
                get(&[(IF_MODIFIED_SINCE, form)]),
                Precondition::NotModified,
                "{form}"
            );
        }
    }

    #[test]
    fn if_range_with_a_strong_matching_tag_allows_the_range() {
        let now = SystemTime::now();
        let field = req(&[(RANGE, "bytes=0-1"), (IF_RANGE, "\"abc\"")]);
        assert!(range_allowed(&field, &current(), now));
        let weak = req(&[(RANGE, "bytes=0-1"), (IF_RANGE, "W/\"abc\"")]);
        assert!(!range_allowed(&weak, &current(), now));
        let other = req(&[(RANGE, "bytes=0-1"), (IF_RANGE, "\"zzz\"")]);
        assert!(!range_allowed(&other, &current(), now));
    }

    #[test]
    fn if_range_with_a_date_needs_exact_equality_and_a_strong_date() {
        let now = UNIX_EPOCH + Duration::from_secs(LM + 10);
        let exact = req(&[(RANGE, "bytes=0-1"), (IF_RANGE, &date(LM))]);
        assert!(range_allowed(&exact, &current(), now));
        let later = req(&[(RANGE, "bytes=0-1"), (IF_RANGE, &date(LM + 1))]);
        assert!(!range_allowed(&later, &current(), now));
        let same_second = UNIX_EPOCH + Duration::from_secs(LM);
        assert!(!range_allowed(&exact, &current(), same_second));
        let garbage = req(&[(RANGE, "bytes=0-1"), (IF_RANGE, "soon")]);
        assert!(!range_allowed(&garbage, &current(), now));
    }
}
