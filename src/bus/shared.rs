//! The second level of the validator store: what a replica learned, shared
//! with the others through a store they all reach (Redis, with
//! [`SharedStore`](crate::bus::redis::SharedStore)), so that a replica that
//! just started answers revalidations it never saw.
//!
//! This module holds what does not depend on the backend: the
//! [`SecondLevel`] a store is given, the generations a request starts in
//! ([`SharedEpoch`]), a lookup in flight ([`Lookup`]) and the record format
//! ([`encode`], [`decode`]).
//!
//! # Record format, version 1
//!
//! One record is one stored variant. All integers are big-endian; a record
//! is refused (a miss, never an answer) if any field is out of range, if
//! bytes are left over, or if the magic or the version differ.
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic and version: `t` `m` `c` `0x01` |
//! | 1 | flags: `1` strong `ETag`, `2` weak `ETag`, `4` `Last-Modified`, `8` relative `Expires`, `16` trusted until a time (else until invalidated), `32` a basis (the layer hashed the content), `64` cache tags |
//! | 8 | trusted until, milliseconds since the Unix epoch (flag `16`) |
//! | 8 | first seen, seconds since the Unix epoch |
//! | 8 | `Last-Modified`, seconds since the Unix epoch (flag `4`) |
//! | 8 | `Expires` this many milliseconds after the 304's `Date` (flag `8`) |
//! | 2 + n | the `ETag`'s opaque value (flag `1` or `2`) |
//! | 2 + n | the variant's selector (see `key.rs`: path and query, authority, `Vary`'d values) |
//! | 1, then 1 + n each | the `Vary` field names |
//! | 2, then (1 + n, 2 + m) each | the stored 304 header set, names and values, in order (`Date` first) |
//! | 8, 1, 8 | basis (flag `32`): the representation's length; `1` if the service's `Last-Modified` follows, else `0`; that date in seconds (only if `1`) |
//! | 2, then 2 + n each | cache tags, as rendered (flag `64`) |
// The only backend is Redis: without it, the store holds no second level
// and what only a backend builds is unused.
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::oneshot;

use crate::handle::Counters;
use crate::headers::{EntityTag, HttpDate};
use crate::key::Key;
use crate::policy::TrustedUntil;
use crate::store::{Basis, Entry};
use crate::tags::Tags;
use crate::validators::Validators;

/// A shared second level, as the store sees it.
pub(crate) trait SecondLevel: fmt::Debug + Send + Sync + 'static {
    /// The generations of `stripe` now, for a request starting; `None` when
    /// the second level cannot be used (not connected).
    fn epoch(&self, stripe: usize) -> Option<SharedEpoch>;

    /// Starts looking up every variant stored for `key`; `None` when the
    /// second level cannot be used. Never blocks.
    fn lookup(&self, key: Key) -> Option<Lookup>;

    /// Writes `variant` in the background, unless an invalidation covering
    /// `key` ran since `started`. Never blocks.
    fn write(
        &self,
        key: Key,
        variant: SharedVariant,
        started: SharedEpoch,
        counters: Arc<Counters>,
    );
}

/// Where the second level's invalidation generations were when a request
/// started. A write is refused unless they are still the same (see
/// [`SharedStore`](crate::bus::redis::SharedStore)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SharedEpoch {
    /// The connection they were read on: a write goes out on it or not at
    /// all.
    pub(crate) session: u64,
    /// Invalidations of the request's stripe of groups.
    pub(crate) stripe: u64,
    /// Prefix invalidations and clears.
    pub(crate) global: u64,
}

/// One learned variant, on its way to the second level.
#[derive(Debug)]
pub(crate) struct SharedVariant {
    pub(crate) vary: Box<[HeaderName]>,
    pub(crate) selector: Box<[u8]>,
    pub(crate) entry: Arc<Entry>,
}

/// What a lookup brought back.
#[derive(Debug)]
pub(crate) enum Looked {
    /// The records stored for the group (possibly none).
    Found(Vec<Vec<u8>>),
    /// No answer within the timeout, or an error.
    Failed,
}

/// A lookup in flight: resolves within the lookup timeout.
#[derive(Debug)]
pub(crate) struct Lookup(oneshot::Receiver<Looked>);

impl Lookup {
    /// A lookup whose answer `answer` will send (a dropped sender is a
    /// failure).
    pub(crate) fn new() -> (oneshot::Sender<Looked>, Self) {
        let (sender, receiver) = oneshot::channel();
        (sender, Self(receiver))
    }
}

impl Future for Lookup {
    type Output = Looked;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Looked> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Looked::Failed))
    }
}

/// How long the second level keeps an entry: its trust window, at most
/// `max`; `until_invalidated` for an entry trusted until invalidated. `None`
/// when it is not trusted at all (not written).
pub(crate) fn time_to_live(
    trusted_until: TrustedUntil,
    now: SystemTime,
    until_invalidated: Duration,
    max: Duration,
) -> Option<Duration> {
    let ttl = match trusted_until {
        TrustedUntil::Never => return None,
        TrustedUntil::Invalidated => until_invalidated,
        TrustedUntil::At(until) => until.duration_since(now).ok()?,
    };
    Some(ttl.min(max)).filter(|ttl| ttl.as_millis() > 0)
}

const MAGIC: [u8; 4] = *b"tmc\x01";
const STRONG: u8 = 1;
const WEAK: u8 = 2;
const LAST_MODIFIED: u8 = 4;
const EXPIRES: u8 = 8;
const TRUSTED_AT: u8 = 16;
const BASIS: u8 = 32;
const TAGS: u8 = 64;

/// The longest record read back (the store's own limits are lower).
pub(crate) const MAX_RECORD_BYTES: usize = 128 * 1024;

/// The most header fields a record may hold: the store refuses entries
/// over 64 KiB, at least 96 bytes a field.
const MAX_FIELDS: usize = 1024;

/// A record the store can use: the variant's `Vary` names, its selector and
/// the entry.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) vary: Vec<HeaderName>,
    pub(crate) selector: Vec<u8>,
    pub(crate) entry: Entry,
}

/// Why a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Undecodable;

/// Encodes one variant as a version 1 record; `None` when a part is too
/// long for its length field (the store never learns such a variant).
pub(crate) fn encode(variant: &SharedVariant) -> Option<Vec<u8>> {
    let entry = &variant.entry;
    let mut out = Vec::with_capacity(64 + variant.selector.len() + 64 * entry.headers.len());
    out.extend_from_slice(&MAGIC);
    let etag = entry.validators.etag();
    let mut flags = match etag {
        Some(tag) if tag.is_weak() => WEAK,
        Some(_) => STRONG,
        None => 0,
    };
    let last_modified = entry.validators.last_modified_date();
    if last_modified.is_some() {
        flags |= LAST_MODIFIED;
    }
    if entry.expires_after.is_some() {
        flags |= EXPIRES;
    }
    if entry.basis.is_some() {
        flags |= BASIS;
    }
    if !entry.tags.is_empty() {
        flags |= TAGS;
    }
    let trusted_at = match entry.trusted_until {
        TrustedUntil::At(until) => {
            flags |= TRUSTED_AT;
            Some(until)
        }
        TrustedUntil::Invalidated => None,
        TrustedUntil::Never => return None,
    };
    out.push(flags);
    if let Some(until) = trusted_at {
        let millis = until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        out.extend_from_slice(&u64::try_from(millis).unwrap_or(u64::MAX).to_be_bytes());
    }
    out.extend_from_slice(&entry.first_seen.secs().to_be_bytes());
    if let Some(date) = last_modified {
        out.extend_from_slice(&date.secs().to_be_bytes());
    }
    if let Some(after) = entry.expires_after {
        let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        out.extend_from_slice(&millis.to_be_bytes());
    }
    if let Some(tag) = etag {
        put_u16_bytes(&mut out, tag.opaque())?;
    }
    put_u16_bytes(&mut out, &variant.selector)?;
    out.push(u8::try_from(variant.vary.len()).ok()?);
    for name in &variant.vary {
        put_u8_bytes(&mut out, name.as_str().as_bytes())?;
    }
    out.extend_from_slice(&u16::try_from(entry.headers.len()).ok()?.to_be_bytes());
    for (name, value) in &entry.headers {
        put_u8_bytes(&mut out, name.as_str().as_bytes())?;
        put_u16_bytes(&mut out, value.as_bytes())?;
    }
    if let Some(basis) = entry.basis {
        out.extend_from_slice(&basis.len.to_be_bytes());
        match basis.last_modified {
            Some(date) => {
                out.push(1);
                out.extend_from_slice(&date.secs().to_be_bytes());
            }
            None => out.push(0),
        }
    }
    if !entry.tags.is_empty() {
        out.extend_from_slice(&u16::try_from(entry.tags.iter().count()).ok()?.to_be_bytes());
        for tag in entry.tags.iter() {
            put_u16_bytes(&mut out, tag.as_bytes())?;
        }
    }
    Some(out)
}

fn put_u8_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.push(u8::try_from(bytes.len()).ok()?);
    out.extend_from_slice(bytes);
    Some(())
}

fn put_u16_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.extend_from_slice(&u16::try_from(bytes.len()).ok()?.to_be_bytes());
    out.extend_from_slice(bytes);
    Some(())
}

/// Reads a version 1 record, checking every field.
pub(crate) fn decode(record: &[u8]) -> Result<Decoded, Undecodable> {
    if record.len() > MAX_RECORD_BYTES {
        return Err(Undecodable);
    }
    let mut r = Reader(record);
    if r.take(4)? != MAGIC {
        return Err(Undecodable);
    }
    let flags = r.u8()?;
    if flags & !(STRONG | WEAK | LAST_MODIFIED | EXPIRES | TRUSTED_AT | BASIS | TAGS) != 0
        || flags & (STRONG | WEAK) == STRONG | WEAK
    {
        return Err(Undecodable);
    }
    let trusted_until = if flags & TRUSTED_AT != 0 {
        let millis = r.u64()?;
        let until = UNIX_EPOCH
            .checked_add(Duration::from_millis(millis))
            .ok_or(Undecodable)?;
        TrustedUntil::At(until)
    } else {
        TrustedUntil::Invalidated
    };
    let first_seen = date(r.u64()?)?;
    let last_modified = if flags & LAST_MODIFIED != 0 {
        Some(date(r.u64()?)?)
    } else {
        None
    };
    let expires_after = if flags & EXPIRES != 0 {
        Some(Duration::from_millis(r.u64()?))
    } else {
        None
    };
    let mut validators = Validators::new();
    if flags & (STRONG | WEAK) != 0 {
        let opaque = std::str::from_utf8(r.u16_bytes()?).map_err(|_| Undecodable)?;
        let tag = if flags & WEAK != 0 {
            EntityTag::weak(opaque)
        } else {
            EntityTag::strong(opaque)
        };
        validators = validators.with_etag(tag.map_err(|_| Undecodable)?);
    }
    if let Some(date) = last_modified {
        validators.set_last_modified_date(date);
    }
    if validators.is_empty() {
        return Err(Undecodable);
    }
    let selector = r.u16_bytes()?.to_vec();
    let vary = (0..r.u8()?)
        .map(|_| HeaderName::from_bytes(r.u8_bytes()?).map_err(|_| Undecodable))
        .collect::<Result<Vec<_>, _>>()?;
    let fields = r.u16()?;
    if usize::from(fields) > MAX_FIELDS {
        return Err(Undecodable);
    }
    let mut headers = HeaderMap::with_capacity(usize::from(fields));
    for _ in 0..fields {
        let name = HeaderName::from_bytes(r.u8_bytes()?).map_err(|_| Undecodable)?;
        let value = HeaderValue::from_bytes(r.u16_bytes()?).map_err(|_| Undecodable)?;
        headers.append(name, value);
    }
    let basis = if flags & BASIS != 0 {
        let len = r.u64()?;
        let last_modified = match r.u8()? {
            0 => None,
            1 => Some(date(r.u64()?)?),
            _ => return Err(Undecodable),
        };
        Some(Basis { len, last_modified })
    } else {
        None
    };
    let tags = if flags & TAGS != 0 {
        let count = r.u16()?;
        let rendered = (0..count)
            .map(|_| std::str::from_utf8(r.u16_bytes()?).map_err(|_| Undecodable))
            .collect::<Result<Vec<_>, _>>()?;
        Tags::from_rendered(rendered).ok_or(Undecodable)?
    } else {
        Tags::default()
    };
    if !r.0.is_empty() {
        return Err(Undecodable);
    }
    Ok(Decoded {
        vary,
        selector,
        entry: Entry {
            validators,
            headers,
            trusted_until,
            expires_after,
            first_seen,
            basis,
            tags,
        },
    })
}

/// A date in range, or the record is refused.
fn date(secs: u64) -> Result<HttpDate, Undecodable> {
    (secs <= HttpDate::MAX.secs())
        .then(|| HttpDate::from_secs(secs))
        .ok_or(Undecodable)
}

/// Reads a record front to back; every read is checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Undecodable> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(Undecodable)?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Undecodable> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Undecodable> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn u64(&mut self) -> Result<u64, Undecodable> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(bytes))
    }

    fn u8_bytes(&mut self) -> Result<&'a [u8], Undecodable> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn u16_bytes(&mut self) -> Result<&'a [u8], Undecodable> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(trusted_until: TrustedUntil) -> SharedVariant {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::DATE,
            HeaderValue::from_static("Fri, 27 Nov 2026 10:00:00 GMT"),
        );
        headers.insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=3600"),
        );
        headers.append(
            http::header::VARY,
            HeaderValue::from_static("accept-encoding"),
        );
        headers.append(http::header::VARY, HeaderValue::from_static("x-other"));
        headers.insert("x-bytes", HeaderValue::from_bytes(b"\xff\x80 raw").unwrap());
        SharedVariant {
            vary: vec![
                http::header::ACCEPT_ENCODING,
                HeaderName::from_static("x-other"),
            ]
            .into(),
            selector: b"/a?q=1\0\0\n\xffhost\0".to_vec().into(),
            entry: Arc::new(Entry {
                validators: Validators::new()
                    .with_etag(EntityTag::weak("v1!#").unwrap())
                    .with_last_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
                headers,
                trusted_until,
                expires_after: Some(Duration::from_secs(60)),
                first_seen: HttpDate::from_secs(1_600_000_000),
                basis: Some(Basis {
                    len: 48 << 20,
                    last_modified: Some(HttpDate::from_secs(1_700_000_000)),
                }),
                tags: Tags::new(["album 7", "owner:42", "été"]),
            }),
        }
    }

    #[test]
    fn a_tag_that_rendering_would_not_make_is_refused() {
        let good = encode(&variant(TrustedUntil::Invalidated)).unwrap();
        assert!(decode(&good).is_ok());
        let at = good
            .windows(9)
            .position(|w| w == b"album%207")
            .expect("the rendered tag is in the record");
        for byte in [b' ', b',', b'"', 0xff] {
            let mut bad = good.clone();
            bad[at + 5] = byte;
            assert_eq!(decode(&bad).err(), Some(Undecodable), "{byte:#x}");
        }
        // A basis flag with no basis after the header set.
        let cut = &good[..good.len() - 1];
        assert!(decode(cut).is_err());
    }

    fn same(decoded: &Decoded, variant: &SharedVariant) {
        assert_eq!(decoded.vary, &*variant.vary);
        assert_eq!(decoded.selector, &*variant.selector);
        let (a, b) = (&decoded.entry, &*variant.entry);
        assert_eq!(a.validators, b.validators);
        assert_eq!(a.trusted_until, b.trusted_until);
        assert_eq!(a.expires_after, b.expires_after);
        assert_eq!(a.first_seen, b.first_seen);
        assert_eq!(a.basis, b.basis);
        assert_eq!(a.tags, b.tags);
        let pairs = |h: &HeaderMap| {
            h.iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&a.headers),
            pairs(&b.headers),
            "same fields, same order"
        );
    }

    #[test]
    fn records_round_trip() {
        let at = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        for trust in [TrustedUntil::Invalidated, TrustedUntil::At(at)] {
            let variant = variant(trust);
            let record = encode(&variant).unwrap();
            same(&decode(&record).unwrap(), &variant);
        }
        // Minimal: a strong tag only, no field, no Vary.
        let minimal = SharedVariant {
            vary: Box::new([]),
            selector: Box::new([]),
            entry: Arc::new(Entry {
                validators: Validators::new().with_etag(EntityTag::strong("x").unwrap()),
                headers: HeaderMap::new(),
                trusted_until: TrustedUntil::Invalidated,
                expires_after: None,
                first_seen: HttpDate::from_secs(0),
                basis: None,
                tags: Tags::default(),
            }),
        };
        let mut record = encode(&minimal).unwrap();
        assert_eq!(record.len(), 4 + 1 + 8 + 2 + 1 + 2 + 1 + 2);
        same(&decode(&record).unwrap(), &minimal);
        // A field count no record of the store can have.
        let at = record.len() - 2;
        record[at..].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(decode(&record).is_err());
    }

    #[test]
    fn untrusted_entries_are_not_encoded() {
        assert!(encode(&variant(TrustedUntil::Never)).is_none());
    }

    #[test]
    fn every_truncation_and_every_byte_flip_is_refused_or_harmless() {
        let record = encode(&variant(TrustedUntil::Invalidated)).unwrap();
        for len in 0..record.len() {
            assert_eq!(
                decode(&record[..len]).unwrap_err(),
                Undecodable,
                "cut at {len}"
            );
        }
        let mut longer = record.clone();
        longer.push(0);
        assert!(decode(&longer).is_err(), "trailing bytes");
        for i in 0..record.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut bad = record.clone();
                bad[i] ^= flip;
                // Never a panic; what decodes is a well-formed entry.
                if let Ok(decoded) = decode(&bad) {
                    assert!(!decoded.entry.validators.is_empty());
                }
            }
        }
    }

    #[test]
    fn other_versions_and_junk_are_refused() {
        let mut record = encode(&variant(TrustedUntil::Invalidated)).unwrap();
        record[3] = 2;
        assert!(decode(&record).is_err());
        for junk in [&b""[..], b"tmc", b"tmc\x01", b"hello world", &[0xff; 64]] {
            assert!(decode(junk).is_err());
        }
        assert!(decode(&vec![0; MAX_RECORD_BYTES + 1]).is_err());
        // No validator at all: never an answer.
        let mut empty = MAGIC.to_vec();
        empty.push(0);
        empty.extend_from_slice(&0u64.to_be_bytes());
        empty.extend_from_slice(&[0, 0, 0, 0, 0]);
        assert!(decode(&empty).is_err());
        // Both weak and strong.
        let mut both = MAGIC.to_vec();
        both.push(STRONG | WEAK);
        assert!(decode(&both).is_err());
    }

    /// A second level that records writes and finds nothing by itself.
    #[derive(Debug, Default)]
    struct Fake {
        connected: bool,
        writes: std::sync::Mutex<Vec<Vec<u8>>>,
    }

    impl SecondLevel for Fake {
        fn epoch(&self, _stripe: usize) -> Option<SharedEpoch> {
            self.connected.then_some(SharedEpoch {
                session: 2,
                stripe: 0,
                global: 0,
            })
        }
        fn lookup(&self, _key: Key) -> Option<Lookup> {
            None
        }
        fn write(&self, _key: Key, variant: SharedVariant, _: SharedEpoch, _: Arc<Counters>) {
            self.writes.lock().unwrap().push(encode(&variant).unwrap());
        }
    }

    fn store_with(fake: Fake) -> (crate::store::Store, Arc<Fake>) {
        let store = crate::store::Store::new(1 << 20);
        let fake = Arc::new(fake);
        store.attach_second_level(fake.clone());
        (store, fake)
    }

    fn entry(tag: &str, trusted_until: TrustedUntil) -> Entry {
        Entry {
            validators: Validators::new().with_etag(EntityTag::strong(tag).unwrap()),
            headers: HeaderMap::new(),
            trusted_until,
            expires_after: None,
            first_seen: HttpDate::from_secs(0),
            basis: None,
            tags: Tags::default(),
        }
    }

    /// The record another replica would have written for `uri` (no
    /// `Host`, no `Vary`).
    fn record_for(uri: &str, tag: &str) -> Vec<u8> {
        let uri: http::Uri = uri.parse().unwrap();
        let headers = HeaderMap::new();
        let selector = crate::key::Selecting::new(&uri, &headers, false)
            .encode(&[], 1024)
            .unwrap();
        encode(&SharedVariant {
            vary: Box::new([]),
            selector,
            entry: Arc::new(entry(tag, TrustedUntil::Invalidated)),
        })
        .unwrap()
    }

    fn install(
        store: &crate::store::Store,
        uri: &str,
        looked: Looked,
        started: crate::store::Epoch,
    ) -> bool {
        let uri: http::Uri = uri.parse().unwrap();
        let headers = HeaderMap::new();
        let request = crate::key::Selecting::new(&uri, &headers, false);
        store
            .install(Key::of(&uri), request, looked, started)
            .is_some()
    }

    #[test]
    fn what_a_lookup_finds_is_installed_and_not_written_back() {
        let (store, fake) = store_with(Fake {
            connected: true,
            ..Fake::default()
        });
        let started = store.epoch(Key::of_path(b"/a"));
        assert!(install(
            &store,
            "/a",
            Looked::Found(vec![record_for("/a", "1")]),
            started
        ));
        let found = store.lookup_path("/a").unwrap();
        assert!(found.may_answer(SystemTime::now()));
        assert_eq!(
            found.entry().validators.etag().unwrap().to_string(),
            "\"1\""
        );
        assert!(fake.writes.lock().unwrap().is_empty());
        assert_eq!(store.counters.get(crate::handle::Counter::SharedHits), 1);
        assert_eq!(store.counters.get(crate::handle::Counter::Learned), 0);
    }

    #[test]
    fn an_invalidation_during_a_lookup_discards_what_it_found() {
        let (store, _) = store_with(Fake {
            connected: true,
            ..Fake::default()
        });
        for invalidate in [
            (|s: &crate::store::Store| {
                s.invalidate("/A?x");
            }) as fn(&crate::store::Store),
            |s| s.invalidate_prefix("/"),
            |s| s.clear(),
        ] {
            let started = store.epoch(Key::of_path(b"/a"));
            invalidate(&store);
            assert!(!install(
                &store,
                "/a",
                Looked::Found(vec![record_for("/a", "1")]),
                started
            ));
            assert!(store.lookup_path("/a").is_none());
        }
        assert_eq!(store.counters.get(crate::handle::Counter::SharedHits), 0);
    }

    #[test]
    fn other_variants_junk_and_failures_are_misses() {
        let (store, _) = store_with(Fake {
            connected: true,
            ..Fake::default()
        });
        let started = store.epoch(Key::of_path(b"/a"));
        let other = vec![record_for("/a?v=2", "2"), b"junk".to_vec()];
        assert!(!install(&store, "/a", Looked::Found(other), started));
        assert!(!install(&store, "/a", Looked::Found(vec![]), started));
        assert!(!install(&store, "/a", Looked::Failed, started));
        assert!(store.lookup_path("/a").is_none());
        let count = |c| store.counters.get(c);
        use crate::handle::Counter;
        assert_eq!(count(Counter::SharedMisses), 2);
        assert_eq!(count(Counter::SharedUndecodable), 1);
        assert_eq!(count(Counter::SharedUnavailable), 1);
        // The right variant among others is found.
        let mixed = vec![
            b"junk".to_vec(),
            record_for("/a?v=2", "2"),
            record_for("/a", "1"),
        ];
        assert!(install(&store, "/a", Looked::Found(mixed), started));
    }

    #[test]
    fn a_learned_entry_is_written_once_per_version() {
        let (store, fake) = store_with(Fake {
            connected: true,
            ..Fake::default()
        });
        let writes = || fake.writes.lock().unwrap().len();
        store.learn_path("/a", entry("1", TrustedUntil::Invalidated));
        assert_eq!(writes(), 1);
        store.learn_path("/a", entry("1", TrustedUntil::Invalidated));
        assert_eq!(writes(), 1, "already shared");
        store.learn_path("/a?q", entry("1", TrustedUntil::Invalidated));
        assert_eq!(writes(), 2, "another variant");
        store.learn_path("/a", entry("2", TrustedUntil::Invalidated));
        assert_eq!(writes(), 3, "another version");
        // A trust window moves with each learn: written each time.
        let at = TrustedUntil::At(SystemTime::now() + Duration::from_secs(60));
        store.learn_path("/b", entry("1", at));
        store.learn_path("/b", entry("1", at));
        assert_eq!(writes(), 5);
        let decoded = decode(&fake.writes.lock().unwrap()[0]).unwrap();
        assert_eq!(
            decoded.entry.validators.etag().unwrap().to_string(),
            "\"1\""
        );
    }

    #[test]
    fn nothing_is_written_without_a_connected_second_level() {
        let (store, fake) = store_with(Fake::default());
        store.learn_path("/a", entry("1", TrustedUntil::Invalidated));
        assert!(store.lookup_path("/a").is_some(), "learned locally");
        assert!(fake.writes.lock().unwrap().is_empty());
    }

    #[test]
    fn time_to_live_follows_trust_and_is_capped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        let ttl = |t| time_to_live(t, now, day, 2 * day);
        assert_eq!(ttl(TrustedUntil::Never), None);
        assert_eq!(ttl(TrustedUntil::Invalidated), Some(day));
        assert_eq!(
            ttl(TrustedUntil::At(now + Duration::from_secs(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(ttl(TrustedUntil::At(now + 10 * day)), Some(2 * day));
        assert_eq!(ttl(TrustedUntil::At(now)), None);
        assert_eq!(ttl(TrustedUntil::At(now - day)), None);
        assert_eq!(
            time_to_live(TrustedUntil::Invalidated, now, 10 * day, day),
            Some(day)
        );
    }
}
