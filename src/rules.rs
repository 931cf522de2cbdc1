//! Which policy applies to a response: per-response override, route rule,
//! content-type rule, default — in that order.
//!
//! Route patterns use axum's syntax (`/media/{*path}`, `/avatars/{id}`) and
//! are matched by [`matchit`], the router inside axum. When several patterns
//! match a path, the most specific wins regardless of registration order: a
//! static segment beats a `{param}`, which beats a `{*catch_all}`.

use http::{HeaderMap, HeaderValue};

use crate::policy::CachePolicy;

/// What a route rule says.
#[derive(Debug, Clone)]
pub(crate) enum Rule {
    Policy(CachePolicy),
    Exclude,
}

/// The route rule a request path matched, decided once in `call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteMatch {
    /// No route rule matched.
    None,
    /// The route is excluded: the request and response pass untouched.
    Excluded,
    /// This route rule (an index into the rule list).
    Rule(usize),
}

impl RouteMatch {
    /// Where a `POST` the service accepted counts as accepted: the route
    /// rule when one matched, else the request's path group (without rules,
    /// one accepting path says nothing of the others).
    pub(crate) fn scope(self, key: crate::key::Key) -> u64 {
        const RULE: u64 = 1 << 63;
        match self {
            RouteMatch::Rule(index) => RULE | index as u64,
            RouteMatch::None | RouteMatch::Excluded => key.hash() & !RULE,
        }
    }
}

/// A `Content-Type` pattern: `type/subtype` or `type/*`, case-insensitive.
#[derive(Debug, Clone)]
struct MediaRange {
    kind: Box<str>,
    subtype: Option<Box<str>>,
}

impl MediaRange {
    fn parse(pattern: &str) -> Self {
        let pattern = pattern.trim().to_ascii_lowercase();
        match pattern.split_once('/') {
            Some((kind, "*")) => Self {
                kind: kind.into(),
                subtype: None,
            },
            Some((kind, subtype)) => Self {
                kind: kind.into(),
                subtype: Some(subtype.into()),
            },
            None => Self {
                kind: pattern.into(),
                subtype: None,
            },
        }
    }

    fn matches(&self, essence: &[u8]) -> bool {
        let essence = crate::headers::trim_ows(essence);
        let (kind, subtype) = match essence.iter().position(|&b| b == b'/') {
            Some(i) => (&essence[..i], &essence[i + 1..]),
            None => (essence, &b""[..]),
        };
        kind.eq_ignore_ascii_case(self.kind.as_bytes())
            && self
                .subtype
                .as_ref()
                .is_none_or(|s| subtype.eq_ignore_ascii_case(s.as_bytes()))
    }
}

/// The configured policies.
#[derive(Clone)]
pub(crate) struct Rules {
    pub(crate) default: CachePolicy,
    router: matchit::Router<usize>,
    routes: Vec<Rule>,
    /// Each route rule's pattern, as given: the `route` label of metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    patterns: Vec<std::sync::Arc<str>>,
    content_types: Vec<(MediaRange, CachePolicy)>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("default", &self.default)
            .field("routes", &self.routes.len())
            .field("content_types", &self.content_types.len())
            .finish()
    }
}

impl Rules {
    pub(crate) fn new(default: CachePolicy) -> Self {
        Self {
            default,
            router: matchit::Router::new(),
            routes: Vec::new(),
            patterns: Vec::new(),
            content_types: Vec::new(),
        }
    }

    /// Adds a route rule.
    ///
    /// # Panics
    ///
    /// When the pattern is not valid matchit syntax or conflicts with one
    /// already added (the same pattern twice, say), like axum's `route`.
    pub(crate) fn add_route(&mut self, pattern: &str, rule: Rule) {
        let index = self.routes.len();
        if let Err(error) = self.router.insert(pattern, index) {
            panic!("invalid media cache route `{pattern}`: {error}");
        }
        self.routes.push(rule);
        self.patterns.push(pattern.into());
    }

    /// The pattern of the route rule a request matched, for labelling
    /// metrics (never the raw path: one series per rule, however many
    /// paths); `None` when no route rule matched.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn pattern(&self, route: RouteMatch) -> Option<&std::sync::Arc<str>> {
        match route {
            RouteMatch::Rule(index) => self.patterns.get(index),
            RouteMatch::None | RouteMatch::Excluded => None,
        }
    }

    /// Adds a content-type rule. Exact types beat `type/*` patterns; among
    /// equals, the first added wins.
    pub(crate) fn add_content_type(&mut self, pattern: &str, policy: CachePolicy) {
        let range = MediaRange::parse(pattern);
        let position = if range.subtype.is_some() {
            self.content_types
                .iter()
                .position(|(r, _)| r.subtype.is_none())
                .unwrap_or(self.content_types.len())
        } else {
            self.content_types.len()
        };
        self.content_types.insert(position, (range, policy));
    }

    /// The route rule for a request path; no allocation.
    pub(crate) fn route(&self, path: &str) -> RouteMatch {
        match self.router.at(path) {
            Ok(found) => match self.routes[*found.value] {
                Rule::Exclude => RouteMatch::Excluded,
                Rule::Policy(_) => RouteMatch::Rule(*found.value),
            },
            Err(_) => RouteMatch::None,
        }
    }

    /// The policy decided before the response exists: the route's, or the
    /// default. Used for the probe and for answering from the store.
    pub(crate) fn request_policy(&self, route: RouteMatch) -> &CachePolicy {
        match route {
            RouteMatch::Rule(index) => match &self.routes[index] {
                Rule::Policy(policy) => policy,
                Rule::Exclude => &self.default,
            },
            RouteMatch::None | RouteMatch::Excluded => &self.default,
        }
    }

    /// The policy for a response when the handler put none in its
    /// extensions (the caller checks those first): the route rule's, else
    /// the first matching content-type rule's, else the default.
    pub(crate) fn response_policy(&self, route: RouteMatch, headers: &HeaderMap) -> &CachePolicy {
        if let RouteMatch::Rule(_) = route {
            return self.request_policy(route);
        }
        self.content_type_policy(headers).unwrap_or(&self.default)
    }

    fn content_type_policy(&self, headers: &HeaderMap) -> Option<&CachePolicy> {
        if self.content_types.is_empty() {
            return None;
        }
        let value: &HeaderValue = headers.get(http::header::CONTENT_TYPE)?;
        let bytes = value.as_bytes();
        let essence = bytes.split(|&b| b == b';').next().unwrap_or(bytes);
        self.content_types
            .iter()
            .find(|(range, _)| range.matches(essence))
            .map(|(_, policy)| policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn age(policy: &CachePolicy) -> String {
        policy.header_value().to_str().unwrap().to_owned()
    }

    fn rules() -> Rules {
        let mut rules = Rules::new(CachePolicy::no_cache());
        rules.add_route(
            "/media/{*path}",
            Rule::Policy(CachePolicy::max_age(Duration::from_secs(1))),
        );
        rules.add_route(
            "/media/live.jpg",
            Rule::Policy(CachePolicy::max_age(Duration::from_secs(2))),
        );
        rules.add_route("/admin/{*rest}", Rule::Exclude);
        rules.add_content_type("image/*", CachePolicy::max_age(Duration::from_secs(3)));
        rules.add_content_type("image/png", CachePolicy::max_age(Duration::from_secs(4)));
        rules
    }

    fn header(content_type: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(content_type));
        headers
    }

    #[test]
    fn static_route_beats_catch_all_whatever_the_order() {
        let rules = rules();
        let live = rules.route("/media/live.jpg");
        assert_eq!(age(rules.request_policy(live)), "max-age=2");
        let other = rules.route("/media/a/b.jpg");
        assert_eq!(age(rules.request_policy(other)), "max-age=1");
    }

    #[test]
    fn excluded_routes_are_reported() {
        assert_eq!(rules().route("/admin/x"), RouteMatch::Excluded);
    }

    #[test]
    fn content_type_rules_apply_when_no_route_decides() {
        let rules = rules();
        let none = rules.route("/other.png");
        assert_eq!(none, RouteMatch::None);
        assert_eq!(
            age(rules.response_policy(none, &header("image/png"))),
            "max-age=4"
        );
        assert_eq!(
            age(rules.response_policy(none, &header("IMAGE/JPEG; q=1"))),
            "max-age=3"
        );
        assert_eq!(
            age(rules.response_policy(none, &header("text/html"))),
            "no-cache"
        );
        let routed = rules.route("/media/x.png");
        assert_eq!(
            age(rules.response_policy(routed, &header("image/png"))),
            "max-age=1"
        );
    }

    #[test]
    #[should_panic(expected = "invalid media cache route")]
    fn conflicting_routes_panic_at_configuration() {
        let mut rules = rules();
        rules.add_route("/media/{*path}", Rule::Exclude);
    }
}
