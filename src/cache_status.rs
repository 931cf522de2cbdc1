//! The `Cache-Status` response field (RFC 9211): what the layer did with a
//! request, appended to the list of caches that handled the response.
//!
//! Turned on with
//! [`MediaCacheLayer::cache_status`](crate::MediaCacheLayer::cache_status).
//! The layer is a cache of validators, not of bodies: it answers `304` and
//! `412` itself (`hit`), and forwards everything else to the service, saying
//! why (`fwd`), what the service answered (`fwd-status`), whether it stored
//! the validators (`stored`) and, when it could not do its usual work, the
//! reason (`detail`).
//!
//! # Where the layer's member goes
//!
//! RFC 9211 §2 orders the list from the cache closest to the origin server
//! to the one closest to the user agent. The layer runs inside the origin
//! server, in front of the service: a `Cache-Status` on the service's answer
//! comes from caches between the layer and the origin (a proxy or object
//! store the service fronts), closer to the origin than the layer. So the
//! layer appends its member after them, and a CDN in front of the layer
//! appends its own after the layer's. The existing members are kept, byte
//! for byte, in their order; several field lines are joined into one.
//!
//! # Example
//!
//! ```
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_media_cache::{CachePolicy, MediaCacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(MediaCacheLayer::new(CachePolicy::no_cache()).cache_status("media-cache"))
//!     .service(service_fn(|_: Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("jpeg bytes")))
//!     }));
//! let response = service.oneshot(Request::get("/a.jpg").body(()).unwrap()).await.unwrap();
//! assert_eq!(
//!     response.headers()["cache-status"],
//!     "media-cache; fwd=miss; fwd-status=200; stored"
//! );
//! # }
//! ```

use bytes::Bytes;
use http::header::Entry;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// `Cache-Status`, RFC 9211 §2.
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The cache's name as a Structured Field item (RFC 8941 §3.3): a token
/// when it is one, else a string. Checked and rendered once, at
/// configuration.
#[derive(Debug, Clone)]
pub(crate) struct CacheName {
    rendered: Box<str>,
}

impl CacheName {
    /// The name, rendered as an `sf-token` (RFC 8941 §3.3.4) when it is one,
    /// else as an `sf-string` (§3.3.3: printable ASCII, `"` and `\`
    /// escaped). Empty names and names with other characters (controls,
    /// non-ASCII) are refused with the reason.
    pub(crate) fn new(name: &str) -> Result<Self, &'static str> {
        if name.is_empty() {
            return Err("the name is empty");
        }
        if is_sf_token(name) {
            return Ok(Self {
                rendered: name.into(),
            });
        }
        if !name.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(
                "the name is neither an sf-token nor an sf-string: only printable ASCII \
                 (0x20-0x7E) may be used",
            );
        }
        let mut rendered = String::with_capacity(name.len() + 2);
        rendered.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                rendered.push('\\');
            }
            rendered.push(c);
        }
        rendered.push('"');
        Ok(Self {
            rendered: rendered.into(),
        })
    }
}

/// `sf-token = ( ALPHA / "*" ) *( tchar / ":" / "/" )`, RFC 8941 §3.3.4.
fn is_sf_token(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == b'*')
        && bytes.all(|b| is_tchar(b) || b == b':' || b == b'/')
}

/// `tchar`, RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `n` in decimal (an `sf-integer`, RFC 8941 §3.3.1), without the
/// formatting machinery: this runs on every answer.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Why the layer forwarded a request to the service (the `fwd` parameter,
/// RFC 9211 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Nothing stored could answer the request: no entry, or an entry that
    /// does not satisfy it (an unconditional request wants a body, which the
    /// layer never stores).
    Miss,
    /// An entry was found but may not answer alone: its trust window is
    /// over, its trust mode is `Never`, or the invalidation bus was
    /// disconnected.
    Stale,
    /// A trusted entry or a probe could have answered, but the request's
    /// `Cache-Control: no-cache` (or `Pragma: no-cache`) asked for the
    /// origin (RFC 9111 §5.2.1.4).
    Request,
    /// A method other than `GET` and `HEAD`: its semantics need the service.
    Method,
}

impl Forward {
    fn token(self) -> &'static str {
        match self {
            Forward::Miss => "miss",
            Forward::Stale => "stale",
            Forward::Request => "request",
            Forward::Method => "method",
        }
    }
}

/// Why the layer could not do its usual work on an answer (the `detail`
/// parameter, RFC 9211 §2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The body streamed without a content `ETag`: the global buffer budget
    /// was used up.
    BufferBudget,
    /// The body streamed without a content `ETag`: over the per-response
    /// buffer limit.
    BodyTooLarge,
    /// The validators were not stored: the request's selector or the entry
    /// is over the store's size limits.
    EntryTooLarge,
}

impl Detail {
    fn token(self) -> &'static str {
        match self {
            Detail::BufferBudget => "buffer-budget",
            Detail::BodyTooLarge => "body-too-large",
            Detail::EntryTooLarge => "entry-too-large",
        }
    }
}

/// What the layer did with one request, as `Cache-Status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// Answered without the service (RFC 9211 §2.1), from the store (with
    /// the seconds its trust has left, §2.4 `ttl`, when bounded) or a probe.
    Hit { ttl: Option<u64> },
    /// Forwarded to the service.
    Forwarded {
        fwd: Forward,
        /// What the service answered (§2.3), when it answered the request
        /// itself.
        status: Option<StatusCode>,
        /// The layer stored the answer's validators (§2.5).
        stored: bool,
        /// The request waited for an identical one at the service and was
        /// answered from its response (§2.6 `collapsed`).
        collapsed: bool,
        detail: Option<Detail>,
    },
}

impl Report {
    /// The list member: the name, then the parameters.
    fn member(self, name: &CacheName) -> Vec<u8> {
        let mut member = Vec::with_capacity(name.rendered.len() + 64);
        member.extend_from_slice(name.rendered.as_bytes());
        match self {
            Report::Hit { ttl } => {
                member.extend_from_slice(b"; hit");
                if let Some(ttl) = ttl {
                    member.extend_from_slice(b"; ttl=");
                    push_decimal(&mut member, ttl);
                }
            }
            Report::Forwarded {
                fwd,
                status,
                stored,
                collapsed,
                detail,
            } => {
                member.extend_from_slice(b"; fwd=");
                member.extend_from_slice(fwd.token().as_bytes());
                if let Some(status) = status {
                    member.extend_from_slice(b"; fwd-status=");
                    push_decimal(&mut member, u64::from(status.as_u16()));
                }
                if stored {
                    member.extend_from_slice(b"; stored");
                }
                if collapsed {
                    member.extend_from_slice(b"; collapsed");
                }
                if let Some(detail) = detail {
                    member.extend_from_slice(b"; detail=");
                    member.extend_from_slice(detail.token().as_bytes());
                }
            }
        }
        member
    }

    /// Appends this report as `name`'s member to the response's
    /// `Cache-Status` list (RFC 9211 §2: existing members are preserved,
    /// the layer's goes last). The field lines already there are joined
    /// into one, each kept as sent; empty lines are dropped.
    pub(crate) fn append_to(self, headers: &mut HeaderMap, name: &CacheName) {
        let member = self.member(name);
        match headers.entry(CACHE_STATUS) {
            Entry::Vacant(vacant) => {
                // Every part is a valid field value, so this cannot fail;
                // should it, the answer goes without the member.
                if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(member)) {
                    vacant.insert(value);
                }
            }
            Entry::Occupied(mut lines) => {
                let mut list: Vec<u8> = Vec::new();
                for line in lines.iter() {
                    let line = crate::headers::trim_ows(line.as_bytes());
                    if !line.is_empty() {
                        list.extend_from_slice(line);
                        list.extend_from_slice(b", ");
                    }
                }
                list.extend_from_slice(&member);
                // The lines as received (obs-text included) and the member.
                if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(list)) {
                    lines.insert(value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(name: &str) -> String {
        CacheName::new(name).unwrap().rendered.into()
    }

    #[test]
    fn tokens_render_bare_and_other_printable_names_as_strings() {
        assert_eq!(render("media-cache"), "media-cache");
        assert_eq!(render("*edge/v1:eu"), "*edge/v1:eu");
        assert_eq!(render("Media Cache"), "\"Media Cache\"");
        assert_eq!(render("1st"), "\"1st\"");
        assert_eq!(render(r#"a"b\c"#), r#""a\"b\\c""#);
    }

    #[test]
    fn empty_control_and_non_ascii_names_are_refused() {
        assert!(CacheName::new("").is_err());
        assert!(CacheName::new("cache\r\n").is_err());
        assert!(CacheName::new("caché").is_err());
        assert!(CacheName::new("tab\there").is_err());
    }

    #[test]
    fn members_list_their_parameters_in_the_rfc_order() {
        let name = CacheName::new("layer").unwrap();
        let forwarded = Report::Forwarded {
            fwd: Forward::Stale,
            status: Some(StatusCode::OK),
            stored: true,
            collapsed: false,
            detail: Some(Detail::BufferBudget),
        };
        assert_eq!(
            forwarded.member(&name),
            b"layer; fwd=stale; fwd-status=200; stored; detail=buffer-budget"
        );
        let collapsed = Report::Forwarded {
            fwd: Forward::Miss,
            status: Some(StatusCode::OK),
            stored: false,
            collapsed: true,
            detail: None,
        };
        assert_eq!(
            collapsed.member(&name),
            b"layer; fwd=miss; fwd-status=200; collapsed"
        );
        assert_eq!(
            Report::Hit { ttl: Some(60) }.member(&name),
            b"layer; hit; ttl=60"
        );
        let mut decimal = Vec::new();
        for n in [0, 7, 10, 259_200, u64::MAX] {
            decimal.clear();
            push_decimal(&mut decimal, n);
            assert_eq!(decimal, n.to_string().as_bytes());
        }
    }

    #[test]
    fn the_member_goes_after_existing_lines_joined_into_one() {
        let name = CacheName::new("layer").unwrap();
        let mut headers = HeaderMap::new();
        headers.append(CACHE_STATUS, HeaderValue::from_static("origin-proxy; hit"));
        headers.append(CACHE_STATUS, HeaderValue::from_static(" "));
        headers.append(
            CACHE_STATUS,
            HeaderValue::from_static("shield; fwd=uri-miss"),
        );
        Report::Hit { ttl: None }.append_to(&mut headers, &name);
        let lines: Vec<_> = headers.get_all(CACHE_STATUS).iter().collect();
        assert_eq!(
            lines,
            ["origin-proxy; hit, shield; fwd=uri-miss, layer; hit"]
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_kept_byte_for_byte() {
        let name = CacheName::new("layer").unwrap();
        let mut headers = HeaderMap::new();
        let odd = HeaderValue::from_bytes(b"proxy; detail=\"caf\xe9\"").unwrap();
        headers.append(CACHE_STATUS, odd);
        Report::Hit { ttl: None }.append_to(&mut headers, &name);
        assert_eq!(
            headers[CACHE_STATUS].as_bytes(),
            b"proxy; detail=\"caf\xe9\", layer; hit"
        );
    }
}
