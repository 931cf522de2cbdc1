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

use std::fmt::Write as _;

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
        detail: Option<Detail>,
    },
}

impl Report {
    /// The list member: the name, then the parameters.
    fn member(self, name: &CacheName) -> String {
        let mut member = String::with_capacity(name.rendered.len() + 48);
        member.push_str(&name.rendered);
        match self {
            Report::Hit { ttl } => {
                member.push_str("; hit");
                if let Some(ttl) = ttl {
                    let _ = write!(member, "; ttl={ttl}");
                }
            }
            Report::Forwarded {
                fwd,
                status,
                stored,
                detail,
            } => {
                let _ = write!(member, "; fwd={}", fwd.token());
                if let Some(status) = status {
                    let _ = write!(member, "; fwd-status={}", status.as_u16());
                }
                if stored {
                    member.push_str("; stored");
                }
                if let Some(detail) = detail {
                    let _ = write!(member, "; detail={}", detail.token());
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
        let mut list: Vec<u8> = Vec::new();
        for line in headers.get_all(CACHE_STATUS) {
            let line = crate::headers::trim_ows(line.as_bytes());
            if !line.is_empty() {
                list.extend_from_slice(line);
                list.extend_from_slice(b", ");
            }
        }
        list.extend_from_slice(member.as_bytes());
        match HeaderValue::from_bytes(&list) {
            Ok(value) => {
                headers.insert(CACHE_STATUS, value);
            }
            // Unreachable: every part was a valid field value. Should it
            // happen, the member is added on a line of its own.
            Err(_) => {
                if let Ok(value) = HeaderValue::try_from(member) {
                    headers.append(CACHE_STATUS, value);
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
            detail: Some(Detail::BufferBudget),
        };
        assert_eq!(
            forwarded.member(&name),
            "layer; fwd=stale; fwd-status=200; stored; detail=buffer-budget"
        );
        assert_eq!(
            Report::Hit { ttl: Some(60) }.member(&name),
            "layer; hit; ttl=60"
        );
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
}
