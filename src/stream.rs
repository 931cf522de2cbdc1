//! Bodies too large to read before the head is sent (over
//! [`max_buffer_bytes`](crate::MediaCacheLayer::max_buffer_bytes), or
//! refused by the global budget): they stream through as they come, and as
//! they pass the layer
//!
//! * **hashes** them, and learns the content `ETag` once the body has ended
//!   ([`Learning`]);
//! * **verifies** the `ETag` it put in the head from what it learned before
//!   (a [claim](crate::exchange)): the last piece is held back until the
//!   hash is known, and if the bytes are not the ones the tag names the body
//!   ends with [`ContentChanged`] instead, so no client or cache completes
//!   those bytes under that tag;
//! * **cuts** one byte range out of them (skip, forward, stop), for a
//!   service that ignores `Range`.
//!
//! Nothing is buffered but the frame held back.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::header::ETAG;
use http::{HeaderMap, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::body::{Buffered, Reservation};
use crate::config::Config;
use crate::handle::Counter;
use crate::headers::{EntityTag, HttpDate};
use crate::key::{Key, Selecting};
use crate::rules::RouteMatch;
use crate::store::{Basis, Entry, Epoch};
use crate::validators::ContentHasher;

/// The boxed error a [`ResponseBody`](crate::ResponseBody) ends with: the
/// inner body's error, or [`ContentChanged`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body ended with this error instead of completing: the bytes
/// the service sent were not those of the `ETag` the layer had put in the
/// response head from an earlier answer (the service changed the content
/// but not its `Content-Length` or `Last-Modified`), or the representation
/// ended before the byte range the head announced.
///
/// The connection is cut before the last bytes, so a client or cache never
/// holds a complete response with a tag of other bytes; the layer has learned
/// the new tag, which the next request gets.
/// [`Stats::content_changed`](crate::Stats::content_changed) counts these.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ContentChanged {
    /// The tag the head carried.
    pub claimed: Option<EntityTag>,
    /// The tag of the bytes sent, when the whole body was read.
    pub actual: Option<EntityTag>,
}

impl std::fmt::Display for ContentChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.claimed, &self.actual) {
            (Some(claimed), Some(actual)) => write!(
                f,
                "the body is not the representation its ETag {claimed} names (its bytes hash to {actual})"
            ),
            _ => f.write_str("the representation ended before the range the response announced"),
        }
    }
}

impl std::error::Error for ContentChanged {}

/// What is learned from a streamed body once it has ended: the entry is
/// made when the head is sent, and completed with the content `ETag`.
pub(crate) struct Learning {
    pub(crate) key: Key,
    pub(crate) epoch: Epoch,
    pub(crate) uri: Uri,
    pub(crate) request_headers: HeaderMap,
    pub(crate) vary: Vec<http::HeaderName>,
    /// Everything but the `ETag`.
    pub(crate) entry: Entry,
    /// The `Content-Length` the service declared, if any.
    pub(crate) declared: Option<u64>,
    /// The service's own `Last-Modified` (not one the layer synthesized).
    pub(crate) last_modified: Option<HttpDate>,
    pub(crate) route: RouteMatch,
}

impl Learning {
    /// Stores the entry with the content tag of the `len` bytes that
    /// streamed, unless they are not the length the service declared.
    fn finish(self, config: &Config, etag: &EntityTag, len: u64) {
        if self.declared.is_some_and(|declared| declared != len) {
            return;
        }
        let Learning {
            key,
            epoch,
            uri,
            request_headers,
            vary,
            mut entry,
            last_modified,
            route,
            ..
        } = self;
        entry.validators = std::mem::take(&mut entry.validators).with_etag(etag.clone());
        entry.headers.insert(ETAG, etag.header_value().clone());
        entry.basis = Some(Basis { len, last_modified });
        let selecting = Selecting::new(&uri, &request_headers, config.forwarded_host);
        // Counted in `Stats` and traced by the store; exported here with
        // the route, as the exchange does.
        match config.store.learn(key, selecting, &vary, entry, epoch) {
            Ok(()) => config.export(Counter::Learned, route),
            Err(crate::store::NotLearned::TooLarge) => {
                config.export(Counter::NotLearnedTooLarge, route);
            }
            Err(crate::store::NotLearned::Invalidated) => {}
        }
    }
}

/// What a streamed body does as it passes; see the module docs.
pub(crate) struct Plan {
    /// Hash the bytes (to learn, or to verify).
    pub(crate) hash: Option<ContentHasher>,
    /// The inclusive byte range to forward; the rest is skipped.
    pub(crate) window: Option<(u64, u64)>,
    /// The tag the head carries, which the bytes must hash to; the last
    /// piece forwarded is held back until they do.
    pub(crate) verify: Option<EntityTag>,
    pub(crate) learning: Option<Box<Learning>>,
    /// The representation's length, if known.
    pub(crate) len: Option<u64>,
    /// The route rule, for the counters' metrics.
    pub(crate) route: RouteMatch,
}

/// A body streaming through the layer.
pub(crate) struct Streamed<B: Body> {
    config: Arc<Config>,
    /// Read (and hashed) before the head was sent.
    prefix: VecDeque<Bytes>,
    reservation: Option<Reservation>,
    rest: Option<Pin<Box<B>>>,
    trailers: Option<HeaderMap>,
    hash: Option<ContentHasher>,
    window: Option<(u64, u64)>,
    verify: Option<EntityTag>,
    learning: Option<Box<Learning>>,
    /// Bytes of the representation read so far.
    position: u64,
    route: RouteMatch,
    /// The piece held back until the tag is verified.
    held: Option<Bytes>,
    /// Pieces ready to go out, in order.
    ready: VecDeque<Bytes>,
    /// The representation's length, when known: its end is known when the
    /// last byte arrives.
    len: Option<u64>,
    /// The window has been forwarded: only verification reads on.
    window_done: bool,
    done: bool,
}

impl<B: Body> Streamed<B> {
    /// `read` is what was read before the head was sent, its chunks
    /// already hashed into `plan.hash`.
    pub(crate) fn new(config: Arc<Config>, read: Buffered<B>, plan: Plan) -> Self {
        let position = 0;
        let Buffered {
            chunks,
            rest,
            trailers,
            reservation,
            ..
        } = read;
        let mut streamed = Self {
            config,
            prefix: chunks,
            reservation,
            rest,
            trailers,
            hash: plan.hash,
            window: plan.window,
            verify: plan.verify,
            learning: plan.learning,
            position,
            held: None,
            ready: VecDeque::new(),
            len: plan.len,
            route: plan.route,
            window_done: false,
            done: false,
        };
        if streamed.hash.is_none() {
            // Nothing to learn or verify without the hash.
            streamed.learning = None;
            streamed.verify = None;
        }
        streamed
    }

    /// The next chunk of the representation, whether it was hashed already,
    /// or `None` at its end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<(Bytes, bool), BoxError>>>
    where
        B::Error: Into<BoxError>,
    {
        if let Some(chunk) = self.prefix.pop_front() {
            if self.prefix.is_empty() {
                self.reservation = None;
            }
            return Poll::Ready(Some(Ok((chunk, true))));
        }
        loop {
            let Some(body) = self.rest.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(body.as_mut().poll_frame(cx)) {
                None => {
                    self.rest = None;
                    return Poll::Ready(None);
                }
                Some(Err(error)) => {
                    self.rest = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        return Poll::Ready(Some(Ok((
                            data.copy_to_bytes(data.remaining()),
                            false,
                        ))));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut self.trailers {
                                Some(existing) => existing.extend(trailers),
                                None => self.trailers = Some(trailers),
                            }
                        }
                    }
                },
            }
        }
    }

    /// The part of `chunk`, which starts at `start`, that is forwarded.
    fn cut(&mut self, chunk: Bytes, start: u64) -> Bytes {
        let Some((first, last)) = self.window else {
            return chunk;
        };
        let end = start + chunk.len() as u64;
        if end > last {
            self.window_done = true;
        }
        if end <= first || start > last {
            return Bytes::new();
        }
        let from = first.saturating_sub(start) as usize;
        let to = ((last + 1).min(end) - start) as usize;
        chunk.slice(from..to)
    }

    /// The representation has ended (or its last byte is in): learn its
    /// tag, check the claimed one. Called again at the real end, when only
    /// the window is left to check.
    fn end(&mut self) -> Result<(), BoxError> {
        if let Some((_, last)) = self.window
            && !self.window_done
            && self.rest.is_none()
            && self.position <= last
        {
            // Shorter than the range the head announced.
            self.count(Counter::ContentChanged);
            return Err(Box::new(ContentChanged {
                claimed: self.verify.take(),
                actual: None,
            }));
        }
        let Some(hash) = self.hash.take() else {
            return Ok(());
        };
        let (etag, remembered) = hash.finish(&self.config.hash_memo);
        self.count(Counter::HashedStreaming);
        if remembered {
            self.count(Counter::HashMemoHits);
        }
        if let Some(learning) = self.learning.take() {
            learning.finish(&self.config, &etag, self.position);
        }
        match self.verify.take() {
            Some(claimed) if !claimed.strong_eq(&etag) => {
                self.count(Counter::ContentChanged);
                tracing::debug!(%claimed, actual = %etag, "streamed body is not the representation its ETag names");
                Err(Box::new(ContentChanged {
                    claimed: Some(claimed),
                    actual: Some(etag),
                }))
            }
            _ => Ok(()),
        }
    }

    fn count(&self, counter: Counter) {
        self.config.count(counter, self.route);
    }

    /// Stops reading: the window is forwarded and nothing needs the rest.
    fn stop(&mut self) {
        self.rest = None;
        self.prefix.clear();
        self.reservation = None;
        self.hash = None;
        self.learning = None;
    }

    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
    where
        B::Error: Into<BoxError>,
    {
        loop {
            if let Some(out) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
            if self.done {
                let trailers = self.trailers.take().filter(|_| self.window.is_none());
                return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
            }
            let next = match ready!(self.poll_chunk(cx)) {
                Some(Ok(next)) => Some(next),
                Some(Err(error)) => return Poll::Ready(Some(Err(self.fail(error)))),
                None => None,
            };
            let Some((chunk, hashed)) = next else {
                if let Err(error) = self.end() {
                    return Poll::Ready(Some(Err(self.fail(error))));
                }
                self.ready.extend(self.held.take());
                self.done = true;
                continue;
            };
            if !hashed && let Some(hash) = self.hash.as_mut() {
                hash.update_bytes(&chunk);
            }
            let start = self.position;
            self.position += chunk.len() as u64;
            let out = if self.window_done {
                Bytes::new()
            } else {
                self.cut(chunk, start)
            };
            if self.window_done && self.verify.is_none() {
                // The range is out and nothing is verified: read no more.
                self.stop();
                self.ready.extend(Some(out).filter(|o| !o.is_empty()));
                self.done = true;
                continue;
            }
            if !out.is_empty() {
                let out = match self.verify {
                    Some(_) => self.held.replace(out),
                    None => Some(out),
                };
                self.ready.extend(out);
            }
            if Some(self.position) == self.len {
                // The last byte is in: learn and verify now, before it goes
                // out, so that a client that stops reading at the declared
                // length finds the store already taught.
                if let Err(error) = self.end() {
                    return Poll::Ready(Some(Err(self.fail(error))));
                }
                self.ready.extend(self.held.take());
            }
        }
    }

    /// Ends the body with `error`: nothing held back or queued goes out.
    fn fail(&mut self, error: BoxError) -> BoxError {
        self.done = true;
        self.held = None;
        self.ready.clear();
        self.trailers = None;
        self.stop();
        error
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.done
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        let waiting: u64 = self
            .ready
            .iter()
            .chain(&self.held)
            .map(|c| c.len() as u64)
            .sum();
        if let Some((first, last)) = self.window {
            // What is left of the window: not read yet, or read and waiting.
            let total = last - first + 1;
            let passed = self.position.saturating_sub(first).min(total);
            return SizeHint::with_exact(total - passed + waiting);
        }
        let queued = waiting + self.prefix.iter().map(|c| c.len() as u64).sum::<u64>();
        let mut hint = SizeHint::new();
        match &self.rest {
            Some(body) => {
                let inner = body.size_hint();
                hint.set_lower(inner.lower().saturating_add(queued));
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper.saturating_add(queued));
                }
            }
            None => hint.set_lower(queued),
        }
        hint
    }
}
