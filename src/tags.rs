//! Cache tags (surrogate keys): names a response carries so that every
//! cached copy of it — in the layer's store and in the front tier — can be
//! dropped at once with [`CacheHandle::invalidate_tag`].
//!
//! A response's tags are those of its [`CachePolicy`](crate::CachePolicy)
//! ([`CachePolicy::tags`](crate::CachePolicy::tags)) and those the service
//! put in the response's extensions as [`CacheTags`] (per response: the
//! media's owner, its album). The layer:
//!
//! * renders them in each header configured with
//!   [`MediaCacheLayer::tag_header`](crate::MediaCacheLayer::tag_header),
//!   in that header's syntax ([`TagHeader`]: `Surrogate-Key` for Fastly,
//!   `Cache-Tag` for Cloudflare, `xkey` for Varnish);
//! * indexes the store's entries by tag, so that
//!   [`CacheHandle::invalidate_tag`] finds them without walking the store
//!   (the index counts in the store's byte capacity);
//! * and, with a [`Purger`](crate::purge::Purger), purges the front tier by
//!   the same tag.
//!
//! # Tag syntax
//!
//! Every front tier reads a list of tokens: `Surrogate-Key` and `xkey`
//! separate them by spaces, `Cache-Tag` by commas. So that any string can be
//! a tag and reach every tier intact, a tag is *rendered* once, the same way
//! everywhere (header, index, bus, purge):
//!
//! * ASCII letters, digits and `-._~!$&'()*+;=:@/` are kept as they are;
//! * every other byte of its UTF-8 form — space, comma, `%`, `"`, control
//!   characters, non-ASCII — is percent-encoded (`album 7` → `album%207`,
//!   `été` → `%C3%A9t%C3%A9`), so rendering is one-to-one;
//! * a rendered tag longer than [`MAX_TAG_BYTES`] (the per-key limit of
//!   Fastly and Cloudflare) is replaced by `xxh3-` and the 32 hex digits of
//!   the XXH3-128 hash of the tag as given: still one token per tag, the same
//!   on every replica;
//! * an empty tag is ignored.
//!
//! [`CacheHandle::invalidate_tag`] renders its argument the same way, so
//! pass it the tag exactly as it was given to the policy or the response.
//! Tags are case-sensitive here, in Fastly and in Varnish; Cloudflare
//! compares them case-insensitively, which only ever purges more.
//!
//! A tag header's value is at most [`MAX_TAG_HEADER_BYTES`] long (the limit
//! of Fastly's and Cloudflare's headers): tags that do not fit are left out
//! of the header (counted in
//! [`Stats::tags_not_sent`](crate::Stats::tags_not_sent), logged), but still
//! indexed, so [`CacheHandle::invalidate_tag`] still drops the layer's own
//! entries and still purges them by tag.
//!
//! Tags count in the weight of the entry that carries them: an answer
//! whose tags and stored headers weigh more than an entry may (64 KiB) is
//! not learned ([`Stats::not_learned_too_large`](crate::Stats::not_learned_too_large)),
//! so the store never answers for it. Duplicates are dropped in linear
//! time, however many tags a service sets.
//!
//! Tags name your content, and may name your users (`owner:42`): keep them
//! from the public. Fastly and Cloudflare strip `Surrogate-Key` and
//! `Cache-Tag` before delivering; with Varnish, `unset resp.http.xkey` in
//! `vcl_deliver` (the VCL in the [purge module](crate::purge) does).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//! use tower_media_cache::{CachePolicy, CacheTags, MediaCacheLayer, TagHeader};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = MediaCacheLayer::new(
//!     CachePolicy::max_age(Duration::from_secs(3600)).tags(["media"]),
//! )
//! .tag_header(TagHeader::surrogate_key());
//! let handle = layer.handle();
//! let service = ServiceBuilder::new().layer(layer).service(service_fn(|_req: Request<()>| async {
//!     let mut response = Response::new(String::from("jpeg bytes"));
//!     response.extensions_mut().insert(CacheTags::new(["owner:42", "album 7"]));
//!     Ok::<_, std::convert::Infallible>(response)
//! }));
//!
//! let response = service.oneshot(Request::get("/media/AAAA.jpg").body(()).unwrap()).await.unwrap();
//! assert_eq!(response.headers()["surrogate-key"], "media owner:42 album%207");
//!
//! // Later, when album 7 changes:
//! assert_eq!(handle.invalidate_tag("album 7"), 1);
//! # }
//! ```
//!
//! [`CacheHandle::invalidate_tag`]: crate::CacheHandle::invalidate_tag

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The longest rendered tag; longer ones are replaced by their hash.
pub const MAX_TAG_BYTES: usize = 1024;

/// The longest value of a tag header the layer writes.
pub const MAX_TAG_HEADER_BYTES: usize = 16 * 1024;

/// A tag as rendered (see the [module docs](self)): the token every tier
/// sees. Shared between the entries and the index.
pub(crate) type Tag = Arc<str>;

/// Renders a tag: `None` for an empty one.
pub(crate) fn render(tag: &str) -> Option<Tag> {
    if tag.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(tag.len());
    for &byte in tag.as_bytes() {
        if kept(byte) {
            out.push(char::from(byte));
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        if out.len() > MAX_TAG_BYTES {
            break;
        }
    }
    if out.len() > MAX_TAG_BYTES {
        let hash = twox_hash::XxHash3_128::oneshot(tag.as_bytes());
        out = format!("xxh3-{hash:032x}");
    }
    Some(out.into())
}

/// Whether a byte stays as it is in a rendered tag: RFC 3986's unreserved
/// characters and sub-delimiters but the comma, plus `:`, `@` and `/`;
/// never a separator of any tag header, never `%`.
fn kept(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+;=:@/".contains(&byte)
}

/// Renders `tags`, dropping empty ones and duplicates, in order.
fn render_all<I>(tags: I) -> Vec<Tag>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let mut out = Unique::default();
    for tag in tags {
        if let Some(tag) = render(tag.as_ref()) {
            out.push(tag);
        }
    }
    out.list
}

/// A list of tags without duplicates, in order: a linear scan while it is
/// short, a hash set beside it once it is long (however many tags a
/// service sets, never quadratic).
#[derive(Default)]
struct Unique {
    list: Vec<Tag>,
    seen: HashSet<Tag>,
}

impl Unique {
    const SCAN: usize = 16;

    fn push(&mut self, tag: Tag) {
        if self.list.len() < Self::SCAN {
            if !self.list.contains(&tag) {
                self.list.push(tag);
            }
            return;
        }
        if self.seen.is_empty() {
            self.seen.extend(self.list.iter().cloned());
        }
        if self.seen.insert(tag.clone()) {
            self.list.push(tag);
        }
    }
}

/// A set of rendered tags, cheap to clone (`None`: none, no allocation).
#[derive(Clone, Default)]
pub(crate) struct Tags(Option<Arc<TagList>>);

struct TagList {
    tags: Box<[Tag]>,
    /// The whole list as a tag header's value, space- and comma-separated,
    /// made at first use; `None` inside when it is over the header limit.
    joined: [OnceLock<Option<HeaderValue>>; 2],
}

impl PartialEq for Tags {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a.tags == b.tags,
            (a, b) => a.is_none() && b.is_none(),
        }
    }
}

impl Eq for Tags {}

impl Tags {
    pub(crate) fn new<I>(tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::from_vec(render_all(tags))
    }

    fn from_vec(tags: Vec<Tag>) -> Self {
        if tags.is_empty() {
            return Self(None);
        }
        Self(Some(Arc::new(TagList {
            tags: tags.into_boxed_slice(),
            joined: Default::default(),
        })))
    }

    fn as_slice(&self) -> &[Tag] {
        self.0.as_ref().map_or(&[], |list| &list.tags)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Tags already rendered (read back from a shared store), or `None`
    /// when one is not what [`render`] makes: empty, too long, or with a
    /// byte it would have encoded.
    pub(crate) fn from_rendered<'a>(rendered: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        let tags = rendered
            .into_iter()
            .map(|tag| {
                let valid = !tag.is_empty()
                    && tag.len() <= MAX_TAG_BYTES
                    && tag.bytes().all(|b| kept(b) || b == b'%');
                valid.then(|| Tag::from(tag))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self::from_vec(tags))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Tag> {
        self.as_slice().iter()
    }

    pub(crate) fn contains(&self, tag: &str) -> bool {
        self.iter().any(|t| &**t == tag)
    }

    /// These tags then `more`'s, without duplicates.
    pub(crate) fn merged(&self, more: &Tags) -> Tags {
        if more.is_empty() || *self == *more {
            return self.clone();
        }
        if self.is_empty() {
            return more.clone();
        }
        let mut all = Unique::default();
        for tag in self.iter().chain(more.iter()) {
            all.push(tag.clone());
        }
        Self::from_vec(all.list)
    }

    /// All the tags joined by `separator` (`" "` or `","`), when that fits
    /// in a header; kept for the next response with the same tags.
    fn joined(&self, separator: &'static str) -> Option<HeaderValue> {
        let list = self.0.as_ref()?;
        let slot = &list.joined[usize::from(separator != " ")];
        slot.get_or_init(|| {
            let value = list.tags.join(separator);
            (value.len() <= MAX_TAG_HEADER_BYTES)
                .then(|| HeaderValue::from_str(&value).ok())
                .flatten()
        })
        .clone()
    }

    /// The bytes these tags hold (the slice and each string), estimated.
    pub(crate) fn weight(&self) -> usize {
        self.iter().map(|t| TAG_OVERHEAD + t.len()).sum()
    }
}

impl fmt::Debug for Tags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Bytes a tag costs besides its text: its slot in the slice, the `Arc`'s
/// counters, the allocator's rounding.
const TAG_OVERHEAD: usize = 48;

/// Per-response cache tags, set by the service in the response's
/// extensions; the layer adds them to the policy's
/// ([`CachePolicy::tags`](crate::CachePolicy::tags)) and removes the
/// extension. See the [tags module](crate::tags) for their syntax.
///
/// ```
/// use tower_media_cache::CacheTags;
///
/// let mut response = http::Response::new(());
/// response
///     .extensions_mut()
///     .insert(CacheTags::new(["owner:42", "album:7"]));
/// ```
#[derive(Clone, Default)]
pub struct CacheTags {
    tags: Tags,
}

impl CacheTags {
    /// The given tags (empty ones and duplicates are dropped).
    pub fn new<I>(tags: I) -> Self
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self {
            tags: Tags::new(tags),
        }
    }

    /// Adds one tag.
    pub fn with(self, tag: impl AsRef<str>) -> Self {
        Self {
            tags: self.tags.merged(&Tags::new([tag])),
        }
    }

    /// The tags as rendered in headers, in order.
    pub fn rendered(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| &**t)
    }

    pub(crate) fn into_tags(self) -> Tags {
        self.tags
    }
}

impl fmt::Debug for CacheTags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheTags").field(&self.tags).finish()
    }
}

impl<S: AsRef<str>> FromIterator<S> for CacheTags {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// A header that carries a response's tags to the front tier, set with
/// [`MediaCacheLayer::tag_header`](crate::MediaCacheLayer::tag_header).
///
/// ```
/// use tower_media_cache::TagHeader;
///
/// assert_eq!(TagHeader::surrogate_key().name(), "surrogate-key");
/// assert_eq!(TagHeader::cache_tag().name(), "cache-tag");
/// assert_eq!(TagHeader::xkey().name(), "xkey");
/// let own = TagHeader::space_separated(http::HeaderName::from_static("x-cache-keys"));
/// # let _ = own;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagHeader {
    name: HeaderName,
    separator: &'static str,
}

impl TagHeader {
    /// `Surrogate-Key: a b c` — Fastly, space-separated.
    pub fn surrogate_key() -> Self {
        Self::space_separated(HeaderName::from_static("surrogate-key"))
    }

    /// `Cache-Tag: a,b,c` — Cloudflare, comma-separated.
    pub fn cache_tag() -> Self {
        Self::comma_separated(HeaderName::from_static("cache-tag"))
    }

    /// `xkey: a b c` — Varnish with `vmod_xkey` (Debian's
    /// `varnish-modules`), space-separated.
    pub fn xkey() -> Self {
        Self::space_separated(HeaderName::from_static("xkey"))
    }

    /// Any header whose tags are separated by spaces.
    pub fn space_separated(name: HeaderName) -> Self {
        Self {
            name,
            separator: " ",
        }
    }

    /// Any header whose tags are separated by commas (for example Akamai's
    /// `Edge-Cache-Tag`).
    pub fn comma_separated(name: HeaderName) -> Self {
        Self {
            name,
            separator: ",",
        }
    }

    /// The header's name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// Writes `tags` into this header of `headers`, after any value the
    /// service already put there (kept as it is, one line). Returns how
    /// many tags did not fit in [`MAX_TAG_HEADER_BYTES`].
    pub(crate) fn write(&self, headers: &mut HeaderMap, tags: &Tags) -> usize {
        if tags.is_empty() {
            return 0;
        }
        if !headers.contains_key(&self.name)
            && let Some(joined) = tags.joined(self.separator)
        {
            headers.insert(self.name.clone(), joined);
            return 0;
        }
        let mut value: Vec<u8> = Vec::new();
        for existing in headers.get_all(&self.name) {
            let existing = existing.as_bytes().trim_ascii();
            if !existing.is_empty() {
                if !value.is_empty() {
                    value.extend_from_slice(self.separator.as_bytes());
                }
                value.extend_from_slice(existing);
            }
        }
        let mut left_out = 0;
        for tag in tags.iter() {
            let needed = tag.len() + if value.is_empty() { 0 } else { 1 };
            if value.len() + needed > MAX_TAG_HEADER_BYTES {
                left_out += 1;
                continue;
            }
            if !value.is_empty() {
                value.extend_from_slice(self.separator.as_bytes());
            }
            value.extend_from_slice(tag.as_bytes());
        }
        // Rendered tags are visible ASCII; the service's own value was a
        // valid header value already.
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(self.name.clone(), value);
        }
        left_out
    }
}

/// Writes the tags of an answer under `policy` (its own and the service's
/// `own`) in the configured tag headers; returns them, to be stored.
pub(crate) fn emit(
    headers: &mut HeaderMap,
    policy: &crate::CachePolicy,
    own: Option<CacheTags>,
    config: &crate::config::Config,
) -> Tags {
    let tags = match own {
        Some(own) => policy.tag_set().merged(&own.into_tags()),
        None => policy.tag_set().clone(),
    };
    for header in &config.tag_headers {
        let left_out = header.write(headers, &tags);
        if left_out > 0 {
            config
                .store
                .counters
                .add(crate::handle::Counter::TagsNotSent, left_out as u64);
            tracing::warn!(
                header = %header.name(),
                left_out,
                "cache tags left out of the header: over {MAX_TAG_HEADER_BYTES} bytes"
            );
        }
    }
    tags
}

/// The store's index from tag to the path groups (store keys) whose
/// entries carry it.
///
/// Kept exact by the store: a group's tags are added after it is inserted,
/// and removed when it is replaced or removed. Evictions happen inside the
/// map, where the index may not be locked: they are queued
/// ([`TagIndex::evicted`]) and settled by [`TagIndex::settle`] at the next
/// learn or tag invalidation, against what the map holds then.
#[derive(Default)]
pub(crate) struct TagIndex {
    postings: Mutex<HashMap<Tag, HashSet<u64>>>,
    /// Groups evicted with their tags, not yet taken out of `postings`.
    evicted: Mutex<Vec<(u64, Tags)>>,
    /// Whether `evicted` may hold something: a learn without evictions
    /// then takes no lock at all.
    pending: AtomicBool,
}

impl fmt::Debug for TagIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TagIndex")
            .field("tags", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// Bytes one (tag, group) pair costs the index: its slot in the tag's set,
/// and a share of the tag's map entry and its text (counted per pair, an
/// over-estimate when tags are shared).
pub(crate) fn posting_weight(tag: &Tag) -> u64 {
    (64 + tag.len()) as u64
}

impl TagIndex {
    fn lock(&self) -> MutexGuard<'_, HashMap<Tag, HashSet<u64>>> {
        // Every update leaves the map consistent: a panic cannot break it.
        self.postings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that group `key` carries `tags` (after it is in the map).
    pub(crate) fn add<'a>(&self, key: u64, tags: impl Iterator<Item = &'a Tag>) {
        let mut tags = tags.peekable();
        if tags.peek().is_none() {
            return;
        }
        let mut postings = self.lock();
        for tag in tags {
            postings.entry(tag.clone()).or_default().insert(key);
        }
    }

    /// Records that group `key` no longer carries `tags`.
    pub(crate) fn remove<'a>(&self, key: u64, tags: impl Iterator<Item = &'a Tag>) {
        let mut tags = tags.peekable();
        if tags.peek().is_none() {
            return;
        }
        let mut postings = self.lock();
        for tag in tags {
            Self::unpost(&mut postings, tag, key);
        }
    }

    fn unpost(postings: &mut HashMap<Tag, HashSet<u64>>, tag: &str, key: u64) {
        if let Some(keys) = postings.get_mut(tag) {
            keys.remove(&key);
            if keys.is_empty() {
                postings.remove(tag);
            } else if keys.capacity() > 4 * keys.len() + 16 {
                keys.shrink_to_fit();
            }
        }
    }

    /// The groups carrying `tag`.
    pub(crate) fn keys(&self, tag: &str) -> Vec<u64> {
        self.lock()
            .get(tag)
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Queues an evicted group's tags: called from inside the map.
    pub(crate) fn evicted(&self, key: u64, tags: Tags) {
        self.evicted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((key, tags));
        self.pending.store(true, Ordering::Release);
    }

    /// Takes the queued evictions out of the index: each tag of an evicted
    /// group is unposted unless the group now in the map under that key
    /// (`current`, a newer one) carries it.
    pub(crate) fn settle(&self, current: impl Fn(u64) -> Option<Tags>) {
        if !self.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let evicted = std::mem::take(&mut *self.evicted.lock().unwrap_or_else(|e| e.into_inner()));
        if evicted.is_empty() {
            return;
        }
        let mut postings = self.lock();
        for (key, tags) in evicted {
            let now = current(key).unwrap_or_default();
            for tag in tags.iter().filter(|t| !now.contains(t)) {
                Self::unpost(&mut postings, tag, key);
            }
        }
    }

    /// Forgets everything.
    pub(crate) fn clear(&self) {
        self.evicted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        *self.lock() = HashMap::new();
    }

    /// (tags, postings) in the index, for tests.
    #[cfg(test)]
    pub(crate) fn size(&self) -> (usize, usize) {
        let postings = self.lock();
        (postings.len(), postings.values().map(HashSet::len).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tags_are_kept_and_the_rest_is_percent_encoded() {
        assert_eq!(&*render("owner:42").unwrap(), "owner:42");
        assert_eq!(&*render("album/7_x-y.z~").unwrap(), "album/7_x-y.z~");
        assert_eq!(&*render("album 7").unwrap(), "album%207");
        assert_eq!(&*render("a,b").unwrap(), "a%2Cb");
        assert_eq!(&*render("100%").unwrap(), "100%25");
        assert_eq!(&*render("été").unwrap(), "%C3%A9t%C3%A9");
        assert_eq!(&*render("tab\there\r\n").unwrap(), "tab%09here%0D%0A");
        assert_eq!(&*render("\"q\"").unwrap(), "%22q%22");
        assert_eq!(render(""), None);
    }

    #[test]
    fn rendering_is_one_to_one() {
        // `%` itself is encoded, so an encoded-looking tag stays distinct.
        assert_ne!(render("a b"), render("a%20b"));
        assert_ne!(render("A"), render("a"));
    }

    #[test]
    fn long_tags_become_their_hash() {
        let fits = "x".repeat(MAX_TAG_BYTES);
        assert_eq!(&*render(&fits).unwrap(), fits);
        let long = "x".repeat(MAX_TAG_BYTES + 1);
        let hashed = render(&long).unwrap();
        assert!(hashed.starts_with("xxh3-"), "{hashed}");
        assert_eq!(hashed.len(), 5 + 32);
        assert_eq!(render(&long), Some(hashed.clone()), "deterministic");
        assert_ne!(render(&"y".repeat(MAX_TAG_BYTES + 1)), Some(hashed));
        // Growth by encoding counts: 400 spaces render to 1200 bytes.
        assert!(render(&" ".repeat(400)).unwrap().starts_with("xxh3-"));
        let huge = "é".repeat(1 << 20);
        assert!(render(&huge).unwrap().starts_with("xxh3-"));
    }

    #[test]
    fn duplicates_and_empty_tags_are_dropped_in_order() {
        let tags = Tags::new(["b", "", "a", "b", "a"]);
        assert_eq!(tags.iter().map(|t| &**t).collect::<Vec<_>>(), ["b", "a"]);
        let merged = tags.merged(&Tags::new(["c", "a"]));
        assert_eq!(
            merged.iter().map(|t| &**t).collect::<Vec<_>>(),
            ["b", "a", "c"]
        );
    }

    #[test]
    fn many_tags_are_deduplicated_in_linear_time() {
        let n = 200_000;
        let tags = Tags::new((0..n).chain(0..n).map(|i| format!("t{i}")));
        assert_eq!(tags.iter().count(), n);
        assert_eq!(&**tags.iter().nth(n - 1).unwrap(), format!("t{}", n - 1));
        let merged = tags.merged(&Tags::new((n - 10..n + 10).map(|i| format!("t{i}"))));
        assert_eq!(merged.iter().count(), n + 10);
        assert_eq!(&**merged.iter().last().unwrap(), format!("t{}", n + 9));
    }

    #[test]
    fn headers_use_their_separator_and_keep_the_services_value() {
        let tags = Tags::new(["a", "b c"]);
        for (header, expected) in [
            (TagHeader::surrogate_key(), "a b%20c"),
            (TagHeader::xkey(), "a b%20c"),
            (TagHeader::cache_tag(), "a,b%20c"),
        ] {
            let mut headers = HeaderMap::new();
            assert_eq!(header.write(&mut headers, &tags), 0);
            assert_eq!(headers[header.name()], expected);
            let mut headers = HeaderMap::new();
            headers.append(header.name().clone(), HeaderValue::from_static(" own "));
            headers.append(header.name().clone(), HeaderValue::from_static(""));
            headers.append(header.name().clone(), HeaderValue::from_static("two"));
            header.write(&mut headers, &tags);
            let sep = if header == TagHeader::cache_tag() {
                ","
            } else {
                " "
            };
            assert_eq!(
                headers.get_all(header.name()).iter().collect::<Vec<_>>(),
                [format!("own{sep}two{sep}{expected}").as_str()]
            );
        }
        let mut headers = HeaderMap::new();
        assert_eq!(TagHeader::xkey().write(&mut headers, &Tags::default()), 0);
        assert!(headers.is_empty(), "no tags, no header");
    }

    #[test]
    fn header_values_are_bounded() {
        // 40 tags of 1000 bytes: 16 fit in 16 KiB with their separators.
        let tags = Tags::new((0..40).map(|i| format!("{i:03}{}", "t".repeat(997))));
        let mut headers = HeaderMap::new();
        let left_out = TagHeader::surrogate_key().write(&mut headers, &tags);
        let value = headers["surrogate-key"].as_bytes();
        assert!(value.len() <= MAX_TAG_HEADER_BYTES, "{}", value.len());
        assert_eq!(value.split(|&b| b == b' ').count(), 40 - left_out);
        assert_eq!(left_out, 24);
    }

    #[test]
    fn settling_evictions_keeps_tags_a_newer_group_carries() {
        let index = TagIndex::default();
        let tags = Tags::new(["a", "b"]);
        index.add(1, tags.iter());
        index.add(2, tags.iter());
        index.evicted(1, tags.clone());
        index.evicted(2, tags.clone());
        // Key 1 now holds a newer group carrying "b"; key 2 nothing.
        index.settle(|key| (key == 1).then(|| Tags::new(["b"])));
        assert_eq!(index.keys("a"), Vec::<u64>::new());
        assert_eq!(index.keys("b"), [1]);
        assert_eq!(index.size(), (1, 1));
        index.remove(1, Tags::new(["b"]).iter());
        assert_eq!(index.size(), (0, 0));
    }
}
